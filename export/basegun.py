"""Convert the basegun-ml firearm typology classifier to ONNX for the wtivision runtime.

    python -m export.basegun [--wheel PATH] [--models-dir models] [--n-parity 240] [--latency-runs 50]

The weights come from the published PyPI wheel ``basegun-ml==2.0.7`` (AGPL-3.0). They are read straight out
of the wheel's zip; the ``basegun_ml`` package is never imported (its ``__init__`` loads paddle and pyiqa).
The ONNX export is checked against the PyTorch original run through ultralytics as basegun does
(``YOLO(pt)(PIL image)``): the export fails if top-1 agreement is below 0.99.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from export.common import MODELS_DIR, find_wheel, install_model, md_table, offline_ultralytics, write_card
from wtivision.registry import ModelSpec, Registry, sha256_file, write_manifest_entry
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
    procedurally drawn long-gun and handgun silhouettes, textured backgrounds, and small or elongated
    (up to ~50:1, 24 px sides) detector-like crops, in many sizes and aspect ratios."""
    import cv2

    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    h0, w0 = warmup_bgr.shape[:2]
    while len(out) < n:
        kind = len(out) % 4
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
        elif kind == 2:  # texture / clutter
            w, h = int(rng.integers(120, 1000)), int(rng.integers(120, 1000))
            small = rng.integers(0, 255, (max(2, h // 16), max(2, w // 16), 3)).astype(np.uint8)
            img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        else:  # small or elongated detector-like crop of the warm-up photo (upscaled or squeezed)
            x1, y1 = int(rng.integers(0, w0 // 2)), int(rng.integers(0, h0 // 2))
            img = warmup_bgr[y1:y1 + int(rng.integers(h0 // 4, h0 // 2)), x1:x1 + int(rng.integers(w0 // 4, w0 // 2))]
            w, h = int(rng.integers(24, 1200)), int(rng.integers(24, 400))
            if rng.random() < 0.5:
                w, h = h, w
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if w * h < img.size // 3 else cv2.INTER_LINEAR)
        out.append(np.ascontiguousarray(img))
    return out


def wheel_classes(wheel: Path) -> list[str]:
    """``CLASSES`` of ``basegun_ml/classification.py`` in the wheel, read with ``ast`` (nothing is imported)."""
    with zipfile.ZipFile(wheel) as z:
        tree = ast.parse(z.read("basegun_ml/classification.py").decode("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CLASSES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"no CLASSES list in basegun_ml/classification.py of {wheel}")


def check_transforms(model, imgsz: int) -> str:
    """The checkpoint's own inference transforms must be what ``ImageClassifier.preprocess`` implements:
    Resize(shorter side = S, bilinear), CenterCrop(S), ToTensor, Normalize(mean 0, std 1)."""
    import torchvision.transforms as T

    tf = getattr(model.model, "transforms", None)
    if tf is None:  # ultralytics falls back to classify_transforms(imgsz): the same pipeline
        return "classify_transforms(imgsz) (checkpoint has none)"
    steps = list(getattr(tf, "transforms", ()))
    ok = [type(t) for t in steps] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    if ok:
        rs, cc, _, nm = steps
        ok = (rs.size in (imgsz, [imgsz]) and rs.interpolation == T.InterpolationMode.BILINEAR
              and list(cc.size) == [imgsz, imgsz]
              and [float(v) for v in nm.mean] == [0.0] * 3 and [float(v) for v in nm.std] == [1.0] * 3)
    if not ok:
        raise SystemExit(f"checkpoint transforms differ from wtivision's ImageClassifier preprocessing: {tf}")
    return " + ".join(repr(t).replace("\n", "") for t in steps)


def check_onnx(path: Path, imgsz: int, nc: int) -> int:
    """Static 1x3xSxS input, 1 x nc output, opset >= 17; returns the opset."""
    import onnx

    m = onnx.load(str(path))
    opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in (m.graph.input[0],
                                                                                        m.graph.output[0])]
    if opset < 17 or dims != [[1, 3, imgsz, imgsz], [1, nc]]:
        raise SystemExit(f"unexpected ONNX graph {path}: opset {opset}, input/output shapes {dims}")
    return opset


def pin_export_date(path: Path, date: str) -> None:
    """ultralytics stamps the export time into the ONNX metadata; replace it with the checkpoint's own date so
    that the same wheel and toolchain (torch, ultralytics, onnx, onnxslim versions) give byte-identical files."""
    import onnx

    m = onnx.load(str(path))
    for prop in m.metadata_props:
        if prop.key == "date":
            prop.value = str(date)
    onnx.save(m, str(path))


def upstream_claims(pt: Path) -> dict:
    """What the checkpoint itself records about its training (ultralytics version, date, val metrics)."""
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(str(pt))
    args, met = ckpt.get("train_args") or {}, ckpt.get("train_metrics") or {}
    return {"ultralytics_version": ckpt.get("version"), "date": ckpt.get("date"),
            "base_model": args.get("model"), "epochs": args.get("epochs"), "imgsz": args.get("imgsz"),
            "val_top1": met.get("metrics/accuracy_top1"), "val_top5": met.get("metrics/accuracy_top5")}


def torch_probs(model, img_bgr: np.ndarray) -> np.ndarray:
    """The PyTorch original as basegun runs it: ``YOLO(pt)(PIL image)``."""
    from PIL import Image

    return model(Image.fromarray(np.ascontiguousarray(img_bgr[:, :, ::-1])), verbose=False)[0].probs.data.cpu().numpy()


def parity(clf: ImageClassifier, model, images: list[np.ndarray]) -> dict:
    """Top-1 agreement and max |p_onnx - p_torch| over ``images`` (BGR)."""
    agree, max_diff = 0, 0.0
    for img in images:
        p_onnx, p_pt = clf.probabilities(img), torch_probs(model, img)
        agree += int(np.argmax(p_onnx) == np.argmax(p_pt))
        max_diff = max(max_diff, float(np.abs(p_onnx - p_pt).max()))
    return {"top1_agreement": round(agree / len(images), 4), "max_abs_prob_diff": float(f"{max_diff:.2g}"),
            "n_images": len(images)}


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(ts), 2)


def latency(spec: ModelSpec, reg: Registry, model, crop_bgr: np.ndarray, runs: int = 50) -> dict:
    """Median wall time per crop, preprocessing included, ONNX (wtivision) vs PyTorch (ultralytics)."""
    import torch

    out = {"runs": runs, "crop_hw": list(crop_bgr.shape[:2]), "cpu": _cpu_name(), "cpus": os.cpu_count(),
           "load_avg_1min_before": round(os.getloadavg()[0], 2)}
    for threads in (1, 2):
        clf = ImageClassifier(spec, reg, RuntimeOptions(intra_threads=threads))
        out[f"onnx_{threads}_thread_ms"] = _median_ms(lambda c=clf: c.probabilities(crop_bgr), runs)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out[f"pytorch_{threads}_thread_ms"] = _median_ms(lambda: torch_probs(model, crop_bgr), runs)
    finally:
        torch.set_num_threads(before)
    out["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    return out


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def convert(wheel: Path, models_dir: Path = MODELS_DIR, n_parity: int = 240, register: bool = True,
            latency_runs: int = 50) -> dict:
    """Export, check and (if ``register``) install + register the model and write its card.

    ``latency_runs=0`` skips the latency measurement."""
    offline_ultralytics()
    import cv2
    from ultralytics import YOLO

    wheel_sha = sha256_file(wheel)
    upstream_names = wheel_classes(wheel)
    with tempfile.TemporaryDirectory() as td:
        tdp = Path(td)
        pt = extract(wheel, "basegun_ml/classification.pt", tdp)
        warm = extract(wheel, "basegun_ml/warmup.jpg", tdp)
        pt_sha = sha256_file(pt)
        model = YOLO(str(pt))
        names = [model.names[i] for i in range(len(model.names))]
        if not names == upstream_names == BASEGUN_CLASSES:
            raise SystemExit(f"class order differs: model {names}, basegun CLASSES {upstream_names}, "
                             f"wtivision.taxonomy.TYPOLOGY_CLASSES {BASEGUN_CLASSES}")
        imgsz = int(model.model.args.get("imgsz", 320))
        transforms = check_transforms(model, imgsz)
        claims = upstream_claims(pt)
        onnx_file = Path(model.export(format="onnx", imgsz=imgsz, opset=17, simplify=True, dynamic=False,
                                      device="cpu"))
        staged = tdp / FILE
        onnx_file.replace(staged)
        pin_export_date(staged, claims["date"])
        opset = check_onnx(staged, imgsz, len(names))

        spec = ModelSpec(
            name=NAME, file=FILE, sha256=sha256_file(staged), task="classify", classes=BASEGUN_CLASSES,
            input_size=[imgsz],
            preprocessing={"resize": "shorter side to input_size, PIL bilinear", "crop": "centre",
                           "scale": "1/255", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                           "channel_order": "RGB", "output_softmax": True},
            version=f"basegun-ml {VERSION}", licence="AGPL-3.0",
            source=f"PyPI {PROJECT}=={VERSION} (classification.pt, sha256 {pt_sha}; wheel sha256 {wheel_sha})",
            card="cards/typology-basegun.md", role="typology", default=True,
        )
        reg = Registry(tdp)
        write_manifest_entry(tdp, spec)
        warm_bgr = cv2.imread(str(warm))
        par = parity(ImageClassifier(spec, reg), model, varied_images(warm_bgr, n_parity, seed=20261124))
        result = {**par, "pt_sha256": pt_sha, "wheel_sha256": wheel_sha, "onnx_sha256": spec.sha256,
                  "imgsz": imgsz, "opset": opset, "checkpoint_transforms": transforms, "upstream": claims}
        if par["top1_agreement"] < MIN_AGREEMENT:
            raise SystemExit(f"parity failed: top-1 agreement {par['top1_agreement']} < {MIN_AGREEMENT}: {result}")
        if latency_runs:
            result["latency"] = latency(spec, reg, model, warm_bgr, latency_runs)
        spec.metrics = {"parity_top1_agreement_vs_pytorch": par["top1_agreement"],
                        "parity_max_abs_prob_diff": par["max_abs_prob_diff"], "parity_images": par["n_images"],
                        "upstream_val_top1": claims["val_top1"], "upstream_val_top5": claims["val_top5"]}
        if "latency" in result:
            spec.metrics["latency_ms"] = {k: v for k, v in result["latency"].items() if k.endswith("_ms")}
        if register:
            install_model(staged, spec, models_dir)
            write_card("typology-basegun", card_text(result), models_dir)
    return result


def card_text(r: dict) -> str:
    rows = [[fr, en] for fr, en in TYPOLOGY_CLASSES.items()]
    up, s = r["upstream"], r["imgsz"]
    lat = r.get("latency")
    if lat:
        lat_text = f"""One {lat['crop_hw'][1]}x{lat['crop_hw'][0]} photo (basegun's warm-up image), preprocessing \
included, median of {lat['runs']} runs after one warm-up run, on the build machine ({lat['cpu']}, {lat['cpus']} \
cores, shared with other jobs: 1-minute load average {lat['load_avg_1min_before']} before and \
{lat['load_avg_1min_after']} after, so the 2-thread figures in particular are noisy):

| runtime | 1 thread | 2 threads |
| --- | --- | --- |
| wtivision ONNX (onnxruntime, numpy/PIL preprocessing) | {lat['onnx_1_thread_ms']} ms \
| {lat['onnx_2_thread_ms']} ms |
| ultralytics/PyTorch `YOLO(pt)(PIL image)` | {lat['pytorch_1_thread_ms']} ms | {lat['pytorch_2_thread_ms']} ms |"""
    else:
        lat_text = "Not measured in this run."
    return f"""# Firearm typology classifier (basegun-ml {VERSION}, converted to ONNX)

- **File**: `models/{FILE}` (ONNX opset {r['opset']}, fp32, static input 1x3x{s}x{s} RGB in [0, 1], softmax
  output 1x{len(rows)}; sha256 `{r['onnx_sha256']}`)
- **Source**: PyPI wheel `{PROJECT}=={VERSION}` (sha256 `{r['wheel_sha256']}`), member `basegun_ml/classification.pt`
  (sha256 `{r['pt_sha256']}`): an ultralytics {up['base_model']} fine-tune ({up['epochs']} epochs, imgsz {up['imgsz']},
  ultralytics {up['ultralytics_version']}, dated {up['date']}) by the French Ministry of the Interior's Basegun
  project (https://github.com/datalab-mi/Basegun-ml).
- **Licence**: AGPL-3.0 (the wheel's `LICENSE`). wtivision is AGPL-3.0-or-later to match.
- **Conversion**: `python -m export.basegun [--wheel PATH]` reads the wheel's zip (never imports `basegun_ml`),
  checks the class order against the model's names and basegun's `CLASSES`, checks the checkpoint's own
  inference transforms are the ones wtivision implements, exports with ultralytics (opset 17, static shape,
  onnxslim), measures parity and fails below {MIN_AGREEMENT} top-1 agreement.
- **Used by**: the `typology` step: each firearm box of the detector (or the whole photo when no detector is installed).

## Classes (original French names kept in `original_label`)
{md_table(["basegun class", "wtivision label"], rows)}

## Preprocessing (numpy/PIL, in `wtivision.runtime.ImageClassifier`)
Resize the shorter side to {s} px (PIL bilinear; longer side `int({s} * long / short)`), centre-crop {s}x{s}
(offsets `int(round((side - {s}) / 2))`), RGB, scale to [0, 1], no mean/std. This is the checkpoint's own
transform pipeline, which ultralytics uses at prediction time: `{r['checkpoint_transforms']}`.

## Upstream claims vs what we measured
| | upstream (recorded in the checkpoint) | measured here |
| --- | --- | --- |
| validation top-1 accuracy | {up['val_top1']} (Basegun's own, non-public validation split) \
| not measured: no labelled typology test set yet |
| validation top-5 accuracy | {up['val_top5']} | not measured |
| conversion faithful (top-1 agreement with PyTorch) | — | **{r['top1_agreement']}** on {r['n_images']} images |
| max abs probability difference vs PyTorch | — | {r['max_abs_prob_diff']} |

## Parity with the PyTorch original (measured)
On {r['n_images']} generated images (fixed seed): transformed crops of basegun's warm-up photo (flips, rotations,
colour gains, noise), drawn gun silhouettes, textures, and small or elongated detector-like crops from 24 px to
1200 px sides. wtivision's `ImageClassifier` (ONNX) vs `ultralytics.YOLO(classification.pt)(PIL image)` as basegun
calls it. No real firearm photo corpus was available, so this shows the conversion and preprocessing are faithful,
not that the model is accurate.

- top-1 agreement: **{r['top1_agreement']}** (export fails below {MIN_AGREEMENT})
- max absolute probability difference: {r['max_abs_prob_diff']}

## Latency
{lat_text}

## Known limits
- Trained on photos of civilian firearms handed in to French police services (whole weapon, mostly
  side view, catalogue-like, indoor); battlefield photos, partial views, weapons in piles, in hands or on
  vehicles are out of its distribution. Whole-weapon images are expected: a crop of a receiver or a muzzle
  gets an arbitrary class.
- Military automatic weapons have no class of their own (closest: the military-style semi-automatic classes);
  launchers, machine guns and ammunition are not firearm typologies here.
- It always answers one of 12 classes, even for an image with no weapon: check the confidence (basegun's own
  levels: < 0.76 low, < 0.98 medium, else high) and the detector's label.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help=f"path to {PROJECT}-{VERSION} wheel (default: cache or pip download)")
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--n-parity", type=int, default=240)
    ap.add_argument("--latency-runs", type=int, default=50, help="0 skips the latency measurement")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    wheel = args.wheel or find_wheel(PROJECT, VERSION)
    r = convert(wheel, args.models_dir, args.n_parity, latency_runs=args.latency_runs)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
