"""Synthetic object scenes: objects composited onto field-like backgrounds with exact boxes.

    python -m datasets.synth.scenes --n 200 --seed 1 --out DIR [--size 640] [--objects YOLO_DIR] [--text-objects]

For classes without real photos, and for the toolchain's end-to-end tests. Objects are either drawn
procedurally (pistol and rifle silhouettes, cartridges, case heads, magazines, grenades, landmines,
batteries, phones, circuit boards, wires, boxes for the other classes) or, with ``--objects``, cut out
of labelled photos (a YOLO-layout folder whose ``data.yaml`` names are taxonomy labels) and pasted with
feathered edges. With ``--text-objects``, ``marking`` (a stamped serial on a metal patch) and ``case_head``
(a headstamped case head) come from the stamped-text generator ``datasets.synth.text``.
Backgrounds are procedural textures: soil, concrete, table (wood grain), cloth.
Objects may overlap a little but never hide more than a third of an earlier one. Writes the YOLO layout
(``images/train``, ``labels/train``, ``data.yaml`` over the full taxonomy) and ``preview.jpg`` (a 4x4
grid with the boxes drawn). Same seed, same data.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from wtivision.taxonomy import DETECTOR_CLASSES

logger = logging.getLogger(__name__)
BACKGROUNDS = ("soil", "concrete", "table", "cloth")


def background(h: int, w: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    base = {"soil": (60, 90, 120), "concrete": (150, 150, 145), "table": (60, 100, 150), "cloth": (90, 110, 80)}[kind]
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array(base, np.float32) * rng.uniform(0.7, 1.2)
    coarse = cv2.resize(rng.normal(0, 1, (h // 16 + 1, w // 16 + 1)).astype(np.float32), (w, h))
    fine = rng.normal(0, 1, (h, w)).astype(np.float32)
    if kind == "table":
        fine = cv2.GaussianBlur(fine, (0, 0), sigmaX=12, sigmaY=0.8)
    img += (coarse * 18 + fine * (10 if kind != "cloth" else 5))[:, :, None]
    return img


def _poly(img, pts, col):
    cv2.fillPoly(img, [np.asarray(pts, np.int32)], col)


def draw_object(label: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A (BGR, alpha mask) tile of ``label`` about ``size`` px across."""
    s = size
    tile = np.zeros((s, s, 3), np.uint8)
    m = np.zeros((s, s), np.uint8)
    dark = tuple(int(c) for c in rng.integers(15, 70, 3))
    metal = tuple(int(c) for c in rng.integers(90, 170, 3))
    brass = (40, int(rng.integers(130, 170)), int(rng.integers(180, 220)))
    olive = (40, int(rng.integers(80, 110)), 70)

    def both(fn, *a, col):
        """Draw a filled shape on the tile and its mask."""
        extra = () if fn is _poly else (-1,)
        fn(tile, *a, col, *extra)
        fn(m, *a, 255, *extra)

    if label == "pistol":
        both(_poly, [(0.05 * s, 0.3 * s), (0.95 * s, 0.3 * s), (0.95 * s, 0.45 * s), (0.45 * s, 0.45 * s),
                     (0.38 * s, 0.85 * s), (0.2 * s, 0.85 * s), (0.25 * s, 0.45 * s), (0.05 * s, 0.45 * s)], col=dark)
    elif label == "rifle":
        both(_poly, [(0.0, 0.45 * s), (0.6 * s, 0.42 * s), (0.7 * s, 0.4 * s), (1.0 * s, 0.38 * s),
                     (1.0 * s, 0.6 * s), (0.75 * s, 0.55 * s), (0.6 * s, 0.52 * s), (0.0, 0.5 * s)], col=dark)
        both(_poly, [(0.45 * s, 0.5 * s), (0.52 * s, 0.5 * s), (0.5 * s, 0.75 * s), (0.42 * s, 0.73 * s)], col=dark)
    elif label == "cartridge":
        both(_poly, [(0.35 * s, 0.95 * s), (0.65 * s, 0.95 * s), (0.65 * s, 0.35 * s), (0.56 * s, 0.25 * s),
                     (0.56 * s, 0.15 * s), (0.44 * s, 0.15 * s), (0.44 * s, 0.25 * s), (0.35 * s, 0.35 * s)], col=brass)
        both(_poly, [(0.45 * s, 0.15 * s), (0.55 * s, 0.15 * s), (0.5 * s, 0.02 * s)], col=(60, 90, 160))
    elif label in ("case_head", "landmine_uxo"):
        col = brass if label == "case_head" else olive
        both(cv2.circle, (s // 2, s // 2), int(0.45 * s), col=col)
        cv2.circle(tile, (s // 2, s // 2), int(0.18 * s if label == "case_head" else 0.28 * s),
                   tuple(max(0, c - 40) for c in col), -1 if label == "case_head" else 3)
    elif label == "magazine":
        both(_poly, [(0.35 * s, 0.05 * s), (0.6 * s, 0.05 * s), (0.75 * s, 0.95 * s), (0.45 * s, 0.95 * s)], col=dark)
    elif label == "grenade":
        both(cv2.ellipse, (s // 2, int(0.55 * s)), (int(0.3 * s), int(0.4 * s)), 0, 0, 360, col=olive)
        both(cv2.rectangle, (int(0.45 * s), int(0.05 * s)), (int(0.58 * s), int(0.2 * s)), col=metal)
    elif label == "battery":
        both(cv2.rectangle, (int(0.3 * s), int(0.1 * s)), (int(0.7 * s), int(0.95 * s)), col=(30, 30, 30))
        cv2.rectangle(tile, (int(0.3 * s), int(0.1 * s)), (int(0.7 * s), int(0.35 * s)), (20, 140, 200), -1)
        both(cv2.rectangle, (int(0.42 * s), int(0.03 * s)), (int(0.58 * s), int(0.1 * s)), col=metal)
    elif label == "mobile_phone":
        both(cv2.rectangle, (int(0.25 * s), int(0.05 * s)), (int(0.75 * s), int(0.95 * s)), col=(25, 25, 25))
        cv2.rectangle(tile, (int(0.3 * s), int(0.15 * s)), (int(0.7 * s), int(0.6 * s)), (90, 70, 40), -1)
    elif label == "circuit_board":
        both(cv2.rectangle, (int(0.05 * s), int(0.2 * s)), (int(0.95 * s), int(0.8 * s)), col=(40, 110, 30))
        for _ in range(8):
            x, y = int(rng.uniform(0.1, 0.8) * s), int(rng.uniform(0.25, 0.7) * s)
            cv2.rectangle(tile, (x, y), (x + int(0.08 * s), y + int(0.06 * s)), (20, 20, 20), -1)
    elif label == "wire":
        pts = np.array([(rng.uniform(0, 1) * s, rng.uniform(0, 1) * s) for _ in range(5)], np.int32)
        col = tuple(int(c) for c in rng.choice([(0, 0, 200), (200, 0, 0), (0, 180, 0), (20, 20, 20)]))
        cv2.polylines(tile, [pts], False, col, max(2, s // 30))
        cv2.polylines(m, [pts], False, 255, max(2, s // 30))
    else:  # any other class: a labelled box-like object
        both(cv2.rectangle, (int(0.15 * s), int(0.15 * s)), (int(0.85 * s), int(0.85 * s)), col=metal)
    shade = np.linspace(1.15, 0.8, s, dtype=np.float32)[:, None, None]
    tile = np.clip(tile * shade + rng.normal(0, 6, tile.shape), 0, 255).astype(np.uint8)
    return tile, m


def text_object(label: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A (BGR, alpha mask) tile of a ``marking`` (a stamped serial on a metal patch, from
    ``datasets.synth.text``) or a ``case_head`` (a headstamped case head seen end-on), ``size`` px on its
    longer side. The mask covers the labelled region only: the text for a marking, the disc for a head."""
    from datasets.synth.text import headstamp_sample, serial_sample

    if label == "marking":
        sample = serial_sample(rng)
        img = sample.image
        x0, y0, x1, y1 = (int(round(v)) for v in sample.box)
        m = max(2, int(0.15 * (y1 - y0)))  # a little metal round the characters
        x0, y0 = max(0, x0 - m), max(0, y0 - m)
        x1, y1 = min(img.shape[1], x1 + m), min(img.shape[0], y1 + m)
        tile = img[y0:y1, x0:x1]
        mask = np.full(tile.shape[:2], 255, np.uint8)
    elif label == "case_head":
        sample = headstamp_sample(rng, size=max(64, size))
        x0, y0, x1, y1 = (int(round(v)) for v in sample.box)
        h, w = sample.image.shape[:2]
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        tile = sample.image[y0:y1, x0:x1]
        mask = np.zeros(tile.shape[:2], np.uint8)
        cv2.ellipse(mask, (tile.shape[1] // 2, tile.shape[0] // 2), (tile.shape[1] // 2 - 1, tile.shape[0] // 2 - 1),
                    0, 0, 360, 255, -1)
    else:
        raise ValueError(f"no text object for {label!r}; text objects: {TEXT_OBJECTS}")
    r = size / max(tile.shape[:2])
    wh = (max(2, int(tile.shape[1] * r)), max(2, int(tile.shape[0] * r)))
    return (cv2.resize(np.ascontiguousarray(tile), wh, interpolation=cv2.INTER_AREA),
            cv2.resize(mask, wh, interpolation=cv2.INTER_NEAREST))


TEXT_OBJECTS = ("marking", "case_head")
SCENE_CLASSES = ("pistol", "rifle", "cartridge", "case_head", "magazine", "grenade", "landmine_uxo", "battery",
                 "wire", "mobile_phone", "circuit_board")
MAX_HIDDEN = 1 / 3  # a later object may cover at most this fraction of an earlier object's box


@dataclass
class CutoutBank:
    """Object crops cut out of labelled photos (BGR), by taxonomy label."""

    crops: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_yolo(cls, root: Path, min_px: int = 16) -> CutoutBank:
        """Crops of every box in a YOLO-layout folder whose class names are taxonomy labels."""
        from datasets.formats import read_yolo

        bank = cls()
        for item in read_yolo(Path(root)):
            boxes = [b for b in item.boxes if b.label in DETECTOR_CLASSES]
            img = cv2.imread(str(item.image)) if boxes else None
            if img is None:
                continue
            for b in boxes:
                x1, y1, x2, y2 = (int(round(v)) for v in (b.x1, b.y1, b.x2, b.y2))
                crop = img[max(0, y1):y2, max(0, x1):x2]
                if min(crop.shape[:2]) >= min_px:
                    bank.crops.setdefault(b.label, []).append(crop.copy())
        logger.info("cut-out bank: %s", {k: len(v) for k, v in bank.crops.items()})
        return bank

    def sample(self, label: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A crop of ``label`` scaled to ``size`` px on its longer side, with a feathered-rectangle alpha."""
        crops = self.crops[label]
        crop = crops[int(rng.integers(len(crops)))]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        h, w = crop.shape[:2]
        r = size / max(h, w)
        tile = cv2.resize(crop, (max(2, int(w * r)), max(2, int(h * r))), interpolation=cv2.INTER_AREA)
        mask = np.zeros(tile.shape[:2], np.uint8)
        f = max(1, min(tile.shape[:2]) // 20)  # feather width; the box stays the full crop
        mask[:] = 255
        mask[:f] = mask[-f:] = 200
        mask[:, :f] = mask[:, -f:] = 200
        return tile, mask


def _hidden_fraction(box: tuple[float, float, float, float], cover: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(box[2], cover[2]) - max(box[0], cover[0]))
    iy = max(0.0, min(box[3], cover[3]) - max(box[1], cover[1]))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return ix * iy / area if area > 0 else 1.0


def _paste(img: np.ndarray, tile: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> None:
    """Alpha-blend ``tile`` at (x0, y0) with a soft drop shadow."""
    th, tw = mask.shape
    a = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (3, 3), 0)[:, :, None]
    region = img[y0:y0 + th, x0:x0 + tw]
    shadow = cv2.GaussianBlur(a, (0, 0), max(th, tw) / 25 + 1)
    region *= 1 - 0.35 * (shadow[:, :, None] if shadow.ndim == 2 else shadow)
    img[y0:y0 + th, x0:x0 + tw] = region * (1 - a) + tile.astype(np.float32) * a


def scene(rng: np.random.Generator, size: int = 640, classes: tuple[str, ...] = SCENE_CLASSES,
          cutouts: CutoutBank | None = None, p_cutout: float = 0.5,
          text_objects: bool = False) -> tuple[np.ndarray, list]:
    """One BGR scene and its boxes ``[(label, x1, y1, x2, y2), ...]`` in pixels. With ``text_objects``,
    ``marking`` and ``case_head`` are drawn by the stamped-text generator (real characters, real layout)
    instead of as plain shapes, and ``marking`` joins the classes drawn."""
    if text_objects and "marking" not in classes:
        classes = (*classes, "marking")
    img = background(size, size, str(rng.choice(BACKGROUNDS)), rng)
    boxes: list[tuple[str, float, float, float, float]] = []
    cut_classes = tuple(c for c in (cutouts.crops if cutouts else {}) if c in DETECTOR_CLASSES)
    for _ in range(int(rng.integers(1, 5))):
        s = int(rng.uniform(0.15, 0.45) * size)
        if cut_classes and rng.random() < p_cutout:
            label = str(rng.choice(cut_classes))
            tile, mask = cutouts.sample(label, s, rng)  # type: ignore[union-attr]
        else:
            label = str(rng.choice(classes))
            if text_objects and label in TEXT_OBJECTS:
                # stamped text is photographed roughly upright (no rotation)
                tile, mask = text_object(label, max(32, s), rng)
            else:
                tile, mask = draw_object(label, s, rng)
                M = cv2.getRotationMatrix2D((s / 2, s / 2), float(rng.uniform(-40, 40)), 1.0)
                tile, mask = cv2.warpAffine(tile, M, (s, s)), cv2.warpAffine(mask, M, (s, s))
        ys, xs = np.nonzero(mask > 127)
        if len(xs) == 0:
            continue
        th, tw = mask.shape
        for _try in range(10):
            x0, y0 = int(rng.integers(0, size - tw + 1)), int(rng.integers(0, size - th + 1))
            box = (float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1))
            if all(_hidden_fraction(b[1:], box) <= MAX_HIDDEN for b in boxes):
                break
        else:
            continue
        _paste(img, tile, mask, x0, y0)
        boxes.append((label, *box))
    img = np.clip(img * rng.uniform(0.6, 1.3) + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)  # lighting
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (5, 5), 0)
    return img, boxes


def preview_grid(tiles: list[np.ndarray], cols: int = 4, cell: int = 240) -> np.ndarray:
    """Tiles resized to ``cell`` px and laid out ``cols`` per row (missing cells black)."""
    tiles = [cv2.resize(t, (cell, cell)) for t in tiles]
    blank = np.zeros((cell, cell, 3), np.uint8)
    rows = [np.hstack(tiles[i:i + cols] + [blank] * (cols - len(tiles[i:i + cols])))
            for i in range(0, len(tiles), cols)]
    return np.vstack(rows) if rows else blank


def draw_boxes(img: np.ndarray, boxes: list) -> np.ndarray:
    vis = img.copy()
    for lab, x1, y1, x2, y2 in boxes:
        cv2.rectangle(vis, (int(x1), int(y1)), (int(x2), int(y2)), (0, 0, 255), 2)
        cv2.putText(vis, lab, (int(x1), int(y1) + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
    return vis


def write(out: Path, n: int, seed: int, size: int = 640, split: str = "train",
          cutouts: CutoutBank | None = None, text_objects: bool = False,
          classes: tuple[str, ...] | None = None) -> Path:
    """Write ``n`` scenes as a YOLO-layout folder (with ``data.yaml`` and ``preview.jpg``); return ``out``.
    ``classes`` limits the drawn objects (default ``SCENE_CLASSES``)."""
    unknown = sorted(set(classes or ()) - set(DETECTOR_CLASSES))
    if unknown:
        raise ValueError(f"unknown scene classes {unknown}; known: {DETECTOR_CLASSES}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    index = {c: i for i, c in enumerate(DETECTOR_CLASSES)}
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    previews = []
    for i in range(n):
        img, boxes = scene(rng, size, classes or SCENE_CLASSES, cutouts=cutouts, text_objects=text_objects)
        name = f"scene_{seed}_{i:05d}"
        cv2.imwrite(str(out / "images" / split / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        (out / "labels" / split / f"{name}.txt").write_text("".join(
            f"{index[lab]} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
            f"{(y2 - y1) / size:.6f}\n" for lab, x1, y1, x2, y2 in boxes))
        if len(previews) < 16:
            previews.append(draw_boxes(img, boxes))
    (out / "data.yaml").write_text(
        f"path: {out.resolve().as_posix()}\ntrain: images/{split}\nval: images/{split}\nnames:\n"
        + "".join(f"  {i}: {c}\n" for i, c in enumerate(DETECTOR_CLASSES)), encoding="utf-8")
    if previews:
        cv2.imwrite(str(out / "preview.jpg"), preview_grid(previews))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.synth.scenes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--objects", type=Path, help="YOLO-layout folder of labelled photos to cut objects from")
    ap.add_argument("--text-objects", action="store_true",
                    help="draw marking / case_head with the stamped-text generator (datasets.synth.text)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    bank = CutoutBank.from_yolo(a.objects) if a.objects else None
    print(write(a.out, a.n, a.seed, a.size, cutouts=bank, text_objects=a.text_objects))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
