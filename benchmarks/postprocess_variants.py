"""Post-processing variants of a shipped detector, by torch-free AP50 on labelled test sets.

    python -m benchmarks.postprocess_variants --model detector-v1.7 [--models-dir DIR] \
        [--variants aware,agnostic,flip] \
        --set clean346=runs/data/detector-v1.3:runs/data/detector-v1.3/leaks.csv \
        --set heldout=runs/data/heldout-elgarh --set pfm1=runs/data/external-pfm1

Variants (same ONNX model, same thresholds; only what is done with its raw output changes):

- ``aware``: per-class NMS, what ``YoloDetector`` ships (and what ultralytics does);
- ``agnostic``: one NMS over all classes, so that a gun boxed both as ``pistol`` and ``rifle`` keeps one box;
- ``flip``: test-time augmentation: the raw candidates of the photo and of its mirror image (boxes mirrored
  back), one NMS over the union; twice the time.

A set is ``NAME=DATASET[:EXCLUDE]`` (a YOLO folder with ``images/test``; EXCLUDE an image list such as
``--audit``'s leaks.csv). Prints one line per variant and set; ``--json`` keeps the evaluations.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("aware", "agnostic", "flip")


def variant_detector(spec, registry, mode: str):
    """A ``YoloDetector`` whose whole-image pass is post-processed as ``mode`` says."""
    from wtivision.ops import scale_boxes, yolo_postprocess
    from wtivision.runtime import YoloDetector

    if mode not in VARIANTS:
        raise ValueError(f"unknown variant {mode!r}; known: {', '.join(VARIANTS)}")

    class Variant(YoloDetector):
        def boxes(self, image_bgr: np.ndarray):
            out, r, pad = self.raw(image_bgr)
            if mode == "flip":
                mirrored, _, _ = self.raw(np.ascontiguousarray(image_bgr[:, ::-1]))
                mirrored = mirrored.copy()
                # letterboxing pads both sides alike, so a mirrored box centre is input width - x (within 1 px)
                mirrored[0, 0] = self.input_hw[1] - mirrored[0, 0]
                out = np.concatenate([out, mirrored], axis=2)
            b, s, c = yolo_postprocess(out, self.conf_threshold, self.iou_threshold, self.max_det,
                                       agnostic=mode == "agnostic", classes=self.class_filter)
            return scale_boxes(b, r, pad, image_bgr.shape[:2]), s, c

    return Variant(spec, registry, conf_threshold=0.001)


def main(argv: list[str] | None = None) -> int:
    from wtivision.evaluate import evaluate_detector, read_image_list
    from wtivision.registry import Registry

    ap = argparse.ArgumentParser(prog="python -m benchmarks.postprocess_variants", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="detector name (default: the default detector)")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--set", action="append", required=True, metavar="NAME=DATASET[:EXCLUDE]", help="repeatable")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    reg = Registry(a.models_dir)
    spec = reg.get(a.model) if a.model else reg.default_for("detector")
    if spec is None:
        ap.error("no detector in the manifest")
    sets = {}
    for s in a.set:
        name, sep, rest = s.partition("=")
        if not sep:
            ap.error(f"--set {s!r}: expected NAME=DATASET[:EXCLUDE]")
        root, _, exclude = rest.partition(":")
        sets[name] = (root, read_image_list(exclude) if exclude else [])
    results = {}
    for mode in [v for v in a.variants.split(",") if v]:
        det = variant_detector(spec, reg, mode)
        for name, (root, exclude) in sets.items():
            ev = evaluate_detector(det, root, "test", exclude=exclude)
            results[f"{mode}|{name}"] = ev.to_dict()
            aps = {k: round(v, 3) for k, v in ev.per_class_ap50().items()}
            print(f"{spec.name} {mode:8s} {name}: {ev.images} images, AP50 {aps}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
