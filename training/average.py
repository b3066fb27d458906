"""Average the weights of detectors fine-tuned from one start (weight interpolation, "model soup").

    python -m training.average --out runs/average/soup3 models/sources/detector-v1.7.pt \\
        runs/detect/detector-v1.9/weights/best.pt runs/detect/detector-v1.9b/weights/best.pt   # detector-v1.10

(``models/sources/detector-v1.7.pt`` left ``models/`` when v1.10 replaced it: ``git show
1b43f60:models/sources/detector-v1.7.pt > models/sources/detector-v1.7.pt``.)

Why: a short fine-tune of the default detector on new emphasis (mines shown at their whole-photo size, see
``train_mix``) gains on that emphasis and may forget a little elsewhere (v1.9 and v1.9b seemed to lose
heldout-elgarh pistols; most of that was pistols without a box in that set, see
datasets/testsets/unlabelled-firearms.csv). Checkpoints fine-tuned from the same start usually lie in one basin
of the loss, so their weighted mean is itself a good detector that keeps part of each one's strengths; for a
fine-tuned model and its start this is WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR
2022). It costs no training: choose the weights on the validation split, then run ``training.ship_check`` once.

Every floating-point tensor of the state (weights, BatchNorm affine parameters and running statistics) is
the weighted mean, in float32, of the inputs'; integer tensors (BatchNorm batch counters) come from the
first input. The inputs must have the same architecture and class names, and the weights must sum to 1.
The output is an ordinary ultralytics checkpoint (``weights/best.pt``, with the first input's train_args)
and a ``run.json`` naming each input with its SHA-256 and weight, so ``export.onnx`` takes the folder as it
takes a training run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def parse_input(item: str) -> tuple[Path, float]:
    """``path:weight`` (or ``path``: weight left for :func:`even_weights`) as (path, weight or NaN)."""
    path, sep, weight = item.rpartition(":")
    if not sep or not path:
        return Path(item), float("nan")
    try:
        return Path(path), float(weight)
    except ValueError:
        raise SystemExit(f"{item}: the weight after ':' must be a number") from None


def even_weights(weights: list[float]) -> list[float]:
    """Weights not given (NaN) share what the given ones leave of 1; all must end in [0, 1], summing to 1."""
    given = [w for w in weights if not math.isnan(w)]
    missing = len(weights) - len(given)
    rest = 1.0 - sum(given)
    out = [rest / missing if math.isnan(w) else w for w in weights]
    if any(w < 0 or w > 1 for w in out) or abs(sum(out) - 1.0) > 1e-6:
        raise SystemExit(f"weights must lie in [0, 1] and sum to 1; got {out}")
    return out


def average_states(states: list[dict[str, Any]], weights: list[float]) -> dict[str, Any]:
    """The weighted mean of state dicts with the same keys and shapes (integer tensors from the first)."""
    import torch

    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys:
            diff = sorted(set(keys) ^ set(s))[:5]
            raise ValueError(f"input {i + 1} has other layers than input 1 (e.g. {diff})")
        bad = [k for k in keys if s[k].shape != states[0][k].shape]
        if bad:
            raise ValueError(f"input {i + 1} differs in shape from input 1 at {bad[:5]}")
    out: dict[str, Any] = {}
    for k in keys:
        t0 = states[0][k]
        if not torch.is_floating_point(t0):
            out[k] = t0.clone()
            continue
        acc = torch.zeros_like(t0, dtype=torch.float32)
        for s, w in zip(states, weights):
            acc += w * s[k].float()
        out[k] = acc
    return out


def average_checkpoints(inputs: list[tuple[Path, float]], out: Path) -> dict[str, Any]:
    """Write ``out/weights/best.pt`` (the weighted mean of the inputs) and ``out/run.json``; return the record."""
    import copy

    from training.common import load_checkpoint, save_checkpoint
    from wtivision.registry import sha256_file

    if len(inputs) < 2:
        raise SystemExit("give at least two checkpoints to average")
    weights = even_weights([w for _, w in inputs])
    models, ckpts = [], []
    for path, _ in inputs:
        m, ck = load_checkpoint(path, "input")
        models.append(m)
        ckpts.append(ck)
    names = [dict(m.names) for m in models]
    if any(n != names[0] for n in names[1:]):
        raise SystemExit("the inputs do not have the same class names; only detectors of one lineage average")
    try:
        state = average_states([m.state_dict() for m in models], weights)
    except ValueError as exc:
        raise SystemExit(f"cannot average: {exc}") from None
    model = copy.deepcopy(models[0])
    model.load_state_dict(state)
    train_args = dict(ckpts[0].get("train_args") or {})
    record: dict[str, Any] = {
        "averaged": [{"checkpoint": str(p), "sha256": sha256_file(p), "weight": w}
                     for (p, _), w in zip(inputs, weights)],
    }
    # the dataset (and its split) the export evaluates on: the first input's, else the first that names one
    for p, _ in inputs:
        run_json = Path(p).parent.parent / "run.json"
        if run_json.is_file():
            info = json.loads(run_json.read_text(encoding="utf-8"))
            if info.get("dataset_manifest"):
                record.update({k: info[k] for k in ("data", "dataset_manifest", "dataset_manifest_sha256")
                               if k in info})
                break
    save_checkpoint(model, out / "weights" / "best.pt", train_args, {"averaged": record})
    (out / "run.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    logger.info("averaged %d checkpoints into %s (weights %s)", len(inputs), out / "weights" / "best.pt", weights)
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.average", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="ultralytics checkpoints as PATH[:WEIGHT]; weights not given share "
                                               "what the given ones leave of 1")
    ap.add_argument("--out", type=Path, required=True, help="run folder (weights/best.pt, run.json)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from training.common import offline

    offline()
    average_checkpoints([parse_input(i) for i in a.inputs], a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
