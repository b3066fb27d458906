"""Export a trained detector run to ONNX for the wtivision runtime, with parity checks and a model card.

    python -m export.onnx RUN_DIR [--int8] [--name NAME] [--default] [--models-dir models] [--data DIR]

- fp32 ONNX (opset 17, static 1x3xSxS) with metadata (class names, input size, task, version, dataset
  manifest hash), simplified with onnxslim;
- parity: the export FAILS if the ONNX raw outputs differ from PyTorch beyond ``--atol`` or if
  wtivision's boxes differ from ultralytics' by more than 1 px / scores by more than 1e-3;
- ``--int8``: static QDQ quantisation calibrated on training-split images, with its agreement with fp32
  (fraction of fp32 detections matched at IoU 0.5 with the same class) and its latency;
- a model card in models/cards/ with per-class AP on the test split, and manifest registration.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from export.common import MODELS_DIR, install_model, md_table, offline_ultralytics, write_card
from wtivision.ops import box_iou
from wtivision.registry import ModelSpec, Registry, sha256_file, write_manifest_entry
from wtivision.runtime import RuntimeOptions, YoloDetector
from wtivision.taxonomy import LABELS

logger = logging.getLogger(__name__)


class ParityError(RuntimeError):
    pass


def _images(folder: Path | None, n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    import cv2

    out = []
    if folder is not None and folder.is_dir():
        for p in sorted(folder.glob("*"))[:n]:
            im = cv2.imread(str(p))
            if im is not None:
                out.append(im)
    if len(out) < n:
        from datasets.synth.scenes import scene

        rng = np.random.default_rng(seed)
        out += [scene(rng, size)[0] for _ in range(n - len(out))]
    return out


def _stage(spec: ModelSpec, path: Path) -> tuple[YoloDetector, Path]:
    d = path.parent
    spec.sha256 = sha256_file(path)
    write_manifest_entry(d, spec)
    return YoloDetector(spec, Registry(d), RuntimeOptions(), conf_threshold=spec.extra.get("conf", 0.25)), d


def _gap_threshold(raw: np.ndarray, min_boxes: int = 10, rel_gap: float = 0.02) -> float:
    """A confidence threshold that lets at least ``min_boxes`` candidates through and lies in a gap of at
    least ``rel_gap`` (relative) between candidate scores, so rounding differences between runtimes cannot
    move a box across it."""
    scores = np.sort(raw[0, 4:].max(axis=0))[::-1]
    for k in range(min_boxes, len(scores)):
        if scores[k - 1] - scores[k] > rel_gap * scores[k - 1]:
            return float((scores[k - 1] + scores[k]) / 2)
    return float(scores[-1]) / 2


def _compare(det: YoloDetector, im: np.ndarray, result) -> tuple[int, float, float]:
    """Match wtivision's detections on ``im`` with an ultralytics Results object: (n, max box diff, max
    score diff). Raises ParityError when the sets differ."""
    ours = det.detect(im)
    tb = result.boxes.xyxy.cpu().numpy()
    ts = result.boxes.conf.cpu().numpy()
    tl = [det.spec.classes[int(c)] for c in result.boxes.cls.cpu().numpy()]
    if len(ours) != len(tb):
        raise ParityError(f"ultralytics found {len(tb)} boxes, wtivision {len(ours)} (conf {det.conf_threshold})")
    box_diff = score_diff = 0.0
    for d in ours:
        cands = [i for i, lab in enumerate(tl) if lab == d.label]
        if not cands:
            raise ParityError(f"no ultralytics box of class {d.label}")
        diffs = [float(np.abs(np.array(d.box) - tb[i]).max()) for i in cands]
        i = cands[int(np.argmin(diffs))]
        box_diff = max(box_diff, min(diffs))
        score_diff = max(score_diff, abs(d.confidence - float(ts[i])))
    return len(ours), box_diff, score_diff


def check_parity(pt_model, det: YoloDetector, images: list[np.ndarray], imgsz: int, atol: float = 1e-3) -> dict:
    """Parity of the export, in two parts that must both hold:

    1. the ONNX graph's raw output equals the PyTorch model's on the same input tensor (max abs diff
       ``atol`` relative to the output's scale);
    2. wtivision's detections (numpy letterbox, NMS, rescale) equal ultralytics' predictions with the same
       ONNX graph on the same image: every box within 1 px, every score within 1e-3.

    For each image the confidence threshold is set in a gap of the score distribution with at least ten
    candidates above it, so even an untrained model yields boxes to compare. (Comparing detections of the
    PyTorch model directly is ill-conditioned for weak models, whose candidate scores tie to 1e-4: the
    ~1e-5 numeric differences of two runtimes then reorder NMS. Part 1 covers that difference.)
    """
    import torch
    from ultralytics import YOLO

    onnx_model = YOLO(str(det.path), task="detect")
    raw_diff = box_diff = score_diff = 0.0
    n_boxes = 0
    scale = 1.0
    net = pt_model.model.eval()
    keep_conf = det.conf_threshold
    try:
        for im in images:
            x, _, _ = det.preprocess(im)
            with torch.no_grad():
                y = net(torch.from_numpy(x))
            y = (y[0] if isinstance(y, (list, tuple)) else y).numpy()
            onnx_raw = det.run(x)[0]
            raw_diff = max(raw_diff, float(np.abs(y - onnx_raw).max()))
            scale = max(scale, float(np.abs(y).max()) / 100)
            det.conf_threshold = conf = _gap_threshold(onnx_raw)
            res = onnx_model.predict(im, imgsz=imgsz, conf=conf, iou=det.iou_threshold, device="cpu",
                                     verbose=False)[0]
            n, bd, sd = _compare(det, im, res)
            n_boxes += n
            box_diff, score_diff = max(box_diff, bd), max(score_diff, sd)
    finally:
        det.conf_threshold = keep_conf
    r = {"images": len(images), "boxes_compared": n_boxes, "max_raw_output_diff_vs_pytorch": raw_diff,
         "max_box_diff_px_vs_ultralytics": round(box_diff, 4), "max_score_diff_vs_ultralytics": round(score_diff, 6)}
    if raw_diff > atol * scale or box_diff > 1.0 or score_diff > 1e-3:
        raise ParityError(f"export differs beyond tolerance: {r}")
    return r


def agreement(ref: YoloDetector, other: YoloDetector, images: list[np.ndarray]) -> float:
    """Fraction of ``ref`` detections matched by ``other`` (IoU >= 0.5, same label)."""
    total = matched = 0
    for im in images:
        a, b = ref.detect(im), other.detect(im)
        total += len(a)
        used: set[int] = set()
        for d in a:
            best, bi = 0.0, -1
            for j, e in enumerate(b):
                if j in used or e.label != d.label:
                    continue
                iou = float(box_iou([d.box], [e.box])[0, 0])
                if iou > best:
                    best, bi = iou, j
            if best >= 0.5:
                matched += 1
                used.add(bi)
    return matched / total if total else 1.0


def latency_ms(det: YoloDetector, images: list[np.ndarray], n: int = 20) -> float:
    det.detect(images[0])
    ts = []
    for im in (images * (n // max(len(images), 1) + 1))[:n]:
        t0 = time.perf_counter()
        det.detect(im)
        ts.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(ts), 2)


def quantize_int8(fp32: Path, det: YoloDetector, calib: list[np.ndarray], out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            im = next(self.it, None)
            return None if im is None else {det.session.get_inputs()[0].name: det.preprocess(im)[0]}

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    # keep the detection head's decode (the last Concat/Mul/Sigmoid nodes) in fp32 for box precision
    import onnx

    g = onnx.load(str(pre)).graph
    tail = [n.name for n in g.node[-12:]]
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=tail)
    pre.unlink(missing_ok=True)
    return out


def per_class_metrics(pt_model, data_yaml: Path | None, imgsz: int) -> dict:
    if data_yaml is None or not data_yaml.is_file():
        return {}
    m = pt_model.val(data=str(data_yaml), split="test", imgsz=imgsz, device="cpu", plots=False, verbose=False)
    names = pt_model.names
    out = {"mAP50": round(float(m.box.map50), 4), "mAP50-95": round(float(m.box.map), 4), "per_class_AP50": {}}
    for i, c in enumerate(m.box.ap_class_index):
        out["per_class_AP50"][names[int(c)]] = round(float(m.box.ap50[i]), 4)
    return out


def export_run(run_dir: Path, models_dir: Path = MODELS_DIR, name: str | None = None, int8: bool = False,
               default: bool = False, data: Path | None = None, n_parity: int = 8, version: str = "1") -> dict:
    offline_ultralytics()
    import onnx
    from ultralytics import YOLO

    pt = run_dir / "weights" / "best.pt"
    if not pt.is_file():
        pt = run_dir / "weights" / "last.pt"
    model = YOLO(str(pt))
    names = [model.names[i] for i in range(len(model.names))]
    unknown = [n for n in names if n not in LABELS]
    if unknown:
        raise SystemExit(f"model classes not in the taxonomy: {unknown}")
    imgsz = int(model.model.args.get("imgsz", 640))
    run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    manifest_hash = run_info.get("dataset_manifest_sha256", "")
    name = name or f"detector-{run_dir.name}"
    data_dir = data
    if data_dir is None and (run_dir / "args.yaml").is_file():
        import yaml

        dy = Path(yaml.safe_load((run_dir / "args.yaml").read_text()).get("data", ""))
        data_dir = dy.parent if dy.is_file() else None
    data_yaml = data_dir / "data.yaml" if data_dir else None
    result: dict = {"name": name, "imgsz": imgsz, "classes": names}
    with tempfile.TemporaryDirectory() as td:
        tdp = Path(td)
        src = Path(model.export(format="onnx", imgsz=imgsz, opset=17, simplify=True, dynamic=False, device="cpu"))
        fp32 = tdp / f"{name}.onnx"
        m = onnx.load(str(src))
        for k, v in {"wtivision_classes": json.dumps(names), "wtivision_input_size": str(imgsz),
                     "wtivision_task": "detect", "wtivision_version": version,
                     "wtivision_dataset_manifest_sha256": manifest_hash}.items():
            m.metadata_props.add(key=k, value=v)
        onnx.save(m, str(fp32))
        spec = ModelSpec(name=name, file=fp32.name, sha256="", task="detect", classes=names,
                         input_size=[imgsz, imgsz], preprocessing={"letterbox": True, "pad_value": 114,
                                                                   "scale": "1/255", "channel_order": "RGB"},
                         version=version, licence="AGPL-3.0-or-later", card=f"cards/{name}.md",
                         source=f"trained by wtivision training/ (run {run_dir.name}); dataset manifest "
                                f"sha256 {manifest_hash or 'n/a'}", role="detector", default=default,
                         extra={"dataset_manifest_sha256": manifest_hash})
        det, _ = _stage(spec, fp32)
        test_dir = data_dir / "images" / "test" if data_dir else None
        imgs = _images(test_dir, n_parity, imgsz)
        result["parity"] = check_parity(model, det, imgs, imgsz)
        result["latency_ms_fp32"] = latency_ms(det, imgs)
        result["metrics_test"] = per_class_metrics(model, data_yaml, imgsz)
        spec.metrics = {"test": result["metrics_test"], "parity": result["parity"],
                        "latency_ms_2core": result["latency_ms_fp32"]}
        if int8:
            calib_dir = data_dir / "images" / "train" if data_dir else None
            q = quantize_int8(fp32, det, _images(calib_dir, 32, imgsz, seed=1), tdp / f"{name}-int8.onnx")
            qspec = ModelSpec(**{**spec.to_dict(), "name": f"{name}-int8", "file": q.name, "precision": "int8",
                                 "default": False})
            qdet, _ = _stage(qspec, q)
            det.conf_threshold = qdet.conf_threshold = 0.1
            agree = agreement(det, qdet, imgs)
            det.conf_threshold = qdet.conf_threshold = 0.25
            lat8 = latency_ms(qdet, imgs)
            result["int8"] = {"agreement": round(agree, 4), "latency_ms": lat8,
                              "ratio_to_fp32": round(lat8 / result["latency_ms_fp32"], 3)}
            use_int8 = default and agree >= 0.98 and lat8 < result["latency_ms_fp32"]
            qspec.metrics = {"int8_agreement_with_fp32": result["int8"]["agreement"], "latency_ms_2core": lat8}
            qspec.default = use_int8
            if use_int8:
                spec.default = False
            install_model(q, qspec, models_dir)
        install_model(fp32, spec, models_dir)
    pt_dst = models_dir / "sources" / f"{name}.pt"
    pt_dst.parent.mkdir(exist_ok=True)
    pt_dst.write_bytes(pt.read_bytes())
    result["pytorch_weights"] = str(pt_dst.relative_to(models_dir.parent)) if models_dir.parent in pt_dst.parents \
        else str(pt_dst)
    spec.extra["pytorch_weights"] = result["pytorch_weights"]
    write_manifest_entry(models_dir, spec)
    write_card(name, card_text(result, run_dir), models_dir)
    (run_dir / "export.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def card_text(r: dict, run_dir: Path) -> str:
    mt = r.get("metrics_test") or {}
    rows = [[c, mt.get("per_class_AP50", {}).get(c, "n/a")] for c in r["classes"]]
    int8 = r.get("int8")
    return f"""# {r['name']} (object detector)

- **Task**: detection of {len(r['classes'])} classes; input {r['imgsz']}x{r['imgsz']} letterboxed RGB.
- **Trained by**: `python -m training.detect` (run `{run_dir.name}`), exported by `python -m export.onnx`.
- **Licence**: AGPL-3.0-or-later (ultralytics architecture and training code).

## Test-split metrics (never trained on)
mAP50: {mt.get('mAP50', 'n/a')}, mAP50-95: {mt.get('mAP50-95', 'n/a')}

{md_table(['class', 'AP50'], rows)}

## Parity with PyTorch
{json.dumps(r['parity'])}

## Latency (this machine, median, one image)
fp32: {r['latency_ms_fp32']} ms{f"; int8: {int8['latency_ms']} ms (agreement with fp32 {int8['agreement']})" if int8 else ''}

## Known limits
See the dataset's SOURCES and stats: classes without real training photos are not reliable.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--name")
    ap.add_argument("--default", action="store_true", help="make it the default detector")
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--data", type=Path, help="dataset folder (default: from the run's args.yaml)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(export_run(a.run_dir, a.models_dir, a.name, a.int8, a.default, a.data), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
