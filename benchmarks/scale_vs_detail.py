"""Are small objects missed for their size in pixels or for the detail lost when a photo is shrunk to the input?

    python -m benchmarks.scale_vs_detail runs/data/external-pfm1 [--split test] [--class landmine_uxo] \
        [--model NAME] [--sources robotkos-landmine,binghamton-pfm1-train] [--workdir DIR] [--json FILE]

Tiles (``scan --tiles``: crops at twice the scale) raise landmine AP50 a lot on drone photos. Two causes are
possible, and they call for different training: the mines are too few pixels across for the model (train with
smaller objects: scale augmentation), or the whole-photo pass shrinks the photo to the input size and the detail
that tells a mine from a stone is gone (train and run at a larger input). To tell them apart this builds a copy of
the split whose photos were shrunk to the detector's input size (area average) and enlarged back (bicubic): the
same size and boxes, with only the detail a whole-photo pass sees. The detector runs whole and tiled on the
original and on the copy. If the tiles' gain survives on the copy, it comes from the objects' size in pixels; if
it vanishes, from detail. ``--sources`` keeps the photos of those sources only (the dataset's ``manifest.csv``).
Writes a markdown table to stdout (and ``--json`` if given); the copy goes to ``--workdir`` (default: temp).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def shrunk_copy(root: Path, split: str, out: Path, side: int, sources: set[str] | None = None) -> int:
    """Write ``out/{images,labels}/<split>/`` (and ``data.yaml``): every photo of ``root``'s split (of
    ``sources`` only, if given) shrunk to ``side`` px on its long side and enlarged back to its own size; labels
    copied. Photos already at most ``side`` px are copied as they are. Returns the number of photos."""
    import cv2

    from datasets.build import read_manifest
    from wtivision.evaluate import split_images

    shutil.rmtree(out, ignore_errors=True)
    keep = None
    if sources:
        keep = {Path(r["path"]).name for r in read_manifest(root) if r["source"] in sources}
    (out / "images" / split).mkdir(parents=True)
    (out / "labels" / split).mkdir(parents=True)
    if (root / "data.yaml").is_file():
        shutil.copyfile(root / "data.yaml", out / "data.yaml")
    n = 0
    for image, label in split_images(root, split):
        if keep is not None and image.name not in keep:
            continue
        im = cv2.imread(str(image))
        if im is None:  # the evaluation of the original reports it as an error row
            logger.warning("%s: not readable, left out of the copy", image)
            continue
        h, w = im.shape[:2]
        s = side / max(h, w)
        if s < 1:
            small = cv2.resize(im, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            im = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(out / "images" / split / f"{image.stem}.png"), im)  # lossless: no new JPEG loss
        if label.is_file():
            shutil.copyfile(label, out / "labels" / split / label.name)
        n += 1
    return n


def compare(root: Path, split: str, cls: str, model: str | None, models_dir: Path, workdir: Path,
            sources: set[str] | None = None, min_conf: float = 0.01) -> list[dict]:
    from wtivision.evaluate import evaluate_detector
    from wtivision.registry import Registry
    from wtivision.runtime import YoloDetector

    reg = Registry(models_dir)
    spec = reg.get(model) if model else reg.default_for("detector")
    det = YoloDetector(spec, reg, conf_threshold=min_conf)
    original = root
    if sources:  # the original photos of those sources, unchanged, so that both sides hold the same photos
        original = workdir / "original"
        shrunk_copy(root, split, original, side=10 ** 9, sources=sources)
    shrunk = workdir / "shrunk"
    n = shrunk_copy(root, split, shrunk, side=int(spec.input_size[0]), sources=sources)
    rows = []
    for name, folder in (("original", original), (f"shrunk to {spec.input_size[0]} px and enlarged", shrunk)):
        for tiles in (False, True):
            ev = evaluate_detector(det, folder, split, tiles=tiles)
            c = next((c for c in ev.classes if c.name == cls), None)
            if c is None:
                raise ValueError(f"{cls} has no box in {root} [{split}]")
            rows.append({"photos": name, "tiles": tiles, "images": n if sources else ev.images,
                         "boxes": c.ground_truth, "ap50": c.ap50, "model": spec.name, "model_sha256": spec.sha256})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_vs_detail", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="YOLO folder (images/<split>, labels/<split>, data.yaml)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--class", dest="cls", default="landmine_uxo")
    ap.add_argument("--model", default=None, help="detector of the manifest (default: the default detector)")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--sources", default="", help="comma list: only the photos of these sources (manifest.csv)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sources = {s for s in a.sources.split(",") if s} or None
    with tempfile.TemporaryDirectory() as td:
        work = a.workdir or Path(td)
        work.mkdir(parents=True, exist_ok=True)
        rows = compare(a.dataset, a.split, a.cls, a.model, a.models_dir, work, sources)
    print(f"{a.cls} AP50 on {a.dataset} [{a.split}], {rows[0]['model']} ({rows[0]['model_sha256'][:12]}):\n")
    print("| photos | whole photo | with tiles |\n| --- | --- | --- |")
    for i in range(0, len(rows), 2):
        print(f"| {rows[i]['photos']} ({rows[i]['images']} photos, {rows[i]['boxes']} boxes) | {rows[i]['ap50']:.3f} | "
              f"{rows[i + 1]['ap50']:.3f} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
