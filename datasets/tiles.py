"""Full-resolution crops ("tiles") of photos whose objects are too small once the whole photo is shrunk to
the detector's input (a 70 px mine in a 1280x720 drone frame is 17 px at 320).

Used by ``datasets.build`` after the split is drawn: a tile is written into its parent photo's split, so a
tile of a test photo can never be trained on. Recipe key::

    tiles:
      - source: robotkos-landmine   # a recipe source name
        splits: [train, val]        # which splits get tiles (default: train, val; the test split stays whole
                                    # photos so earlier models compare on it; measure tiling at run time)
        size: 640                   # tile side in the photo's pixels (jittered by +-`jitter`)
        jitter: 0.25
        per_box: 3                  # crops that hold each box whole, at random positions
        negatives: 1                # crops of each photo that hold no box (background the model must reject)
        seed: 0

A box is kept in a tile when at least ``min_visible`` (0.6) of its area falls inside, clipped to the tile.
Tiles are JPEG (quality 95) files under ``DIR/_tiles/<source>/``; their manifest ``original`` is the
parent's, with ``#tile=x,y,w,h`` appended.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datasets.formats import Box, Item

logger = logging.getLogger(__name__)
MIN_VISIBLE = 0.6


#: What a crop's manifest ``original`` carries after its parent photo's path: ``#tile=x,y,w,h``.
TILE_MARK = "#tile="


def clip_boxes(boxes: list[Box], x: int, y: int, w: int, h: int, min_visible: float = MIN_VISIBLE) -> list[Box]:
    """The boxes seen in the window (x, y, w, h), in window coordinates; boxes with less than
    ``min_visible`` of their area inside are left out."""
    out = []
    for b in boxes:
        x1, y1, x2, y2 = max(b.x1, x), max(b.y1, y), min(b.x2, x + w), min(b.y2, y + h)
        if x2 <= x1 or y2 <= y1:
            continue
        area = (b.x2 - b.x1) * (b.y2 - b.y1)
        if area <= 0 or (x2 - x1) * (y2 - y1) / area < min_visible:
            continue
        out.append(Box(b.label, x1 - x, y1 - y, x2 - x, y2 - y))
    return out


def _overlaps(boxes: list[Box], x: int, y: int, w: int, h: int) -> bool:
    return any(b.x1 < x + w and b.x2 > x and b.y1 < y + h and b.y2 > y for b in boxes)


def windows(item: Item, rng: np.random.Generator, size: int, jitter: float = 0.25, per_box: int = 3,
            negatives: int = 1, tries: int = 50) -> Iterator[tuple[int, int, int, int]]:
    """Crop windows (x, y, w, h) of one photo: ``per_box`` around each box (the box whole inside, at a
    random place), then ``negatives`` that touch no box. Square, side ``size`` jittered, never larger than
    the photo."""
    W, H = item.width, item.height
    for b in item.boxes:
        for _ in range(per_box):
            s = int(min(W, H, round(size * rng.uniform(1 - jitter, 1 + jitter))))
            bw, bh = b.x2 - b.x1, b.y2 - b.y1
            if bw > s or bh > s:  # the object is bigger than a tile: the whole photo already shows it
                break
            lo_x, hi_x = max(0.0, b.x2 - s), min(b.x1, W - s)
            lo_y, hi_y = max(0.0, b.y2 - s), min(b.y1, H - s)
            yield int(rng.uniform(lo_x, hi_x)), int(rng.uniform(lo_y, hi_y)), s, s
    made = 0
    for _ in range(tries):
        if made >= negatives:
            break
        s = int(min(W, H, round(size * rng.uniform(1 - jitter, 1 + jitter))))
        x, y = int(rng.integers(0, W - s + 1)), int(rng.integers(0, H - s + 1))
        if not _overlaps(item.boxes, x, y, s, s):
            made += 1
            yield x, y, s, s


def tile_item(item: Item, out_dir: Path, spec: dict[str, Any],
              rng: np.random.Generator) -> list[tuple[Item, str, str]]:
    """Write the tiles of one photo into ``out_dir``; return (tile item, ``#tile=x,y,w,h``, SHA-256 of the
    tile's bytes) triples."""
    import cv2

    img = cv2.imread(str(item.image), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError(f"cannot decode {item.image}")
    if img.shape[1] != item.width or img.shape[0] != item.height:
        raise ValueError(f"{item.image}: decoded {img.shape[1]}x{img.shape[0]}, labels say "
                         f"{item.width}x{item.height}")
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for x, y, w, h in windows(item, rng, int(spec.get("size", 640)), float(spec.get("jitter", 0.25)),
                              int(spec.get("per_box", 3)), int(spec.get("negatives", 1))):
        crop = img[y:y + h, x:x + w]
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:  # pragma: no cover - cv2 encodes any uint8 BGR array
            raise ValueError(f"cannot encode a tile of {item.image}")
        data = buf.tobytes()
        sha = hashlib.sha256(data).hexdigest()
        path = out_dir / f"{sha[:20]}.jpg"
        path.write_bytes(data)
        boxes = clip_boxes(item.boxes, x, y, w, h, float(spec.get("min_visible", MIN_VISIBLE)))
        made.append((Item(path, boxes, width=w, height=h), f"{TILE_MARK}{x},{y},{w},{h}", sha))
    return made
