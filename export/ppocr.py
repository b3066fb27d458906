"""Ship the PP-OCRv4 ONNX models (text detection, recognition, orientation) for the offline runtime.

    python -m export.ppocr [--wheel PATH] [--models-dir models]

The models are taken from the PyPI wheel ``rapidocr-onnxruntime==1.4.4`` (Apache-2.0; PaddleOCR's PP-OCRv4
models converted to ONNX by the RapidOCR project). The wheel's zip is read directly; ``rapidocr`` is never
imported. The recogniser's character list (stored in the ONNX metadata) is copied into the manifest so the
runtime decodes without any other file.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import zipfile
from pathlib import Path

from export.common import MODELS_DIR, find_wheel, install_model, md_table, write_card
from wtivision.registry import ModelSpec, sha256_file

logger = logging.getLogger(__name__)

PROJECT, VERSION = "rapidocr-onnxruntime", "1.4.4"
MEMBERS = {
    # name: (member in wheel, task, role, input size, preprocessing)
    "ppocr-v4-det": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "ocr_det", "ocr_det", [960],
                     {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": "1/255", "channel_order": "BGR",
                      "resize": "longer side <= input_size, both sides multiples of 32",
                      "db_thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.6}),
    "ppocr-v4-rec": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "ocr_rec", "ocr_rec", [48, 320],
                     {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": "1/255", "channel_order": "BGR",
                      "resize": "height 48, keep ratio, right-pad with zeros", "decode": "CTC, blank=0"}),
    "ppocr-mobile-v2-cls": ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ocr_cls",
                            "ocr_cls", [48, 192], {"labels": ["0", "180"]}),
}


def character_list(onnx_path: Path) -> list[str]:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    if "character" not in meta:
        raise SystemExit(f"{onnx_path} has no 'character' metadata")
    return meta["character"].splitlines()


def convert(wheel: Path, models_dir: Path = MODELS_DIR) -> dict:
    wheel_sha = sha256_file(wheel)
    out = {}
    with tempfile.TemporaryDirectory() as td, zipfile.ZipFile(wheel) as z:
        for name, (member, task, role, size, pre) in MEMBERS.items():
            staged = Path(td) / Path(member).name
            staged.write_bytes(z.read(member))
            classes = character_list(staged) if task == "ocr_rec" else []
            spec = ModelSpec(
                name=name, file=Path(member).name, sha256="", task=task, classes=classes, input_size=size,
                preprocessing=pre, version="PP-OCRv4" if "v4" in name else "PP-OCR mobile v2.0",
                licence="Apache-2.0",
                source=f"PyPI {PROJECT}=={VERSION} {member} (wheel sha256 {wheel_sha}); models by PaddleOCR",
                card="cards/ppocr.md", role=role, default=True,
            )
            install_model(staged, spec, models_dir)
            out[name] = {"file": spec.file, "sha256": spec.sha256, "classes": len(classes)}
    write_card("ppocr", card_text(out), models_dir)
    return out


def card_text(out: dict) -> str:
    rows = [[n, v["file"], v["sha256"][:16] + "…"] for n, v in out.items()]
    return f"""# PP-OCRv4 text detection and recognition (ONNX)

{md_table(["model", "file", "sha256"], rows)}

- **Source**: PyPI wheel `{PROJECT}=={VERSION}` (RapidOCR's ONNX conversion of PaddleOCR's PP-OCRv4 Chinese/
  English models: DB text detector, SVTR-LCNet CTC recogniser with a {out['ppocr-v4-rec']['classes']}-symbol
  dictionary incl. digits and Latin letters, mobile v2.0 orientation classifier).
- **Licence**: Apache-2.0 (PaddleOCR, RapidOCR).
- **Conversion**: `python -m export.ppocr` copies the ONNX files out of the wheel unchanged and puts the
  recogniser's dictionary (ONNX metadata `character`) into the manifest. No paddle at run time.
- **Used by**: `wtivision.ocr` for serial numbers, markings and headstamps (after our own preprocessing for
  stamped metal: CLAHE, glare suppression, high-pass, rotations, polar unwrapping of case heads).
- **Decoding in wtivision**: greedy CTC restricted to upper-case Latin letters, digits and `-./ ` (headstamps
  add the round symbols the NATO mark is read as); the probability mass the model gives to other symbols is
  not renormalised away, so it lowers the confidence. Batches are padded to a width of 160 (PaddleOCR: 320).
  The NATO cross-in-circle is not in the dictionary: it is found by template matching and recorded as `+`.
- **Accuracy**: see `docs/ocr-benchmark.md` (synthetic stamped serials and headstamps, fixed seeds). The
  models were trained by PaddleOCR on printed and scene text, not on stamped or engraved metal.
- **Known limits**: deeply worn, painted-over or rusted stamps; headstamps with very small characters in
  low-resolution photos; the recogniser's dictionary has CJK characters that are discarded for serials.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path)
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(convert(args.wheel or find_wheel(PROJECT, VERSION), args.models_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
