"""Learn the activation ranges of a shipped detector's int8 twin so that it agrees with the fp32 model.

    python -m training.int8_tune --model detector-v1.7 --data runs/data/detector-v1.7 \\
        --steps 200 --out runs/int8/detector-v1.7 [--also runs/data/heldout-elgarh/images/test] [--install]

Why: post-training int8 (``export.onnx --int8``, MinMax ranges from 32 calibration photos) of detector-v1.7
misses 3-7 % of the fp32 model's detections (docs/int8-variants-detector-v1.7.md). The ranges are set by
rare extremes (pre-activation convolution outputs reach -115..78), so most values get a few of the 256 levels.
Here the int8 rounding onnxruntime will apply is simulated in PyTorch (``FakeQuant``) on the model's own
weights, and only the range of each quantised activation (two numbers per tensor, 392 for v1.7) is learned,
by gradient descent, so that the simulated int8 model gives the untouched fp32 model's raw head outputs on
augmented training photos (``logit_loss``). The weights are not changed: the twin is the shipped ONNX graph
quantised by ``export.onnx.quantize_int8`` with the learned ranges (onnxruntime ``TensorQuantOverrides``),
and it is judged, as every int8 twin, by agreement with the fp32 model on the test photos.

What is simulated (as ``export.onnx.quantize_int8`` quantises a YOLOv8 graph; BatchNorm is fused first):
- every convolution weight: symmetric per output channel, int8 -127..127 (onnxruntime's default for QInt8);
- every activation tensor that gets a QuantizeLinear/DequantizeLinear pair: convolution outputs, SiLU's
  sigmoid and product, residual sums, concatenations (C2f, SPPF and the neck's ``Concat``): uint8 over its
  range (MinMax on the export's calibration photos to start with, zero included);
- not simulated: the head's decode (kept fp32 by the export), max-pooling, upsampling and splits (they keep
  their input's scale), bias rounding (int32).
Mixed precision (``--fp32-head-outputs``, ``--fp32-modules 0-2``) keeps those convolutions' weights and
activations fp32 in both; a fp32 module's output that an int8 operator reads is still rounded there by
onnxruntime, and ``FakeQuant.match_twin`` sets exactly the points the int8 graph quantises.
Rounding passes gradients straight through (inside the range; zero outside), as in LSQ. Each simulated tensor
is found in the ONNX graph by its operator and module scope, and checked to have the same calibration range
(``map_points``), so a graph the simulation does not describe fails loudly instead of quantising blind.

Measured (2026-11-30, detector-v1.7, 200 test photos): see training/README.md "int8 twin".
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

N_CALIB = 32  # as export.onnx --int8 (n_calib)
CALIB_SEED = 1  # as export.onnx: sample_images(train, n_calib, seed=1)
VAL_SEED = 2  # the val photos on which snapshots are compared: sample_images(val, n_val, seed=VAL_SEED)


class _Point:
    """One quantised activation tensor: MinMax observer and uint8 fake quantiser, optionally with learnable
    range (``lo * exp(u)``, ``hi * exp(v)``; rounding passes gradients straight through, as in LSQ)."""

    def __init__(self, name: str, op: str, scope: str) -> None:
        self.name, self.op = name, op  # op: the ONNX operator whose output this is (Conv, Sigmoid, Mul, ...)
        self.scope = scope  # the torch module the operator belongs to (its ONNX node's scope)
        self.lo, self.hi = 0.0, 0.0  # zero is always inside the range, as onnxruntime's compute_scale_zp
        self.on = True  # False: this tensor stays fp32 (mixed precision)
        self.u: Any = None  # learnable log-multipliers of lo and hi (FakeQuant.learn_ranges)
        self.v: Any = None

    def range(self) -> tuple[float, float]:
        """The range the quantiser uses now (learned multipliers applied)."""
        if self.u is None:
            return self.lo, self.hi
        return self.lo * float(self.u.detach().exp()), self.hi * float(self.v.detach().exp())

    def __call__(self, x: Any, sim: FakeQuant) -> Any:
        import torch

        if sim.observing:
            self.lo = min(self.lo, float(x.detach().min()))
            self.hi = max(self.hi, float(x.detach().max()))
        if not sim.enabled or not self.on or self.hi <= self.lo:
            return x
        if self.u is None:
            scale = (self.hi - self.lo) / 255.0
            zp = int(round(-self.lo / scale))
            return torch.fake_quantize_per_tensor_affine(x, scale, min(max(zp, 0), 255), 0, 255)
        lo, hi = self.lo * self.u.exp(), self.hi * self.v.exp()
        scale = (hi - lo) / 255.0
        q = ((x - lo) / scale).clamp(0, 255)
        return (q + (q.round() - q).detach()) * scale + lo


def _within(scope: str, modules: tuple[str, ...]) -> bool:
    """Whether module path ``scope`` is one of ``modules`` or inside one of them."""
    return any(scope == m or scope.startswith(m + ".") for m in modules)


def _quant_weight(w: Any) -> Any:
    import torch

    absmax = w.detach().abs().amax(dim=(1, 2, 3)).clamp(min=1e-12)
    scale = (absmax / 127.0).float()
    zp = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -127, 127)


class _QSiLU:
    """SiLU as onnxruntime runs it quantised: Sigmoid and Mul, each output rounded."""

    def __init__(self, sim: FakeQuant, name: str) -> None:
        import torch

        class Mod(torch.nn.Module):
            def forward(self_inner, x: Any) -> Any:  # noqa: N805
                s = self.sig(torch.sigmoid(x), sim)
                return self.mul(x * s, sim)

        self.sig = _Point(f"{name}.sigmoid", "Sigmoid", f"{name}.act")
        self.mul = _Point(f"{name}.mul", "Mul", f"{name}.act")
        self.sig.on = self.mul.on = not _within(f"{name}.act", sim.fp32)
        self.module = Mod()


class FakeQuant:
    """Attach int8 fake quantisation to a fused ultralytics YOLOv8 ``DetectionModel`` (in place).

    ``observing``: record activation ranges (run ``calibrate``); ``enabled``: round weights and activations.
    ``fp32``: module names (a convolution, e.g. ``head_output_convs``, or a whole module, ``model.0``) whose
    convolution weights and activations stay fp32 (mixed precision; their ranges are still observed). Where
    such a module's output feeds a quantised operator, onnxruntime quantises it there all the same:
    ``match_twin`` switches those points back on from the int8 graph. ``remove()`` restores the model exactly
    (its own modules and forwards), e.g. before saving."""

    def __init__(self, model: Any, fp32: tuple[str, ...] | list[str] = ()) -> None:
        import torch
        import torch.nn.functional as F
        from ultralytics.nn.modules import SPPF, Bottleneck, C2f, Concat, Conv, Detect

        self.model, self.observing, self.enabled = model, False, False
        self.points: list[_Point] = []
        self._undo: list[Any] = []
        if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
            raise ValueError("fuse the model first (model.fuse()): onnxruntime quantises the fused graph")
        skip = set()
        for m in model.modules():
            if isinstance(m, Detect) and getattr(m, "dfl", None) is not None:
                skip.update(id(c) for c in m.dfl.modules())  # the decode stays fp32
        convs = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and id(m) not in skip}
        self.fp32 = tuple(fp32)
        unknown = [s for s in self.fp32 if not any(_within(c, (s,)) for c in convs)]
        if unknown:
            raise ValueError(f"not quantised convolutions or modules of this model: {unknown[:3]}")
        for name, m in model.named_modules():
            if name in convs:
                p = self._point(f"{name}.out", "Conv", name)
                int8_weight = not _within(name, self.fp32)

                def fwd(x: Any, m: Any = m, p: _Point = p, q: bool = int8_weight) -> Any:
                    w = _quant_weight(m.weight) if self.enabled and q else m.weight
                    return p(F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups), self)

                m.forward = fwd
                self._undo.append(lambda m=m: m.__dict__.pop("forward", None))
            if isinstance(m, Conv) and isinstance(m.act, torch.nn.SiLU):
                q = _QSiLU(self, name)
                self.points += [q.sig, q.mul]
                old = m.act
                m.act = q.module
                self._undo.append(lambda m=m, old=old: setattr(m, "act", old))
            if isinstance(m, Bottleneck) and m.add or isinstance(m, Concat):
                op = "Concat" if isinstance(m, Concat) else "Add"
                self._hook(m.register_forward_hook(
                    lambda mod, inp, out, p=self._point(f"{name}.out", op, name): p(out, self)))
            if isinstance(m, (C2f, SPPF)):  # their torch.cat feeds cv2
                self._hook(m.cv2.register_forward_pre_hook(
                    lambda mod, inp, p=self._point(f"{name}.cat", "Concat", name): (p(inp[0], self),)))

    def _point(self, name: str, op: str, scope: str) -> _Point:
        p = _Point(name, op, scope)
        p.on = not _within(scope, self.fp32)
        self.points.append(p)
        return p

    def match_twin(self, names: dict[str, str], quantised: set[str]) -> list[str]:
        """Quantise exactly the activations the int8 graph quantises: ``names`` maps points to ONNX tensors
        (``map_points``), ``quantised`` holds the tensors that get a QuantizeLinear in the twin
        (``quantised_activations``). Returns the points switched on or off."""
        changed = []
        for p in self.points:
            on = names[p.name] in quantised
            if on != p.on:
                p.on = on
                changed.append(p.name)
        return changed

    def _hook(self, handle: Any) -> None:
        self._undo.append(handle.remove)

    def calibrate(self, batches: list[Any]) -> None:
        """Re-measure every activation range (MinMax, zero included) on ``batches`` with fp32 arithmetic,
        as onnxruntime's calibration runs the fp32 graph."""
        import torch

        enabled, training = self.enabled, self.model.training
        for p in self.points:
            p.lo, p.hi = 0.0, 0.0
        self.enabled, self.observing = False, True
        self.model.train()  # raw head outputs; no BatchNorm left to update
        with torch.no_grad():
            for x in batches:
                self.model(x)
        self.observing, self.enabled = False, enabled
        self.model.train(training)

    def learn_ranges(self) -> list[Any]:
        """Make every activation range learnable from its current (calibrated) value; returns the parameters."""
        import torch

        params = []
        for p in self.points:
            p.u, p.v = torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)
            params += [p.u, p.v]
        return params

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def fp32_scopes(model: Any, head_outputs: bool = False, modules: tuple[int, int] | None = None) -> list[str]:
    """The ``FakeQuant(fp32=...)`` names for the mixed precision of ``export.onnx.quantize_int8``:
    ``head_outputs`` (``fp32_head_outputs``) and ``modules`` (``fp32_modules``, first and last index)."""
    out = head_output_convs(model) if head_outputs else []
    return out + ([f"model.{i}" for i in range(modules[0], modules[1] + 1)] if modules else [])


def _modules(report: dict[str, Any]) -> tuple[int, int] | None:
    m = report.get("fp32_modules")
    return (int(m[0]), int(m[1])) if m else None


def head_output_convs(model: Any) -> list[str]:
    """Module names of the detection head's output convolutions (the plain ``nn.Conv2d`` ending each box and
    class branch), the ones ``export.onnx.head_output_nodes`` keeps fp32 with ``fp32_head_outputs``."""
    import torch
    from ultralytics.nn.modules import Detect

    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(b[-1])] for m in model.modules() if isinstance(m, Detect)
            for b in (*m.cv2, *m.cv3) if isinstance(b[-1], torch.nn.Conv2d)]


def calibration_batches(images: list[np.ndarray], runner: Any, batch: int = 8) -> list[Any]:
    """Torch batches of ``images`` preprocessed by the runtime ``runner`` (``YoloDetector.preprocess``), as
    the quantiser's calibration and the shipped model see them (as the full square: one shape per batch)."""
    import torch

    xs = [runner.preprocess(im, square=True)[0] for im in images]
    return [torch.from_numpy(np.concatenate(xs[i:i + batch])) for i in range(0, len(xs), batch)]


Ranges = dict[str, tuple[float, float]]  # point (or tensor) name -> (rmin, rmax)
THRESHOLDS = (0.1, 0.25)  # the confidence thresholds at which export.onnx judges int8 agreement


def logit_loss(s_box: Any, s_cls: Any, t_box: Any, t_cls: Any, reg_max: int = 16,
               box_weight: float = 1.0, floor: float = 0.02, focus: float = 0.0) -> tuple[Any, dict]:
    """Mean squared difference of class logits where the teacher scores above ``floor`` (where int8 noise can
    move a detection across a threshold; the sea of near-zero background scores would drown it in a BCE), plus
    ``box_weight`` x ``training.distill.box_kl``. ``focus`` > 0 weighs scores near the judged thresholds
    (``THRESHOLDS``) up to ``1 + focus`` times (a Gaussian of width 0.35 in logit)."""
    import math

    import torch

    from training.distill import box_kl

    t_score = t_cls.sigmoid()
    mask = t_score > floor
    w = torch.ones_like(t_cls)
    if focus:
        d = torch.stack([(t_cls - math.log(c / (1 - c))).abs() for c in THRESHOLDS]).min(dim=0).values
        w = w + focus * torch.exp(-0.5 * (d / 0.35) ** 2)
    l_cls = (w * (s_cls - t_cls) ** 2)[mask].sum() / w[mask].sum().clamp(min=1)
    l_box = box_kl(s_box, t_box, t_score, reg_max) if box_weight else torch.zeros(())
    return l_cls + box_weight * l_box, {"cls": float(l_cls.detach()), "box": float(l_box.detach())}


def score_gap(model: Any, sim: FakeQuant, teacher: Any, batches: list[Any], floor: float = 0.05) -> float:
    """Mean |int8-simulated - fp32-teacher| class score on ``batches``, over scores where the teacher gives
    more than ``floor`` (the ones a threshold can flip)."""
    import torch

    from training.distill import head_outputs

    enabled, training = sim.enabled, model.training
    sim.enabled = True
    diffs = []
    with torch.no_grad():
        for x in batches:
            model.train()
            s = head_outputs(model, x)[1].sigmoid()
            t = head_outputs(teacher.eval(), x)[1].sigmoid()
            diffs.append((s - t).abs()[t > floor].numpy())
    sim.enabled = enabled
    model.train(training)
    d = np.concatenate(diffs)
    return float(d.mean()) if d.size else 0.0


# -- onnxruntime side ---------------------------------------------------------------------------------
def onnx_scope(tensor: str) -> str:
    """The torch module path of the node that writes an exporter-named tensor:
    ``/model.4/m.0/cv1/conv/Conv_output_0`` -> ``model.4.m.0.cv1.conv``; nested sequential scopes
    (``/model.22/cv3.2/cv3.2.2/Conv_output_0``) keep their last, full name -> ``model.22.cv3.2.2``."""
    parts = [p for p in tensor.split("/")[:-1] if p]
    out: list[str] = []
    for p in parts:
        if out and p.startswith(out[-1] + "."):
            out[-1] = p
        else:
            out.append(p)
    return ".".join(out)


def ort_ranges(onnx_path: Path, tensors: list[np.ndarray], workdir: Path) -> dict[str, tuple[float, float]]:
    """MinMax range of every tensor of ``onnx_path`` on the input ``tensors``, by onnxruntime's own calibrator
    (what ``quantize_static`` would use)."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from export.onnx import calibration_reader

    name = onnx.load(str(onnx_path)).graph.input[0].name
    cal = create_calibrator(str(onnx_path), augmented_model_path=str(workdir / "augmented.onnx"),
                            calibrate_method=CalibrationMethod.MinMax)
    cal.collect_data(calibration_reader(name, tensors))
    data = cal.compute_data().data
    (workdir / "augmented.onnx").unlink(missing_ok=True)
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.items()}


def map_points(sim: FakeQuant, ranges: dict[str, tuple[float, float]], rtol: float = 1e-3) -> dict[str, str]:
    """point name -> ONNX tensor name: the tensor written by the same operator type in the same module scope,
    checked to have the range the point measured on the same calibration photos. Raises ValueError when a
    point has no such tensor (a graph this simulation does not describe)."""
    by_key: dict[tuple[str, str], list[str]] = {}
    for t in ranges:
        op = t.rsplit("/", 1)[-1].split("_")[0]
        by_key.setdefault((onnx_scope(t), op), []).append(t)
    out, bad = {}, []
    for p in sim.points:
        cands = by_key.get((p.scope, p.op), [])
        lo, hi = p.range()
        ok = [t for t in cands
              if max(abs(min(ranges[t][0], 0) - lo), abs(max(ranges[t][1], 0) - hi)) <= rtol * max(hi - lo, 1e-6)]
        if len(ok) == 1:
            out[p.name] = ok[0]
        else:
            bad.append(f"{p.name} ({p.op} in {p.scope}: {len(cands)} candidates, {len(ok)} with its range)")
    if bad:
        raise ValueError(f"{len(bad)} simulated tensors not found in the ONNX graph: {'; '.join(bad[:5])}")
    return out


def tune_ranges(teacher: Any, student: Any, sim: FakeQuant, loader: Any, steps: int, lr: float = 0.02,
                check: list[Any] | None = None, every: int = 50, box_weight: float = 1.0,
                ema: float = 0.95, focus: float = 0.0) -> tuple[list[dict[str, float]], list[tuple[int, Ranges]]]:
    """Learn the activation ranges of ``sim`` (weights fixed) so that the int8-simulated ``student`` gives the
    fp32 ``teacher``'s raw head outputs (``logit_loss``) on ``loader`` batches: Adam at ``lr`` on the
    log-multipliers of each range, for ``steps`` batches.

    Single batches pull the ranges about, so the ranges kept are an exponential moving average (``ema``) of the
    learned ones. Returns the per-step log (with the score gap on ``check`` every ``every`` steps) and snapshots
    ``(step, {point name: range})`` of the averaged ranges every ``every`` steps and at the end, to choose from
    on held-out photos (``tune_twin``). ``sim`` is left with the last averaged ranges."""
    import torch

    from training.distill import head_outputs

    teacher.eval()
    for p in list(teacher.parameters()) + list(student.parameters()):
        p.requires_grad_(False)
    params = sim.learn_ranges()
    avg = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=lr)

    def load(values: list[Any]) -> list[Any]:
        """Put ``values`` into the range parameters; return what they held."""
        old = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, v in zip(params, values, strict=True):
                p.copy_(v)
        return old

    sim.enabled, log, snaps, t0 = True, [], [], time.monotonic()
    while len(log) < steps:
        for x in loader:
            with torch.no_grad():
                t_box, t_cls = head_outputs(teacher, x)
            student.train()
            s_box, s_cls = head_outputs(student, x)
            loss, parts = logit_loss(s_box, s_cls, t_box, t_cls, box_weight=box_weight, focus=focus)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p, v in zip(params, avg, strict=True):
                    v.mul_(ema).add_(p.detach(), alpha=1 - ema)
            row = {"step": len(log) + 1, "s": round(time.monotonic() - t0, 1), **parts}
            if row["step"] % every == 0 or row["step"] == steps:
                live = load(avg)
                snaps.append((row["step"], {pt.name: pt.range() for pt in sim.points}))
                if check is not None:
                    row["gap"] = score_gap(student, sim, teacher, check)
                load(live)
                logger.info("step %d %.0f s cls %.4f box %.4f score gap (averaged ranges) %s", row["step"], row["s"],
                            parts["cls"], parts["box"], f"{row['gap']:.4f}" if "gap" in row else "-")
            log.append(row)
            if len(log) >= steps:
                break
    load(avg)
    return log, snaps


def twin_spec(spec: Any) -> Any:
    """The manifest entry of ``spec``'s int8 twin, ``<name>-int8`` (not the default)."""
    from wtivision.registry import ModelSpec

    qname = f"{spec.name}-int8"
    return ModelSpec(**{**spec.to_dict(), "name": qname, "file": f"{qname}.onnx", "precision": "int8",
                        "default": False})


def staged_fp32(reg: Any, spec: Any, data: Path, work: Path) -> tuple[Path, Any, list[np.ndarray]]:
    """``spec``'s verified fp32 file copied into ``work`` (``stage`` writes a manifest beside it: never in
    models/), its runtime runner, and the export's calibration photos from ``data``'s train split."""
    import shutil

    from export.onnx import sample_images, stage
    from wtivision.registry import ModelSpec

    fp32_path = work / spec.file
    shutil.copyfile(reg.verify(spec), fp32_path)
    runner = stage(ModelSpec(**spec.to_dict()), fp32_path)
    return fp32_path, runner, sample_images(Path(data) / "images" / "train", N_CALIB, seed=CALIB_SEED)


def _finished_run(out: Path, models_dir: Path | None) -> tuple[dict[str, Any], Any, Any]:
    """The report of the finished run in ``out``, the registry and the fp32 model's entry, which must be the
    model the run tuned."""
    from wtivision.registry import Registry

    report = json.loads((Path(out) / "int8_tune.json").read_text(encoding="utf-8"))
    reg = Registry(models_dir) if models_dir else Registry()
    spec = reg.get(report["model"])
    if spec.sha256 != report["model_sha256"]:
        raise ValueError(f"{spec.name} changed since the run (sha256 {spec.sha256} vs {report['model_sha256']})")
    return report, reg, spec


def tune_twin(model_name: str, data: Path, out: Path, *, models_dir: Path | None = None, steps: int = 200,
              lr: float = 0.02, batch: int = 8, n_check: int = 200, also: list[Path] | tuple = (),
              install: bool = False, keep: bool = False, workers: int = 1, loader_seed: int = 0, every: int = 50,
              n_val: int = 150, focus: float = 0.0, fp32_head_outputs: bool = False,
              fp32_modules: tuple[int, int] | None = None) -> dict[str, Any]:
    """Learn the activation ranges of the shipped fp32 detector ``model_name``'s int8 twin (``tune_ranges``),
    keep the snapshot (every ``every`` steps, or the MinMax start) that agrees best with fp32 on ``n_val`` val
    photos, quantise with it and measure it against the fp32 model (``export.onnx``'s agreement rule, on
    ``n_check`` test photos of ``data``; ``also``: more folders, reported only); with ``install``, register it
    if it meets the rule. ``fp32_head_outputs``: the head's output convolutions stay fp32, in the simulation
    and in the twin (``export.onnx.quantize_int8``), so class logits are neither clipped nor rounded;
    ``fp32_modules`` (first, last): the ultralytics modules ``model.first`` .. ``model.last`` stay fp32 in both
    (e.g. (0, 2), the stem, where the widest activation ranges are).
    Writes ``out/<model>-int8.onnx``, ``out/ranges.json`` (the chosen ranges), ``out/snapshots.json`` (every
    candidate's) and ``out/int8_tune.json``; returns the report."""
    import copy
    import tempfile

    import torch
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.onnx import quantised_activations, quantize_int8, sample_images
    from training.common import load_checkpoint
    from training.distill import PhotoViews
    from wtivision.evaluate import split_images
    from wtivision.registry import Registry, sha256_file

    reg = Registry(models_dir) if models_dir else Registry()
    spec = reg.get(model_name)
    if spec.task != "detect" or spec.precision != "fp32":
        raise ValueError(f"{model_name} is not an fp32 detector")
    src = spec.extra.get("pytorch_weights")
    if not src or not (reg.root / src).is_file():
        raise FileNotFoundError(f"{model_name}: its PyTorch source ({src or 'extra.pytorch_weights'}) is not in "
                                f"{reg.root}")
    if sha256_file(reg.root / src) != spec.extra.get("pytorch_weights_sha256"):
        raise ValueError(f"{reg.root / src} does not match the manifest's pytorch_weights_sha256")
    imgsz = int(spec.input_size[0])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        fp32_path, runner, calib_imgs = staged_fp32(reg, spec, Path(data), work)
        teacher = load_checkpoint(reg.root / src, "pytorch_weights")[0].eval()
        student = copy.deepcopy(teacher).fuse()
        sim = FakeQuant(student, fp32=fp32_scopes(student, fp32_head_outputs, fp32_modules))
        calib = calibration_batches(calib_imgs, runner)
        sim.calibrate(calib)
        pre = work / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        names = map_points(sim, ort_ranges(pre, [b[i:i + 1].numpy() for b in calib for i in range(len(b))], work))
        # the twin quantises what the simulation must round: with fp32 modules, their outputs where a quantised
        # operator reads them (a plain twin: no change, a check that both describe the same graph)
        minmax = quantize_int8(fp32_path, runner, calib_imgs, work / "minmax.onnx", fp32_modules=fp32_modules,
                               fp32_head_outputs=fp32_head_outputs)
        changed = sim.match_twin(names, quantised_activations(minmax))
        quantised = {p.name for p in sim.points if p.on}
        logger.info("%d of %d activations of %s simulated, found in its ONNX graph and quantised there (%d set "
                    "from the int8 graph)", len(quantised), len(names), spec.name, len(changed))

        views = PhotoViews([p for p, _ in split_images(Path(data), "train")], imgsz, loader_seed)
        loader = torch.utils.data.DataLoader(views, batch_size=batch, shuffle=True, num_workers=workers,
                                             drop_last=True, persistent_workers=workers > 0)
        watch = calibration_batches(sample_images(Path(data) / "images" / "val", 32, seed=3, top_up=False), runner)
        gap0 = score_gap(student, sim, teacher, watch)
        start = {p.name: p.range() for p in sim.points}
        log, snaps = tune_ranges(teacher, student, sim, loader, steps, lr, check=watch, every=every, focus=focus)

        # choose among the MinMax start and the snapshots by agreement on val photos (never on test photos)
        snaps = [(step, {names[k]: r for k, r in snap.items() if k in quantised})
                 for step, snap in [(0, start), *snaps]]
        best, rep, candidates = choose_and_measure(spec, fp32_path, runner, calib_imgs, snaps, Path(data), out,
                                                   work, n_val=n_val, n_check=n_check, also=also,
                                                   fp32_head_outputs=fp32_head_outputs, fp32_modules=fp32_modules)

    report: dict[str, Any] = {
        "model": spec.name, "model_sha256": spec.sha256, "pytorch_weights": src, "data": str(data),
        "steps": steps, "lr": lr, "batch": batch, "focus": focus, "fp32_head_outputs": fp32_head_outputs,
        "fp32_modules": list(fp32_modules) if fp32_modules else None,
        "calibration": {"images": N_CALIB, "seed": CALIB_SEED},
        "tensors": len(best["ranges"]), "chosen_step": best["step"], "val": {"images": n_val, "seed": VAL_SEED},
        "candidates": candidates,
        "score_gap_val": {"before": round(gap0, 5), "after": round(log[-1].get("gap", float("nan")), 5)},
        "int8": rep, "log": log}
    logger.info("int8 twin of %s: agreement %s, %.1f ms (fp32 %.1f ms)", spec.name, rep["agreement"],
                rep["latency_ms"], rep["fp32_latency_ms"])
    (out / "int8_tune.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if install or keep:
        install_twin(out, reg.root, keep=keep)
    return report


def choose_and_measure(spec: Any, fp32_path: Path, runner: Any, calib_imgs: list[np.ndarray],
                       snaps: list[tuple[int, dict[str, tuple[float, float]]]], data: Path, out: Path, work: Path, *,
                       n_val: int, n_check: int, also: list[Path] | tuple = (), val_seed: int = VAL_SEED,
                       fp32_head_outputs: bool = False, fp32_modules: tuple[int, int] | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any], list[dict]]:
    """Quantise the fp32 model ``fp32_path`` with each snapshot's ranges (ONNX tensor -> range), keep the one
    that agrees best with fp32 on ``n_val`` val photos of ``data`` (never test photos; ties: the later step) and
    measure it against fp32 on ``n_check`` test photos (``also``: more folders, reported only).
    Writes ``out/<model>-int8.onnx``, ``out/ranges.json`` (the chosen ranges) and ``out/snapshots.json`` (every
    snapshot's). Returns the chosen candidate, the test report and every candidate's val agreement."""
    import shutil

    from export.common import latency_ms
    from export.onnx import int8_good_enough, int8_report, quantize_int8, sample_images, stage
    from wtivision.registry import ModelSpec

    qspec = twin_spec(spec)
    val = sample_images(data / "images" / "val", n_val, seed=val_seed, top_up=False)
    val_raw = [runner.raw(im) for im in val]  # fp32 once for every candidate
    candidates = []
    for step, ranges in snaps:
        (work / f"q{step}").mkdir()
        q = quantize_int8(fp32_path, runner, calib_imgs, work / f"q{step}" / qspec.file, ranges=ranges,
                          fp32_head_outputs=fp32_head_outputs, fp32_modules=fp32_modules)
        agree = int8_report(runner, stage(ModelSpec(**qspec.to_dict()), q), val, fp32_raw=val_raw)["agreement"]
        candidates.append({"step": step, "val_agreement": agree, "file": q, "ranges": ranges,
                           "score": min(agree["conf_0.25"], agree["conf_0.1"])})
        logger.info("ranges after %d steps: val agreement %s", step, agree)
    best = max(candidates, key=lambda c: (c["score"], c["step"]))
    (out / "ranges.json").write_text(json.dumps({t: list(r) for t, r in best["ranges"].items()}, indent=0),
                                     encoding="utf-8")
    # every snapshot's ranges, so that a later choice on more val photos (rechoose) needs no new run
    (out / "snapshots.json").write_text(json.dumps({str(step): {t: list(r) for t, r in ranges.items()}
                                                    for step, ranges in snaps}), encoding="utf-8")
    qrunner = stage(qspec, best["file"])
    check = sample_images(data / "images" / "test", n_check, seed=2, top_up=False)
    rep: dict[str, Any] = {**int8_report(runner, qrunner, check), "images": len(check),
                           "fp32_latency_ms": latency_ms(runner.detect, check)}
    rep["latency_vs_fp32"] = round(rep["latency_ms"] / rep["fp32_latency_ms"], 2)
    rep["meets_rule"] = int8_good_enough(rep)
    rep["also"] = {}
    for folder in also:
        imgs = sample_images(Path(folder), n_check, seed=2, top_up=False)
        rep["also"][str(folder)] = {**int8_report(runner, qrunner, imgs)["agreement"], "images": len(imgs)}
    shutil.copyfile(best["file"], out / qspec.file)
    return best, rep, [{k: v for k, v in c.items() if k not in ("ranges", "file")} for c in candidates]


def rechoose(out: Path, n_val: int, val_seed: int = VAL_SEED, models_dir: Path | None = None,
             n_check: int | None = None) -> dict[str, Any]:
    """Choose again among the snapshots of the finished ``tune_twin`` run in ``out`` (``snapshots.json``), on
    ``n_val`` val photos drawn with ``val_seed`` (a single run's 150 val photos hold about 180 detections at conf
    0.1, so one miss moves agreement by 0.006: more photos choose more surely), then measure the chosen twin on
    the same test photos as the run (``n_check``: on that many instead). Rewrites the run's twin,
    ``ranges.json`` and ``int8_tune.json`` (whose ``installed`` and ``ship_check`` entries, if any, are
    dropped: they described the earlier choice)."""
    import tempfile

    out = Path(out)
    report, reg, spec = _finished_run(out, models_dir)
    snaps = [(int(k), {t: (float(r[0]), float(r[1])) for t, r in v.items()})
             for k, v in json.loads((out / "snapshots.json").read_text(encoding="utf-8")).items()]
    data = Path(report["data"])
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        fp32_path, runner, calib_imgs = staged_fp32(reg, spec, data, work)
        best, rep, candidates = choose_and_measure(
            spec, fp32_path, runner, calib_imgs, snaps, data, out, work, n_val=n_val, val_seed=val_seed,
            n_check=n_check or report["int8"]["images"], also=[Path(f) for f in report["int8"].get("also", {})],
            fp32_head_outputs=bool(report.get("fp32_head_outputs")), fp32_modules=_modules(report))
    for stale in ("installed", "ship_check"):
        report.pop(stale, None)
    report.update({"chosen_step": best["step"], "candidates": candidates, "int8": rep,
                   "val": {"images": n_val, "seed": val_seed}})
    logger.info("int8 twin of %s chosen again (%d val photos): step %d, test agreement %s", spec.name, n_val,
                best["step"], rep["agreement"])
    (out / "int8_tune.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def install_twin(out: Path, models_dir: Path | None = None, keep: bool = False,
                 ship_check_json: Path | None = None) -> dict[str, Any]:
    """Register the int8 twin of a finished ``tune_twin`` run folder ``out`` as ``<model>-int8``.

    It must meet the agreement rule (``keep``: install it anyway, never as the default, the card saying it
    does not meet the rule). It becomes the default only if it meets the rule, its fp32 model is the default,
    it is faster, and (with ``ship_check_json``, the ``--json`` of ``training.ship_check --candidate
    <model>-int8 --baseline <model>``) no judged class is clearly worse. The fp32 model's card gets an
    int8-twin section, with the ship check's lines if given."""
    from export.common import install_model, write_manifest_entry

    out = Path(out)
    report, reg, spec = _finished_run(out, models_dir)
    rep, qspec = report["int8"], twin_spec(spec)
    qname = qspec.name
    ship_ok = True
    if ship_check_json:
        report["ship_check"], ship_ok = ship_check_lines(Path(ship_check_json), spec.name, qname)
    if not rep["meets_rule"] and not keep:
        from export.onnx import MIN_INT8_AGREEMENT

        raise ValueError(f"agreement {rep['agreement']} is below the {MIN_INT8_AGREEMENT} rule: {qname} not installed "
                         f"(--keep installs it as a non-default option; report: {out / 'int8_tune.json'})")
    qspec.metrics = {"int8_agreement_with_fp32": rep["agreement"], "int8_agreement_images": rep["images"],
                     "latency_ms": rep["latency_ms"], "fp32_latency_ms": rep["fp32_latency_ms"]}
    # what describes the fp32 file only (its PyTorch source, the static export it replaced) stays with it
    qspec.extra = {k: v for k, v in spec.extra.items()
                   if not k.startswith("pytorch_weights") and k != "static_export_sha256"}
    qspec.extra.update({"int8_of": spec.name, "int8_of_sha256": spec.sha256, "meets_agreement_rule":
                        rep["meets_rule"], "activation_ranges": f"learned by training.int8_tune "
                                                               f"({report['chosen_step']} steps)",
                        "fp32_head_outputs": bool(report.get("fp32_head_outputs")),
                        "fp32_modules": report.get("fp32_modules")})
    # the default stays with this pair (fp32 or its twin, when installing again): the twin if it qualifies
    current = reg.default_for(spec.role)
    pair_default = spec.default or (current is not None and current.name == qname)
    qspec.default = bool(pair_default and rep["meets_rule"] and ship_ok
                         and rep["latency_ms"] < rep["fp32_latency_ms"])
    if spec.default != (pair_default and not qspec.default):
        spec.default = pair_default and not qspec.default
        write_manifest_entry(reg.root, spec)
    install_model(out / qspec.file, qspec, reg.root)
    card = reg.root / spec.card
    card.write_text(with_twin_section(card.read_text(encoding="utf-8"), report), encoding="utf-8")
    report["installed"] = {"name": qname, "default": qspec.default}
    (out / "int8_tune.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


TWIN_HEADING = "## int8 twin"


def ship_check_lines(path: Path, baseline: str, candidate: str) -> tuple[list[str], bool]:
    """The text lines (``training.ship_check.to_text``, header dropped) and the verdict of a ship check's
    ``--json`` file, which must compare ``candidate`` with ``baseline``."""
    from training.ship_check import ShipReport, to_text

    d = json.loads(Path(path).read_text(encoding="utf-8"))
    if (d.get("baseline"), d.get("candidate")) != (baseline, candidate):
        raise ValueError(f"{path} compares {d.get('candidate')} with {d.get('baseline')}, not {candidate} with "
                         f"{baseline}")
    r = ShipReport(d["baseline"], d["candidate"], bool(d["passes"]), d["rows"])
    return [line.strip() for line in to_text(r).splitlines()[2:]], r.passes


def _misses(a: dict[str, Any]) -> str:
    """'missed M of N, the rule allows K' at conf 0.25 and 0.1, from an agreement dict: how near the rule is."""
    from export.onnx import MIN_INT8_AGREEMENT as min_agreement

    parts = []
    for c in ("0.25", "0.1"):
        n = int(a[f"fp32_detections_conf_{c}"])
        parts.append(f"{round(n * (1 - a[f'conf_{c}']))} of {n} missed at {c}, "
                     f"{int(n * (1 - min_agreement) + 1e-9)} allowed")
        # 1e-9: 0.02 * 150 is 2.9999999999999996 in floating point
    return "; ".join(parts)


def with_twin_section(card: str, report: dict[str, Any]) -> str:
    """The model card with its int8-twin section (replacing an older one) describing ``report``."""
    r = report["int8"]
    a = r["agreement"]
    from export.onnx import MIN_INT8_AGREEMENT

    verdict = ("It meets the agreement rule." if r.get("meets_rule") else
               f"**It does not meet the agreement rule (>= {MIN_INT8_AGREEMENT} at both thresholds): it is not the "
               "default, only a "
               "faster option for those who accept that it misses some of the fp32 model's detections.**")
    focus = f" --focus {report['focus']:g}" if report.get("focus") else ""
    mixed = (" The head's output convolutions (box distributions and class logits) stay fp32."
             if report.get("fp32_head_outputs") else "")
    if mixed:
        focus += " --fp32-head-outputs"
    if modules := _modules(report):
        first, last = modules
        focus += f" --fp32-modules {first}-{last}"
        mixed += f" Its modules {first}-{last} (`model.{first}` .. `model.{last}`) run in fp32."
    lines = [
        f"{TWIN_HEADING} ({report['model']}-int8)", "",
        f"Static QDQ int8 (per-channel int8 weights, uint8 activations) of this model's ONNX graph, with this "
        f"model's weights unchanged. The ranges of its {report['tensors']} quantised activations were learned with "
        f"`python -m training.int8_tune{focus}` (batches of {report['batch']} augmented training photos; the "
        f"ranges after "
        f"{report.get('chosen_step', report['steps'])} of {report['steps']} batches agreed best with fp32 on "
        f"{report.get('val', {}).get('images', 150)} val photos), so that the int8 model reproduces this fp32 "
        f"model.{mixed}", "",
        f"Agreement with this fp32 model on {r['images']} test photos (fp32 detections matched one to one, same "
        f"class, IoU >= 0.5): **{a['conf_0.25']}** of {a['fp32_detections_conf_0.25']} at conf 0.25, "
        f"**{a['conf_0.1']}** of {a['fp32_detections_conf_0.1']} at conf 0.1 ({_misses(a)}). {verdict}",
    ]
    chosen = [c["val_agreement"] for c in report.get("candidates", []) if c["step"] == report.get("chosen_step")]
    if chosen:
        v = chosen[0]
        lines.append(f"On the {report.get('val', {}).get('images', 150)} val photos that chose it: {v['conf_0.25']} "
                     f"at 0.25 ({v['fp32_detections_conf_0.25']} detections), {v['conf_0.1']} at 0.1 "
                     f"({v['fp32_detections_conf_0.1']}).")
    for name, b in r.get("also", {}).items():
        lines.append(f"On {b['images']} photos of `{name}` (not used for anything else here): {b['conf_0.25']} at "
                     f"0.25 ({b['fp32_detections_conf_0.25']} detections), {b['conf_0.1']} at 0.1 "
                     f"({b['fp32_detections_conf_0.1']}).")
    lines += ["", f"Latency (median, one photo, this machine's 2 cores): int8 {r['latency_ms']} ms, fp32 "
                  f"{r['fp32_latency_ms']} ms ({r['latency_vs_fp32']}x)."]
    if report.get("ship_check"):  # install_twin(ship_check_json=...): `training.ship_check ... --json`
        lines += ["", "Accuracy against this fp32 model (`python -m training.ship_check`, AP50, 95 % paired "
                      "bootstrap interval of int8 - fp32):", ""]
        lines += [f"- {row}" for row in report["ship_check"]]
    head = card.split(TWIN_HEADING)[0].rstrip()
    return head + "\n\n" + "\n".join(lines) + "\n"


def _span(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    if not (first.isdigit() and last.isdigit() and int(first) <= int(last)):
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST module indices, e.g. 0-2, not {text!r}")
    return int(first), int(last)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.int8_tune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="shipped fp32 detector (manifest name, e.g. detector-v1.7); not needed with "
                                    "--rechoose or --install-only (the run names it)")
    ap.add_argument("--models-dir", type=Path, default=None, help="models folder (default: the repository's)")
    ap.add_argument("--data", type=Path,
                    help="(to tune) the model's built dataset: train photos give the views and the calibration photos "
                         "(as export.onnx --int8), test photos the agreement check")
    ap.add_argument("--out", type=Path, required=True, help="run folder (int8 model, ranges.json, int8_tune.json)")
    ap.add_argument("--steps", type=int, default=200, help="batches of learning (default 200)")
    ap.add_argument("--lr", type=float, default=0.02, help="Adam peak learning rate of the log-range multipliers")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--focus", type=float, default=0.0,
                    help="weigh class scores near the judged thresholds (0.1, 0.25) up to 1+FOCUS times (default 0)")
    ap.add_argument("--fp32-head-outputs", action="store_true",
                    help="keep the head's output convolutions (box distributions, class logits) fp32 in the "
                         "simulation and the twin: no clipping or rounding of the scores, a few ms slower")
    ap.add_argument("--fp32-modules", type=_span, default=None, metavar="FIRST-LAST",
                    help="keep ultralytics modules FIRST..LAST (model.FIRST ...) fp32 in the simulation and the twin, "
                         "e.g. 0-2 for the stem")
    ap.add_argument("--every", type=int, default=50, help="steps between snapshots of the (averaged) ranges")
    ap.add_argument("--val-images", type=int, default=150,
                    help="val photos on which the snapshots (and the MinMax start) are compared (default 150)")
    ap.add_argument("--check-images", type=int, default=None,
                    help="test photos on which agreement with fp32 is measured (default 200, as export.onnx; "
                         "with --rechoose, as many as the run used)")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="another folder of photos on which to report agreement (not part of the rule); repeatable")
    ap.add_argument("--install", action="store_true",
                    help="register the int8 model as <model>-int8 in --models-dir if it meets the agreement rule; "
                         "it becomes the default if the fp32 model is the default and int8 is faster")
    ap.add_argument("--keep", action="store_true",
                    help="install it even below the rule, as a non-default option (its card says so)")
    ap.add_argument("--val-seed", type=int, default=VAL_SEED, help="seed drawing the val photos (with --rechoose)")
    ap.add_argument("--rechoose", action="store_true",
                    help="do not tune: choose again among the snapshots of the finished run in --out on "
                         "--val-images val photos (--val-seed), measure the chosen twin on test, rewrite the run")
    ap.add_argument("--install-only", action="store_true",
                    help="do not tune: install the twin of the finished run in --out (with --keep if below the rule)")
    ap.add_argument("--ship-check-json", type=Path, default=None,
                    help="(with --install/--install-only) the --json of `training.ship_check --candidate <model>-int8 "
                         "--baseline <model>`: its lines go into the card, and a failing check keeps fp32 the default")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not (a.rechoose or a.install_only) and (a.model is None or a.data is None):
        ap.error("--model and --data are needed to tune (not with --rechoose or --install-only)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from training.common import offline, seed_everything

    offline()
    seed_everything(a.seed)
    try:
        if a.rechoose:
            report = rechoose(a.out, a.val_images, a.val_seed, a.models_dir, n_check=a.check_images)
            if a.install or a.keep:
                report = install_twin(a.out, a.models_dir, keep=a.keep, ship_check_json=a.ship_check_json)
            print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=2))
            return 0
        if a.install_only:
            report = install_twin(a.out, a.models_dir, keep=a.keep, ship_check_json=a.ship_check_json)
            print(json.dumps(report["installed"]))
            return 0
        report = tune_twin(a.model, a.data, a.out, models_dir=a.models_dir, steps=a.steps, lr=a.lr, batch=a.batch,
                           n_check=a.check_images or 200, also=a.also, install=a.install, keep=a.keep,
                           workers=a.workers, loader_seed=a.seed, every=a.every, n_val=a.val_images, focus=a.focus,
                           fp32_head_outputs=a.fp32_head_outputs, fp32_modules=a.fp32_modules)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("int8 tuning FAILED: %s", exc)
        return 1
    print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
