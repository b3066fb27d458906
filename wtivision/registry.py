"""Model registry: the manifest in ``models/`` and SHA-256-verified loading.

The manifest (``models/manifest.json``) lists each ONNX model with its file, SHA-256,
task, class names, input size, preprocessing, licence, source and metrics. Nothing
is ever downloaded: a model is either in the models directory or it is an error.

The models directory is, in order: the ``models_dir`` argument, the environment
variable ``WTIVISION_MODELS_DIR``, ``models/`` beside the package in a source
checkout, and ``wtivision/_models`` in an installed wheel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError, ModelIntegrityError, ModelNotFoundError
from .results import ModelRef

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
TASKS = ("detect", "classify", "ocr_det", "ocr_rec", "ocr_cls")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def default_models_dir() -> Path:
    env = os.environ.get("WTIVISION_MODELS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    checkout = here.parent / "models"
    if (checkout / MANIFEST_NAME).is_file():
        return checkout
    return here / "_models"


@dataclass
class ModelSpec:
    """One manifest entry."""

    name: str
    file: str
    sha256: str
    task: str
    classes: list[str] = field(default_factory=list)
    input_size: list[int] = field(default_factory=lambda: [640, 640])
    preprocessing: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    licence: str = ""
    source: str = ""
    card: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    role: str = ""  # e.g. "detector", "typology", "ocr_det" - what the default pipeline uses it for
    default: bool = False
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ModelError(f"model {self.name!r}: unknown task {self.task!r}; known: {TASKS}")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def ref(self, feed: str = "") -> ModelRef:
        """``feed``: how the model is fed when its file does not fix it (see ``ModelRef.feed``)."""
        return ModelRef(name=self.name, sha256=self.sha256, task=self.task, version=self.version, file=self.file,
                        feed=feed)


class Registry:
    """The models directory and its manifest."""

    def __init__(self, models_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(models_dir) if models_dir is not None else default_models_dir()
        self.manifest_path = self.root / MANIFEST_NAME
        self._specs: dict[str, ModelSpec] | None = None
        self._verified: dict[str, str] = {}

    # -- manifest -----------------------------------------------------------------
    def _load(self) -> dict[str, ModelSpec]:
        if self._specs is None:
            if not self.manifest_path.is_file():
                raise ModelNotFoundError(
                    f"no model manifest at {self.manifest_path}; set WTIVISION_MODELS_DIR "
                    "or pass models_dir to a folder holding manifest.json"
                )
            try:
                data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelError(f"cannot read model manifest {self.manifest_path}: {exc}") from exc
            specs: dict[str, ModelSpec] = {}
            for entry in data.get("models", []):
                known = {k: v for k, v in entry.items() if k in ModelSpec.__dataclass_fields__}
                spec = ModelSpec(**known)
                specs[spec.name] = spec
            self._specs = specs
        return self._specs

    def specs(self) -> list[ModelSpec]:
        return list(self._load().values())

    def get(self, name: str) -> ModelSpec:
        specs = self._load()
        if name not in specs:
            raise ModelNotFoundError(
                f"model {name!r} is not in {self.manifest_path}; known: {', '.join(specs) or 'none'}"
            )
        return specs[name]

    def default_for(self, role: str) -> ModelSpec | None:
        """The default model for a pipeline role, or None if the manifest has none."""
        try:
            specs = self._load()
        except ModelNotFoundError:
            return None
        for spec in specs.values():
            if spec.role == role and spec.default:
                return spec
        return None

    # -- files --------------------------------------------------------------------
    def path(self, spec: ModelSpec | str) -> Path:
        if isinstance(spec, str):
            spec = self.get(spec)
        return self.root / spec.file

    def verify(self, spec: ModelSpec | str) -> Path:
        """Check the model file against the manifest's SHA-256; return its path.

        Raises ModelNotFoundError if the file is missing and ModelIntegrityError if it
        differs. A file is hashed once per Registry unless its size or mtime changes.
        """
        if isinstance(spec, str):
            spec = self.get(spec)
        path = self.path(spec)
        if not path.is_file():
            raise ModelNotFoundError(f"model file {path} (model {spec.name!r}) is missing")
        st = path.stat()
        key = f"{st.st_size}:{st.st_mtime_ns}"
        if self._verified.get(str(path)) == key:
            return path
        actual = sha256_file(path)
        if actual != spec.sha256:
            raise ModelIntegrityError(
                f"model file {path} (model {spec.name!r}) has SHA-256 {actual}, "
                f"but the manifest says {spec.sha256}: the file was altered or replaced"
            )
        self._verified[str(path)] = key
        return path

    def verify_all(self) -> list[tuple[ModelSpec, str]]:
        """Return (spec, "ok" | error message) for every model in the manifest."""
        out = []
        for spec in self.specs():
            try:
                self.verify(spec)
                out.append((spec, "ok"))
            except ModelError as exc:
                out.append((spec, str(exc)))
        return out


def write_manifest_entry(models_dir: str | os.PathLike[str], spec: ModelSpec) -> None:
    """Add or replace ``spec`` in the manifest (used by the export tools)."""
    root = Path(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / MANIFEST_NAME
    data: dict[str, Any] = {"manifest_version": MANIFEST_VERSION, "models": []}
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
    models = [m for m in data.get("models", []) if m.get("name") != spec.name]
    if spec.default and spec.role:
        for m in models:
            if m.get("role") == spec.role:
                m["default"] = False
    models.append(spec.to_dict())
    models.sort(key=lambda m: m["name"])
    data["models"] = models
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")
    os.replace(tmp, manifest)
