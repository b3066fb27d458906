"""Pieces shared by the export scripts: offline ultralytics set-up, copying a model into
``models/`` and registering it in the manifest, and writing model cards."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from wtivision.registry import ModelSpec, sha256_file, write_manifest_entry

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
WHEEL_CACHE = Path(os.environ.get("WTIVISION_WHEEL_CACHE", REPO / ".cache" / "wheels"))


def offline_ultralytics() -> None:
    """Make ultralytics safe offline: no hub, no telemetry or logger integrations, no auto-install.
    Call before ultralytics is imported anywhere."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "wtivision-ultralytics"))
    try:
        from ultralytics.utils import SETTINGS
    except ImportError:  # pragma: no cover - only when ultralytics is absent
        return
    off = {k: False for k in ("sync", "hub", "mlflow", "raytune", "tensorboard", "wandb", "clearml", "comet",
                              "dvc", "neptune", "vscode_msg", "openvino_msg") if k in SETTINGS.defaults}
    SETTINGS.update(off)


def wheel_dirs() -> list[Path]:
    """Where wheels are looked for: ``$WTIVISION_WHEEL_CACHE`` (read at call time, default ``.cache/wheels``
    under the repo root), then ``/tmp/dl``."""
    return [Path(os.environ.get("WTIVISION_WHEEL_CACHE", WHEEL_CACHE)), Path("/tmp/dl")]


def find_wheel(project: str, version: str, download: bool = True, timeout_s: float = 300) -> Path:
    """The wheel of ``project==version`` from the cache folder (or /tmp/dl), downloaded by pip if absent.

    Raises FileNotFoundError if it is absent and ``download`` is false, CalledProcessError or TimeoutExpired
    if pip cannot fetch it."""
    stem = project.replace("-", "_")
    dirs = wheel_dirs()
    for d in dirs:
        hits = sorted(d.glob(f"{stem}-{version}-*.whl"))
        if hits:
            return hits[0]
    if not download:
        raise FileNotFoundError(f"{project}=={version} wheel not in {' or '.join(map(str, dirs))}")
    cache = dirs[0]
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--timeout", "20", "--retries", "1",
                    "-d", str(cache), f"{project}=={version}"], check=True, timeout=timeout_s)
    return find_wheel(project, version, download=False)


def install_model(src: Path, spec: ModelSpec, models_dir: Path = MODELS_DIR) -> ModelSpec:
    """Copy ``src`` to ``models_dir/spec.file``, fill in its SHA-256 and register it."""
    models_dir.mkdir(parents=True, exist_ok=True)
    dst = models_dir / spec.file
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    spec.sha256 = sha256_file(dst)
    write_manifest_entry(models_dir, spec)
    logger.info("registered %s (%s) sha256=%s", spec.name, dst, spec.sha256)
    return spec


def write_card(name: str, text: str, models_dir: Path = MODELS_DIR) -> Path:
    cards = models_dir / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    path = cards / f"{name}.md"
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path


def md_table(header: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
