"""Side-by-side performance benchmarks; writes docs/benchmarks.md and docs/benchmarks.json.

    python -m benchmarks.run [--quick] [--photos 300] [--scaling 100,300,1000]

Sections (each is skipped with the reason when what it needs is not installed):
1. detector latency: wtivision ONNX fp32/int8 vs the same weights in ultralytics/PyTorch, at 640 and 320;
2. firearm typology: our ONNX classifier vs basegun-ml's model through ultralytics (latency, top-1 agreement);
3. OCR: ms per crop of the onnxruntime OCR, and PaddleOCR on Paddle Inference on the same crops when
   WTIVISION_PADDLE_PYTHON names a Python with paddlepaddle + rapidocr_paddle (see benchmarks/ocr_paddle.py);
4. full `wtivision scan`: photos/s with 1 and 2 workers, peak RSS, cold start;
5. scaling: time and peak RSS from 100 to 1000 photos.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import generated_photos, machine, run_measured, stats_ms, time_calls

REPO = Path(__file__).resolve().parents[1]


def _load_bgr(paths):
    import cv2

    return [cv2.imread(str(p)) for p in paths]


def _fp32_reference(reg, spec):
    """The fp32 detector ``spec`` is the int8 twin of (manifest ``extra.int8_of``), else ``spec`` itself."""
    of = (spec.extra or {}).get("int8_of")
    return reg.get(of) if spec.precision == "int8" and of else spec


def _detector_pt(reg, spec) -> Path | None:
    src = spec.extra.get("pytorch_weights") if spec.extra else None
    if src and (reg.root / src).is_file():
        return reg.root / src
    return None


def bench_detector(images, reg, repeat: int) -> dict:
    from wtivision.registry import ModelSpec
    from wtivision.runtime import RuntimeOptions, YoloDetector

    out: dict = {}
    default = reg.default_for("detector")
    if default is None:
        return {"skipped": "no default detector in the manifest"}
    # an int8 default: its fp32 model gives the fp32, 640 px and PyTorch rows
    spec = _fp32_reference(reg, default)
    wide = [im for im in images if im.shape[1] * 3 == im.shape[0] * 4]  # the 4:3 photos (camera photos)
    variants = [s for s in reg.specs() if s.task == "detect" and s.role == "detector"]
    for s in variants:
        det = YoloDetector(s, reg, RuntimeOptions())
        # another detector of the manifest (e.g. a kept int8 model of an earlier version) is named in its row
        key = f"onnx_{s.precision}_{s.input_size[0]}" + ("" if s.name in (spec.name, default.name) else f"_{s.name}")
        out[key] = stats_ms(time_calls(det.detect, images, repeat=repeat))
        if s.name == default.name:  # `--tiles`: the whole photo + crops at twice the scale (6 for a 4:3 photo)
            out[f"{key}_tiled"] = stats_ms(
                time_calls(lambda im, d=det: d.detect(im, tiles=True), images, repeat=repeat))
            if s is not spec and wide and s.preprocessing.get("rect_stride"):
                out[f"{key}_4:3"] = stats_ms(time_calls(det.detect, wide, repeat=repeat))
    if spec.preprocessing.get("rect_stride"):
        # a dynamic input: the same file fed the full square (as a static export is), and at 640; "_4:3" rows
        # time the 4:3 photos of the set only (camera photos), the others all photos
        square = {k: v for k, v in spec.preprocessing.items() if k != "rect_stride"}
        for key, variant in ((f"onnx_{spec.precision}_{spec.input_size[0]}", spec),
                             (f"onnx_{spec.precision}_{spec.input_size[0]}_square",
                              ModelSpec(**{**spec.to_dict(), "preprocessing": square})),
                             (f"onnx_{spec.precision}_640_rect",
                              ModelSpec(**{**spec.to_dict(), "input_size": [640, 640]}))):
            det = YoloDetector(variant, reg, RuntimeOptions())
            if variant is not spec:
                out[key] = stats_ms(time_calls(det.detect, images, repeat=repeat))
            if wide:
                out[f"{key}_4:3"] = stats_ms(time_calls(det.detect, wide, repeat=repeat))
    pt = _detector_pt(reg, spec)
    if pt is None:
        out["pytorch"] = "skipped: no PyTorch weights recorded for the detector (manifest extra.pytorch_weights)"
        return out
    try:
        from ultralytics import YOLO
    except ImportError:
        out["pytorch"] = "skipped: ultralytics not installed (pip install 'wtivision[train]')"
        return out
    model = YOLO(str(pt))
    for size in (640, 320):
        out[f"pytorch_fp32_{size}"] = stats_ms(time_calls(
            lambda im, s=size: model.predict(im, imgsz=s, device="cpu", verbose=False), images, repeat=repeat))
        key = f"onnx_fp32_{size}"
        if key not in out:  # export this size on the fly for the comparison
            with tempfile.TemporaryDirectory() as td:
                f = YOLO(str(pt)).export(format="onnx", imgsz=size, opset=17, simplify=False, dynamic=False)
                tmp = Path(td) / "m.onnx"
                Path(f).replace(tmp)
                from wtivision.registry import Registry, sha256_file

                local = Registry(td)
                s = ModelSpec(name="tmp", file="m.onnx", sha256=sha256_file(tmp), task="detect",
                              classes=spec.classes, input_size=[size, size])
                det = YoloDetector(s, local, RuntimeOptions())
                out[key] = stats_ms(time_calls(det.detect, images, repeat=repeat))
        out[f"speedup_{size}"] = round(out[f"pytorch_fp32_{size}"]["median_ms"] / out[key]["median_ms"], 2)
    return out


def _basegun_wheel() -> Path | None:
    for d in (os.environ.get("WTIVISION_WHEEL_CACHE", ""), str(REPO / ".cache" / "wheels"), "/tmp/dl"):
        if d:
            hits = sorted(Path(d).glob("basegun_ml-*.whl"))
            if hits:
                return hits[-1]
    return None


def bench_typology(images, reg, repeat: int) -> dict:
    from wtivision.runtime import ImageClassifier, RuntimeOptions

    spec = reg.default_for("typology")
    if spec is None:
        return {"skipped": "no typology model in the manifest"}
    clf = ImageClassifier(spec, reg, RuntimeOptions())
    out = {"onnx": stats_ms(time_calls(clf.probabilities, images, repeat=repeat))}
    wheel = _basegun_wheel()
    try:
        from ultralytics import YOLO
    except ImportError:
        out["pytorch"] = "skipped: ultralytics not installed"
        return out
    if wheel is None:
        out["pytorch"] = ("skipped: basegun-ml wheel not found "
                          "(pip download basegun-ml==2.0.7 --no-deps -d .cache/wheels)")
        return out
    import zipfile

    from PIL import Image

    with tempfile.TemporaryDirectory() as td:
        with zipfile.ZipFile(wheel) as z:
            pt = Path(td) / "classification.pt"
            pt.write_bytes(z.read("basegun_ml/classification.pt"))
        model = YOLO(str(pt))
        pil = [Image.fromarray(im[:, :, ::-1]) for im in images]
        out["pytorch"] = stats_ms(time_calls(lambda im: model(im, verbose=False), pil, repeat=repeat))
        agree = 0
        for im, p in zip(images, pil):
            a = int(np.argmax(clf.probabilities(im)))
            b = int(model(p, verbose=False)[0].probs.top1)
            agree += a == b
        out["top1_agreement"] = round(agree / len(images), 4)
        out["n_images"] = len(images)
    out["speedup"] = round(out["pytorch"]["median_ms"] / out["onnx"]["median_ms"], 2)
    return out


def bench_ocr(reg) -> dict:
    ocr_bench = REPO / "benchmarks" / "ocr.py"
    if reg.default_for("ocr_rec") is None or not ocr_bench.is_file():
        return {"skipped": "no OCR models or benchmarks/ocr.py"}
    res = subprocess.run([sys.executable, "-m", "benchmarks.ocr", "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=1800)
    if res.returncode != 0:
        return {"error": res.stderr[-1000:]}
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"output": res.stdout[-1000:]}


def _scan(folder: Path, out: Path, workers: int, extra: list[str] | None = None) -> dict:
    cmd = [sys.executable, "-m", "wtivision", "scan", str(folder), "--out", str(out), "-q",
           "--workers", str(workers), *(extra or [])]
    r = run_measured(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})
    summary = json.loads((out / "scan.json").read_text())["summary"] if (out / "scan.json").exists() else {}
    return {"wall_s": r["seconds"], "peak_rss_mib": r["peak_rss_mib"], "returncode": r["returncode"],
            "photos": summary.get("files"), "analyzed": summary.get("analyzed"),
            "photos_per_s_wall": round((summary.get("analyzed") or 0) / r["seconds"], 2) if r["seconds"] else 0,
            "objects": summary.get("objects")}


def bench_scan(photos_dir: Path, workdir: Path) -> dict:
    out = {}
    for w in (1, 2):
        out[f"workers_{w}"] = _scan(photos_dir, workdir / f"scan_w{w}", w)
    # detection + typology only: what the scan costs where OCR runs only on marking boxes and the detector
    # has no marking class (detector v1.1); the runs above also read every photo in which nothing was detected
    out["workers_2_no_ocr"] = _scan(photos_dir, workdir / "scan_w2_no_ocr", 2, ["--no-ocr"])
    # the worst case found so far: dense texture and nothing to detect, so every photo gets the whole-photo OCR
    # and the case-head search (6.5 s per 2048x1536 photo before that search was bounded, 2026-11-30)
    texture = workdir / "texture_photos"
    generated_photos(texture, 20, seed=7)
    out["workers_1_texture_only"] = _scan(texture, workdir / "scan_texture", 1)
    code = ("import time;t=time.perf_counter();import wtivision;from wtivision import Analyzer;"
            "a=Analyzer();import numpy as np;a.analyze(np.zeros((480,640,3),np.uint8));"
            "print(round(time.perf_counter()-t,3))")
    cold = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        cold.append(float(r.stdout.strip().splitlines()[-1]))
    out["cold_start_s"] = {"runs": cold, "median": float(np.median(cold)),
                           "what": "python start excluded: import + model load (SHA-256 checks) + first analysis"}
    return out


def bench_scaling(sources: list[Path], workdir: Path, sizes: list[int]) -> dict:
    out = {}
    for n in sizes:
        folder = workdir / f"scale_{n}"
        generated_photos(folder, n, w=1280, h=960, seed=n, sources=sources)
        r = _scan(folder, workdir / f"scale_out_{n}", 1)
        r["ms_per_photo"] = round(1000 * r["wall_s"] / n, 1)
        out[str(n)] = r
    return out


def to_markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# wtivision benchmarks", "",
             f"Generated by `python -m benchmarks.run {res['args']}` on {res['date']}.", "",
             "## Machine", "", "| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in m.items()]
    if res.get("models"):
        lines += ["", "## Default models measured (sections reused with --keep-skipped keep their own date and "
                  "processor)", "",
                  "| model | task | version | sha256 |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['name']} | {r['task']} | {r['version']} | `{r['sha256'][:16]}` |" for r in res["models"]]

    def table(title: str, d: dict) -> None:
        lines.extend(["", f"## {title}", ""])
        if not isinstance(d, dict):
            lines.append(str(d))
            return
        rows = [(k, v) for k, v in d.items()]
        lines.extend(["| item | median ms | p90 ms | per s | n |", "| --- | --- | --- | --- | --- |"])
        for k, v in rows:
            if isinstance(v, dict) and "median_ms" in v:
                lines.append(f"| {k} | {v['median_ms']} | {v['p90_ms']} | {v['per_s']} | {v['n']} |")
        others = [(k, v) for k, v in rows if not (isinstance(v, dict) and "median_ms" in v)]
        for k, v in others:
            lines.append(f"- **{k}**: `{json.dumps(v)}`")

    table("1. Detector latency per image", res["detector"])
    table("2. Firearm typology classifier", res["typology"])
    table("3. OCR", res["ocr"])
    table("4. Full scan", res["scan"])
    table("5. Scaling", res["scaling"])
    lines += ["", "## Targets", ""] + [f"- {t}" for t in res.get("targets", [])]
    return "\n".join(lines) + "\n"


def evaluate_targets(res: dict) -> list[str]:
    t = []
    det = res["detector"]
    for size in (640, 320):
        sp = det.get(f"speedup_{size}") if isinstance(det, dict) else None
        if sp is not None:
            t.append(f"ONNX detector ≥ 2x faster than ultralytics/PyTorch at {size}: {sp}x — "
                     f"{'met' if sp >= 2 else 'MISSED'}")
    sc = res["scan"]
    if isinstance(sc, dict) and "workers_2" in sc:
        best = max(sc["workers_1"]["photos_per_s_wall"], sc["workers_2"]["photos_per_s_wall"])
        t.append(f"full scan ≥ 4 photos/s on this machine (with whole-photo OCR of photos where nothing was "
                 f"detected): {best} — {'met' if best >= 4 else 'MISSED'}")
        if "workers_2_no_ocr" in sc:
            v = sc["workers_2_no_ocr"]["photos_per_s_wall"]
            t.append(f"scan ≥ 4 photos/s with detection and typology only: {v} — {'met' if v >= 4 else 'MISSED'}")
        rss = max(sc["workers_1"]["peak_rss_mib"], sc["workers_2"]["peak_rss_mib"])
        t.append(f"peak RSS ≤ 1.5 GB: {rss} MiB — {'met' if rss <= 1536 else 'MISSED'}")
        cs = sc["cold_start_s"]["median"]
        t.append(f"cold start ≤ 2 s: {cs} s — {'met' if cs <= 2 else 'MISSED'}")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=200, help="generated photos for the scan benchmark")
    ap.add_argument("--scaling", default="100,300,1000", help="photo counts for the scaling benchmark")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="where generated photos and scans go (default: temp)")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--skip", default="", help="comma list of sections to skip: detector,typology,ocr,scan,scaling")
    ap.add_argument("--keep-skipped", action="store_true",
                    help="skipped sections keep their figures from the existing JSON (marked with their date)")
    args = ap.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    skip = set(filter(None, args.skip.split(",")))

    from wtivision.registry import Registry

    reg = Registry()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wtiv-bench-"))
    examples = sorted(p for p in (REPO / "examples").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    gen = generated_photos(workdir / "photos", args.photos, seed=1, sources=examples)
    bench_imgs = _load_bgr(examples + gen[: max(0, 40 - len(examples))])
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": " ".join(argv or sys.argv[1:]),
           "machine": machine(),
           "photos": {"examples": len(examples), "generated": len(gen), "generated_size": "2048x1536 JPEG q90"},
           "models": [s.ref().to_dict() for s in reg.specs() if s.default]}
    out = Path(args.out)
    previous = {}
    if args.keep_skipped and out.with_suffix(".json").is_file():
        previous = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))

    def skipped(section: str) -> object:
        prev = previous.get(section, "skipped")
        if not isinstance(prev, dict):
            return prev
        # a section reused twice keeps the date and the processor it was really measured on
        return {**prev, "measured": prev.get("measured") or previous.get("date", ""),
                "measured_on": prev.get("measured_on") or previous.get("machine", {}).get("cpu", "")}

    res["detector"] = bench_detector(bench_imgs, reg, args.repeat) if "detector" not in skip else skipped("detector")
    res["typology"] = bench_typology(bench_imgs, reg, args.repeat) if "typology" not in skip else skipped("typology")
    res["ocr"] = bench_ocr(reg) if "ocr" not in skip else skipped("ocr")
    res["scan"] = bench_scan(workdir / "photos", workdir) if "scan" not in skip else skipped("scan")
    sizes = [int(s) for s in args.scaling.split(",") if s]
    res["scaling"] = bench_scaling(examples, workdir, sizes) if "scaling" not in skip else skipped("scaling")
    res["targets"] = evaluate_targets(res)
    out.write_text(to_markdown(res), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
