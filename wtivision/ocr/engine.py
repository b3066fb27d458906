"""PP-OCR text detection (DB) and recognition (CTC) on onnxruntime, post-processing in numpy/OpenCV."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from ..registry import ModelSpec, Registry
from ..runtime import OnnxModel, RuntimeOptions

logger = logging.getLogger(__name__)


@dataclass
class LineReading:
    """One recognised text line: text, mean confidence and the confidence of each character."""

    text: str
    confidence: float
    char_confidences: list[float]


def ctc_decode(probs: np.ndarray, charset: list[str], allowed: np.ndarray | None = None) -> LineReading:
    """Greedy CTC decode of one (T, C) probability matrix. ``charset[0]`` is the blank.

    Repeated symbols collapse unless separated by a blank; a character's confidence is the
    highest probability over the time steps of its run. ``allowed`` (class indices, blank included)
    restricts the decode to those symbols; the probabilities are not renormalised, so mass the model
    gave to excluded symbols lowers the confidence instead of being silently reassigned.
    """
    if allowed is not None:
        sub = probs[:, allowed]
        idx = allowed[sub.argmax(axis=1)]
        best = sub.max(axis=1)
    else:
        idx = probs.argmax(axis=1)
        best = probs.max(axis=1)
    chars: list[str] = []
    confs: list[float] = []
    prev = -1
    for t, k in enumerate(idx):
        k = int(k)
        if k != 0 and k == prev:
            confs[-1] = max(confs[-1], float(best[t]))
        elif k != 0:
            chars.append(charset[k] if k < len(charset) else "")
            confs.append(float(best[t]))
        prev = k
    conf = float(np.mean(confs)) if confs else 0.0
    return LineReading("".join(chars), conf, confs)


def order_quad(pts: np.ndarray) -> np.ndarray:
    """Order 4 points as top-left, top-right, bottom-right, bottom-left."""
    pts = np.asarray(pts, dtype=np.float32).reshape(4, 2)
    xs = pts[np.argsort(pts[:, 0])]
    left, right = xs[:2], xs[2:]
    tl, bl = left[np.argsort(left[:, 1])]
    tr, br = right[np.argsort(right[:, 1])]
    return np.array([tl, tr, br, bl], dtype=np.float32)


def crop_quad(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Perspective-crop a (possibly rotated) text quad to an upright rectangle (deskew)."""
    import cv2

    q = order_quad(quad)
    w = int(max(np.linalg.norm(q[0] - q[1]), np.linalg.norm(q[3] - q[2])))
    h = int(max(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2])))
    w, h = max(w, 1), max(h, 1)
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(q, dst)
    out = cv2.warpPerspective(image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    if h > 1.5 * w:  # vertical line of text
        out = np.rot90(out).copy()
    return out


def db_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip_ratio: float = 1.6,
             min_size: float = 3.0, max_candidates: int = 1000) -> tuple[list[np.ndarray], list[float]]:
    """DB post-processing of one probability map (H, W): quads (4x2, map pixels) and scores.

    The polygon is grown by ``area * unclip_ratio / perimeter`` on each side, applied to the
    minimum-area rectangle (equivalent to DB's unclip for the rectangular boxes it keeps).
    """
    import cv2

    mask = cv2.dilate((prob > thresh).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(mask * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    quads, scores = [], []
    h, w = prob.shape
    for c in contours[:max_candidates]:
        (cx, cy), (rw, rh), ang = cv2.minAreaRect(c)
        if min(rw, rh) < min_size:
            continue
        pts = cv2.boxPoints(((cx, cy), (rw, rh), ang))
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [pts.astype(np.int32)], 1)
        score = float(cv2.mean(prob, m)[0])
        if score < box_thresh:
            continue
        area, perim = rw * rh, 2 * (rw + rh)
        d = area * unclip_ratio / max(perim, 1e-6)
        rw2, rh2 = rw + 2 * d, rh + 2 * d
        if min(rw2, rh2) < min_size + 2:
            continue
        quads.append(order_quad(cv2.boxPoints(((cx, cy), (rw2, rh2), ang))))
        scores.append(score)
    return quads, scores


class TextDetector(OnnxModel):
    """PP-OCR DB text detector."""

    def __init__(self, spec: ModelSpec, registry: Registry, options: RuntimeOptions = RuntimeOptions()):
        super().__init__(spec, registry, options)
        if spec.task != "ocr_det":
            raise ModelError(f"model {spec.name!r} is not a text detector")
        self.max_side = int(spec.input_size[0]) if spec.input_size else 960
        p = spec.preprocessing
        self.thresh = float(p.get("db_thresh", 0.3))
        self.box_thresh = float(p.get("box_thresh", 0.5))
        self.unclip = float(p.get("unclip_ratio", 1.6))

    def detect(self, image_bgr: np.ndarray, thresh: float | None = None,
               box_thresh: float | None = None) -> list[tuple[np.ndarray, float]]:
        """Text quads (4x2 in ``image_bgr`` pixels, ordered tl,tr,br,bl) with scores, top to bottom.

        ``thresh`` / ``box_thresh`` override the manifest's DB thresholds (pixel and box score)."""
        import cv2

        h, w = image_bgr.shape[:2]
        r = min(1.0, self.max_side / max(h, w))
        if max(h, w) * r < 320:  # small crops: upscale so strokes are several pixels wide
            r = 320 / max(h, w)
        nh, nw = max(32, int(round(h * r / 32)) * 32), max(32, int(round(w * r / 32)) * 32)
        x = cv2.resize(image_bgr, (nw, nh)).astype(np.float32) / 255.0
        x = ((x - 0.5) / 0.5).transpose(2, 0, 1)[None]
        prob = self.run(np.ascontiguousarray(x))[0][0, 0]
        quads, scores = db_boxes(prob, self.thresh if thresh is None else thresh,
                                 self.box_thresh if box_thresh is None else box_thresh, self.unclip)
        sx, sy = w / nw, h / nh
        out = []
        for q, s in zip(quads, scores):
            q = q * np.array([sx, sy], np.float32)
            q[:, 0] = q[:, 0].clip(0, w - 1)
            q[:, 1] = q[:, 1].clip(0, h - 1)
            out.append((q, s))
        out.sort(key=lambda qs: (qs[0][:, 1].mean(), qs[0][:, 0].mean()))
        return out


MIN_REC_WIDTH = 160


class TextRecognizer(OnnxModel):
    """PP-OCR CTC text-line recogniser; the charset (blank first, space last) comes from the manifest."""

    def __init__(self, spec: ModelSpec, registry: Registry, options: RuntimeOptions = RuntimeOptions()):
        super().__init__(spec, registry, options)
        if spec.task != "ocr_rec" or not spec.classes:
            raise ModelError(f"model {spec.name!r} is not a recogniser with a character list")
        self.charset = ["<blank>", *spec.classes, " "]
        self.height = int(spec.input_size[0]) if spec.input_size else 48
        # Batches are padded to at least this width. PaddleOCR pads to the manifest's 320; short stamped
        # words read as well at 160 on the development seeds, at about half the cost.
        self.min_width = MIN_REC_WIDTH
        self._allowed: dict[str, np.ndarray] = {}

    def allowed_indices(self, symbols: str) -> np.ndarray:
        """Class indices (blank first) of the ``symbols`` present in the charset."""
        if symbols not in self._allowed:
            wanted = set(symbols)
            self._allowed[symbols] = np.array([0] + [i for i, c in enumerate(self.charset) if i and c in wanted],
                                              dtype=np.int64)
        return self._allowed[symbols]

    def _prepare(self, line: np.ndarray, width: int) -> np.ndarray:
        import cv2

        h, w = line.shape[:2]
        rw = min(width, int(math.ceil(self.height * w / max(h, 1))))
        img = cv2.resize(line, (max(rw, 1), self.height)).astype(np.float32) / 255.0
        img = ((img - 0.5) / 0.5).transpose(2, 0, 1)
        out = np.zeros((3, self.height, width), np.float32)
        out[:, :, : img.shape[2]] = img
        return out

    def recognize(self, lines: list[np.ndarray], symbols: str | None = None) -> list[LineReading]:
        """Read text lines (BGR crops, text horizontal). One batched run per call.

        ``symbols`` restricts the decode to those characters (e.g. upper-case Latin, digits and
        separators for stamped serials); None decodes over the whole dictionary."""
        if not lines:
            return []
        ratios = [ln.shape[1] / max(ln.shape[0], 1) for ln in lines]
        width = max(self.min_width, int(math.ceil(self.height * max(ratios))))
        width = min(width, 3200)
        batch = np.stack([self._prepare(ln, width) for ln in lines])
        probs = self.run(batch)[0]
        allowed = self.allowed_indices(symbols) if symbols is not None else None
        return [ctc_decode(p, self.charset, allowed) for p in probs]
