"""Typed result elements with a versioned JSON form.

Every element converts to plain JSON-ready dicts with ``to_dict()`` and back with
``from_dict()``; ``ImageFindings.to_json()``/``from_json()`` give the one-line JSON
written to ``results.jsonl``. The schema is documented in ``docs/results-schema.md``
and shipped as ``wtivision/schema/results.schema.json``.

These are the *machine's* readings. A person's corrections are stored apart (see
``wtivision.review``) and never overwrite anything here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

from .taxonomy import FAMILIES, TEXT_KINDS, family_of, typology_disagrees

#: ``major.minor``: the minor number grows when fields are added (1.1: ``ModelRef.feed``), the major one when a
#: field changes meaning or goes. Records of an older minor version still load (added fields take defaults).
SCHEMA_VERSION = "1.1"

T = TypeVar("T", bound="_Element")


def _convert_in(tp: Any, value: Any) -> Any:
    """Turn JSON data into the type ``tp`` (dataclass, list/dict of them, Optional)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert_in(args[0], value) if len(args) == 1 else value
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return [_convert_in(inner, v) for v in value]
    if origin is dict:
        _, inner = typing.get_args(tp) or (Any, Any)
        return {k: _convert_in(inner, v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, _Element):
        return tp.from_dict(value)
    return value


def _convert_out(value: Any) -> Any:
    if isinstance(value, _Element):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_convert_out(v) for v in value]
    if isinstance(value, dict):
        return {k: _convert_out(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


class _Element:
    """Mixin: dict/JSON round-trip for dataclasses, unknown keys rejected."""

    _hints: ClassVar[dict[type, dict[str, Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _convert_out(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        hints = _Element._hints.get(cls)
        if hints is None:
            hints = typing.get_type_hints(cls)
            _Element._hints[cls] = hints
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
        return cls(**{k: _convert_in(hints[k], v) for k, v in data.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))


def _check_box(box: list[float]) -> list[float]:
    if len(box) != 4:
        raise ValueError(f"box must be [x1, y1, x2, y2], got {box!r}")
    box = [float(v) for v in box]
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"box must have x2 >= x1 and y2 >= y1, got {box!r}")
    return box


@dataclass
class ModelRef(_Element):
    """Which model produced a result: name, version, task and SHA-256 of the file.

    ``feed``: how the model was fed when its file does not fix it, e.g. a dynamic-input detector's input size and
    stride padding (``YoloDetector.feed``, from the manifest entry); empty for fixed-size models (and in records
    written before schema 1.1).
    """

    name: str
    sha256: str
    task: str
    version: str = ""
    file: str = ""
    feed: str = ""

    def short(self) -> str:
        """``name (first 12 hex digits of the SHA-256[; feed])``, as reports and the CLI name a model."""
        return f"{self.name} ({self.sha256[:12]}{'; ' + self.feed if self.feed else ''})"


@dataclass
class Detection(_Element):
    """An object found in the photo. ``box`` is [x1, y1, x2, y2] in original pixels
    (after EXIF orientation), ``family`` one of taxonomy.FAMILIES."""

    label: str
    family: str
    confidence: float
    box: list[float]
    model: str = ""

    def __post_init__(self) -> None:
        self.box = _check_box(self.box)
        self.confidence = float(self.confidence)
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}")

    @classmethod
    def of(cls, label: str, confidence: float, box: list[float], model: str = "") -> Detection:
        return cls(label=label, family=family_of(label), confidence=confidence, box=box, model=model)


@dataclass
class Classification(_Element):
    """A class given to the whole photo or to one detection (``detection_index``)."""

    task: str
    label: str
    confidence: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    detection_index: int | None = None
    original_label: str = ""
    model: str = ""

    def __post_init__(self) -> None:
        self.confidence = float(self.confidence)
        self.top_k = [(str(lab), float(c)) for lab, c in self.top_k]


@dataclass
class HeadstampRecord(_Element):
    """A headstamp parsed into tokens; ``manufacturer``/``country`` come from the code
    table (with its ``source``) and stay empty for unknown codes."""

    factory_code: str = ""
    year: str = ""
    calibre: str = ""
    nato_mark: bool = False
    manufacturer: str = ""
    country: str = ""
    source: str = ""
    tokens: list[str] = field(default_factory=list)


@dataclass
class TextReading(_Element):
    """Text read by OCR. ``text`` is the normalised reading, ``raw_text`` what the
    recogniser produced; ``candidates`` are alternative readings for ambiguous
    characters; ``needs_review`` flags low confidence (never silently changed)."""

    kind: str
    text: str
    confidence: float
    box: list[float]
    candidates: list[str] = field(default_factory=list)
    raw_text: str = ""
    char_confidences: list[float] = field(default_factory=list)
    needs_review: bool = False
    detection_index: int | None = None
    headstamp: HeadstampRecord | None = None
    model: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"unknown text kind {self.kind!r}; known: {TEXT_KINDS}")
        self.box = _check_box(self.box)
        self.confidence = float(self.confidence)


@dataclass
class CaptureMetadata(_Element):
    """Capture metadata read from the original file (EXIF), never written back."""

    datetime_original: str = ""
    make: str = ""
    model: str = ""
    software: str = ""
    orientation: int = 1
    gps_latitude: float | None = None
    gps_longitude: float | None = None
    gps_altitude: float | None = None
    exif: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageFindings(_Element):
    """Everything wtivision found in one photo, plus the evidence facts about it.

    ``status`` is ``"ok"`` or ``"error"``; for errors ``error`` holds a message and
    ``error_code`` a short reason (``empty``, ``not_image``, ``truncated``,
    ``too_large``, ``unsupported``, ...).
    """

    path: str
    sha256: str = ""
    size_bytes: int = 0
    width: int = 0
    height: int = 0
    format: str = ""
    capture: CaptureMetadata | None = None
    detections: list[Detection] = field(default_factory=list)
    classifications: list[Classification] = field(default_factory=list)
    texts: list[TextReading] = field(default_factory=list)
    status: str = "ok"
    error: str = ""
    error_code: str = ""
    models: list[ModelRef] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    also_at: list[str] = field(default_factory=list)
    analyzed_at: str = ""
    wtivision_version: str = ""
    schema_version: str = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def counts_by_family(self) -> dict[str, int]:
        out = {f: 0 for f in FAMILIES}
        for det in self.detections:
            out[det.family] += 1
        return out

    def typology_conflicts(self) -> list[int]:
        """Indices (in ``classifications``) of the typologies that imply the other firearm group than the
        detection they were given to (``taxonomy.typology_disagrees``): derived, never stored."""
        return [i for i, c in enumerate(self.classifications)
                if c.task == "typology" and c.detection_index is not None
                and 0 <= c.detection_index < len(self.detections)
                and typology_disagrees(self.detections[c.detection_index].label, c.label)]
