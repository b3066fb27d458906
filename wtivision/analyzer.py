"""The ``Analyzer``: one photo in, one :class:`ImageFindings` out.

It chains steps over the decoded image: detection, per-object classification (a
firearm crop goes to the typology classifier) and OCR on marking / case-head
regions. Steps are pluggable: anything with ``name``, ``models()`` and
``__call__(image, findings)`` can be added.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import time
from typing import Protocol, runtime_checkable

import numpy as np

from . import __version__
from .errors import ImageError, ModelError
from .media import Limits, load_image, load_image_bytes
from .ops import TILE_MERGE
from .registry import Registry
from .results import CaptureMetadata, ImageFindings, ModelRef
from .runtime import ImageClassifier, RuntimeOptions, YoloDetector
from .taxonomy import FIREARM, TYPOLOGY_CLASSES

logger = logging.getLogger(__name__)


@runtime_checkable
class Step(Protocol):
    name: str

    def models(self) -> list[ModelRef]: ...

    def __call__(self, image: np.ndarray, findings: ImageFindings) -> None: ...


def crop_with_origin(image: np.ndarray, box: list[float], margin: float = 0.05) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop ``box`` (xyxy) from ``image`` with a relative margin, clipped to the image; also return the
    crop's top-left corner in the image."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    xa, ya = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    xb, yb = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if xb <= xa or yb <= ya:
        return image[0:0, 0:0], (xa, ya)
    return image[ya:yb, xa:xb], (xa, ya)


def crop(image: np.ndarray, box: list[float], margin: float = 0.05) -> np.ndarray:
    """Crop ``box`` (xyxy) from ``image`` with a relative margin, clipped to the image."""
    return crop_with_origin(image, box, margin)[0]


class DetectStep:
    """Runs the object detector and appends Detections."""

    name = "detect"

    def __init__(self, detector: YoloDetector, tiles: bool = False):
        self.detector = detector
        self.tiles = tiles

    def models(self) -> list[ModelRef]:
        return [self.detector.spec.ref(feed=self.detector.feed or "")]

    def __call__(self, image: np.ndarray, findings: ImageFindings) -> None:
        findings.detections.extend(self.detector.detect(image, tiles=self.tiles))


class TypologyStep:
    """Classifies each firearm crop (or the whole photo if no detector ran) by typology."""

    name = "typology"

    def __init__(self, classifier: ImageClassifier, min_side: int = 24, whole_image_fallback: bool = False):
        self.classifier = classifier
        self.min_side = min_side
        self.whole_image_fallback = whole_image_fallback

    def models(self) -> list[ModelRef]:
        return [self.classifier.spec.ref()]

    def __call__(self, image: np.ndarray, findings: ImageFindings) -> None:
        done = False
        for i, det in enumerate(findings.detections):
            if det.family != FIREARM:
                continue
            patch = crop(image, det.box)
            if min(patch.shape[:2]) < self.min_side:
                continue
            findings.classifications.append(
                self.classifier.classify(patch, label_map=TYPOLOGY_CLASSES, detection_index=i)
            )
            done = True
        close_up = any(t.kind == "headstamp" or len(t.text) >= 4 for t in findings.texts)  # serial or headstamp photo
        if not done and self.whole_image_fallback and not close_up:
            findings.classifications.append(self.classifier.classify(image, label_map=TYPOLOGY_CLASSES))


def model_set_id(refs: list[ModelRef], settings: dict[str, object] | None = None) -> str:
    """A short stable id of a set of models (their SHA-256s) and of the analysis settings that change
    results (only those not at their defaults, so default runs keep their id), used to key stored results:
    a scan re-run with other settings analyses the photos again instead of reusing results."""
    h = hashlib.sha256()
    for sha in sorted(r.sha256 for r in refs):
        h.update(sha.encode())
    for k, v in sorted((settings or {}).items()):
        h.update(f"|{k}={v!r}".encode())
    return h.hexdigest()[:16]


#: Analysis settings at their defaults (left out of ``model_set_id``).
DEFAULT_SETTINGS: dict[str, object] = {"conf": 0.25, "iou": 0.7, "ocr": True, "tiles": False}


class Analyzer:
    """Analyse photos with the bundled (or given) models.

    >>> from wtivision import Analyzer
    >>> findings = Analyzer().analyze("photo.jpg")          # doctest: +SKIP
    >>> [(d.label, round(d.confidence, 2)) for d in findings.detections]  # doctest: +SKIP
    """

    def __init__(
        self,
        models_dir: str | os.PathLike[str] | None = None,
        steps: list[Step] | None = None,
        limits: Limits = Limits(),
        runtime: RuntimeOptions = RuntimeOptions(),
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.7,
        ocr: bool = True,
        tiles: bool = False,
        detector: str | None = None,
    ) -> None:
        """``detector``: name of a detector in the manifest to use instead of the default one (e.g. a faster,
        smaller model for a large archive); the results name the model either way."""
        self.registry = Registry(models_dir)
        self.limits = limits
        self.runtime = runtime
        settings: dict[str, object] = {}
        if steps is None:
            steps = self._default_steps(conf_threshold, iou_threshold, ocr, tiles, detector)
            given = {"conf": float(conf_threshold), "iou": float(iou_threshold), "ocr": bool(ocr), "tiles": bool(tiles)}
            settings = {k: v for k, v in given.items() if v != DEFAULT_SETTINGS[k]}
        self.steps: list[Step] = list(steps)
        feeds = [s.detector.feed for s in self.steps if isinstance(s, DetectStep) and s.detector.feed]
        if feeds:  # a dynamic-input detector: how it is fed comes from the manifest, not the hashed file
            settings["detector_input"] = "; ".join(feeds)
        if any(isinstance(s, DetectStep) and s.tiles for s in self.steps):  # tiled results depend on the merge rule
            settings["tile_merge"] = TILE_MERGE
        self._model_refs = [ref for step in self.steps for ref in step.models()]
        #: Settings that differ from the defaults; with the model hashes they key stored scan results.
        self.settings = settings
        self.model_set = model_set_id(self._model_refs, settings)

    def _default_steps(self, conf: float, iou: float, ocr: bool, tiles: bool = False,
                       detector_name: str | None = None) -> list[Step]:
        """Detector -> typology on firearm crops -> OCR on markings and case heads.

        Without a detector (none in the manifest) the whole photo is read by OCR first, and the typology
        classifier looks at the whole photo only when OCR found no text (a close-up of a serial or a
        headstamp is not a firearm photo). With a detector that has no trained ``marking`` / ``case_head``
        class, photos in which it detects nothing are read whole by OCR (close-ups of markings).
        """
        steps: list[Step] = []
        reg = self.registry
        det_spec = reg.get(detector_name) if detector_name else reg.default_for("detector")
        if detector_name and det_spec.task != "detect":
            raise ModelError(f"model {det_spec.name!r} is a {det_spec.task!r} model, not a detector")
        text_classes = False
        if det_spec is not None:
            detector = YoloDetector(det_spec, reg, self.runtime, conf, iou)
            text_classes = bool({"marking", "case_head"} & set(detector.active_classes))
            steps.append(DetectStep(detector, tiles))
        if ocr and reg.default_for("ocr_rec") is not None:
            from .ocr import OcrStep  # local: OCR code loads only when OCR models ship

            steps.append(OcrStep.from_registry(reg, self.runtime, whole_image=not text_classes))
        typ_spec = reg.default_for("typology")
        if typ_spec is not None:
            steps.append(TypologyStep(ImageClassifier(typ_spec, reg, self.runtime),
                                      whole_image_fallback=det_spec is None))
        if not steps:
            logger.warning("no default models in %s: analysis will only hash and read metadata", reg.root)
        return steps

    @property
    def models(self) -> list[ModelRef]:
        return list(self._model_refs)

    def _new_findings(self, path: str) -> ImageFindings:
        return ImageFindings(
            path=path,
            models=self.models,
            analyzed_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            wtivision_version=__version__,
        )

    def run_steps(self, image: np.ndarray, findings: ImageFindings) -> ImageFindings:
        for step in self.steps:
            t0 = time.perf_counter()
            step(image, findings)
            findings.timings[step.name] = round((time.perf_counter() - t0) * 1000.0, 2)
        return findings

    def analyze(
        self, source: str | os.PathLike[str] | bytes | np.ndarray, path: str | None = None,
        sha256: str | None = None,
    ) -> ImageFindings:
        """Analyse a photo file (read-only), its bytes, or a BGR uint8 array.

        Never raises for a bad photo: the returned findings then have ``status="error"``
        with ``error`` and ``error_code`` set (and ``sha256`` when the bytes could be read).
        """
        if isinstance(source, np.ndarray):
            findings = self._new_findings(path or "<array>")
            if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
                findings.status, findings.error_code = "error", "bad_array"
                findings.error = f"expected an HxWx3 uint8 BGR array, got {source.shape} {source.dtype}"
                return findings
            findings.sha256 = hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()
            findings.height, findings.width = source.shape[:2]
            findings.format = "array"
            findings.capture = CaptureMetadata()
            return self._run_guarded(source, findings)

        findings = self._new_findings(path or ("<bytes>" if isinstance(source, bytes) else os.fspath(source)))
        t0 = time.perf_counter()
        try:
            if isinstance(source, bytes):
                loaded = load_image_bytes(source, self.limits, sha256)
            else:
                loaded = load_image(source, self.limits)
        except ImageError as exc:
            findings.status, findings.error, findings.error_code = "error", str(exc), exc.code
            findings.sha256 = getattr(exc, "sha256", "")
            findings.size_bytes = getattr(exc, "size_bytes", 0)
            return findings
        findings.timings["load"] = round((time.perf_counter() - t0) * 1000.0, 2)
        findings.sha256 = loaded.sha256
        findings.size_bytes = loaded.size_bytes
        findings.width, findings.height = loaded.width, loaded.height
        findings.format = loaded.format
        findings.capture = loaded.capture
        return self._run_guarded(loaded.array, findings)

    def _run_guarded(self, image: np.ndarray, findings: ImageFindings) -> ImageFindings:
        try:
            return self.run_steps(image, findings)
        except MemoryError:
            findings.status, findings.error_code = "error", "out_of_memory"
            findings.error = "ran out of memory while analysing this photo"
        except Exception as exc:  # a model failure on one photo must not stop a batch
            logger.exception("analysis failed for %s", findings.path)
            findings.status, findings.error_code = "error", "analysis_failed"
            findings.error = f"{type(exc).__name__}: {exc}"
        findings.detections.clear()
        findings.classifications.clear()
        findings.texts.clear()
        return findings
