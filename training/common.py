"""Shared by the training entry points: config loading, offline set-up, seeds, run folders and the
ultralytics call itself.

Config keys (yaml): ``name`` (run folder name), ``model`` (an ultralytics model yaml, e.g. yolov8n.yaml,
yolo11n.yaml, yolov8n-cls.yaml: trained from scratch, no hub weights), ``data`` (a folder built by
``datasets.build``, its ``classify/`` sub-folder for classifiers, or a data.yaml), ``epochs``, ``imgsz``,
``batch``, ``seed``, ``device`` (cpu / 0), ``workers``, ``augment_strength`` (field augmentations,
0 disables), ``gray_p`` (probability that a training image is turned grey, default 0.05: raise it when a
source is grey-only, so that grey is not a cue for its classes), ``val`` (validate each epoch), ``runs``
(parent of the run folder, default runs/<task>), ``train_mix`` (detect only: re-weight the training split, see
``mix_train_split``) and any other ultralytics train argument under ``train_args``. Relative paths are relative
to the repo root.

A run folder ``<runs>/<name>/`` keeps: ``config.yaml`` (the config used), ``run.json`` (config path,
dataset folder, dataset manifest SHA-256, seed, versions), ``args.yaml`` and ``results.csv`` (ultralytics),
``metrics.json`` (final and best-epoch metrics) and ``weights/best.pt`` / ``weights/last.pt``; with
``train_mix`` also ``train.txt`` (the training images, one line per draw) and ``data.yaml`` (pointing at it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def load_config(path: Path) -> dict[str, Any]:
    import yaml

    cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    cfg["_config_path"] = str(Path(path).resolve())
    return cfg


def offline() -> None:
    """No downloads, no auto-installs, no telemetry (see ``export.common.offline_ultralytics``); ultralytics
    settings go to ``runs/.ultralytics`` unless ``YOLO_CONFIG_DIR`` is set."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / "runs" / ".ultralytics"))
    from export.common import offline_ultralytics

    offline_ultralytics()


def load_checkpoint(path: Path, what: str = "checkpoint") -> tuple[Any, dict[str, Any]]:
    """(float32 model, checkpoint dict) of an ultralytics checkpoint; the model is its EMA when there is one.
    A missing file exits with ``<what>: <path> does not exist``."""
    import torch

    if not Path(path).is_file():
        raise SystemExit(f"{what}: {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float(), ckpt


def save_checkpoint(model: Any, path: Path, train_args: dict[str, Any], extra: dict[str, Any]) -> None:
    """An ultralytics checkpoint of ``model`` (half precision, no EMA) that ``YOLO(path)`` and ``export.onnx``
    load; ``extra`` (e.g. ``{"distill": ...}``) records how it was made. Written to a temporary name first, so
    a checkpoint is never left half written."""
    import copy

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).eval().half()
    for p in m.parameters():
        p.requires_grad_(False)
    tmp = path.with_suffix(".tmp")
    torch.save({**extra, "model": m, "ema": None, "train_args": train_args, "epoch": -1}, tmp)
    tmp.replace(path)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else (REPO / p).resolve()


def dataset_manifest(data: Path) -> Path | None:
    """The ``manifest.csv`` of a dataset given as its folder, its classify/ folder or its data.yaml."""
    for d in (data, data.parent, data.parent.parent):
        if (d / "manifest.csv").is_file():
            return d / "manifest.csv"
    return None


def prepare_run(cfg: dict[str, Any], run_dir: Path, data: Path) -> dict[str, Any]:
    """Record the config and the dataset manifest's hash in the run folder."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=False), encoding="utf-8")
    manifest = dataset_manifest(data)
    info: dict[str, Any] = {"config": cfg.get("_config_path", ""), "data": str(data), "seed": int(cfg.get("seed", 0)),
                            "dataset_manifest": str(manifest) if manifest else "",
                            "dataset_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()
                            if manifest else ""}
    try:
        import torch
        import ultralytics

        info["versions"] = {"ultralytics": ultralytics.__version__, "torch": torch.__version__}
    except ImportError:  # pragma: no cover
        pass
    (run_dir / "run.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


MIX_KEYS = {"where", "repeat", "fraction"}
WHERE_KEYS = {"label", "source", "tile"}


def _mix_matches(where: dict[str, Any], row: dict[str, str]) -> bool:
    labels = set(filter(None, row.get("labels", "").split(";")))
    if "label" in where and str(where["label"]) not in labels:
        return False
    if "source" in where and row.get("source") != str(where["source"]):
        return False
    from datasets.tiles import TILE_MARK

    return not ("tile" in where and bool(where["tile"]) != (TILE_MARK in row.get("original", "")))


def mix_train_split(data_yaml: Path, mix: list[dict[str, Any]], run_dir: Path, seed: int) -> tuple[Path, dict]:
    """Re-weight the training split of a ``datasets.build`` folder without copying an image.

    ``mix`` is a list of rules ``{where: {label: CLASS, source: NAME, tile: true|false}, repeat: N,
    fraction: F}``; each training image takes the first rule whose ``where`` it matches (every key given must
    hold; ``tile`` tells the recipe's crops, manifest ``original`` ending ``#tile=...``, from whole photos),
    is drawn with probability ``fraction`` (default 1, seeded) and then listed ``repeat`` times (default 1).
    Images no rule matches are listed once; manifest rows whose image is not in the folder (a ``training.pack``
    subset) are left out and counted, and a pack's re-encoded ``.jpg`` stands for a ``.png`` original. Writes
    ``train.txt`` (absolute paths, one per draw) and a ``data.yaml`` whose ``train`` is that list into
    ``run_dir``; returns its path and the counts per rule. The images stay those of the dataset's manifest,
    in their splits: val and test are untouched.
    """
    import yaml

    from datasets.build import read_manifest

    for i, rule in enumerate(mix):
        bad = set(rule) - MIX_KEYS or set(rule.get("where") or {}) - WHERE_KEYS
        if bad:
            raise ValueError(f"train_mix rule {i}: unknown keys {sorted(bad)} (rule keys {sorted(MIX_KEYS)}, "
                             f"where keys {sorted(WHERE_KEYS)})")
        if not 0.0 <= float(rule.get("fraction", 1.0)) <= 1.0 or int(rule.get("repeat", 1)) < 0:
            raise ValueError(f"train_mix rule {i}: fraction must be in [0, 1] and repeat >= 0")
    data_cfg = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    root = Path(data_cfg.get("path") or data_yaml.parent)
    manifest = dataset_manifest(data_yaml)
    if manifest is None:
        raise ValueError(f"train_mix needs the dataset's manifest.csv beside {data_yaml}")
    rng = random.Random(seed)
    lines: list[str] = []
    counts = [{"images": 0, "drawn": 0, "listed": 0} for _ in range(len(mix) + 1)]
    rows = [r for r in read_manifest(manifest.parent) if r["split"] == "train"]
    missing = 0
    for row in sorted(rows, key=lambda r: r["path"]):
        image = (root / row["path"]).resolve()
        if not image.is_file() and image.with_suffix(".jpg").is_file():  # a training.pack copy is re-encoded
            image = image.with_suffix(".jpg")
        if not image.is_file():  # e.g. left out of a --max-images pack
            missing += 1
            continue
        k = next((i for i, rule in enumerate(mix) if _mix_matches(rule.get("where") or {}, row)), len(mix))
        rule = mix[k] if k < len(mix) else {}
        counts[k]["images"] += 1
        if rng.random() >= float(rule.get("fraction", 1.0)):
            continue
        counts[k]["drawn"] += 1
        n = int(rule.get("repeat", 1))
        counts[k]["listed"] += n
        lines += [str(image)] * n
    if not lines:
        raise ValueError("train_mix leaves no training image")
    run_dir.mkdir(parents=True, exist_ok=True)
    listing = run_dir / "train.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = run_dir / "data.yaml"
    out.write_text(yaml.safe_dump({**data_cfg, "path": str(root), "train": str(listing)}, sort_keys=False),
                   encoding="utf-8")
    if missing:
        logger.warning("train_mix: %d training images of the manifest are not in %s (left out)", missing, root)
    info = {"rules": [dict(r) for r in mix] + [{"where": "no rule"}], "counts": counts, "missing": missing,
            "train_list_sha256": hashlib.sha256(listing.read_bytes()).hexdigest()}
    logger.info("train_mix: %d training lines from %d images (%s)", len(lines), len(rows),
                ", ".join(f"rule {i}: {c['listed']}" for i, c in enumerate(counts)))
    return out, info


def write_metrics(run_dir: Path) -> dict[str, Any]:
    """``metrics.json`` from ultralytics' results.csv: the last epoch and the best one (by fitness)."""
    import csv

    path = run_dir / "results.csv"
    out: dict[str, Any] = {}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [{k.strip(): float(v) for k, v in r.items() if v not in (None, "")} for r in csv.DictReader(fh)]
        if rows:
            key = next((k for k in ("metrics/mAP50-95(B)", "metrics/accuracy_top1") if k in rows[-1]), None)
            out = {"last": rows[-1], "epochs": len(rows)}
            if key:
                out["best"] = max(rows, key=lambda r: r.get(key, 0.0))
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


def train(cfg: dict[str, Any], task: str, resume: bool = False) -> Path:
    """Train ``task`` ("detect" or "classify") from a config; return the run folder."""
    offline()
    from ultralytics import YOLO

    from training.augment import field_augmentations, field_classification_trainer

    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    strength = float(cfg.get("augment_strength", 1.0))
    trainer = field_classification_trainer(strength) if task == "classify" else None
    project = _path(cfg.get("runs", f"runs/{task}"))
    run_dir = project / cfg["name"]
    if resume:
        last = run_dir / "weights" / "last.pt"
        if not last.is_file():
            raise SystemExit(f"--resume: {last} does not exist")
        YOLO(str(last)).train(resume=True, trainer=trainer)  # args (augmentations included) come from the ckpt
        write_metrics(run_dir)
        return run_dir
    data = _path(cfg["data"])
    if task == "detect" and data.is_dir():
        data = data / "data.yaml"
    info = prepare_run(cfg, run_dir, data)
    if cfg.get("train_mix"):
        if task != "detect":
            raise ValueError("train_mix is for detectors (a datasets.build folder with its manifest.csv)")
        data, info["train_mix"] = mix_train_split(data, list(cfg["train_mix"]), run_dir, seed)
        (run_dir / "run.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    args: dict[str, Any] = dict(
        data=str(data), epochs=int(cfg.get("epochs", 100)),
        imgsz=int(cfg.get("imgsz", 640 if task == "detect" else 224)),
        batch=int(cfg.get("batch", 16)), seed=seed, deterministic=True, device=cfg.get("device", "cpu"),
        workers=int(cfg.get("workers", 2)), project=str(project), name=cfg["name"], exist_ok=True,
        amp=False, plots=False, pretrained=False, verbose=False, val=bool(cfg.get("val", True)),
    )
    if task == "detect" and strength > 0:
        args["augmentations"] = field_augmentations(strength, gray=float(cfg.get("gray_p", 0.05)))
    args.update(cfg.get("train_args", {}))
    if isinstance(args.get("pretrained"), str):  # initial weights (tensors transferred by name and shape)
        args["pretrained"] = str(_path(args["pretrained"]))
    default_model = "yolov8n.yaml" if task == "detect" else "yolov8n-cls.yaml"
    YOLO(cfg.get("model", default_model), task=task).train(trainer=trainer, **args)
    metrics = write_metrics(run_dir)
    logger.info("run %s done: %s", run_dir, metrics.get("last", {}))
    return run_dir


def run_cli(task: str, doc: str | None, argv: list[str] | None = None) -> int:
    """The command line shared by the training entry points: ``--config FILE [--resume]``."""
    ap = argparse.ArgumentParser(prog=f"python -m training.{task}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="continue the run from its weights/last.pt")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (VALUE read as yaml; train_args.KEY for ultralytics arguments), "
                         "e.g. --set data=/tmp/pack --set train_args.time=0.1; repeatable")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(a.config)
    try:
        apply_overrides(cfg, a.set)
    except ValueError as exc:
        ap.error(str(exc))
    print(train(cfg, task, a.resume))
    return 0


def apply_overrides(cfg: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings into ``cfg`` (values parsed as yaml; one level of dots: ``train_args.time=0.1``)."""
    import yaml

    for item in items:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts) or len(parts) > 2:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE or SECTION.KEY=VALUE")
        target = cfg
        if len(parts) == 2:
            target = cfg.setdefault(parts[0], {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {item!r}: {parts[0]!r} is not a section")
        target[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    return cfg


