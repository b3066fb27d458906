"""Re-export a shipped detector with a dynamic input: the same weights, a graph whose height and width are free.

    python -m export.dynamic detector-v1.7 [--models-dir models] [--data runs/data/detector-v1.7]

Why: a static ONNX detector takes one square input, so a 4:3 photo at 416 px is run as 416 x 416 with a quarter
of the pixels grey padding. With a dynamic input the runtime pads only to the stride (``ops.letterbox(stride=)``,
manifest ``preprocessing.rect_stride``): 416 x 320 for a 4:3 photo, about 25 % less work, as ultralytics' own
``predict`` does for PyTorch models.

What it does, in order, and it stops before touching ``models/`` if a check fails:
1. exports the model's PyTorch source (``extra.pytorch_weights``, SHA-256 checked) with ``dynamic=True`` at the
   entry's input size, keeps the old file's ONNX metadata, slims it;
2. checks it is the same model: on square inputs its raw output matches the shipped static file's
   (``same_model``), and ``detect_parity`` against ultralytics / PyTorch passes on stride-padded photos;
3. re-quantises the int8 twin ``<name>-int8`` if there is one, with the twin's own activation ranges (read from
   its QuantizeLinear nodes, ``activation_qparams``) and the same quantiser settings, and checks that every scale, zero
   point and quantised weight is the old twin's (``quant_params``). Its outputs on square inputs are then the
   old twin's up to onnxruntime's arithmetic order (the graphs around the quantised body differ): a value on a
   rounding edge can step one quantum (a tiny yolov8n: 1 random input in 4); the figures are reported;
4. with ``--data``, measures the new twin's agreement with the new fp32 model on ``--int8-check-images`` test
   photos (the rule's figure must describe the pair that ships; the static pair's stays in the twin's metrics
   as ``int8_agreement_with_fp32_static``);
5. replaces both files, records ``rect_stride`` and the static file's SHA-256 (``extra.static_export_sha256``).

Accuracy and latency figures of the fp32 model are not re-measured here: measure them with
``wtivision evaluate`` and ``benchmarks.run`` (the rectangular input changes what the model sees).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from export.common import MODELS_DIR, add_onnx_metadata, install_model, offline_ultralytics, slim_onnx
from export.onnx import (
    OPSET,
    ParityError,
    detect_parity,
    int8_report,
    latency_ms,
    quantize_int8,
    sample_images,
    stage,
)
from wtivision.registry import ModelSpec, Registry, sha256_file
from wtivision.runtime import YoloDetector

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


def activation_qparams(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """How a QDQ int8 model quantises its activations: tensor name -> (scale, zero point) of its QuantizeLinear
    (per-tensor; weights are stored quantised and have no QuantizeLinear)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for n in m.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in init:
            continue
        scale, zero = init[n.input[1]], init[n.input[2]]
        if scale.size != 1:
            raise ValueError(f"{path}: per-channel activation quantisation at {n.input[0]!r} is not supported")
        out[n.input[0]] = (scale, zero)
    return out


def quant_params(path: Path) -> dict[str, np.ndarray]:
    """Every initializer read by a QuantizeLinear / DequantizeLinear node of a QDQ model (scales, zero points,
    quantised weights), by name: two twins with equal ``quant_params`` are the same quantised model."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    used = {i for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input}
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.name in used}


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def same_model(a: YoloDetector, b: YoloDetector, size: int, n: int = 4, atol: float = 1e-3) -> list[float]:
    """Largest difference of the raw outputs of ``a`` and ``b`` on each of ``n`` random square inputs of
    ``size``; raises ParityError above ``atol`` (boxes in input pixels, scores in [0, 1])."""
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(n):
        x = rng.random((1, 3, size, size), dtype=np.float32)
        diffs.append(float(np.abs(a.run(x)[0] - b.run(x)[0]).max()))
    if max(diffs) > atol:
        raise ParityError(f"{b.name} differs from {a.name} by {max(diffs):.3g} on square inputs (limit {atol})")
    return diffs


def reexport_dynamic(name: str, models_dir: Path = MODELS_DIR, data: Path | None = None,
                     n_parity: int = 8, n_int8_check: int = 200) -> dict[str, Any]:
    """See the module docstring. Returns the figures measured (also logged)."""
    offline_ultralytics()
    from ultralytics import YOLO

    models_dir = Path(models_dir)
    reg = Registry(models_dir)
    spec = reg.get(name)
    if spec.task != "detect":
        raise ValueError(f"{name} is a {spec.task} model; only detectors are re-exported with a dynamic input")
    if spec.preprocessing.get("rect_stride"):
        raise ValueError(f"{name} already has a dynamic input (preprocessing.rect_stride)")
    src = (spec.extra or {}).get("pytorch_weights")
    if not src or not (models_dir / src).is_file():
        raise ValueError(f"{name}: no PyTorch source (manifest extra.pytorch_weights) in {models_dir}")
    pt_path = models_dir / src
    if sha256_file(pt_path) != spec.extra.get("pytorch_weights_sha256"):
        raise ValueError(f"{pt_path}: SHA-256 differs from the manifest's extra.pytorch_weights_sha256")
    old = YoloDetector(spec, reg)  # verifies the shipped file
    size = old.input_hw[0]
    twin = next((s for s in reg.specs() if s.name == f"{name}-int8"), None)
    res: dict[str, Any] = {"name": name, "static_sha256": spec.sha256, "input_size": size}
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        local_pt = work / pt_path.name  # ultralytics writes the export beside the weights: never in models/
        shutil.copyfile(pt_path, local_pt)
        model = YOLO(str(local_pt))
        f = work / f"{name}.onnx"
        Path(model.export(format="onnx", imgsz=size, opset=OPSET, simplify=False, dynamic=True, half=False,
                          nms=False, device="cpu", verbose=False)).replace(f)
        add_onnx_metadata(f, onnx_metadata(old.path))
        slim_onnx(f)
        new_spec = ModelSpec(**{**spec.to_dict(), "preprocessing": {**spec.preprocessing,
                                                                    "rect_stride": int(model.model.stride.max())},
                                "extra": {**spec.extra, "static_export_sha256": spec.sha256}})
        staged = work / "fp32"
        staged.mkdir()
        f = f.replace(staged / f.name)
        new = stage(new_spec, f)
        res["square_input_max_raw_diff"] = max(same_model(old, new, size))
        images = [*sample_images(REPO / "examples", n_parity, seed=0, top_up=False),
                  *(sample_images(data / "images" / "test", n_parity, seed=0, top_up=False) if data else [])]
        if not images:
            raise ValueError("no photos for the parity check (examples/ is empty and no --data)")
        res["parity"] = detect_parity(YOLO(str(local_pt)), new, images)
        logger.info("dynamic %s: same model on square inputs (%.2g), parity %s", name,
                    res["square_input_max_raw_diff"], res["parity"])
        new_twin = None
        if twin is not None:
            old_q = YoloDetector(twin, reg)
            # mixed precision as the twin was made (training.int8_tune --fp32-modules / --fp32-head-outputs)
            mods = (twin.extra or {}).get("fp32_modules")
            q = quantize_int8(f, new, images, work / twin.file, qparams=activation_qparams(old_q.path),
                              fp32_modules=tuple(mods) if mods else None,
                              fp32_head_outputs=bool((twin.extra or {}).get("fp32_head_outputs")))
            a, b = quant_params(old_q.path), quant_params(q)
            differ = sorted(k for k in a.keys() | b.keys() if k not in a or k not in b
                            or a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k]))
            if differ:
                raise ParityError(f"{len(differ)} quantisation parameters of {twin.name} did not carry over: "
                                  f"{differ[:5]}")
            add_onnx_metadata(q, onnx_metadata(old_q.path))
            new_twin = ModelSpec(**{**twin.to_dict(), "preprocessing": new_spec.preprocessing,
                                    "extra": {**twin.extra, "static_export_sha256": twin.sha256}})
            qstaged = work / "int8"
            qstaged.mkdir()
            q_new = stage(new_twin, q.replace(qstaged / q.name))
            res["int8_quant_params_equal"] = len(a)
            res["int8_square_inputs_max_raw_diff"] = same_model(old_q, q_new, size, atol=np.inf)
            res["int8_static_sha256"] = twin.sha256
            check = sample_images(data / "images" / "test", n_int8_check, seed=2, top_up=False) if data else []
            if check:
                rep = int8_report(new, q_new, check)
                res["int8"] = {**rep, "images": len(check)}
                new_twin.metrics = {**twin.metrics, "int8_agreement_with_fp32": rep["agreement"],
                                    "int8_agreement_images": len(check), "latency_ms": rep["latency_ms"],
                                    "fp32_latency_ms": latency_ms(new.detect, check),
                                    "int8_agreement_with_fp32_static": twin.metrics.get("int8_agreement_with_fp32")}
                logger.info("dynamic twin on %d test photos: %s", len(check), rep)
        new_spec.metrics = {**spec.metrics, "parity": res["parity"]}
        install_model(f, new_spec, models_dir)
        res["sha256"] = new_spec.sha256
        if new_twin is not None:
            install_model(qstaged / twin.file, new_twin, models_dir)
            res["int8_sha256"] = new_twin.sha256
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.dynamic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="shipped detector (manifest name), e.g. detector-v1.7")
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--data", type=Path, help="dataset folder: its test photos join the examples in the parity check")
    ap.add_argument("--parity-images", type=int, default=8)
    ap.add_argument("--int8-check-images", type=int, default=200,
                    help="test photos (with --data) on which the new int8 twin's agreement is measured")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        res = reexport_dynamic(a.name, a.models_dir, a.data, a.parity_images, a.int8_check_images)
    except (ParityError, ValueError) as exc:
        logging.getLogger("export.dynamic").error("re-export FAILED: %s", exc)
        return 1
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
