"""Headstamps: find the case head, unwrap the ring around the primer, parse the tokens.

The code table (``headstamp_codes.csv``, shipped with the package and linked from ``datasets/``) maps
factory codes to manufacturer and country, each row with its public source. Unknown codes are reported
as unknown, never guessed.
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..results import HeadstampRecord

# Convention: the NATO cross-in-circle is recorded as the token "+" (and HeadstampRecord.nato_mark).
NATO_TOKENS = {"⊕", "+", "(+)", "Φ", "⊗", "NATO", "○", "◎", "⊙", "θ", "@", "●"}
# The recogniser has no "⊕": a lone round symbol in a headstamp is read as one of these. Such a token is
# taken as the NATO mark (and the reading is flagged for review by the caller when it is uncertain).
NATO_LOOKALIKES = {"O", "0", "Q", "@", "G", "Ø", "Θ", "C", "E", "D"}
CALIBRE = re.compile(
    r"^(?:\d{1,2}[.,]\d{1,2}(?:X\d{2,3})?(?:MM|R)?|\.?\d{2,3}(?:SPL|WIN|REM|ACP|AUTO|MAG|SW|S&W)?|\d{1,2}MM|"
    r"\d{1,2}(?:GA|GAUGE)|\d{1,2}X\d{2,3}R?)$"
)


@dataclass(frozen=True)
class FactoryCode:
    code: str
    manufacturer: str
    country: str
    calibres: str
    source: str


@functools.lru_cache(maxsize=1)
def code_table() -> dict[str, FactoryCode]:
    text = resources.files(__package__).joinpath("headstamp_codes.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {r["code"].strip().upper(): FactoryCode(r["code"].strip().upper(), r["manufacturer"].strip(),
                                                   r["country"].strip(), r["calibres"].strip(),
                                                   r["source"].strip()) for r in rows}


def _is_year(tok: str) -> bool:
    if re.fullmatch(r"(19[0-9]{2}|20[0-4][0-9])", tok):
        return True
    return bool(re.fullmatch(r"[0-9]{2}", tok))


def parse_headstamp(tokens: list[str]) -> HeadstampRecord:
    """Interpret headstamp tokens (as read clockwise) into code, year, calibre and NATO mark."""
    toks = [t.strip().upper() for t in tokens if t.strip()]
    toks = ["+" if (t in NATO_TOKENS or t in NATO_LOOKALIKES) else t for t in toks]
    rec = HeadstampRecord(tokens=list(toks))
    rest: list[str] = []
    for t in toks:
        if t in NATO_TOKENS:
            rec.nato_mark = True
        elif not rec.calibre and CALIBRE.match(t) and not re.fullmatch(r"\d{1,4}", t):
            rec.calibre = t.replace(",", ".")
        else:
            rest.append(t)
    table = code_table()
    known = [t for t in rest if t in table]
    if known:
        rec.factory_code = known[0]
        rest.remove(known[0])
    years = [t for t in rest if _is_year(t)]
    if years:
        rec.year = years[0]
        rest.remove(years[0])
    if not rec.factory_code and rest:
        rec.factory_code = rest[0]  # reported as read; manufacturer stays empty (unknown code)
    entry = table.get(rec.factory_code)
    if entry:
        rec.manufacturer, rec.country, rec.source = entry.manufacturer, entry.country, entry.source
    return rec


def find_case_head(image_bgr: np.ndarray, work_side: int = 512) -> tuple[float, float, float] | None:
    """The most prominent large circle (cx, cy, r) in a case-head crop, or None.

    The search runs on a copy downscaled to ``work_side`` px (the Hough transform's cost grows with the
    radius range), and the circle is scaled back to the input's pixels.
    """
    import cv2

    h, w = image_bgr.shape[:2]
    f = min(1.0, work_side / max(h, w))
    small = cv2.resize(image_bgr, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA) \
        if f < 1.0 else image_bgr
    gray = cv2.medianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), 5)
    s = min(gray.shape)
    circles = cv2.HoughCircles(gray, cv2.HOUGH_GRADIENT, dp=1.5, minDist=s / 2, param1=120, param2=40,
                               minRadius=int(s * 0.25), maxRadius=int(s * 0.6))
    if circles is None:
        return None
    cx, cy, r = circles[0][0]
    return float(cx) / f, float(cy) / f, float(r) / f


def _edge_consistency(gray: np.ndarray, center: tuple[float, float], radius: float, lo: float, hi: float,
                      n_angles: int = 120) -> tuple[float, float]:
    """Where, between ``lo*radius`` and ``hi*radius``, the strongest radial edge lies at each of
    ``n_angles`` angles: (median position as a fraction of ``radius``, share of angles within 0.06 of it).
    A real circular edge (a case-head rim, a primer pocket) gives a high share; texture does not."""
    import cv2

    outer = hi * radius
    n_rad = max(32, int(outer))
    # WARP_FILL_OUTLIERS: without it, polar pixels that fall outside the photo (a head near the edge) are left
    # as whatever memory held (different from run to run: 37 to 39 heads on the same 44 real photos)
    polar = cv2.warpPolar(gray, (n_rad, n_angles), center, outer,
                          cv2.INTER_LINEAR + cv2.WARP_POLAR_LINEAR + cv2.WARP_FILL_OUTLIERS)
    polar = cv2.GaussianBlur(polar.astype(np.float32), (3, 3), 0)
    grad = np.abs(np.diff(polar, axis=1))
    i0 = int(n_rad * lo / hi)
    pos = (np.argmax(grad[:, i0:], axis=1) + i0 + 0.5) / n_rad * hi
    med = float(np.median(pos))
    return med, float(np.mean(np.abs(pos - med) < 0.06))


@dataclass(frozen=True)
class CaseHeadCircle:
    """A case head found in a wider photo: centre and rim radius in the photo's pixels, and the share of
    angles at which the rim and the primer pocket show as consistent circular edges."""

    cx: float
    cy: float
    r: float
    rim_support: float
    primer_support: float
    primer_ratio: float

    @property
    def box(self) -> list[float]:
        return [self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r]


def find_case_heads(image_bgr: np.ndarray, work_side: int = 640, min_radius: float = 0.04,
                    max_radius: float = 0.45, candidates: int = 10, min_rim: float = 0.5,
                    min_primer: float = 0.35, max_heads: int = 4,
                    max_edge_density: float = 0.05) -> list[CaseHeadCircle]:
    """Case heads seen end-on anywhere in a photo (a cartridge held in the hand or standing on a bench),
    for photos where no detector boxes them.

    Hough proposes circles of ``min_radius``..``max_radius`` of the photo's short side (on a copy
    ``work_side`` px long); a proposal is kept only if it looks like a case head: a circular edge all round
    at its radius (the rim) AND a second one concentric inside it, at 0.15..0.6 of the radius (the primer
    pocket). Texture, fingers and most round things fail the second test. Concentric duplicates are
    dropped; the best-supported heads come first.

    Hough's cost grows with the number of edge pixels: on dense texture (grass, gravel, fabric; a 2048x1536
    photo of smooth noise took 6.5 s at 640 px) the working copy is shrunk further, so that at most
    ``max_edge_density`` of its pixels are edges (but to no less than 0.35 of ``work_side``). The case-head
    photos this was tuned on have at most 0.032 and keep the full working size.
    """
    import cv2

    h, w = image_bgr.shape[:2]

    def working_copy(f: float) -> tuple[np.ndarray, np.ndarray]:
        small = cv2.resize(image_bgr, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA) \
            if f < 1.0 else image_bgr
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        return gray, cv2.medianBlur(gray, 5)

    f = min(1.0, work_side / max(h, w))
    gray, blurred = working_copy(f)
    density = np.count_nonzero(cv2.Canny(blurred, 60, 120)) / max(1, blurred.size)  # Hough's own Canny
    if density > max_edge_density:
        f *= max(0.35, float(np.sqrt(max_edge_density / density)))
        gray, blurred = working_copy(f)
    s = min(gray.shape)
    circles = cv2.HoughCircles(blurred, cv2.HOUGH_GRADIENT, dp=1.5, minDist=s / 10, param1=120,
                               param2=40, minRadius=max(4, int(s * min_radius)), maxRadius=int(s * max_radius))
    if circles is None:
        return []
    found = []
    for cx, cy, r in circles[0][:candidates]:
        rim, rim_support = _edge_consistency(gray, (float(cx), float(cy)), float(r), 0.75, 1.2)
        primer, primer_support = _edge_consistency(gray, (float(cx), float(cy)), float(r), 0.15, 0.6)
        if rim_support >= min_rim and primer_support >= min_primer:
            found.append(CaseHeadCircle(float(cx) / f, float(cy) / f, float(r) * rim / f, round(rim_support, 3),
                                        round(primer_support, 3), round(primer / rim, 3)))
    found.sort(key=lambda c: -(c.rim_support + c.primer_support))
    kept: list[CaseHeadCircle] = []
    for c in found:  # a primer or a rim found again as its own "head": keep the better-supported one
        if all(np.hypot(c.cx - k.cx, c.cy - k.cy) > max(c.r, k.r) for k in kept):
            kept.append(c)
    return kept[:max_heads]


def unwrap_annulus(image_bgr: np.ndarray, center: tuple[float, float], radius: float,
                   inner: float = 0.38, outer: float = 0.97, start_deg: float = 0.0) -> np.ndarray:
    """Unwrap the ring between ``inner*radius`` and ``outer*radius`` into a horizontal strip.

    Columns run clockwise from ``start_deg`` (0 = 3 o'clock, 90 = 6 o'clock in image coordinates);
    rows run from the outer edge (top) to the inner edge, so characters stamped with their tops
    pointing outward read upright, left to right.
    """
    import cv2

    r_out = radius * outer
    n_ang = max(64, int(2 * np.pi * radius * (inner + outer) / 2))
    n_rad = max(16, int(round(r_out)))
    polar = cv2.warpPolar(image_bgr, (n_rad, n_ang), center, r_out,
                          cv2.INTER_CUBIC + cv2.WARP_POLAR_LINEAR + cv2.WARP_FILL_OUTLIERS)
    shift = int(round(start_deg / 360.0 * n_ang))
    polar = np.roll(polar, -shift, axis=0)
    strip = polar.transpose(1, 0, 2)[::-1]  # rows = radius (outer first), cols = angle
    r_in_px = int(n_rad * inner / outer)
    return np.ascontiguousarray(strip[: n_rad - r_in_px])


def _gradient(gray: np.ndarray) -> np.ndarray:
    import cv2

    g = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.0)
    return cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))


@functools.lru_cache(maxsize=16)
def _nato_template(size: int) -> np.ndarray:
    """Gradient magnitude of a cross-in-circle ``size`` px across (on a margin of size/4)."""
    import cv2

    m = size // 4
    t = np.zeros((size + 2 * m, size + 2 * m), np.uint8)
    c, r, w = (size // 2 + m, size // 2 + m), size // 2, max(1, size // 10)
    cv2.circle(t, c, r, 255, w, cv2.LINE_AA)
    cv2.line(t, (c[0] - r, c[1]), (c[0] + r, c[1]), 255, w, cv2.LINE_AA)
    cv2.line(t, (c[0], c[1] - r), (c[0], c[1] + r), 255, w, cv2.LINE_AA)
    return _gradient(t)


def find_nato_marks(band_bgr: np.ndarray, char_heights: tuple[float, ...],
                    min_score: float) -> list[tuple[float, float, float]]:
    """Cross-in-circle marks in a horizontal band of an unwrapped headstamp: (x0, x1, score) each.

    The recogniser has no symbol for the NATO mark (it reads it as O, 0, 9, R, ...), so it is found by
    normalised correlation of gradient magnitudes (insensitive to stamp polarity and lighting) with a
    drawn mark at a few sizes; peaks are suppressed within one mark's width.
    """
    import cv2

    grad = _gradient(cv2.cvtColor(band_bgr, cv2.COLOR_BGR2GRAY))
    hits: list[tuple[float, float, float]] = []
    for ch in char_heights:
        tpl = _nato_template(max(8, int(ch)))
        if tpl.shape[0] > grad.shape[0] or tpl.shape[1] > grad.shape[1]:
            continue
        res = cv2.matchTemplate(grad, tpl, cv2.TM_CCOEFF_NORMED).max(axis=0)
        tw = tpl.shape[1]
        for _ in range(8):  # greedy 1-D non-maximum suppression within one mark's width
            x = int(res.argmax())
            if res[x] < min_score:
                break
            hits.append((float(x), float(x + tw), float(res[x])))
            res[max(0, x - tw + 1): x + tw] = -1.0
    hits.sort(key=lambda h: -h[2])
    kept: list[tuple[float, float, float]] = []
    for h in hits:
        if all(h[1] <= k[0] or h[0] >= k[1] for k in kept):
            kept.append(h)
    return kept
