"""OCR for serial numbers, stamped markings and headstamps, on onnxruntime (PP-OCR models).

``OcrStep`` plugs into the Analyzer: it reads text in detector regions labelled ``marking`` (kind
``serial`` when the reading looks like a serial number, else ``marking``) and ``case_head`` (kind
``headstamp``, unwrapped around the primer and parsed). ``read_serial`` and ``read_headstamp`` work on
crops directly for callers without a detector.
"""

from __future__ import annotations

import logging
import re
import string
import time

import numpy as np

from ..ops import box_iou
from ..registry import Registry
from ..results import ImageFindings, ModelRef, TextReading
from ..runtime import RuntimeOptions
from ..taxonomy import FIREARM
from .engine import LineReading, TextDetector, TextRecognizer, crop_quad
from .headstamp import (
    NATO_TOKENS,
    find_case_head,
    find_case_heads,
    find_nato_marks,
    parse_headstamp,
    unwrap_annulus,
)
from .normalize import candidates, needs_review, normalise

logger = logging.getLogger(__name__)

__all__ = ["OcrEngine", "OcrStep", "parse_headstamp"]

SERIAL_LIKE = re.compile(r"^(?=.*\d)[A-Z0-9]{4,}$")
# Symbols the recogniser may output for stamped text (its dictionary also has CJK, lower case and
# punctuation, which on metal are only ever misreadings of these).
SERIAL_SYMBOLS = string.ascii_uppercase + string.digits + " -./"
# Headstamps add the round symbols the NATO cross-in-circle is read as (see headstamp.NATO_TOKENS).
HEADSTAMP_SYMBOLS = SERIAL_SYMBOLS + "+○◎⊙Φθ@●"
HEADSTAMP_DB_THRESH, HEADSTAMP_BOX_THRESH = 0.2, 0.4  # lenient: stamped characters give weak text maps
NATO_SIZES, NATO_MIN_SCORE = (0.3, 0.4, 0.5), 0.5  # mark diameters (fraction of strip height), match score
GAP_MIN_CONFIDENCE = 0.75  # a reading between detected headstamp words must be at least this confident
# A case head larger than this (radius, px) is shrunk before its ring is unwrapped: the text detector sees the
# ring at most ~960 px wide (about a 90 px high strip) and the recogniser reads 48 px lines, so more pixels only
# cost time (a 12 MP close-up: a 350 x 2500 px strip, ~1.3 s a photo on 2 cores, most of it wasted).
HEADSTAMP_MAX_RADIUS = 256


def _circular_overlap(a0: float, aw: float, b0: float, bw: float, period: float) -> float:
    """Length of the overlap of [a0, a0+aw) and [b0, b0+bw) on a circle of circumference ``period``."""
    return max(min(a0 + aw, b0 + s + bw) - max(a0, b0 + s) for s in (-period, 0.0, period))


def circular_words(spans: list[tuple[float, float, float]], period: float) -> list[int]:
    """Pick one box per word on a ring unwrapped into a strip of width ``period`` (possibly extended).

    ``spans`` are (x0, x1, score) of detected boxes; boxes whose start positions coincide modulo the
    period, or that overlap on the circle, are copies of one word: the widest (most complete) is kept.
    Returns the indices of the kept boxes ordered by their position on the circle.
    """
    order = sorted(range(len(spans)), key=lambda i: (-(spans[i][1] - spans[i][0]), -spans[i][2]))
    kept: list[int] = []
    for i in order:
        a0, a1, _ = spans[i]
        clash = any(_circular_overlap(a0 % period, a1 - a0, spans[j][0] % period, spans[j][1] - spans[j][0], period)
                    > 0.3 * min(a1 - a0, spans[j][1] - spans[j][0]) for j in kept)
        if not clash:
            kept.append(i)
    return sorted(kept, key=lambda i: spans[i][0] % period)


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


def _highpass(image_bgr: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    """Grey high-pass (image minus its blur), contrast-stretched: shallow stamps on uneven light."""
    import cv2

    g = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    d = g - cv2.GaussianBlur(g, (0, 0), sigma)
    d = d * (40.0 / (float(d.std()) + 1e-3)) + 128.0
    return cv2.cvtColor(np.clip(d, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def _upscale(image_bgr: np.ndarray, min_height: int = 48) -> np.ndarray:
    import cv2

    h = image_bgr.shape[0]
    if h >= min_height:
        return image_bgr
    f = min_height / max(h, 1)
    return cv2.resize(image_bgr, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)


def bounded_head(image: np.ndarray, circle: tuple[float, float, float],
                 max_radius: float) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The square around ``circle`` (cx, cy, r), shrunk (area interpolation) so that r <= ``max_radius``, and the
    circle in that patch; the image itself when the circle is already small enough."""
    import cv2

    cx, cy, r = circle
    if r <= max_radius:
        return image, circle
    h, w = image.shape[:2]
    x0, y0 = max(0, int(cx - r) - 2), max(0, int(cy - r) - 2)
    x1, y1 = min(w, int(np.ceil(cx + r)) + 2), min(h, int(np.ceil(cy + r)) + 2)
    f = max_radius / r
    patch = cv2.resize(image[y0:y1, x0:x1], (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))),
                       interpolation=cv2.INTER_AREA)
    return patch, ((cx - x0) * f, (cy - y0) * f, r * f)


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

    def best_reading(self, line: np.ndarray, rotated_margin: float = 0.0,
                     symbols: str = SERIAL_SYMBOLS) -> LineReading:
        """The most confident reading of one line (see ``best_readings``)."""
        return self.best_readings([line], rotated_margin, symbols)[0]

    def best_readings(self, lines: list[np.ndarray], rotated_margin: float = 0.0,
                      symbols: str = SERIAL_SYMBOLS) -> list[LineReading]:
        """Read each line under rotations 0/180 (and 90/270 for tall crops), raw and enhanced, and keep
        its most confident reading; one batched recogniser run for all lines. A rotated reading must
        beat the upright one by ``rotated_margin`` (headstamps are stamped upright in the unwrapped
        ring; 6/9 and 68/89 read both ways)."""
        variants: list[np.ndarray] = []
        owner: list[tuple[int, bool]] = []  # (line index, rotated)
        for k, line in enumerate(lines):
            line = _upscale(line)
            vs = [line, np.rot90(line, 2)]
            if line.shape[0] > 1.5 * line.shape[1]:
                vs += [np.rot90(line, 1), np.rot90(line, 3)]
            for j, v in enumerate(vs):
                v = np.ascontiguousarray(v)
                variants += [v, _enhance(v)]
                owner += [(k, j > 0), (k, j > 0)]
        readings = self.recognizer.recognize(variants, symbols)

        def score(i: int) -> tuple[float, float]:
            r = readings[i]
            penalty = rotated_margin if owner[i][1] else 0.0
            return (r.confidence * min(1.0, len(normalise(r.text)[0]) / 3) - penalty, r.confidence)

        best: dict[int, int] = {}
        for i, (k, _) in enumerate(owner):
            if k not in best or score(i) > score(best[k]):
                best[k] = i
        return [readings[best[k]] for k in range(len(lines))]

    def find_serials(self, crop: np.ndarray, origin: tuple[float, float], detection_index: int | None = None,
                     min_confidence: float = 0.6) -> list[TextReading]:
        """Text lines in a larger crop (e.g. a whole firearm) that look like serial numbers, one reading each;
        ``origin`` is the crop's top-left corner in the photo (boxes are given in photo pixels)."""
        if self.detector is None:
            return []
        out = []
        for quad, _ in self.detector.detect(crop):
            x0, y0 = quad.min(axis=0)
            x1, y1 = quad.max(axis=0)
            box = [float(x0 + origin[0]), float(y0 + origin[1]), float(x1 + origin[0]), float(y1 + origin[1])]
            r = self._reading([self.best_readings([crop_quad(crop, quad)])[0]], box, "serial", detection_index)
            if r is not None and r.kind == "serial" and r.confidence >= min_confidence:
                out.append(r)
        return out

    def read_serial(self, crop: np.ndarray, box: list[float], kind: str = "serial",
                    detection_index: int | None = None) -> TextReading | None:
        """Read a serial number / marking in ``crop`` (``box`` is the crop's box in the photo)."""
        return self._reading(self.best_readings(self.lines(crop)), box, kind, detection_index)

    def _reading(self, readings: list[LineReading], box: list[float], kind: str,
                 detection_index: int | None) -> TextReading | None:
        """One TextReading from the line readings of a marking (normalised text, candidates, review flag)."""
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

        The strip is extended by half a turn so a word cut at the seam is also seen whole; the text
        detector runs on the plain and the high-passed strip with lenient thresholds (stamped characters
        are faint), the boxes are de-duplicated around the circle (the most complete copy of each word
        wins) and each word is read on its own. The detector misses isolated single characters (a plant
        number "3", the NATO mark), so the gaps between the words are read too and kept when confident.
        """
        if self.detector is None:
            return [self.best_reading(strip, symbols=HEADSTAMP_SYMBOLS)]
        W = strip.shape[1]
        ext = np.ascontiguousarray(np.concatenate([strip, strip[:, : W // 2]], axis=1))
        found: list[tuple[float, float, float, np.ndarray]] = []
        for img in (ext, _highpass(ext)):
            for quad, score in self.detector.detect(img, thresh=HEADSTAMP_DB_THRESH,
                                                    box_thresh=HEADSTAMP_BOX_THRESH):
                found.append((float(quad[:, 0].min()), float(quad[:, 0].max()), score, quad))
        kept = circular_words([(x0, x1, sc) for x0, x1, sc, _ in found], W)
        read = self.best_readings([crop_quad(ext, found[i][3]) for i in kept], 0.15, HEADSTAMP_SYMBOLS)
        placed = [(found[i][0] % W, found[i][1] - found[i][0], r) for i, r in zip(kept, read)]
        if kept:
            ys = np.concatenate([found[i][3][:, 1] for i in kept])
            y0, y1 = float(ys.min()), float(ys.max())
        else:
            y0, y1 = 0.0, float(strip.shape[0])
        placed = self._nato_mark(strip, placed)
        gaps = self._gap_words(strip, [(x, wd) for x, wd, _ in placed], y0, y1)
        placed += [(x, 0.0, r) for x, r in gaps]
        placed.sort(key=lambda p: p[0])
        return [r for _, _, r in placed]

    def _nato_mark(self, strip: np.ndarray,
                   placed: list[tuple[float, float, LineReading]]) -> list[tuple[float, float, LineReading]]:
        """Put the NATO mark (at most one per headstamp) among the words: the best cross-in-circle match
        that does not lie on a word of two or more characters; a one-symbol word under it (the
        recogniser's guess at the mark) is replaced."""
        W, H = strip.shape[1], strip.shape[0]
        doubled = np.concatenate([strip, strip], axis=1)
        for x0, x1, score in find_nato_marks(doubled, tuple(f * H for f in NATO_SIZES), NATO_MIN_SCORE):
            a0, width = x0 % W, x1 - x0
            under = [p for p in placed if _circular_overlap(a0, width, p[0], p[1], W) > 0.3 * width]
            if any(len(normalise(p[2].text)[0]) >= 2 for p in under):
                continue
            mark = LineReading("⊕", score, [score])
            return [p for p in placed if p not in under] + [(a0, width, mark)]
        return placed

    def _gap_words(self, strip: np.ndarray, words: list[tuple[float, float]], y0: float,
                   y1: float) -> list[tuple[float, LineReading]]:
        """Read the stretches of the ring between the detected words (``words``: start, width)."""
        W = strip.shape[1]
        band_h = max(y1 - y0, 8.0)
        pad = 0.15 * band_h
        top, bottom = int(max(0, y0 - pad)), int(min(strip.shape[0], y1 + pad))
        doubled = np.concatenate([strip, strip], axis=1)[top:bottom]
        starts = sorted(words) or [(0.0, 0.0)]
        gaps = []
        for k, (x0, wd) in enumerate(starts):
            g0 = x0 + wd + pad
            g1 = starts[(k + 1) % len(starts)][0] + (W if k + 1 >= len(starts) else 0) - pad
            if not words:
                g0, g1 = 0.0, float(W)
            if g1 - g0 >= 0.6 * band_h:
                gaps.append((g0, doubled[:, int(g0):int(g1)]))
        if not gaps:
            return []
        crops = [np.ascontiguousarray(c) for _, c in gaps]
        crops += [_enhance(c) for c in crops]
        readings = self.recognizer.recognize([_upscale(c) for c in crops], HEADSTAMP_SYMBOLS)
        out = []
        n = len(gaps)
        for k, (g0, _) in enumerate(gaps):
            r = max(readings[k], readings[k + n], key=lambda lr: lr.confidence)
            if r.confidence >= GAP_MIN_CONFIDENCE and (normalise(r.text)[0] or r.text.strip() in NATO_TOKENS):
                out.append((g0 % W, r))
        return out

    def read_headstamp(self, crop: np.ndarray, box: list[float], detection_index: int | None = None,
                       circle: tuple[float, float, float] | None = None) -> TextReading | None:
        """Find the case head in ``crop`` (unless ``circle`` is given), unwrap the ring around the primer,
        split it into words, read and parse them."""
        h, w = crop.shape[:2]
        circle = circle or find_case_head(crop) or (w / 2, h / 2, min(h, w) / 2 * 0.95)
        crop, (cx, cy, r) = bounded_head(crop, circle, HEADSTAMP_MAX_RADIUS)
        # start at 9 o'clock: with the quarter-turn offset above, reading starts near 12 o'clock
        strip = _upscale(unwrap_annulus(crop, (cx, cy), r, start_deg=180.0), 48)
        words = [wd for wd in self.headstamp_tokens(strip) if normalise(wd.text)[0] or wd.text.strip() in NATO_TOKENS]
        if not any(normalise(wd.text)[0] for wd in words):  # a round mark alone does not make a headstamp
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

    With ``whole_image=True`` (used when no object detector is installed, or when the detector has no trained
    ``marking`` / ``case_head`` class) a photo in which nothing was detected is read whole: as a headstamp when
    it is a case-head close-up (one dominant circle), else as text lines. A case-head close-up is also read
    when the only thing detected is the round object itself (a box matching the circle). Close-ups of
    markings, the usual way they are photographed, are read this way; markings inside a wider scene need the
    detector's classes.
    With ``firearm_serials=True`` the text detector also searches each firearm box for serial-like lines
    (off by default: it costs one detector run per firearm).
    """

    name = "ocr"
    min_whole_chars = 3
    min_head_confidence = 0.5  # headstamps read on case heads found in a wider photo
    head_margin = 0.06  # of the head's box (0.12 of its radius) kept round it
    same_object_iou = 0.5  # a detection box and a case-head circle's box this alike are the same object

    def __init__(self, engine: OcrEngine, margin: float = 0.08, whole_image: bool = False,
                 firearm_serials: bool = False):
        self.engine = engine
        self.margin = margin
        self.whole_image = whole_image
        self.firearm_serials = firearm_serials

    @classmethod
    def from_registry(cls, registry: Registry, options: RuntimeOptions = RuntimeOptions(),
                      whole_image: bool = False, firearm_serials: bool = False) -> OcrStep:
        return cls(OcrEngine.from_registry(registry, options), whole_image=whole_image,
                   firearm_serials=firearm_serials)

    def models(self) -> list[ModelRef]:
        return self.engine.models()

    @staticmethod
    def case_head_close_up(image: np.ndarray) -> tuple[float, float, float] | None:
        """The case head's circle when the photo is a case-head close-up (one large circle near the middle of
        the frame), else None. Hough also "finds" circles in textured backgrounds; reading those as headstamps
        cost ~250 ms a photo for nothing."""
        h, w = image.shape[:2]
        circle = find_case_head(image, work_side=320)
        if circle is not None and circle[2] > 0.3 * min(h, w) and \
                abs(circle[0] - w / 2) < 0.2 * w and abs(circle[1] - h / 2) < 0.2 * h:
            return circle
        return None

    def _read_whole(self, image: np.ndarray, findings: ImageFindings,
                    circle: tuple[float, float, float] | None) -> None:
        h, w = image.shape[:2]
        box = [0.0, 0.0, float(w), float(h)]
        reading = None
        if circle is not None:
            reading = self.engine.read_headstamp(image, box, circle=circle)
        elif self._read_case_heads(image, findings):
            return  # the text in the photo was the headstamps just read
        # not a case head after all, nothing legible on the ring, or no known factory code (the round thing may be
        # a serial plate or a stamped boss: a confident serial-like reading wins over a headstamp of unknown tokens)
        if reading is None or (reading.headstamp is not None and not reading.headstamp.manufacturer):
            serial = self.engine.read_serial(image, box)
            if reading is None or (serial is not None and serial.kind == "serial"
                                   and serial.confidence > reading.confidence):
                reading = serial
        # a whole photo has stray texture that reads as short "words": keep only substantial readings
        if reading is not None and reading.confidence >= 0.6 and (
                reading.kind == "headstamp" or len(reading.text) >= self.min_whole_chars):
            findings.texts.append(reading)

    def _read_case_heads(self, image: np.ndarray, findings: ImageFindings) -> bool:
        """Read the headstamp of every case head found in a wider photo (a cartridge held in the hand,
        standing on a bench); True if at least one was legible."""
        from ..analyzer import crop_with_origin

        h, w = image.shape[:2]
        read = False
        for head in find_case_heads(image):
            patch, (x0, y0) = crop_with_origin(image, head.box, self.head_margin)
            if min(patch.shape[:2]) < 32:
                continue
            box = [max(0.0, head.box[0]), max(0.0, head.box[1]), min(float(w), head.box[2]), min(float(h), head.box[3])]
            reading = self.engine.read_headstamp(patch, box, circle=(head.cx - x0, head.cy - y0, head.r))
            if reading is not None and reading.confidence >= self.min_head_confidence:
                findings.texts.append(reading)
                read = True
        return read

    def __call__(self, image: np.ndarray, findings: ImageFindings) -> None:
        from ..analyzer import crop

        t0 = time.perf_counter()
        if self.whole_image:
            circle = self.case_head_close_up(image)
            if circle is not None and findings.detections:
                # a case-head close-up is read even where the detector boxed the round object itself (a
                # revolver's cylinder seen end-on and a case head look alike to a detector that never learnt
                # case heads); a circle beside the detected objects is Hough finding texture (profiled:
                # reading those cost ~470 ms on each firearm photo for nothing)
                cx, cy, r = circle
                if not (box_iou([d.box for d in findings.detections], [cx - r, cy - r, cx + r, cy + r])
                        >= self.same_object_iou).any():
                    circle = None
            if circle is not None or not findings.detections:
                self._read_whole(image, findings, circle)
        for i, det in enumerate(list(findings.detections)):
            if self.firearm_serials and det.family == FIREARM:
                # serials stamped on a firearm that the detector did not box as a marking
                h, w = image.shape[:2]
                x0, y0 = max(0, int(det.box[0])), max(0, int(det.box[1]))
                patch = image[y0:min(h, int(np.ceil(det.box[3]))), x0:min(w, int(np.ceil(det.box[2])))]
                if min(patch.shape[:2]) >= 16:
                    findings.texts.extend(self.engine.find_serials(patch, (x0, y0), detection_index=i))
                continue
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
