"""Train an object detector with ultralytics from a model yaml (no hub weights), offline.

    python -m training.detect --config training/configs/<name>.yaml [--resume]

Config keys: ``name``, ``model`` (e.g. yolov8n.yaml), ``data`` (a folder built by ``datasets.build`` or
a data.yaml), ``epochs``, ``imgsz``, ``batch``, ``seed``, ``device`` (cpu / 0), ``workers``,
``augment_strength`` (field augmentations; 0 disables), ``runs`` (default runs/detect) and any other
ultralytics train argument under ``train_args``. The run folder keeps config.yaml, run.json (dataset
manifest hash), results.csv (metrics) and weights/best.pt.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from training.common import REPO, offline, prepare_run, run_cli, seed_everything

logger = logging.getLogger(__name__)


def train(cfg: dict, resume: bool = False) -> Path:
    offline()
    from ultralytics import YOLO

    from training.augment import field_augmentations

    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    data = Path(cfg["data"])
    if not data.is_absolute():
        data = (REPO / data).resolve()
    data_yaml = data / "data.yaml" if data.is_dir() else data
    project = Path(cfg.get("runs", REPO / "runs" / "detect")).resolve()
    run_dir = project / cfg["name"]
    last = run_dir / "weights" / "last.pt"
    if resume and last.is_file():
        model = YOLO(str(last))
        model.train(resume=True)
        return run_dir
    prepare_run(cfg, run_dir, data if data.is_dir() else None)
    model = YOLO(cfg.get("model", "yolov8n.yaml"))
    strength = float(cfg.get("augment_strength", 1.0))
    args = dict(
        data=str(data_yaml), epochs=int(cfg.get("epochs", 100)), imgsz=int(cfg.get("imgsz", 640)),
        batch=int(cfg.get("batch", 16)), seed=seed, deterministic=True, device=cfg.get("device", "cpu"),
        workers=int(cfg.get("workers", 2)), project=str(project), name=cfg["name"], exist_ok=True,
        amp=False, plots=False, pretrained=False, verbose=False, val=bool(cfg.get("val", True)),
    )
    if strength > 0:
        args["augmentations"] = field_augmentations(strength)
    args.update(cfg.get("train_args", {}))
    model.train(**args)
    metrics = {}
    results = run_dir / "results.csv"
    if results.is_file():
        lines = results.read_text().strip().splitlines()
        if len(lines) > 1:
            metrics = dict(zip([h.strip() for h in lines[0].split(",")], [v.strip() for v in lines[-1].split(",")]))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    return run_cli(train, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
