"""Shared by the training entry points: config loading, offline set-up, run folders."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_config(path: Path) -> dict:
    import yaml

    cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    cfg["_config_path"] = str(Path(path).resolve())
    return cfg


def offline() -> None:
    """No downloads, no auto-installs, no telemetry (see export.common.offline_ultralytics)."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / "runs" / ".ultralytics"))
    from export.common import offline_ultralytics

    offline_ultralytics()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run(cfg: dict, run_dir: Path, data_dir: Path | None) -> dict:
    """Record the config and the dataset manifest's hash in the run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cfg["_config_path"], run_dir / "config.yaml")
    info = {"config": cfg["_config_path"]}
    if data_dir is not None and (data_dir / "manifest.csv").is_file():
        info["dataset_manifest_sha256"] = hashlib.sha256((data_dir / "manifest.csv").read_bytes()).hexdigest()
    (run_dir / "run.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def run_cli(train, doc: str | None, argv: list[str] | None = None) -> int:
    """The command line shared by the training entry points: ``--config FILE [--resume]``."""
    import argparse
    import logging

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="continue the run from its last.pt")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(train(load_config(a.config), a.resume))
    return 0
