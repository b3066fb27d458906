"""Pieces shared by the export scripts (``export.onnx``, ``export.basegun``, ``export.ppocr``).

- ``offline_ultralytics()``: call before using ultralytics (no network, no auto-install, no telemetry).
- ``install_model(src, spec, models_dir)``: copy an ONNX file into ``models/``, fill in its SHA-256 and
  register it in ``models/manifest.json`` (``wtivision.registry.write_manifest_entry``).
- ``write_card(name, text, models_dir)`` / ``md_table(header, rows)``: model cards in ``models/cards/``.
- ``add_onnx_metadata(path, props)`` / ``slim_onnx(path)``: metadata_props and onnxslim on a saved model.
- ``latency_ms(fn, inputs)``: median wall time of a callable over inputs.
- ``box_agreement(ref, other)``: fraction of reference detections matched (IoU >= 0.5, same label).
- ``top1_agreement(ref, other)``: fraction of equal top-1 labels.
- ``find_wheel``/``wheel_dirs``: third-party wheels holding models to convert.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wtivision.registry import ModelSpec, sha256_file, write_manifest_entry

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
WHEEL_CACHE = Path(os.environ.get("WTIVISION_WHEEL_CACHE", REPO / ".cache" / "wheels"))
_ULTRALYTICS_OFF = ("sync", "hub", "mlflow", "raytune", "tensorboard", "wandb", "clearml", "comet", "dvc", "neptune",
                    "vscode_msg", "openvino_msg")


def offline_ultralytics() -> None:
    """Make ultralytics safe offline: no hub, no telemetry or logger integrations, no auto-install.

    Sets ``YOLO_OFFLINE=1`` (ultralytics' ``is_online()`` then returns False), ``YOLO_AUTOINSTALL=False``
    (``check_requirements`` reports instead of pip-installing) and a ``YOLO_CONFIG_DIR`` under the temp
    folder unless one is set; turns off the ``sync`` (telemetry) and integration settings. Best called
    before ultralytics is first imported; if it already was, the module-level ``ONLINE``/``AUTOINSTALL``
    flags are patched as well.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "wtivision-ultralytics"))
    try:
        import ultralytics.utils as uu
        import ultralytics.utils.checks as uc
    except ImportError:  # pragma: no cover - only when ultralytics is absent
        return
    for mod in (uu, uc):
        for flag in ("ONLINE", "AUTOINSTALL"):
            if hasattr(mod, flag):
                setattr(mod, flag, False)
    off = {k: False for k in _ULTRALYTICS_OFF if k in uu.SETTINGS.defaults}
    if any(uu.SETTINGS.get(k) for k in off):
        uu.SETTINGS.update(off)


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
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    dst = models_dir / spec.file
    if Path(src).resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    spec.sha256 = sha256_file(dst)
    write_manifest_entry(models_dir, spec)
    logger.info("registered %s (%s) sha256=%s", spec.name, dst, spec.sha256)
    return spec


def write_card(name: str, text: str, models_dir: Path = MODELS_DIR) -> Path:
    """Write ``models_dir/cards/<name>.md``; return its path."""
    cards = Path(models_dir) / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    path = cards / f"{name}.md"
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path


def md_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def add_onnx_metadata(path: Path, props: dict[str, str]) -> None:
    """Add (or replace) ``metadata_props`` entries of a saved ONNX model, in place."""
    import onnx

    m = onnx.load(str(path))
    keep = [(p.key, p.value) for p in m.metadata_props if p.key not in props]
    del m.metadata_props[:]
    for k, v in [*keep, *props.items()]:
        m.metadata_props.add(key=k, value=str(v))
    onnx.save(m, str(path))


def slim_onnx(path: Path) -> None:
    """Simplify a saved ONNX model with onnxslim in place (metadata_props kept)."""
    import onnx
    import onnxslim

    m = onnx.load(str(path))
    props = [(p.key, p.value) for p in m.metadata_props]
    s = onnxslim.slim(m)
    del s.metadata_props[:]
    for k, v in props:
        s.metadata_props.add(key=k, value=v)
    onnx.save(s, str(path))


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def latency_ms(fn: Callable[[Any], Any], inputs: Sequence[Any], n: int = 20) -> float:
    """Median wall time (ms) of ``fn(x)`` over ``n`` calls cycling through ``inputs`` (one warm-up call)."""
    fn(inputs[0])
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(inputs[i % len(inputs)])
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def box_agreement(ref: Sequence[Sequence[Any]], other: Sequence[Sequence[Any]], iou: float = 0.5) -> float:
    """Fraction of reference detections matched one-to-one by ``other`` (same label, IoU >= ``iou``).

    ``ref``/``other`` hold one list of ``wtivision.results.Detection`` per image. 1.0 when ``ref`` is empty.
    """
    from wtivision.ops import box_iou

    total = matched = 0
    for a, b in zip(ref, other):
        total += len(a)
        used: set[int] = set()
        for d in a:
            cands = [j for j, e in enumerate(b) if j not in used and e.label == d.label]
            if not cands:
                continue
            ious = box_iou([d.box], [b[j].box for j in cands])[0]
            k = int(ious.argmax())
            if ious[k] >= iou:
                matched += 1
                used.add(cands[k])
    return matched / total if total else 1.0


def top1_agreement(ref: Sequence[str], other: Sequence[str]) -> float:
    """Fraction of positions where two sequences of top-1 labels agree."""
    return sum(a == b for a, b in zip(ref, other)) / len(ref) if len(ref) else 1.0
