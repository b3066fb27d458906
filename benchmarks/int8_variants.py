"""Post-training int8 variants of a shipped detector: agreement with fp32 and latency, side by side.

    python -m benchmarks.int8_variants --data runs/data/detector-v1.3 [--model detector-v1.3]
        [--variants minmax,percentile,head_fp32,backbone_fp32] [--images 200]

Each variant is quantised as ``python -m export.onnx --int8`` does (static QDQ, per-channel int8 weights, uint8
activations, the head's decode in fp32), with another calibration method or with some modules kept in fp32,
then compared with the fp32 model on the dataset's test images by the export's own rule (>= 0.98 of fp32
detections matched at conf 0.25 and 0.1). For every fp32 detection the int8 model misses, the score of the
int8 model's best box on the same object (same class, IoU >= 0.5, any score) is recorded: misses just under
the threshold are score jitter, misses with no box at all are lost objects. Writes docs/int8-variants.md/.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine

REPO = Path(__file__).resolve().parents[1]

# name -> (calibration images, calibration method, ultralytics modules kept in fp32 or None[, head output
# convolutions kept in fp32])
VARIANTS: dict[str, tuple] = {
    "minmax": (32, "MinMax", None),  # what export.onnx --int8 ships
    "minmax_200": (200, "MinMax", None),
    "percentile": (100, "Percentile", None),  # histograms of 200 images need > 20 GB
    "head_fp32": (32, "MinMax", (22, 22)),
    "neck_head_fp32": (32, "MinMax", (10, 22)),
    "backbone_fp32": (32, "MinMax", (0, 9)),
    "stem_fp32": (32, "MinMax", (0, 2)),
    "head_out_fp32": (32, "MinMax", None, True),  # logits / box distributions unclipped
    "head_out_fp32_200": (200, "MinMax", None, True),
}


def missed_scores(fp32, q, images: list[np.ndarray], conf: float = 0.25) -> list[tuple[float, float]]:
    """(fp32 score, best int8 score on the same object or 0) for each fp32 detection at ``conf`` that the
    int8 model does not report at ``conf``."""
    from wtivision.ops import box_iou

    fp32.conf_threshold, q.conf_threshold = conf, 0.01
    out = []
    for im in images:
        other = q.detect(im)
        for d in fp32.detect(im):
            cands = [e for e in other if e.label == d.label]
            best = 0.0
            if cands:
                ious = box_iou(np.array([d.box]), np.array([e.box for e in cands]))[0]
                hits = [c.confidence for c, v in zip(cands, ious) if v >= 0.5]
                best = max(hits, default=0.0)
            if best < conf:
                out.append((round(d.confidence, 3), round(best, 3)))
    fp32.conf_threshold = q.conf_threshold = 0.25
    return sorted(out)


def run(model: str | None, data: Path, names: list[str], n_images: int, latency: bool = True,
        models_dir: Path = REPO / "models") -> dict:
    from export.common import latency_ms
    from export.onnx import int8_good_enough, int8_report, quantize_int8, sample_images, stage
    from wtivision.registry import ModelSpec, Registry

    reg = Registry(models_dir)
    spec = reg.get(model) if model else reg.default_for("detector")
    check = sample_images(_images_dir(data, "test"), n_images, seed=2, top_up=False)
    out: dict = {"model": spec.name, "sha256": spec.sha256, "data": str(data), "images": len(check),
                 "machine": machine(), "variants": {}}
    with tempfile.TemporaryDirectory() as td:
        fp32_path = Path(td) / spec.file
        fp32_path.write_bytes((reg.root / spec.file).read_bytes())
        runner = stage(ModelSpec(**spec.to_dict()), fp32_path)
        out["fp32_latency_ms"] = latency_ms(runner.detect, check) if latency else None
        for name in names:
            n_calib, method, keep, *rest = VARIANTS[name]
            head_out = bool(rest and rest[0])
            calib = sample_images(_images_dir(data, "train"), n_calib, seed=1)
            qpath = quantize_int8(fp32_path, runner, calib, Path(td) / f"{name}.onnx", method, keep, head_out)
            q = stage(ModelSpec(**{**spec.to_dict(), "name": name, "file": qpath.name, "precision": "int8"}), qpath)
            rep = int8_report(runner, q, check)
            if not latency:  # measured while something else loads the CPU: times would mislead
                rep["latency_ms"] = None
            rep.update(calibration=f"{method}, {n_calib} train images", fp32_modules=keep, fp32_head_outputs=head_out,
                       ships=int8_good_enough(rep),
                       latency_vs_fp32=round(rep["latency_ms"] / out["fp32_latency_ms"], 2) if latency else None,
                       missed_at_0_25=missed_scores(runner, q, check))
            out["variants"][name] = rep
            logging.getLogger(__name__).info("%s: %s", name, json.dumps(rep["agreement"]))
    return out


def _images_dir(data: Path, split: str) -> Path:
    d = data / "images" / split
    if not d.is_dir():
        raise SystemExit(f"no {split} images under {data} (expected {d})")
    return d


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# int8 variants of {r['model']}", "",
             f"`python -m benchmarks.int8_variants --data {r['data']}`; {r['images']} test images; machine: "
             f"{m.get('cpu', '?')}, {m.get('cores', '?')} CPUs. fp32: "
             + (f"{r['fp32_latency_ms']} ms per image." if r["fp32_latency_ms"] is not None
                else "latency not measured (`--no-latency`: the machine was busy)."), "",
             "| variant | calibration | fp32 modules | agreement @0.25 | @0.1 | top10 | ms | x fp32 "
             "| meets 0.98 rule |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in r["variants"].items():
        a = v["agreement"]
        keep = "decode" if v["fp32_modules"] is None else f"decode + {v['fp32_modules'][0]}-{v['fp32_modules'][1]}"
        keep += " + output convs" if v.get("fp32_head_outputs") else ""
        lines.append(f"| {name} | {v['calibration']} | {keep} | {a['conf_0.25']} | {a['conf_0.1']} | "
                     f"{a['conf_top10']} | {v['latency_ms'] or '-'} | {v['latency_vs_fp32'] or '-'} | "
                     f"{'yes' if v['ships'] else 'no'} |")
    lines += ["", "Misses at conf 0.25 (fp32 score -> best int8 score on the same object, 0 = no box; any int8 box "
              "counts here, not one-to-one as in the agreement, so a list can be shorter than the agreement "
              "implies):", ""]
    for name, v in r["variants"].items():
        lines.append(f"- {name}: " + (", ".join(f"{a} -> {b}" for a, b in v["missed_at_0_25"]) or "none"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.int8_variants", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="dataset folder with images/train and images/test")
    ap.add_argument("--model", help="detector name in models/manifest.json (default: the default detector)")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models",
                    help="folder with manifest.json (default: models/; e.g. an unshipped export in runs/)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--images", type=int, default=200, help="test images for agreement (default 200)")
    ap.add_argument("--no-latency", action="store_true",
                    help="report agreement only (when the machine is busy with something else)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "int8-variants")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = [v for v in a.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    r = run(a.model, a.data, names, a.images, latency=not a.no_latency, models_dir=a.models_dir)
    a.out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    a.out.with_suffix(".md").write_text(to_markdown(r), encoding="utf-8")
    print(to_markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
