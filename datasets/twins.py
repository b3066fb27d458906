"""Near-duplicate photos that a perceptual hash misses: copies rotated by any angle, cropped, re-framed,
shifted in colour, or other frames of the same video scene.

Public detection sets (Roboflow exports above all) hold several augmented copies of one photo under
different names, and a copy rotated by 15 degrees with black corners, or cropped to 80 %, has a pHash far
from the original's. Two steps find them:

1. *candidates*: for each photo, the ``k`` most similar other photos by a colour histogram and by a grey
   histogram of its non-black pixels (both unchanged by rotation, flips, crops of the background);
2. *check*: ORB key points of the pair (and of the mirrored photo) are matched and a similarity transform
   (rotation, scale within 0.5-2, shift) is fitted by RANSAC; the pair is a twin if at least
   ``min_inliers`` matches agree with it. Two different photos of similar pistols on white rarely get 10.

Limits: a plain photo with few key points (a bare object on white, a blank wall) cannot be matched; the
pHash checks still catch its plain and mirrored copies. Candidates come from the histograms, so a copy
whose colours and grey levels both changed a lot is not checked.

Used by ``datasets.build`` (recipe ``match_features``) to keep twins in one split, and by
``python -m datasets.build --audit`` to list the twins an older split let through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MAX_SIDE = 480  # photos are matched at this size (longer side)
FEATURES = 500  # ORB key points per photo
MIN_INLIERS = 20  # matches consistent with one similarity transform that make a pair twins
CANDIDATES = 8  # per photo and histogram kind
_BLACK = 12  # pixels darker than this in every channel are left out of the histograms (rotation padding)


@dataclass
class Signature:
    """What the twin check needs of one photo (about 40 KB)."""

    colour: np.ndarray  # HSV histogram 12x6x6 of the non-black pixels, sums to 1
    grey: np.ndarray  # grey-level histogram, 32 bins, of the same pixels, sums to 1
    points: np.ndarray  # (n, 2) ORB key point positions
    descriptors: np.ndarray  # (n, 32) uint8
    mirrored_points: np.ndarray  # the same for the left-right mirrored photo
    mirrored_descriptors: np.ndarray


def _orb(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    kps, des = cv2.ORB_create(FEATURES).detectAndCompute(grey, None)
    if des is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return np.float32([k.pt for k in kps]), des


def _histogram(values: np.ndarray, mask: np.ndarray, channels: list[int], bins: list[int],
               ranges: list[int]) -> np.ndarray:
    import cv2

    h = cv2.calcHist([values], channels, mask, bins, ranges).ravel()
    return h / h.sum() if h.sum() else h


def signature(path: str | Path) -> Signature:
    """Histograms and ORB features of a photo (and of its mirror image); raises ValueError if unreadable."""
    import cv2

    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise ValueError(f"{path}: not readable as an image")
    scale = MAX_SIDE / max(im.shape[:2])
    if scale < 1:
        im = cv2.resize(im, (round(im.shape[1] * scale), round(im.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    mask = (im.max(axis=2) > _BLACK).astype(np.uint8)
    grey = cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)
    pts, des = _orb(grey)
    mpts, mdes = _orb(np.ascontiguousarray(grey[:, ::-1]))
    hsv = cv2.cvtColor(im, cv2.COLOR_BGR2HSV)
    return Signature(_histogram(hsv, mask, [0, 1, 2], [12, 6, 6], [0, 180, 0, 256, 0, 256]),
                     _histogram(grey, mask, [0], [32], [0, 256]), pts, des, mpts, mdes)


def inliers(a: Signature, b: Signature) -> int:
    """Matches between ``a`` (or its mirror image) and ``b`` consistent with one similarity transform."""
    import cv2

    best = 0
    if len(b.descriptors) < 2:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    for pts, des in ((a.points, a.descriptors), (a.mirrored_points, a.mirrored_descriptors)):
        if len(des) < 2:
            continue
        good = [m[0] for m in matcher.knnMatch(des, b.descriptors, k=2)
                if len(m) == 2 and m[0].distance < 0.75 * m[1].distance]  # Lowe's ratio test
        if len(good) < max(best, 3):
            continue
        src = pts[[m.queryIdx for m in good]]
        dst = b.points[[m.trainIdx for m in good]]
        m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=5.0)
        if m is not None and 0.5 < float(np.hypot(m[0, 0], m[1, 0])) < 2.0:
            best = max(best, int(inl.sum()))
    return best


EXACT_LIMIT = 20_000  # up to this many refs the candidates are found by exhaustive search
PROBES = 8  # clusters searched per query above EXACT_LIMIT


def candidates(query: Sequence[Signature], refs: Sequence[Signature], k: int = CANDIDATES,
               same: bool = False, exact_limit: int = EXACT_LIMIT) -> list[np.ndarray]:
    """For each query, the indices of the ``k`` refs with the most similar colour histogram and the ``k``
    with the most similar grey histogram (histogram intersection); ``same``: query and refs are one list,
    a photo is not its own candidate.

    Up to ``exact_limit`` refs every pair is compared (time grows with the square of the number of photos:
    ~1 min for 10k); above it, the refs are grouped by k-means on their histograms and each query is
    compared only with the refs of its ``PROBES`` nearest groups (time grows as n^1.5), which finds a copy
    whose histogram is close to the original's, i.e. what the check needs, but may pick other runners-up."""
    if not len(refs):
        return [np.zeros(0, np.int64) for _ in query]
    out = []
    for kind in ("colour", "grey"):
        r = np.stack([getattr(s, kind) for s in refs]).astype(np.float32)
        q = np.stack([getattr(s, kind) for s in query]).astype(np.float32)
        groups = None if len(refs) <= exact_limit else _inverted_lists(r, q)
        top = []
        for i in range(len(q)):
            idx = None if groups is None else groups(i)
            sim = np.minimum(r if idx is None else r[idx], q[i]).sum(axis=1)
            if same:
                sim[i if idx is None else idx == i] = -1.0
            kk = min(k, len(sim) - (1 if same else 0))
            best = np.argpartition(-sim, kk - 1)[:kk] if kk > 0 else np.zeros(0, np.int64)
            top.append(best if idx is None else idx[best])
        out.append(top)
    return [np.unique(np.concatenate([a, b])) for a, b in zip(*out)]


def _inverted_lists(refs: np.ndarray, query: np.ndarray, iterations: int = 10,
                    seed: int = 0) -> Callable[[int], np.ndarray]:
    """k-means (sqrt(n) centres, Lloyd on a sample) on the square roots of the histograms, where Euclidean
    distance tracks histogram overlap; returns query index -> ref indices of its ``PROBES`` nearest centres."""
    rng = np.random.default_rng(seed)
    r, q = np.sqrt(refs), np.sqrt(query)
    n_centres = max(PROBES, int(np.sqrt(len(r))))
    sample = r[rng.choice(len(r), min(len(r), 50 * n_centres), replace=False)]
    centres = sample[rng.choice(len(sample), n_centres, replace=False)].copy()
    for _ in range(iterations):
        assign = _nearest(sample, centres, 1)[:, 0]
        for c in range(n_centres):
            members = sample[assign == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    owner = _nearest(r, centres, 1)[:, 0]
    lists = [np.flatnonzero(owner == c) for c in range(n_centres)]
    probes = _nearest(q, centres, min(PROBES, n_centres))
    return lambda i: np.concatenate([lists[c] for c in probes[i]])


def _nearest(x: np.ndarray, centres: np.ndarray, m: int, chunk: int = 4096) -> np.ndarray:
    """Indices of the ``m`` nearest centres (Euclidean) of each row of ``x``, nearest first."""
    cc = (centres ** 2).sum(axis=1)
    out = []
    for a in range(0, len(x), chunk):
        d = cc[None, :] - 2.0 * x[a:a + chunk] @ centres.T
        if m < len(centres):
            part = np.argpartition(d, m - 1, axis=1)[:, :m]
        else:
            part = np.tile(np.arange(len(centres)), (len(d), 1))
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1)
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out) if out else np.zeros((0, m), np.int64)


def signatures(paths: Sequence[str | Path]) -> dict[int, Signature]:
    """``signature`` of each path, by its index; an unreadable file is left out with a warning."""
    out = {}
    for k, path in enumerate(paths):
        try:
            out[k] = signature(path)
        except ValueError as exc:
            logger.warning("twin check skips %s", exc)
    return out


def find_twins(query: Sequence[Signature], refs: Sequence[Signature] | None = None, k: int = CANDIDATES,
               min_inliers: int = MIN_INLIERS,
               progress: Callable[[int, int], None] | None = None) -> list[tuple[int, int, int]]:
    """Twin pairs ``(query index, ref index, inliers)``; without ``refs`` the query list is matched with
    itself (each pair once, ``i < j``)."""
    same = refs is None
    refs = query if refs is None else refs
    cand = candidates(query, refs, k, same)
    pairs: dict[tuple[int, int], int] = {}
    for i, js in enumerate(cand):
        for j in map(int, js):
            key = (min(i, j), max(i, j)) if same else (i, j)
            if (same and i == j) or key in pairs:
                continue
            pairs[key] = inliers(query[i], refs[j])
        if progress:
            progress(i + 1, len(query))
    return sorted((i, j, n) for (i, j), n in pairs.items() if n >= min_inliers)
