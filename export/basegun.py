"""Convert the basegun-ml firearm typology classifier to ONNX for the wtivision runtime.

    python -m export.basegun [--wheel PATH] [--models-dir models] [--n-parity 240]

The weights come from the published PyPI wheel ``basegun-ml==2.0.7`` (AGPL-3.0). They are read straight out
of the wheel's zip; the ``basegun_ml`` package is never imported (its ``__init__`` loads paddle and pyiqa).
The ONNX export is checked against the PyTorch original run through ultralytics as basegun does
(``YOLO(pt)(PIL image)``): the export fails if top-1 agreement is below 0.99.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from export.common import MODELS_DIR, find_wheel, install_model, md_table, offline_ultralytics, write_card
from wtivision.registry import ModelSpec, Registry, sha256_file
from wtivision.runtime import ImageClassifier, RuntimeOptions
from wtivision.taxonomy import TYPOLOGY_CLASSES

logger = logging.getLogger(__name__)

PROJECT, VERSION = "basegun-ml", "2.0.7"
NAME = "typology-basegun-v2"
FILE = "typology-basegun-v2.onnx"
MIN_AGREEMENT = 0.99
BASEGUN_CLASSES = list(TYPOLOGY_CLASSES)  # basegun_ml/classification.py CLASSES, same order


def extract(wheel: Path, member: str, dst_dir: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        dst = dst_dir / Path(member).name
        dst.write_bytes(z.read(member))
    return dst


def varied_images(warmup_bgr: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    """A varied parity set: crops, flips, rotations, colour shifts and scales of basegun's warm-up photo,
    procedurally drawn long-gun and handgun silhouettes, and textured backgrounds, in many aspect ratios."""
    import cv2

    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    h0, w0 = warmup_bgr.shape[:2]
    while len(out) < n:
        kind = len(out) % 3
        if kind == 0:  # transformed warm-up photo
            x1, y1 = rng.integers(0, w0 // 3), rng.integers(0, h0 // 3)
            x2, y2 = rng.integers(2 * w0 // 3, w0 + 1), rng.integers(2 * h0 // 3, h0 + 1)
            img = warmup_bgr[y1:y2, x1:x2].copy()
            if rng.random() < 0.5:
                img = img[:, ::-1]
            img = np.rot90(img, int(rng.integers(0, 4))).copy()
            gain = rng.uniform(0.6, 1.4, 3)
            img = np.clip(img * gain + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        elif kind == 1:  # gun-like silhouette on a plain or textured background
            w, h = int(rng.integers(200, 900)), int(rng.integers(150, 700))
            bg = np.full((h, w, 3), rng.integers(40, 230, 3), np.uint8)
            img = np.clip(bg + rng.normal(0, 10, bg.shape), 0, 255).astype(np.uint8)
            col = tuple(int(c) for c in rng.integers(0, 90, 3))
            L = int(w * rng.uniform(0.5, 0.9))
            x0, yc = int((w - L) / 2), h // 2
            th = max(4, int(h * rng.uniform(0.03, 0.08)))
            cv2.rectangle(img, (x0, yc - th), (x0 + L, yc + th), col, -1)  # barrel + receiver
            sx = x0 + int(L * rng.uniform(0.55, 0.8))
            pts = np.array([[sx, yc], [x0 + L, yc - th], [x0 + L, yc + int(h * 0.2)], [sx, yc + 2 * th]])
            cv2.fillPoly(img, [pts.astype(np.int32)], col)  # stock
            gx = x0 + int(L * rng.uniform(0.4, 0.6))
            cv2.rectangle(img, (gx, yc), (gx + th * 2, yc + int(h * 0.15)), col, -1)  # grip
            if rng.random() < 0.5:
                img = img[:, ::-1].copy()
        else:  # texture / clutter
            w, h = int(rng.integers(120, 1000)), int(rng.integers(120, 1000))
            small = rng.integers(0, 255, (max(2, h // 16), max(2, w // 16), 3)).astype(np.uint8)
            img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        out.append(np.ascontiguousarray(img))
    return out


def convert(wheel: Path, models_dir: Path = MODELS_DIR, n_parity: int = 240, register: bool = True) -> dict:
    offline_ultralytics()
    from PIL import Image
    from ultralytics import YOLO

    wheel_sha = sha256_file(wheel)
    with tempfile.TemporaryDirectory() as td:
        tdp = Path(td)
        pt = extract(wheel, "basegun_ml/classification.pt", tdp)
        warm = extract(wheel, "basegun_ml/warmup.jpg", tdp)
        pt_sha = sha256_file(pt)
        model = YOLO(str(pt))
        names = [model.names[i] for i in range(len(model.names))]
        if names != BASEGUN_CLASSES:
            raise SystemExit(f"class order differs from basegun's CLASSES: {names}")
        imgsz = int(model.model.args.get("imgsz", 320))
        onnx_file = Path(model.export(format="onnx", imgsz=imgsz, opset=17, simplify=True, dynamic=False,
                                      device="cpu"))
        staged = tdp / FILE
        onnx_file.replace(staged)

        spec = ModelSpec(
            name=NAME, file=FILE, sha256=sha256_file(staged), task="classify", classes=BASEGUN_CLASSES,
            input_size=[imgsz],
            preprocessing={"resize": "shorter side to input_size, PIL bilinear", "crop": "centre",
                           "scale": "1/255", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                           "channel_order": "RGB", "output_softmax": True},
            version=f"basegun-ml {VERSION}", licence="AGPL-3.0",
            source=f"PyPI {PROJECT}=={VERSION} basegun_ml/classification.pt (sha256 {pt_sha}); "
                   f"wheel sha256 {wheel_sha}",
            card="cards/typology-basegun.md", role="typology", default=True,
        )
        reg = Registry(tdp)
        from wtivision.registry import write_manifest_entry

        write_manifest_entry(tdp, spec)
        onnx_clf = ImageClassifier(spec, reg, RuntimeOptions())

        import cv2

        images = varied_images(cv2.imread(str(warm)), n_parity, seed=20261124)
        agree, max_diff = 0, 0.0
        for img in images:
            p_onnx = onnx_clf.probabilities(img)
            p_pt = model(Image.fromarray(img[:, :, ::-1]), verbose=False)[0].probs.data.cpu().numpy()
            agree += int(np.argmax(p_onnx) == np.argmax(p_pt))
            max_diff = max(max_diff, float(np.abs(p_onnx - p_pt).max()))
        agreement = agree / len(images)

        crop = images[0]
        lat = {}
        for threads in (1, 2):
            clf = ImageClassifier(spec, reg, RuntimeOptions(intra_threads=threads))
            clf.probabilities(crop)
            ts = []
            for _ in range(30):
                t0 = time.perf_counter()
                clf.probabilities(crop)
                ts.append((time.perf_counter() - t0) * 1000)
            lat[f"onnx_{threads}_thread_ms"] = round(statistics.median(ts), 2)
        pil = Image.fromarray(crop[:, :, ::-1])
        model(pil, verbose=False)
        ts = []
        for _ in range(30):
            t0 = time.perf_counter()
            model(pil, verbose=False)
            ts.append((time.perf_counter() - t0) * 1000)
        lat["pytorch_ultralytics_ms"] = round(statistics.median(ts), 2)

        result = {"top1_agreement": round(agreement, 4), "max_abs_prob_diff": round(max_diff, 6),
                  "n_parity_images": len(images), "latency": lat, "pt_sha256": pt_sha,
                  "onnx_sha256": spec.sha256, "imgsz": imgsz}
        if agreement < MIN_AGREEMENT:
            raise SystemExit(f"parity failed: top-1 agreement {agreement:.4f} < {MIN_AGREEMENT}: {result}")
        spec.metrics = {"parity_top1_agreement_vs_pytorch": result["top1_agreement"],
                        "parity_max_abs_prob_diff": result["max_abs_prob_diff"],
                        "parity_images": len(images), "latency_ms": lat}
        if register:
            install_model(staged, spec, models_dir)
            write_card("typology-basegun", card_text(result))
    return result


def card_text(r: dict) -> str:
    rows = [[fr, en] for fr, en in TYPOLOGY_CLASSES.items()]
    lat = r["latency"]
    return f"""# Firearm typology classifier (basegun-ml {VERSION}, converted to ONNX)

- **File**: `models/{FILE}` (ONNX opset 17, fp32, input 1x3x{r['imgsz']}x{r['imgsz']} RGB in [0, 1], softmax output)
- **Source**: PyPI wheel `{PROJECT}=={VERSION}`, member `basegun_ml/classification.pt` (sha256 `{r['pt_sha256']}`),
  an ultralytics YOLOv8s-cls classifier trained by the French Ministry of the Interior's Basegun project.
- **Licence**: AGPL-3.0 (as published in the wheel). wtivision is AGPL-3.0-or-later to match.
- **Conversion**: `python -m export.basegun` (reads the wheel's zip; never imports `basegun_ml`), ultralytics
  ONNX export, onnxslim.
- **Used by**: the `typology` step: each detected firearm crop (or the whole photo when no detector runs).

## Classes (original French names kept in `original_label`)
{md_table(["basegun class", "wtivision label"], rows)}

## Preprocessing (numpy/PIL, in `wtivision.runtime.ImageClassifier`)
Resize the shorter side to {r['imgsz']} px (PIL bilinear), centre-crop {r['imgsz']}x{r['imgsz']}, RGB, scale to [0, 1] —
the same as ultralytics' `classify_transforms`.

## Parity with the PyTorch original (measured)
On {r['n_parity_images']} varied generated images (transformed crops of basegun's own warm-up photo, drawn
gun silhouettes, textures; fixed seed), ONNX in wtivision vs `ultralytics.YOLO(classification.pt)(PIL image)`:

- top-1 agreement: **{r['top1_agreement']}** (export fails below {MIN_AGREEMENT})
- max absolute probability difference: {r['max_abs_prob_diff']}

## Latency on this machine (one crop, median of 30, 2-core CPU)
- wtivision ONNX, 1 thread: {lat['onnx_1_thread_ms']} ms; 2 threads: {lat['onnx_2_thread_ms']} ms
- ultralytics/PyTorch: {lat['pytorch_ultralytics_ms']} ms

## Accuracy
Upstream reports its accuracy on its own (non-public) validation set of French civilian weapon photos; we
have **no independent labelled firearm-typology test set** yet, so no accuracy figure of ours is claimed here.
The parity figures above only show the conversion is faithful.

## Known limits
- Trained on photos of civilian firearms as handed in to French police services (whole weapon, mostly
  side view, indoor); battlefield photos, partial views, weapons in piles or in hands are out of its
  distribution. Military automatic weapons have no class of their own (closest: the military-style
  semi-automatic classes).
- It always answers one of 12 classes: check the confidence (basegun's own levels: < 0.76 low,
  < 0.98 medium, else high) and the detector's label.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help=f"path to {PROJECT}-{VERSION} wheel (default: cache or pip download)")
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--n-parity", type=int, default=240)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    wheel = args.wheel or find_wheel(PROJECT, VERSION)
    r = convert(wheel, args.models_dir, args.n_parity)
    print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
