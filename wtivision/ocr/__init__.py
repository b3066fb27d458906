"""OCR for serial numbers, stamped markings and headstamps, on onnxruntime (PP-OCR models).

``OcrStep`` plugs into the Analyzer: it reads text in detector regions labelled ``marking`` (kind
``serial`` when the reading looks like a serial number, else ``marking``) and ``case_head`` (kind
``headstamp``, unwrapped around the primer and parsed). ``read_serial`` and ``read_headstamp`` work on
crops directly for callers without a detector.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np

from ..registry import Registry
from ..results import ImageFindings, ModelRef, TextReading
from ..runtime import RuntimeOptions
from .engine import LineReading, TextDetector, TextRecognizer, crop_quad
from .headstamp import find_case_head, parse_headstamp, unwrap_annulus
from .normalize import candidates, needs_review, normalise

logger = logging.getLogger(__name__)

__all__ = ["OcrEngine", "OcrStep", "parse_headstamp"]

SERIAL_LIKE = re.compile(r"^(?=.*\d)[A-Z0-9]{4,}$")


def _enhance(image_bgr: np.ndarray) -> np.ndarray:
    """Contrast equalisation (CLAHE on luminance) with glare suppression for stamped metal."""
    import cv2

    lab = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2LAB)
    lum = lab[:, :, 0]
    glare = lum > 245
    if glare.any():  # fill saturated highlights from their surroundings
        lum = cv2.inpaint(lum, glare.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    lab[:, :, 0] = cv2.createCLAHE(clipLimit=2.5, tileGridSize=(8, 8)).apply(lum)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


def _upscale(image_bgr: np.ndarray, min_height: int = 48) -> np.ndarray:
    import cv2

    h = image_bgr.shape[0]
    if h >= min_height:
        return image_bgr
    f = min_height / max(h, 1)
    return cv2.resize(image_bgr, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)


class OcrEngine:
    """Text detection + recognition with the preprocessing for stamped and engraved metal."""

    def __init__(self, detector: TextDetector | None, recognizer: TextRecognizer):
        self.detector = detector
        self.recognizer = recognizer

    @classmethod
    def from_registry(cls, registry: Registry, options: RuntimeOptions = RuntimeOptions()) -> OcrEngine:
        rec = registry.default_for("ocr_rec")
        if rec is None:
            raise LookupError("no default OCR recogniser (role ocr_rec) in the manifest")
        det = registry.default_for("ocr_det")
        return cls(TextDetector(det, registry, options) if det else None, TextRecognizer(rec, registry, options))

    def models(self) -> list[ModelRef]:
        out = [self.recognizer.spec.ref()]
        if self.detector is not None:
            out.insert(0, self.detector.spec.ref())
        return out

    def lines(self, crop: np.ndarray) -> list[np.ndarray]:
        """Deskewed text-line crops found in ``crop`` (the whole crop if no line is found)."""
        found = self.detector.detect(crop) if self.detector is not None else []
        return [crop_quad(crop, q) for q, _ in found] or [crop]

    def best_reading(self, line: np.ndarray, rotated_margin: float = 0.0) -> LineReading:
        """Read one line under rotations 0/180 (and 90/270 for tall crops), raw and enhanced, and keep
        the most confident reading. A rotated reading must beat the upright one by ``rotated_margin``
        (headstamps are stamped upright in the unwrapped ring; 6/9 and 68/89 read both ways)."""
        line = _upscale(line)
        variants = [line, np.rot90(line, 2)]
        if line.shape[0] > 1.5 * line.shape[1]:
            variants += [np.rot90(line, 1), np.rot90(line, 3)]
        n = len(variants)
        variants += [_enhance(np.ascontiguousarray(v)) for v in variants]
        readings = self.recognizer.recognize([np.ascontiguousarray(v) for v in variants])

        def score(i: int) -> tuple[float, float]:
            r = readings[i]
            penalty = rotated_margin if i % n else 0.0
            return (r.confidence * min(1.0, len(normalise(r.text)[0]) / 3) - penalty, r.confidence)

        return readings[max(range(len(readings)), key=score)]

    def read_serial(self, crop: np.ndarray, box: list[float], kind: str = "serial",
                    detection_index: int | None = None) -> TextReading | None:
        """Read a serial number / marking in ``crop`` (``box`` is the crop's box in the photo)."""
        readings = [self.best_reading(ln) for ln in self.lines(crop)]
        readings = [r for r in readings if normalise(r.text)[0]]
        if not readings:
            return None
        raw = " ".join(r.text for r in readings)
        confs = [c for r in readings for c in r.char_confidences]
        text, tconfs = normalise(raw, [c for r in readings for c in (*r.char_confidences, 1.0)][: len(raw)])
        conf = float(np.mean(tconfs)) if tconfs else 0.0
        if kind == "serial" and not SERIAL_LIKE.match(text):
            kind = "marking"
        return TextReading(kind=kind, text=text, confidence=conf, box=box, candidates=candidates(text, tconfs),
                           raw_text=raw, char_confidences=[round(c, 4) for c in tconfs],
                           needs_review=needs_review(conf, confs), detection_index=detection_index,
                           model=self.recognizer.name)

    def headstamp_tokens(self, strip: np.ndarray) -> list[LineReading]:
        """Words of an unwrapped headstamp ring, in clockwise order.

        The strip is doubled end to end so a word cut at the seam is seen whole; the text detector
        separates the words (the gaps between headstamp tokens are wide) and each word is read on its own.
        """
        if self.detector is None:
            return [self.best_reading(strip)]
        W = strip.shape[1]
        doubled = np.ascontiguousarray(np.concatenate([strip, strip], axis=1))
        words = []
        for quad, _ in self.detector.detect(doubled):
            cx = float(quad[:, 0].mean())
            if W * 0.25 <= cx < W * 1.25:  # one full turn, starting a quarter turn in
                words.append((cx, crop_quad(doubled, quad)))
        words.sort(key=lambda cw: cw[0])
        return [self.best_reading(w, rotated_margin=0.15) for _, w in words]

    def read_headstamp(self, crop: np.ndarray, box: list[float], detection_index: int | None = None,
                       circle: tuple[float, float, float] | None = None) -> TextReading | None:
        """Find the case head in ``crop`` (unless ``circle`` is given), unwrap the ring around the primer,
        split it into words, read and parse them."""
        h, w = crop.shape[:2]
        circle = circle or find_case_head(crop) or (w / 2, h / 2, min(h, w) / 2 * 0.95)
        cx, cy, r = circle
        # start at 9 o'clock: with the quarter-turn offset above, reading starts near 12 o'clock
        strip = _upscale(unwrap_annulus(crop, (cx, cy), r, start_deg=180.0), 48)
        words = [wd for wd in self.headstamp_tokens(strip) if normalise(wd.text)[0] or wd.text.strip() in ("+", "⊕")]
        if not words:
            return None
        tokens = [t for wd in words for t in wd.text.upper().split()]
        rec = parse_headstamp(tokens)
        text = " ".join(tokens)
        confs = [c for wd in words for c in wd.char_confidences]
        conf = float(np.mean(confs)) if confs else 0.0
        ntext, nconfs = normalise(" ".join(wd.text for wd in words),
                                  [c for wd in words for c in (*wd.char_confidences, 1.0)])
        return TextReading(kind="headstamp", text=text, confidence=conf, box=box,
                           candidates=candidates(ntext, nconfs), raw_text=" ".join(wd.text for wd in words),
                           char_confidences=[round(c, 4) for c in confs],
                           needs_review=needs_review(conf, confs) or not rec.manufacturer,
                           detection_index=detection_index, headstamp=rec, model=self.recognizer.name)


class OcrStep:
    """Pipeline step: OCR on ``marking`` and ``case_head`` detections.

    With ``whole_image=True`` (used when no object detector is installed) the whole photo is read
    instead: as a headstamp when it is a case-head close-up (one dominant circle), else as text lines.
    """

    name = "ocr"
    min_whole_chars = 3

    def __init__(self, engine: OcrEngine, margin: float = 0.08, whole_image: bool = False):
        self.engine = engine
        self.margin = margin
        self.whole_image = whole_image

    @classmethod
    def from_registry(cls, registry: Registry, options: RuntimeOptions = RuntimeOptions(),
                      whole_image: bool = False) -> OcrStep:
        return cls(OcrEngine.from_registry(registry, options), whole_image=whole_image)

    def models(self) -> list[ModelRef]:
        return self.engine.models()

    def _read_whole(self, image: np.ndarray, findings: ImageFindings) -> None:
        h, w = image.shape[:2]
        box = [0.0, 0.0, float(w), float(h)]
        circle = find_case_head(image)
        reading = None
        if circle is not None and circle[2] > 0.3 * min(h, w):
            reading = self.engine.read_headstamp(image, box, circle=circle)
        if reading is None:  # not a case head after all, or nothing legible on the ring
            reading = self.engine.read_serial(image, box)
        # a whole photo has stray texture that reads as short "words": keep only substantial readings
        if reading is not None and reading.confidence >= 0.6 and (
                reading.kind == "headstamp" or len(reading.text) >= self.min_whole_chars):
            findings.texts.append(reading)

    def __call__(self, image: np.ndarray, findings: ImageFindings) -> None:
        from ..analyzer import crop

        t0 = time.perf_counter()
        if self.whole_image:
            self._read_whole(image, findings)
        for i, det in enumerate(list(findings.detections)):
            if det.label not in ("marking", "case_head"):
                continue
            patch = crop(image, det.box, self.margin)
            if min(patch.shape[:2]) < 8:
                continue
            if det.label == "marking":
                reading = self.engine.read_serial(patch, det.box, detection_index=i)
            else:
                reading = self.engine.read_headstamp(patch, det.box, detection_index=i)
            if reading is not None:
                findings.texts.append(reading)
        logger.debug("ocr on %s took %.1f ms", findings.path, (time.perf_counter() - t0) * 1000)
