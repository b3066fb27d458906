"""Synthetic stamped text: serial numbers on metal and cartridge case heads with headstamps.

    python -m datasets.synth.text serials --n 200 --seed 1 --out DIR
    python -m datasets.synth.text headstamps --n 200 --seed 1 --out DIR

Each sample is an image plus its ground truth (``labels.jsonl``: file, text/tokens, box). A ``preview.jpg``
grid lets a person judge realism (``preview_serials.jpg`` / ``preview_headstamps.jpg`` beside this file: seed
1000, 36 samples each). Everything is drawn here (fonts from the system, DejaVu if present,
else OpenCV's Hershey fonts); nothing is downloaded. The same seed always gives the same images.
"""

from __future__ import annotations

import argparse
import json
import math
import string
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype")]
FONT_NAMES = ["DejaVuSansMono-Bold.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansCondensed-Bold.ttf",
              "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf"]
SURFACES = {"steel": (120, 122, 125), "blued": (70, 60, 55), "parkerized": (80, 85, 80), "brass": (70, 160, 200),
            "lacquered_steel": (60, 95, 110), "aluminium": (185, 185, 180)}


@dataclass
class Sample:
    image: np.ndarray
    text: str
    tokens: list[str] = field(default_factory=list)
    box: list[float] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def _fonts() -> list[Path]:
    out = []
    for d in FONT_DIRS:
        for n in FONT_NAMES:
            if (d / n).is_file():
                out.append(d / n)
    return out


def _render_mask(text: str, height: int, rng: np.random.Generator) -> np.ndarray:
    """A white-on-black mask of ``text`` about ``height`` px tall."""
    fonts = _fonts()
    if fonts:
        from PIL import Image, ImageDraw, ImageFont

        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), height)
        spacing = int(rng.integers(0, max(1, height // 5)))
        widths = [font.getbbox(ch)[2] - font.getbbox(ch)[0] if ch != " " else height // 2 for ch in text]
        W = sum(widths) + spacing * len(text) + height
        img = Image.new("L", (W, int(height * 1.6)), 0)
        d = ImageDraw.Draw(img)
        x = height // 2
        for ch, wch in zip(text, widths):
            if ch != " ":
                dy = int(rng.integers(-max(1, height // 14), max(2, height // 14)))  # hand-punched jitter
                d.text((x, height * 0.2 + dy), ch, font=font, fill=255)
            x += wch + spacing
        return np.asarray(img)
    scale = height / 22.0
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, max(1, int(scale * 2)))
    m = np.zeros((int(th * 1.8), tw + height), np.uint8)
    cv2.putText(m, text, (height // 2, int(th * 1.3)), cv2.FONT_HERSHEY_DUPLEX, scale, 255, max(1, int(scale * 2)))
    return m


def metal_texture(h: int, w: int, colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    base = np.empty((h, w, 3), np.float32)
    base[:] = np.array(colour, np.float32) * rng.uniform(0.8, 1.15)
    brushed = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigmaX=9, sigmaY=0.6)
    base += brushed[:, :, None] * rng.uniform(10, 30)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2)
    base += grain[:, :, None] * 6
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    base *= (1 + 0.25 * ((np.cos(a) * xx / w + np.sin(a) * yy / h) - 0.5))[:, :, None]
    return base


def _stamp(surface: np.ndarray, mask: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """Stamp, engrave or laser-etch ``mask`` into ``surface`` (float image)."""
    m = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.0)
    if style == "laser":
        return surface * (1 - 0.55 * m[:, :, None]) + 10 * m[:, :, None]
    depth = rng.uniform(0.5, 1.0)
    gx = cv2.Sobel(m, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(m, cv2.CV_32F, 0, 1, ksize=3)
    a = rng.uniform(0, 2 * math.pi)
    shade = (np.cos(a) * gx + np.sin(a) * gy) * 60 * depth  # light from one side of the recess
    dark = (0.45 if style == "engraved" else 0.25) * depth
    out = surface * (1 - dark * m[:, :, None]) + shade[:, :, None]
    return out


def _degrade(img: np.ndarray, rng: np.random.Generator, rust: bool) -> np.ndarray:
    h, w = img.shape[:2]
    if rust:
        blot = cv2.GaussianBlur(rng.random((h // 8 + 1, w // 8 + 1)).astype(np.float32), (0, 0), 1.5)
        blot = cv2.resize(blot, (w, h)) > rng.uniform(0.6, 0.7)
        img = np.where(blot[:, :, None], img * 0.5 + np.array([30, 60, 130], np.float32) * 0.5, img)
    if rng.random() < 0.6:  # glare
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        s = rng.uniform(0.1, 0.35) * w
        img = img + rng.uniform(40, 110) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[:, :, None]
    img = np.clip(img + rng.normal(0, rng.uniform(2, 8), img.shape), 0, 255).astype(np.uint8)
    k = int(rng.choice([0, 0, 3, 5]))
    if k:
        img = cv2.GaussianBlur(img, (k, k), 0)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(45, 95))])
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)


def _perspective(img: np.ndarray, box: list[float], rng: np.random.Generator, amount: float):
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    jit = rng.uniform(-amount, amount, (4, 2)).astype(np.float32) * np.float32([w, h])
    m = cv2.getPerspectiveTransform(src, src + jit)
    out = cv2.warpPerspective(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    x1, y1, x2, y2 = box
    pts = cv2.perspectiveTransform(np.float32([[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]]), m)[0]
    nb = [float(pts[:, 0].min().clip(0, w)), float(pts[:, 1].min().clip(0, h)),
          float(pts[:, 0].max().clip(0, w)), float(pts[:, 1].max().clip(0, h))]
    return out, nb


def random_serial(rng: np.random.Generator) -> str:
    pattern = rng.choice(["LLDDDDDD", "DDDDDDD", "LLL DDDDD", "DD-DDDDDD", "LDDDDDDL", "LL DDDD", "DDDDLL"])
    letters = [c for c in string.ascii_uppercase if c not in "IOQ"]  # most makers avoid I, O, Q
    out = []
    for p in pattern:
        out.append(str(rng.choice(letters)) if p == "L" else str(int(rng.integers(10))) if p == "D" else p)
    return "".join(out)


def serial_sample(rng: np.random.Generator) -> Sample:
    text = random_serial(rng)
    surface_name = str(rng.choice(list(SURFACES)))
    style = str(rng.choice(["punched", "engraved", "laser"]))
    mask = _render_mask(text, int(rng.integers(26, 48)), rng)
    mh, mw = mask.shape
    pad_x, pad_y = int(rng.integers(10, 60)), int(rng.integers(10, 40))
    H, W = mh + 2 * pad_y, mw + 2 * pad_x
    full = np.zeros((H, W), np.uint8)
    full[pad_y:pad_y + mh, pad_x:pad_x + mw] = mask
    img = _stamp(metal_texture(H, W, SURFACES[surface_name], rng), full, style, rng)
    img = _degrade(img, rng, rust=rng.random() < 0.25)
    ys, xs = np.nonzero(full)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    img, box = _perspective(img, box, rng, 0.06)
    return Sample(img, text, [text], box, {"surface": surface_name, "style": style})


def _nato_mark(ch_h: int) -> np.ndarray:
    """A (2*ch_h)^2 tile with the NATO cross-in-circle, centred where a glyph of height ch_h sits."""
    tile = np.zeros((2 * ch_h, 2 * ch_h), np.uint8)
    c, r, t = (ch_h, int(ch_h * 0.85)), int(ch_h * 0.42), max(1, ch_h // 9)
    cv2.circle(tile, c, r, 255, t, cv2.LINE_AA)
    cv2.line(tile, (c[0] - r, c[1]), (c[0] + r, c[1]), 255, t, cv2.LINE_AA)
    cv2.line(tile, (c[0], c[1] - r), (c[0], c[1] + r), 255, t, cv2.LINE_AA)
    return tile


def random_headstamp(rng: np.random.Generator) -> tuple[list[str], str]:
    style = str(rng.choice(["soviet", "nato", "commercial"]))
    if style == "soviet":
        code = str(rng.choice(["539", "711", "3", "38", "17", "60", "188", "270"]))
        return [code, f"{int(rng.integers(50, 99))}"], style
    if style == "nato":
        code = str(rng.choice(["LC", "WCC", "FC", "IVI", "PMP", "MKE"]))
        return [code, f"{int(rng.integers(0, 24)):02d}", "+"], style
    code = str(rng.choice(["PPU", "FC", "WCC", "945", "41"]))
    return [code, str(rng.choice(["7.62X39", "9MM", "5.56", ".308"]))], style


def headstamp_sample(rng: np.random.Generator, size: int = 320) -> Sample:
    tokens, style = random_headstamp(rng)
    surface_name = str(rng.choice(["brass", "brass", "lacquered_steel", "steel"]))
    colour = SURFACES[surface_name]
    S = size
    img = metal_texture(S, S, (40, 40, 40), rng) * 0.6
    c, R = S / 2, S * 0.46
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    rr = np.sqrt((xx - c) ** 2 + (yy - c) ** 2)
    disc = rr < R
    head = metal_texture(S, S, colour, rng)
    img = np.where(disc[:, :, None], head, img)
    ring = (rr > R * 0.9) & (rr < R * 0.93)
    img[ring] *= 0.7
    primer = rr < R * 0.3
    img = np.where(primer[:, :, None], head * 0.85 + 10, img)
    img[(rr > R * 0.29) & (rr < R * 0.31)] *= 0.5
    # characters around the primer, tops outward, spread over the ring
    mask = np.zeros((S, S), np.uint8)
    n = len(tokens)
    start = -90.0 + rng.uniform(-20, 20)
    ch_h = int(R * rng.uniform(0.17, 0.22))
    fonts = _fonts()
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(fonts[0]), ch_h) if fonts else None
    r_text = R * 0.62
    for i, tok in enumerate(tokens):
        centre_deg = start + 360.0 * i / n
        glyph = "⊕" if tok == "+" else tok
        step = math.degrees(ch_h * 0.75 / r_text)
        for j, ch in enumerate(glyph):
            deg = centre_deg + (j - (len(glyph) - 1) / 2) * step
            tile = Image.new("L", (ch_h * 2, ch_h * 2), 0)
            if ch == "⊕":  # the NATO cross-in-circle is struck about as tall as the digits
                tile = Image.fromarray(_nato_mark(ch_h))
            elif font is not None:
                ImageDraw.Draw(tile).text((ch_h // 2, ch_h // 4), ch, font=font, fill=255)
            t = np.asarray(tile.rotate(-(deg + 90), resample=Image.BILINEAR))
            x = int(c + r_text * math.cos(math.radians(deg)) - ch_h)
            y = int(c + r_text * math.sin(math.radians(deg)) - ch_h)
            sub = mask[max(0, y):y + 2 * ch_h, max(0, x):x + 2 * ch_h]
            sub[:] = np.maximum(sub, t[: sub.shape[0], : sub.shape[1]])
    img = _stamp(img, mask, "punched", rng)
    img = _degrade(img, rng, rust=surface_name == "steel" and rng.random() < 0.5)
    box = [float(c - R), float(c - R), float(c + R), float(c + R)]
    img, box = _perspective(img, box, rng, 0.03)
    text = " ".join(tokens)
    return Sample(img, text, tokens, box, {"surface": surface_name, "style": style})


GENERATORS = {"serials": serial_sample, "headstamps": headstamp_sample}


def generate(kind: str, n: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [GENERATORS[kind](rng) for _ in range(n)]


def preview(samples: list[Sample], cols: int = 6, cell: tuple[int, int] = (240, 160)) -> np.ndarray:
    cw, ch = cell
    rows = math.ceil(len(samples) / cols)
    grid = np.full((rows * (ch + 22), cols * cw, 3), 255, np.uint8)
    for i, s in enumerate(samples):
        r, c = divmod(i, cols)
        h, w = s.image.shape[:2]
        f = min(cw / w, ch / h)
        im = cv2.resize(s.image, (max(1, int(w * f)), max(1, int(h * f))))
        y0, x0 = r * (ch + 22), c * cw
        grid[y0:y0 + im.shape[0], x0:x0 + im.shape[1]] = im
        cv2.putText(grid, s.text[:24], (x0 + 2, y0 + ch + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 160), 1)
    return grid


def write(kind: str, n: int, seed: int, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    samples = generate(kind, n, seed)
    with open(out / "labels.jsonl", "w", encoding="utf-8") as fh:
        for i, s in enumerate(samples):
            name = f"{kind}_{seed}_{i:05d}.jpg"
            cv2.imwrite(str(out / name), s.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            fh.write(json.dumps({"file": name, "text": s.text, "tokens": s.tokens, "box": s.box, **s.meta}) + "\n")
    cv2.imwrite(str(out / "preview.jpg"), preview(samples[:36]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=sorted(GENERATORS))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    print(write(a.kind, a.n, a.seed, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
