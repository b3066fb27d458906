"""Export a trained run (detector or classifier) to ONNX for the wtivision runtime, with parity checks,
optional int8, a model card and manifest registration.

    python -m export.onnx RUN_DIR [--int8] [--models-dir models] [--name NAME] [--default]
                          [--role ROLE] [--data DIR] [--version V]

Steps:

1. fp32 ONNX through ultralytics (opset 17, static 1x3xSxS input, no NMS in the graph), simplified with
   onnxslim, with ``metadata_props``: ``wtivision_classes`` (json), ``wtivision_input_size``,
   ``wtivision_task``, ``wtivision_version``, ``wtivision_dataset_manifest_sha256``.
2. Parity, which FAILS the export (``ParityError``, exit status 1) beyond tolerance:

   - raw outputs: the ONNX graph vs the PyTorch model on the same input tensors (detector: box rows within
     ``BOX_ATOL`` px, score rows within ``SCORE_ATOL``; classifier: probabilities within ``SCORE_ATOL``);
   - final results: ``wtivision.runtime.YoloDetector`` vs ``ultralytics.YOLO(best.pt).predict`` (PyTorch)
     and vs ``ultralytics.YOLO(model.onnx).predict`` on the same images: same boxes and classes, every box
     within ``BOX_PX`` px and every score within ``SCORE_TOL``; classifier: ``ImageClassifier`` top-1 equal
     to ultralytics' and probabilities within ``SCORE_TOL``. The confidence threshold for each image is put in
     a gap of its score distribution with at least ten candidates above it, so even a barely trained model
     gives boxes to compare and no box sits on the threshold.
3. ``--int8``: static QDQ quantisation (onnxruntime) calibrated on training-split images; the detection
   head's decode (DFL, box arithmetic, sigmoid, final concat) stays fp32. Reported (on up to
   ``--int8-check-images`` real test images, 200 by default): agreement with fp32
   (detector: fraction of fp32 detections matched at IoU 0.5 with the same class, at conf 0.25 and 0.1;
   classifier: top-1 agreement) and latency. It is registered as ``<name>-int8`` and becomes the default
   only with ``--default`` and agreement >= 0.98 and a lower latency.
4. Test-split metrics (per-class AP50 / top-1 accuracy) from ultralytics' validator, latency on this
   machine, a model card ``<models-dir>/cards/<name>.md`` and the manifest entry.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.common import (
    MODELS_DIR,
    add_onnx_metadata,
    box_agreement,
    install_model,
    latency_ms,
    md_table,
    offline_ultralytics,
    slim_onnx,
    top1_agreement,
    write_card,
)
from wtivision.registry import ModelSpec, Registry, sha256_file, write_manifest_entry
from wtivision.runtime import ImageClassifier, RuntimeOptions, YoloDetector
from wtivision.taxonomy import LABELS

logger = logging.getLogger(__name__)

OPSET = 17
BOX_ATOL = 1e-2  # px, raw box rows ONNX vs PyTorch
SCORE_ATOL = 1e-4  # raw class scores / probabilities ONNX vs PyTorch
BOX_PX = 1.0  # final boxes wtivision vs ultralytics
SCORE_TOL = 1e-3  # final scores wtivision vs ultralytics
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class ParityError(RuntimeError):
    """The exported model does not reproduce the PyTorch model within tolerance."""


@dataclass
class Run:
    """A training run folder and what the export needs from it."""

    dir: Path
    weights: Path
    task: str
    names: list[str]
    imgsz: int
    manifest_sha256: str = ""
    dataset: Path | None = None  # folder built by datasets.build
    extra: dict[str, Any] = field(default_factory=dict)  # the run folder's run.json

    @property
    def detect(self) -> bool:
        return self.task == "detect"


def load_run(run_dir: Path, data: Path | None = None) -> tuple[Run, Any]:
    """The run's metadata and its ultralytics model (best.pt, else last.pt)."""
    from ultralytics import YOLO

    run_dir = Path(run_dir)
    pt = run_dir / "weights" / "best.pt"
    if not pt.is_file():
        pt = run_dir / "weights" / "last.pt"
    if not pt.is_file():
        raise FileNotFoundError(f"no weights/best.pt or weights/last.pt in {run_dir}")
    model = YOLO(str(pt))
    names = [model.names[i] for i in range(len(model.names))]
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    if data is None:
        manifest = info.get("dataset_manifest") or ""
        data = Path(manifest).parent if manifest and Path(manifest).is_file() else None
    run = Run(run_dir, pt, model.task, names, int(model.model.args.get("imgsz", 640)),
              info.get("dataset_manifest_sha256", ""), Path(data) if data else None, info)
    if run.detect:
        unknown = [n for n in names if n not in LABELS]
        if unknown:
            raise ValueError(f"detector classes not in wtivision.taxonomy: {unknown}")
    return run, model


# -- images -------------------------------------------------------------------------------------------
def sample_images(folder: Path | None, n: int, seed: int = 0, fallback_size: int = 320,
                  top_up: bool = True) -> list[np.ndarray]:
    """Up to ``n`` images drawn with ``seed`` from ``folder`` (recursively), topped up with synthetic scenes
    (unless ``top_up`` is false)."""
    import cv2

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
        if folder is not None and folder.is_dir() else []
    rng = np.random.default_rng(seed)
    if len(paths) > n:
        paths = [paths[i] for i in sorted(rng.choice(len(paths), n, replace=False))]
    out = [im for im in (cv2.imread(str(p)) for p in paths) if im is not None]
    if top_up and len(out) < n:
        from datasets.synth.scenes import scene

        out += [scene(rng, fallback_size)[0] for _ in range(n - len(out))]
    return out


def _split_dir(run: Run, split: str) -> Path | None:
    if run.dataset is None:
        return None
    return run.dataset / ("images" if run.detect else "classify") / split


# -- export -------------------------------------------------------------------------------------------
def export_fp32(run: Run, model: Any, out: Path, version: str, dynamic: bool = False) -> Path:
    """ultralytics ONNX export (opset 17, fp32), wtivision metadata, onnxslim; written to ``out``. ``dynamic``:
    height and width of the input are free (the anchors are computed in the graph), so the runtime can feed a
    photo letterboxed to the stride only (``preprocessing.rect_stride``) instead of the full square."""
    src = Path(model.export(format="onnx", imgsz=run.imgsz, opset=OPSET, simplify=False, dynamic=dynamic,
                            half=False, nms=False, device="cpu", verbose=False))
    os.replace(src, out)
    add_onnx_metadata(out, {"wtivision_classes": json.dumps(run.names), "wtivision_input_size": str(run.imgsz),
                            "wtivision_task": run.task, "wtivision_version": version,
                            "wtivision_dataset_manifest_sha256": run.manifest_sha256})
    slim_onnx(out)
    return out


def stage(spec: ModelSpec, path: Path, conf: float = 0.25) -> YoloDetector | ImageClassifier:
    """A runtime runner for a model file outside ``models/`` (a manifest is written beside it)."""
    spec.sha256 = sha256_file(path)
    write_manifest_entry(path.parent, spec)
    reg = Registry(path.parent)
    if spec.task == "detect":
        return YoloDetector(spec, reg, RuntimeOptions(), conf_threshold=conf)
    return ImageClassifier(spec, reg, RuntimeOptions())


# -- parity -------------------------------------------------------------------------------------------
def gap_threshold(raw: np.ndarray, iou_threshold: float = 0.7, max_boxes: int = 50, rel_margin: float = 1e-4,
                  abs_margin: float = 1e-6) -> float:
    """A confidence threshold for a well-conditioned comparison of two runtimes on one image.

    Keeps the largest set of top candidates (at most ``max_boxes``) such that: the threshold lies in a gap
    wider than the margin (``rel_margin * score + abs_margin``); no kept candidate has a runner-up class
    within the margin; and no two kept candidates of one class that NMS could weigh against each other (IoU
    above ``iou_threshold - 0.2``) have scores within the margin. Numeric noise between runtimes (~1e-7 on
    scores) then can neither move a box across the threshold, nor change its class, nor reorder NMS; this
    matters for barely trained models whose candidate scores nearly tie. Returns a threshold above the top
    score (no boxes) if not even the best candidate qualifies.
    """
    from wtivision.ops import box_iou, xywh2xyxy

    pred = np.asarray(raw, dtype=np.float64)[0].T
    cls_scores = pred[:, 4:]
    order = np.argsort(-cls_scores.max(axis=1), kind="stable")[:max_boxes + 1]
    top2 = np.sort(cls_scores[order], axis=1)[:, ::-1][:, :2]
    s, c = top2[:, 0], cls_scores[order].argmax(axis=1)
    boxes = xywh2xyxy(pred[order, :4])

    def margin(x: float) -> float:
        return rel_margin * x + abs_margin

    best = 0
    for k in range(1, len(s)):
        j = k - 1  # the candidate joining the kept set
        if top2.shape[1] > 1 and top2[j, 0] - top2[j, 1] <= margin(s[j]):
            break
        same = np.nonzero(c[:j] == c[j])[0]
        if len(same):
            ious = box_iou(boxes[j:j + 1], boxes[same])[0]
            if np.any((np.abs(s[same] - s[j]) <= margin(s[j])) & (ious > iou_threshold - 0.2)):
                break
        if s[j] - s[k] > margin(s[j]):
            best = k
    if best == 0:
        return float(s[0]) * 1.01 + abs_margin
    return float((s[best - 1] + s[best]) / 2)


def compare_detections(ours: list, result: Any, names: list[str]) -> tuple[int, float, float]:
    """Match wtivision detections one-to-one with an ultralytics ``Results`` (same class, nearest box).

    Returns (boxes compared, max box coordinate difference px, max score difference); raises
    ParityError when the two sets differ in size or class."""
    tb = result.boxes.xyxy.cpu().numpy().astype(np.float64)
    ts = result.boxes.conf.cpu().numpy().astype(np.float64)
    tl = [names[int(c)] for c in result.boxes.cls.cpu().numpy()]
    if len(ours) != len(tb):
        raise ParityError(f"ultralytics found {len(tb)} boxes, wtivision {len(ours)}")
    free = set(range(len(tb)))
    box_diff = score_diff = 0.0
    for d in ours:
        cands = [i for i in free if tl[i] == d.label]
        if not cands:
            raise ParityError(f"wtivision box {d.label} {d.box} has no ultralytics counterpart")
        diffs = [float(np.abs(np.asarray(d.box) - tb[i]).max()) for i in cands]
        i = cands[int(np.argmin(diffs))]
        free.discard(i)
        box_diff = max(box_diff, min(diffs))
        score_diff = max(score_diff, abs(d.confidence - float(ts[i])))
    return len(ours), box_diff, score_diff


def _torch_raw(net: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        y = net(torch.from_numpy(x))
    return (y[0] if isinstance(y, (list, tuple)) else y).numpy()


def detect_parity(pt_model: Any, det: YoloDetector, images: list[np.ndarray]) -> dict[str, Any]:
    """Raw ONNX vs PyTorch outputs, and wtivision's boxes vs ultralytics' (PyTorch and ONNX); see the module
    docstring. Raises ParityError beyond tolerance; returns the measured figures."""
    from ultralytics import YOLO

    onnx_model = YOLO(str(det.path), task="detect")
    net = pt_model.model.float().eval()
    # non-square crops too, so that letterbox padding and the box rescaling are exercised
    images = [*images, *(im[:, : max(16, im.shape[1] * 3 // 5)] for im in images[:2]),
              *(im[: max(16, im.shape[0] * 3 // 5)] for im in images[2:4])]
    keep_conf = det.conf_threshold
    r: dict[str, Any] = {"images": len(images), "raw_box_diff_px": 0.0, "raw_score_diff": 0.0}
    per = {"pytorch": [0, 0.0, 0.0], "onnx": [0, 0.0, 0.0]}
    imgsz = det.input_hw[0]
    try:
        for im in images:
            x, _, _ = det.preprocess(im)
            y, o = _torch_raw(net, x), det.run(x)[0]
            r["raw_box_diff_px"] = max(r["raw_box_diff_px"], float(np.abs(y[:, :4] - o[:, :4]).max()))
            r["raw_score_diff"] = max(r["raw_score_diff"], float(np.abs(y[:, 4:] - o[:, 4:]).max()))
            noise = float(np.abs(y[:, 4:] - o[:, 4:]).max())
            det.conf_threshold = conf = gap_threshold(o, det.iou_threshold, abs_margin=max(10 * noise, 1e-7))
            ours = det.detect(im)
            for key, m in (("pytorch", pt_model), ("onnx", onnx_model)):
                res = m.predict(im, imgsz=imgsz, conf=conf, iou=det.iou_threshold, max_det=det.max_det,
                                rect=det.rect_stride is not None, device="cpu", verbose=False,
                                classes=det.class_filter)[0]
                try:
                    n, bd, sd = compare_detections(ours, res, det.spec.classes)
                except ParityError as exc:
                    raise ParityError(f"wtivision vs ultralytics ({key}), conf {conf:.5f}: {exc}") from exc
                p = per[key]
                p[0] += n
                p[1], p[2] = max(p[1], bd), max(p[2], sd)
    finally:
        det.conf_threshold = keep_conf
    for key, (n, bd, sd) in per.items():
        r[f"boxes_compared_vs_ultralytics_{key}"] = n
        r[f"max_box_diff_px_vs_ultralytics_{key}"] = round(bd, 5)
        r[f"max_score_diff_vs_ultralytics_{key}"] = round(sd, 7)
    r["raw_box_diff_px"], r["raw_score_diff"] = round(r["raw_box_diff_px"], 6), round(r["raw_score_diff"], 8)
    bad = [k for k, lim in (("raw_box_diff_px", BOX_ATOL), ("raw_score_diff", SCORE_ATOL),
                            ("max_box_diff_px_vs_ultralytics_pytorch", BOX_PX),
                            ("max_box_diff_px_vs_ultralytics_onnx", BOX_PX),
                            ("max_score_diff_vs_ultralytics_pytorch", SCORE_TOL),
                            ("max_score_diff_vs_ultralytics_onnx", SCORE_TOL)) if r[k] > lim]
    if bad:
        raise ParityError(f"export differs beyond tolerance in {bad}: {r}")
    if per["pytorch"][0] == 0:
        raise ParityError(f"no detections to compare on {len(images)} images: {r}")
    return r


def classify_parity(pt_model: Any, clf: ImageClassifier, images: list[np.ndarray]) -> dict[str, Any]:
    """Raw probabilities ONNX vs PyTorch, and wtivision's top-1/probabilities vs ultralytics' predict."""
    net = pt_model.model.float().eval()
    raw = prob = 0.0
    same = 0
    for im in images:
        x = clf.preprocess(im)
        y, o = _torch_raw(net, x), clf.run(x)[0]
        raw = max(raw, float(np.abs(y - o).max()))
        p = clf.probabilities(im)
        res = pt_model.predict(im, imgsz=clf.size, device="cpu", verbose=False)[0]
        tp = res.probs.data.cpu().numpy()
        prob = max(prob, float(np.abs(p - tp).max()))
        same += int(np.argmax(p) == int(res.probs.top1))
    r = {"images": len(images), "raw_prob_diff": round(raw, 8), "max_prob_diff_vs_ultralytics": round(prob, 7),
         "top1_agreement_vs_ultralytics": round(same / max(len(images), 1), 4)}
    if raw > SCORE_ATOL or prob > SCORE_TOL or same != len(images):
        raise ParityError(f"export differs beyond tolerance: {r}")
    return r


# -- int8 ---------------------------------------------------------------------------------------------
def head_decode_nodes(path: Path) -> list[str]:
    """Nodes of the YOLO detection head's decode (everything in the last ``/model.N/`` module except the
    cv2/cv3 convolution branches): kept in fp32 by the quantiser for box precision."""
    nodes, head = _head_module(path)
    if head is None:
        return [n.name for n in nodes[-12:]]
    return [n.name for n in nodes if _module_index(n.name) == head
            and not any(f"/{b}." in n.name for b in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"))]


def head_output_nodes(path: Path) -> list[str]:
    """The detection head's output convolutions (the plain ``nn.Conv2d`` ending each cv2 box / cv3 class
    branch): kept in fp32 so that their outputs, the box distributions and class logits, are not clipped to
    the range the calibration photos happened to reach (an object scored above every calibration logit of
    its scale would read as that maximum, e.g. 0.243 for a fp32 0.36) nor rounded to 256 levels."""
    nodes, head = _head_module(path)
    return [n.name for n in nodes if n.op_type == "Conv" and head is not None and _module_index(n.name) == head
            and "/conv/" not in n.name and any(f"/{b}." in n.name for b in ("cv2", "cv3"))]


def _head_module(path: Path) -> tuple[Any, int | None]:
    """The graph's nodes and N of its last ``/model.N/`` module (the detection head), None if unnamed."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    indices = [i for i in (_module_index(n.name) for n in nodes) if i is not None]
    return nodes, (max(indices) if indices else None)


def _module_index(node_name: str) -> int | None:
    """N of a node named ``/model.N/...`` by the ultralytics exporter, else None."""
    parts = node_name.split("/")
    if len(parts) > 2 and parts[1].startswith("model.") and parts[1][6:].isdigit():
        return int(parts[1][6:])
    return None


def module_nodes(path: Path, first: int, last: int) -> list[str]:
    """Names of the nodes of ultralytics modules ``first``..``last`` (``/model.N/...``) of an exported graph."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node
            if (i := _module_index(n.name)) is not None and first <= i <= last]


def quantised_activations(path: Path) -> set[str]:
    """Names of the float tensors a QDQ model quantises (the inputs of its QuantizeLinear nodes)."""
    import onnx

    return {n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"}


def calibration_reader(input_name: str, tensors: list[np.ndarray]) -> Any:
    """An onnxruntime ``CalibrationDataReader`` feeding ``tensors`` one by one as ``input_name``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(tensors)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {input_name: x}

    return Reader()


def quantize_int8(fp32: Path, runner: YoloDetector | ImageClassifier, calib: list[np.ndarray], out: Path,
                  method: str = "MinMax", fp32_modules: tuple[int, int] | None = None,
                  fp32_head_outputs: bool = False,
                  ranges: dict[str, tuple[float, float]] | None = None,
                  qparams: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Path:
    """Static QDQ int8 (per-channel weights, uint8 activations, calibration on ``calib`` images with
    ``method``: MinMax, Percentile or Entropy). ``fp32_modules`` (first, last): ultralytics modules kept in fp32
    besides the detection head's decode (mixed precision); ``fp32_head_outputs``: the head's output
    convolutions too (``head_output_nodes``); ``ranges``: tensor name -> (rmin, rmax) used instead of the
    calibrated range of that activation (``training.int8_tune``); ``qparams``: tensor name -> (scale, zero point),
    used as they are (``export.dynamic``: another model's exact quantisation of that activation)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = runner.session.get_inputs()[0].name
    tensors = [runner.preprocess(im)[0] if isinstance(runner, YoloDetector) else runner.preprocess(im)
               for im in calib]

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    exclude = head_decode_nodes(pre) if isinstance(runner, YoloDetector) else []
    if fp32_modules is not None:
        exclude += module_nodes(pre, *fp32_modules)
    if fp32_head_outputs and isinstance(runner, YoloDetector):
        exclude += head_output_nodes(pre)
    overrides = {t: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for t, (lo, hi) in (ranges or {}).items()}
    overrides.update({t: [{"scale": np.asarray(sc).reshape(()), "zero_point": np.asarray(zp).reshape(())}]
                      for t, (sc, zp) in (qparams or {}).items()})
    extra = {"TensorQuantOverrides": overrides} if overrides else None
    quantize_static(str(pre), str(out), calibration_reader(input_name, tensors), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude, calibrate_method=CalibrationMethod[method], extra_options=extra)
    pre.unlink(missing_ok=True)
    return out


# -- metrics and card ---------------------------------------------------------------------------------
def split_metrics(model: Any, run: Run, out: Path) -> dict[str, Any]:
    """Metrics of the PyTorch model on the dataset's test split ({} without one); the validator writes
    into ``out``."""
    test = _split_dir(run, "test")
    if test is None or not test.is_dir() or not any(test.rglob("*.*")):
        return {}
    if run.detect:
        m = model.val(data=str(run.dataset / "data.yaml"), split="test", imgsz=run.imgsz, device="cpu",
                      plots=False, verbose=False, batch=8, project=str(out), name="val")
        out: dict[str, Any] = {"mAP50": round(float(m.box.map50), 4), "mAP50-95": round(float(m.box.map), 4),
                               "per_class_AP50": {}}
        for i, c in enumerate(m.box.ap_class_index):
            out["per_class_AP50"][run.names[int(c)]] = round(float(m.box.ap50[i]), 4)
        return out
    m = model.val(data=str(run.dataset / "classify"), split="test", imgsz=run.imgsz, device="cpu", plots=False,
                  verbose=False, batch=16, project=str(out), name="val")
    return {"top1": round(float(m.top1), 4), "top5": round(float(m.top5), 4)}


def data_summary(run: Run) -> dict[str, Any]:
    """From the dataset manifest: per class, train boxes/images by kind (photo/synthetic), sources, licences."""
    manifest = run.dataset / "manifest.csv" if run.dataset else None
    if manifest is None or not manifest.is_file():
        return {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    per: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        for lab in filter(None, r.get("labels", "").split(";")):
            per[lab][f"{r['split']}_{r.get('kind', 'photo')}"] += 1
    sources = sorted({(r["source"], r.get("origin", ""), r["licence"], r.get("kind", "photo")) for r in rows})
    return {"images": dict(Counter(r["split"] for r in rows)), "per_class": {k: dict(v) for k, v in per.items()},
            "sources": [dict(zip(("source", "origin", "licence", "kind"), s)) for s in sources]}


def card_text(r: dict[str, Any]) -> str:
    """The model card (markdown) from an export result."""
    mt = r.get("metrics_test") or {}
    ds = r.get("data") or {}
    per = ds.get("per_class", {})

    def evidence(c: str) -> str:
        v = per.get(c, {})
        photo, synth = v.get("train_photo", 0), v.get("train_synthetic", 0)
        return "real photos" if photo else ("synthetic only" if synth else "no training data")

    metric_col = "test AP50" if r["task"] == "detect" else "test split"
    rows = [[c, per.get(c, {}).get("train_photo", 0), per.get(c, {}).get("train_synthetic", 0), evidence(c),
             mt.get("per_class_AP50", {}).get(c, "n/a") if r["task"] == "detect" else "-"] for c in r["classes"]]
    sources = md_table(["source", "origin", "licence", "kind"],
                       [[s["source"], s["origin"], s["licence"], s["kind"]] for s in ds.get("sources", [])]) \
        if ds.get("sources") else "Dataset manifest not available."
    synth_only = [c for c in r["classes"] if evidence(c) != "real photos"]
    headline = (f"mAP50 {mt.get('mAP50', 'n/a')}, mAP50-95 {mt.get('mAP50-95', 'n/a')}" if r["task"] == "detect"
                else f"top-1 {mt.get('top1', 'n/a')}, top-5 {mt.get('top5', 'n/a')}")
    int8 = r.get("int8")
    int8_line = ""
    if int8:
        shipped = "shipped" if int8.get("shipped", True) else "NOT shipped: below the 0.98 agreement rule"
        int8_line = (f"- int8 (`{r['name']}-int8`, {shipped}): {int8['latency_ms']} ms; agreement with fp32 on "
                     f"{int8.get('images', '?')} test images: {json.dumps(int8['agreement'])}\n")
    init = (f"\n- **Initial weights**: `{r['init_weights']}` (tensors transferred by name and shape; the rest "
            "from scratch)." if r.get("init_weights") else "")
    trained = r.get("trained_classes")
    off = r.get("switched_off") or []
    dropped = ([c for c in r["classes"] if c not in trained and c not in off] if trained else [])
    dropped_line = (f"\n- **Outputs without training data** ({len(dropped)}): dropped by the runtime "
                    "(manifest `extra.trained_classes`)." if dropped else "")
    if off:
        dropped_line += (f"\n- **Switched off** although trained ({', '.join(f'`{c}`' for c in off)}): not fit to "
                         "report (see the notes); dropped by the runtime like the untrained outputs.")
    notes = f"\n## Notes\n{r['notes'].strip()}\n" if r.get("notes") else ""
    d, avg = r.get("distill"), r.get("averaged")
    trained_by = (f"`python -m training.average` (run `{r['run']}`): the weighted mean of "
                  + ", ".join(f"`{Path(a['checkpoint']).as_posix()}` x {a['weight']:.3g} (SHA-256 "
                              f"{a['sha256'][:12]}...)" for a in avg) if avg else
                  f"`python -m training.distill` (run `{r['run']}`: {d.get('steps_done', '?')} steps of "
                  f"{d.get('batch', '?')} views of {d.get('train_photos', '?')} train photos, teacher "
                  f"`{d.get('teacher', '?')}`, start `{d.get('student', '?')}`)" if d else
                  f"`python -m training.{r['task']}` (run `{r['run']}`, {r.get('epochs', '?')} epochs)")
    return f"""# {r['name']} ({'object detector' if r['task'] == 'detect' else 'image classifier'})

- **Task**: `{r['task']}`, {len(r['classes'])} classes, input {r['imgsz']}x{r['imgsz']}
  ({'letterboxed, pad 114' if r['task'] == 'detect' else 'resize + centre crop'}, RGB, /255).
- **Trained by**: {trained_by};
  exported by `python -m export.onnx` (opset {OPSET}, onnxslim).{init}{dropped_line}
- **Dataset**: manifest SHA-256 `{r.get('dataset_manifest_sha256') or 'n/a'}`;
  images per split {ds.get('images', 'n/a')}.
- **Licence**: AGPL-3.0-or-later (ultralytics architecture and training code); data licences below.

## Data
{sources}

## Classes, training evidence and test-split metrics
Test split (never trained on; near-duplicates of training images kept out as far as the dataset build
found them: see its build.json and `python -m datasets.build --audit`): {headline}.

{md_table(['class', 'train boxes (photo)', 'train boxes (synthetic)', 'evidence', metric_col], rows)}

## Parity with PyTorch / ultralytics
{md_table(['check', 'value'], [[k, v] for k, v in r['parity'].items()])}

## Latency (median, one image, {r.get('machine', '')})
- fp32: {r['latency_ms_fp32']} ms
{int8_line}
## Known limits
- Classes marked "synthetic only" or "no training data" ({', '.join(synth_only) or 'none'}) were learnt from
  drawn shapes or not at all: treat their detections as leads, not findings.
- Metrics come from the test split of the same dataset; field photos unlike it (night, clutter, unusual
  angles, partial objects) will do worse.
- Every reading is a machine suggestion for a person to review.
{notes}"""


# -- the export ---------------------------------------------------------------------------------------
def export_run(run_dir: Path, models_dir: Path = MODELS_DIR, name: str | None = None, int8: bool = False,
               default: bool = False, data: Path | None = None, n_parity: int = 8, version: str = "1",
               role: str | None = None, n_calib: int = 32, keep_pytorch: bool = False,
               notes: Path | None = None, n_int8_check: int = 200, keep_int8: bool = False,
               switch_off: Sequence[str] = (), dynamic: bool = False) -> dict[str, Any]:
    """Export, check, quantise, document and register a run; return the figures (also in export.json).

    ``keep_pytorch`` copies the run's ``best.pt`` to ``<models-dir>/sources/<name>.pt`` (named in the manifest's
    ``extra.pytorch_weights``) so that parity tests and benchmarks can compare against the PyTorch source.
    ``notes``: a markdown file appended to the model card (what the data can and cannot tell apart, ...).
    ``int8``: also quantise and measure an int8 twin; it is installed only if it meets the agreement rule
    (``int8_good_enough``) or ``keep_int8`` is set, and becomes the default only if it also is faster.
    ``switch_off``: detector classes that had training boxes but are not fit to report (a test AP near zero, say
    why in ``notes``): left out of ``extra.trained_classes``, so the runtime drops them like untrained outputs.
    ``dynamic`` (detectors): a dynamic input, run on stride-padded photos (``export_fp32``); the int8 twin is
    quantised from that graph and is dynamic too."""
    offline_ultralytics()
    run, model = load_run(run_dir, data)
    unknown = sorted(set(switch_off) - set(run.names))
    if unknown:
        raise ValueError(f"--switch-off: {', '.join(unknown)} not among the model's classes ({', '.join(run.names)})")
    name = name or f"{'detector' if run.detect else 'classifier'}-{run.dir.name}"
    role = role if role is not None else ("detector" if run.detect else "classifier")
    models_dir = Path(models_dir)
    pre = {"letterbox": True, "pad_value": 114} if run.detect else {"resize": "shorter side + centre crop"}
    if dynamic and run.detect:
        pre["rect_stride"] = int(model.model.stride.max())
    result: dict[str, Any] = {"name": name, "task": run.task, "imgsz": run.imgsz, "classes": run.names,
                              "run": run.dir.name, "dataset_manifest_sha256": run.manifest_sha256,
                              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, onnxruntime"}
    pretrained = model.model.args.get("pretrained")
    if isinstance(pretrained, str) and pretrained:
        result["init_weights"] = Path(pretrained).name
    if notes is not None:
        result["notes"] = Path(notes).read_text(encoding="utf-8")
    results_csv = run.dir / "results.csv"
    if results_csv.is_file():
        result["epochs"] = max(0, len(results_csv.read_text().strip().splitlines()) - 1)
    if run.extra.get("averaged"):  # a training.average run: a weighted mean of checkpoints
        result["averaged"] = run.extra["averaged"]
    distilled = run.dir / "distill.json"  # a training.distill run: no epochs, a teacher and a pruned start
    if distilled.is_file():
        result["distill"] = json.loads(distilled.read_text(encoding="utf-8")).get("summary", {})
    with tempfile.TemporaryDirectory() as td:
        fp32 = export_fp32(run, model, Path(td) / f"{name}.onnx", version, dynamic=dynamic and run.detect)
        spec = ModelSpec(name=name, file=fp32.name, sha256="", task=run.task, classes=run.names,
                         input_size=[run.imgsz, run.imgsz], preprocessing=pre, version=version,
                         licence="AGPL-3.0-or-later", card=f"cards/{name}.md", role=role, default=default,
                         source=f"wtivision training run {run.dir.name}; dataset manifest sha256 "
                                f"{run.manifest_sha256 or 'n/a'}",
                         extra={"dataset_manifest_sha256": run.manifest_sha256, "opset": OPSET})
        runner = stage(spec, fp32)
        images = sample_images(_split_dir(run, "test"), n_parity, seed=0, fallback_size=max(run.imgsz, 160))
        result["parity"] = (detect_parity(model, runner, images) if isinstance(runner, YoloDetector)
                            else classify_parity(model, runner, images))
        logger.info("parity ok: %s", result["parity"])
        infer = runner.detect if isinstance(runner, YoloDetector) else runner.classify
        result["latency_ms_fp32"] = latency_ms(infer, images)
        result["metrics_test"] = split_metrics(model, run, Path(td))
        result["data"] = data_summary(run)
        if run.detect and result["data"].get("per_class"):
            # outputs without training boxes are dropped by the runtime (YoloDetector.active_classes)
            trained = trained_classes(run.names, result["data"]["per_class"])
            result["switched_off"] = [c for c in trained if c in switch_off]
            spec.extra["trained_classes"] = result["trained_classes"] = [c for c in trained if c not in switch_off]
        if keep_pytorch:
            src = models_dir / "sources" / f"{name}.pt"
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(run.weights.read_bytes())
            spec.extra["pytorch_weights"] = src.relative_to(models_dir).as_posix()
            spec.extra["pytorch_weights_sha256"] = sha256_file(src)
        spec.metrics = {"test": result["metrics_test"], "parity": result["parity"],
                        "latency_ms": result["latency_ms_fp32"]}
        if int8:
            calib = sample_images(_split_dir(run, "train"), n_calib, seed=1, fallback_size=max(run.imgsz, 160))
            q = quantize_int8(fp32, runner, calib, Path(td) / f"{name}-int8.onnx")
            qspec = ModelSpec(**{**spec.to_dict(), "name": f"{name}-int8", "file": q.name, "precision": "int8",
                                 "default": False})
            qrunner = stage(qspec, q)
            # agreement on up to n_int8_check real test images: on a few dozen detections one miss moves the
            # figure by 0.02 (detector v1.1: 0.977 on 52 images, 0.959 on its 611 test images)
            check = sample_images(_split_dir(run, "test"), n_int8_check, seed=2, top_up=False)
            check = check if len(check) > len(images) else images
            result["int8"] = {**int8_report(runner, qrunner, check), "images": len(check)}
            qspec.metrics = {"int8_agreement_with_fp32": result["int8"]["agreement"],
                             "latency_ms": result["int8"]["latency_ms"]}
            faster = result["int8"]["latency_ms"] < result["latency_ms_fp32"]
            agrees = int8_good_enough(result["int8"])
            if default and faster and agrees:
                qspec.default, spec.default = True, False
            # an int8 twin that fails the agreement rule is measured and reported, not shipped (unless asked):
            # nobody should pick up a model that misses boxes its fp32 twin finds, and it weighs on the repository
            result["int8"]["shipped"] = agrees or keep_int8
            if result["int8"]["shipped"]:
                install_model(q, qspec, models_dir)
            else:
                logger.warning("int8 agreement %s is below the rule: int8 model not installed (--keep-int8 installs "
                               "it anyway)", result["int8"]["agreement"])
        install_model(fp32, spec, models_dir)
    write_card(name, card_text(result), models_dir)
    result["pytorch_weights"] = str(run.weights)
    (run.dir / "export.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def trained_classes(names: list[str], per_class: dict[str, dict[str, int]]) -> list[str]:
    """The classes with at least one training box (photo or synthetic), in model order."""
    return [c for c in names if any(k.startswith("train_") and v > 0 for k, v in per_class.get(c, {}).items())]


#: The share of the fp32 model's detections an int8 model must match, at each judged threshold, to be the default.
MIN_INT8_AGREEMENT = 0.98


def int8_good_enough(report: dict[str, Any], min_agreement: float = MIN_INT8_AGREEMENT) -> bool:
    """Whether int8 may replace fp32 as the default: agreement >= ``min_agreement`` at conf 0.25 and 0.1,
    measured on at least one fp32 detection (or top-1 agreement for a classifier)."""
    a = report["agreement"]
    if "top1" in a:
        return a["top1"] >= min_agreement
    measured = [a[f"conf_{c}"] for c in (0.25, 0.1) if a.get(f"fp32_detections_conf_{c}", 0) > 0]
    return bool(measured) and min(measured) >= min_agreement


def int8_report(fp32: YoloDetector | ImageClassifier, q: YoloDetector | ImageClassifier,
                images: list[np.ndarray], fp32_raw: list[tuple[np.ndarray, float, Any]] | None = None
                ) -> dict[str, Any]:
    """int8 vs fp32: detection agreement (fraction of fp32 detections matched at IoU 0.5 with the same class)
    at conf 0.25, 0.1 and at each image's 10th best fp32 score ("top10", so a weak model is compared too),
    or top-1 agreement for a classifier; and int8 latency. ``fp32_raw``: the fp32 detector's ``raw`` outputs
    of ``images`` when already computed (several int8 candidates judged on the same images)."""
    if isinstance(fp32, YoloDetector) and isinstance(q, YoloDetector):
        ref_raw = fp32_raw if fp32_raw is not None else [fp32.raw(im) for im in images]
        q_raw = [q.raw(im) for im in images]
        agree: dict[str, Any] = {}
        for conf in (0.25, 0.1, "top10"):
            ref, other = [], []
            for im, f, i in zip(images, ref_raw, q_raw, strict=True):
                c = float(conf) if conf != "top10" else \
                    float(np.sort(f[0][0, 4:].max(axis=0))[::-1][min(9, f[0].shape[-1] - 1)]) * 0.999
                ref.append(fp32.detections(*fp32.decode(*f, im.shape[:2], conf=c)))
                other.append(q.detections(*q.decode(*i, im.shape[:2], conf=c)))
            agree[f"conf_{conf}"] = round(box_agreement(ref, other), 4)
            agree[f"fp32_detections_conf_{conf}"] = sum(len(d) for d in ref)
        lat = latency_ms(q.detect, images)
    else:
        ref_labels = [fp32.classify(im).label for im in images]
        agree = {"top1": round(top1_agreement(ref_labels, [q.classify(im).label for im in images]), 4)}
        lat = latency_ms(q.classify, images)
    return {"agreement": agree, "latency_ms": lat}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="training run folder (weights/best.pt, run.json)")
    ap.add_argument("--int8", action="store_true",
                    help="also quantise a static int8 (QDQ) model; installed only if it agrees >= 0.98 with fp32")
    ap.add_argument("--keep-int8", action="store_true", help="install the int8 model even if it agrees less")
    ap.add_argument("--name", help="model name (default detector-<run> / classifier-<run>)")
    ap.add_argument("--default", action="store_true", help="make it the default model for its role")
    ap.add_argument("--role", help="manifest role (default: detector / classifier)")
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--data", type=Path, help="dataset folder (default: from the run's run.json)")
    ap.add_argument("--version", default="1")
    ap.add_argument("--parity-images", type=int, default=8)
    ap.add_argument("--int8-check-images", type=int, default=200,
                    help="test images on which int8 agreement with fp32 is measured (default 200)")
    ap.add_argument("--notes", type=Path, help="markdown file appended to the model card")
    ap.add_argument("--keep-pytorch", action="store_true",
                    help="copy best.pt to <models-dir>/sources/<name>.pt for parity tests and benchmarks")
    ap.add_argument("--switch-off", default="", metavar="CLASS[,CLASS]",
                    help="trained detector classes the runtime must not report (test AP near zero; say why in --notes)")
    ap.add_argument("--dynamic", action="store_true",
                    help="detector with a dynamic input: photos are padded only to the stride (640 x 480 for a 4:3 "
                         "photo at 640), not to the square")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        res = export_run(a.run_dir, a.models_dir, a.name, a.int8, a.default, a.data, a.parity_images, a.version,
                         a.role, keep_pytorch=a.keep_pytorch, notes=a.notes, n_int8_check=a.int8_check_images,
                         keep_int8=a.keep_int8, switch_off=[c for c in a.switch_off.split(",") if c],
                         dynamic=a.dynamic)
    except (ParityError, ValueError) as exc:
        logging.getLogger("export.onnx").error("export FAILED: %s", exc)
        return 1
    print(json.dumps({k: v for k, v in res.items() if k != "data"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
