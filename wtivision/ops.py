"""Numpy image and box operations shared by the runners (no onnxruntime here).

The letterbox and box-rescaling arithmetic follows ultralytics' conventions so
that an exported YOLO model gives the same boxes here as in ultralytics.
"""

from __future__ import annotations

import numpy as np

MAX_WH = 7680.0  # class offset for per-class NMS (boxes of different classes never overlap)


def letterbox(
    image: np.ndarray,
    new_shape: tuple[int, int] = (640, 640),
    color: int = 114,
    scaleup: bool = True,
    stride: int | None = None,
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping aspect ratio and pad to ``new_shape`` (h, w), centred.

    With ``stride`` (models with a dynamic input), each side is padded only up to the next multiple of
    ``stride`` instead of to ``new_shape``, as ultralytics' ``LetterBox(auto=True)`` does: a 4:3 photo at 640
    becomes 640 x 480, not 640 x 640 (a quarter fewer pixels to run).

    Returns the padded image, the scale ``r`` applied and the padding (left, top).
    """
    import cv2

    h, w = image.shape[:2]
    nh, nw = new_shape
    r = min(nh / h, nw / w)
    if not scaleup:
        r = min(r, 1.0)
    # at least one pixel: a strip of a photo (3 x 4000 px) would otherwise round to 0 rows and stop cv2.resize
    new_unpad_w, new_unpad_h = max(1, int(round(w * r))), max(1, int(round(h * r)))
    if stride:
        nw, nh = new_unpad_w + (nw - new_unpad_w) % stride, new_unpad_h + (nh - new_unpad_h) % stride
    dw, dh = (nw - new_unpad_w) / 2, (nh - new_unpad_h) / 2
    if (w, h) != (new_unpad_w, new_unpad_h):
        image = cv2.resize(image, (new_unpad_w, new_unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    if image.ndim == 2:
        image = image[:, :, None]
    out = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(color,) * 3)
    if out.ndim == 2:
        out = out[:, :, None]
    return out, r, (float(left), float(top))


def xywh2xyxy(boxes: np.ndarray) -> np.ndarray:
    out = np.empty_like(boxes)
    half_w, half_h = boxes[..., 2] / 2, boxes[..., 3] / 2
    out[..., 0] = boxes[..., 0] - half_w
    out[..., 1] = boxes[..., 1] - half_h
    out[..., 2] = boxes[..., 0] + half_w
    out[..., 3] = boxes[..., 1] + half_h
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection areas (N, M) of xyxy boxes and the areas of each set."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return wh[..., 0] * wh[..., 1], area_a, area_b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between (N, 4) and (M, 4) xyxy boxes."""
    inter, area_a, area_b = _overlap(a, b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_ios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) share of each box of ``a`` covered by each box of ``b`` (intersection over a's area)."""
    inter, area_a, _ = _overlap(a, b)
    return np.where(area_a[:, None] > 0, inter / np.maximum(area_a[:, None], 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression. Returns kept indices, highest score first.

    Arithmetic is float32 in the same order as torchvision's CPU kernel, so borderline overlaps are
    decided the same way as in ultralytics (parity of exported models).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    zero = np.float32(0)
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > np.float32(iou_threshold))]
    return np.asarray(keep, dtype=np.int64)


def scale_boxes(
    boxes: np.ndarray, ratio: float, pad: tuple[float, float], original_shape: tuple[int, int]
) -> np.ndarray:
    """Map xyxy boxes from letterboxed input pixels back to the original (h, w), clipped."""
    out = np.asarray(boxes, dtype=np.float64).copy()
    out[:, [0, 2]] -= pad[0]
    out[:, [1, 3]] -= pad[1]
    out /= ratio
    h, w = original_shape
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def yolo_postprocess(
    raw: np.ndarray,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    classes: np.ndarray | list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image's raw YOLOv8/11 head output (4 + nc, N) into boxes, scores, classes.

    Boxes are xyxy in letterboxed input pixels. Per-class NMS unless ``agnostic``. ``classes`` keeps only
    candidates whose best class is listed (as ultralytics' ``classes=`` argument: filtered after the argmax,
    before NMS).
    """
    pred = np.asarray(raw, dtype=np.float32)
    if pred.ndim == 3:
        if pred.shape[0] != 1:
            raise ValueError("yolo_postprocess takes one image's output; loop over the batch")
        pred = pred[0]
    pred = pred.T  # (N, 4 + nc)
    scores_all = pred[:, 4:]
    cls = scores_all.argmax(axis=1)
    scores = scores_all[np.arange(len(pred)), cls]
    mask = scores > conf_threshold
    if classes is not None:
        mask &= np.isin(cls, np.asarray(classes, dtype=np.int64))
    boxes = xywh2xyxy(pred[mask, :4])
    scores, cls = scores[mask], cls[mask]
    if not len(scores):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    offset = np.float32(0) if agnostic else cls[:, None].astype(np.float32) * np.float32(MAX_WH)
    keep = nms(boxes + offset, scores, iou_threshold)[:max_det]
    return boxes[keep], scores[keep], cls[keep].astype(np.int64)


def tile_windows(height: int, width: int, zoom: float = 2.0, overlap: float = 0.2,
                 min_size: int = 0) -> list[tuple[int, int, int, int]]:
    """Square crops (x, y, w, h) that cover a ``height`` x ``width`` photo, each seen by the detector at
    ``zoom`` times the scale of the whole photo (side = longer side / zoom, at most the shorter side),
    neighbours overlapping by at least ``overlap`` of the side. None when the photo's longer side is at most
    ``min_size`` (the detector's input already shows it at full resolution) or ``zoom`` <= 1."""
    if zoom <= 1.0 or max(height, width) <= min_size:
        return []
    side = int(min(height, width, np.ceil(max(height, width) / zoom)))
    if side < 1:
        return []

    def starts(length: int) -> list[int]:
        if length <= side:
            return [0]
        n = int(np.ceil((length - side * overlap) / (side * (1.0 - overlap))))
        return sorted({int(round(v)) for v in np.linspace(0, length - side, max(n, 2))})

    return [(x, y, side, side) for y in starts(height) for x in starts(width)]


#: Names ``merge_tile_boxes``' rule in the analysis settings of tiled scans (``Analyzer``), so results stored
#: under an earlier rule are analysed again, not reused; change it whenever the rule changes.
TILE_MERGE = "score-aware (2026-12-01)"


def merge_tile_boxes(whole: tuple[np.ndarray, np.ndarray, np.ndarray], tiles: tuple[np.ndarray, np.ndarray, np.ndarray],
                     merge_iou: float = 0.5, cover: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One set of detections from a whole-photo pass and the tile passes (boxes, scores, classes; boxes xyxy in
    photo pixels, tile boxes already filtered by the caller), highest score first.

    A tile box more than ``cover`` inside a whole-pass box of its class that scores at least as high is a part of
    an object the whole pass already holds, and is dropped; then boxes of a class that overlap by more than
    ``merge_iou`` (one object seen by two tiles, or by a tile and the whole pass) keep the higher score. The score
    test matters: at a low threshold the whole pass holds weak boxes around small objects, and a rule that ignored
    scores let them remove the tiles' confident boxes of those objects."""
    wb, ws, wc = (np.asarray(a) for a in whole)
    tb, ts, tc = (np.asarray(a) for a in tiles)
    wb, tb = wb.astype(np.float64).reshape(-1, 4), tb.astype(np.float64).reshape(-1, 4)
    wc, tc = wc.astype(np.int64).reshape(-1), tc.astype(np.int64).reshape(-1)
    ws, ts = ws.astype(np.float32).reshape(-1), ts.astype(np.float32).reshape(-1)
    if not len(tb):
        return wb, ws, wc
    # class offset: boxes of different classes never overlap
    span = float(max(wb.max(initial=0.0), tb.max(initial=0.0))) + 1.0
    if len(wb):
        inside = box_ios(tb + tc[:, None] * span, wb + wc[:, None] * span) > cover
        part = (inside & (ws[None, :] >= ts[:, None])).any(axis=1)
        tb, ts, tc = tb[~part], ts[~part], tc[~part]
    boxes, scores, cls = np.concatenate([wb, tb]), np.concatenate([ws, ts]), np.concatenate([wc, tc])
    keep = nms(boxes + cls[:, None] * span, scores, merge_iou)
    return boxes[keep], scores[keep], cls[keep]


def inner_edge_mask(boxes: np.ndarray, window: tuple[int, int, int, int], image_hw: tuple[int, int],
                    margin: float = 2.0) -> np.ndarray:
    """True for boxes (xyxy, window pixels) that touch an edge of the window lying inside the photo: an
    object cut by the tile, which the whole-photo pass or a neighbouring tile sees whole."""
    x, y, w, h = window
    H, W = image_hw
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cut = np.zeros(len(b), dtype=bool)
    if x > 0:
        cut |= b[:, 0] <= margin
    if y > 0:
        cut |= b[:, 1] <= margin
    if x + w < W:
        cut |= b[:, 2] >= w - margin
    if y + h < H:
        cut |= b[:, 3] >= h - margin
    return cut
