"""Synthetic object scenes: procedurally drawn objects composited onto field-like backgrounds.

    python -m datasets.synth.scenes --n 200 --seed 1 --out DIR [--size 640]

For classes without real photos, and for the toolchain's end-to-end tests. Objects are drawn shapes
(pistol and rifle silhouettes, cartridges, case heads, magazines, grenades, landmines, batteries,
phones, circuit boards, wires), never copies of real photos; boxes are exact. Writes the YOLO layout
(``images/``, ``labels/``, ``data.yaml`` over the full taxonomy) and ``preview.jpg``. Same seed, same data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from wtivision.taxonomy import DETECTOR_CLASSES

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


SCENE_CLASSES = ("pistol", "rifle", "cartridge", "case_head", "magazine", "grenade", "landmine_uxo", "battery",
                 "wire", "mobile_phone", "circuit_board")


def scene(rng: np.random.Generator, size: int = 640, classes=SCENE_CLASSES) -> tuple[np.ndarray, list]:
    img = background(size, size, str(rng.choice(BACKGROUNDS)), rng)
    boxes = []
    for _ in range(int(rng.integers(1, 5))):
        label = str(rng.choice(classes))
        s = int(rng.uniform(0.15, 0.45) * size)
        tile, mask = draw_object(label, s, rng)
        ang = float(rng.uniform(-40, 40))
        M = cv2.getRotationMatrix2D((s / 2, s / 2), ang, 1.0)
        tile = cv2.warpAffine(tile, M, (s, s))
        mask = cv2.warpAffine(mask, M, (s, s))
        x0, y0 = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
        a = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (3, 3), 0)[:, :, None]
        region = img[y0:y0 + s, x0:x0 + s]
        shadow = cv2.GaussianBlur(a, (0, 0), s / 25 + 1)
        shadow = shadow[:, :, None] if shadow.ndim == 2 else shadow
        region *= 1 - 0.35 * shadow
        img[y0:y0 + s, x0:x0 + s] = region * (1 - a) + tile * a
        ys, xs = np.nonzero(mask > 127)
        if len(xs) == 0:
            continue
        boxes.append((label, float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1),
                      float(y0 + ys.max() + 1)))
    g = rng.uniform(0.6, 1.3)  # lighting
    img = np.clip(img * g + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (5, 5), 0)
    return img, boxes


def write(out: Path, n: int, seed: int, size: int = 640, split: str = "train") -> Path:
    rng = np.random.default_rng(seed)
    index = {c: i for i, c in enumerate(DETECTOR_CLASSES)}
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    previews = []
    for i in range(n):
        img, boxes = scene(rng, size)
        name = f"scene_{seed}_{i:05d}"
        cv2.imwrite(str(out / "images" / split / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        (out / "labels" / split / f"{name}.txt").write_text("".join(
            f"{index[lab]} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
            f"{(y2 - y1) / size:.6f}\n" for lab, x1, y1, x2, y2 in boxes))
        if len(previews) < 16:
            vis = img.copy()
            for lab, x1, y1, x2, y2 in boxes:
                cv2.rectangle(vis, (int(x1), int(y1)), (int(x2), int(y2)), (0, 0, 255), 2)
                cv2.putText(vis, lab, (int(x1), int(y1) + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
            previews.append(cv2.resize(vis, (240, 240)))
    if previews:
        rows = [np.hstack(previews[i:i + 4] + [np.zeros_like(previews[0])] * (4 - len(previews[i:i + 4])))
                for i in range(0, len(previews), 4)]
        cv2.imwrite(str(out / "preview.jpg"), np.vstack(rows))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    print(write(a.out, a.n, a.seed, a.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
