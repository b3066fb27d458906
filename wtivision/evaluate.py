"""Detector evaluation without torch: average precision per class on a labelled folder.

A lab that labels its own photos (YOLO format: ``images/<split>/*.jpg`` beside ``labels/<split>/*.txt``,
one ``class cx cy w h`` line per box, normalised) can measure the shipped ONNX detector on them with the
runtime alone::

    wtivision evaluate DATASET_DIR --split test --json eval.json

Matching follows COCO: per image and class, detections in descending score order each take the unmatched
ground-truth box they overlap most, if that IoU reaches the threshold. AP is COCO's 101-point
interpolated precision (as pycocotools computes it); mAP averages the classes that have ground-truth
boxes. Images that cannot be read are listed in ``errors`` and left out; they never
stop the evaluation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .media import is_candidate, load_image
from .ops import box_iou, xywh2xyxy
from .results import _Element
from .runtime import YoloDetector

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)


@dataclass
class ClassEval(_Element):
    """Metrics of one class. ``precision``/``recall`` are at the operating confidence threshold and IoU 0.5."""

    name: str
    ground_truth: int
    predictions: int
    ap50: float
    ap50_95: float
    precision: float
    recall: float
    trained: bool = True


@dataclass
class DetectorEval(_Element):
    """Evaluation of one detector on one labelled split."""

    model: str
    model_sha256: str
    dataset: str
    split: str
    images: int
    operating_conf: float
    map50: float
    map50_95: float
    classes: list[ClassEval] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    tiles: bool = False  # the tiled passes (YoloDetector.tiled_boxes) were added to the whole-image pass
    excluded: list[str] = field(default_factory=list)  # images of the split left out on purpose (``exclude``)

    def per_class_ap50(self) -> dict[str, float]:
        return {c.name: c.ap50 for c in self.classes}


def average_precision(recall: np.ndarray, precision: np.ndarray, points: int = 101) -> float:
    """COCO (pycocotools) average precision: the mean, over ``points`` evenly spaced recall levels, of the
    best precision reached at that recall or beyond; 0 at recall levels never reached.

    ``recall``/``precision`` are the cumulative curves over detections sorted by descending score.
    (ultralytics instead integrates a curve extended linearly to recall 1, which reads a little higher
    when recall stays below 1.)
    """
    rec = np.asarray(recall, dtype=np.float64)
    if not len(rec):
        return 0.0
    envelope = np.flip(np.maximum.accumulate(np.flip(np.asarray(precision, dtype=np.float64))))
    levels = np.linspace(0.0, 1.0, points)
    idx = np.searchsorted(rec, levels - 1e-12, side="left")
    reached = idx < len(rec)
    return float(np.where(reached, envelope[np.minimum(idx, len(rec) - 1)], 0.0).mean())


def match_image(pred_boxes: np.ndarray, pred_scores: np.ndarray, pred_cls: np.ndarray, gt_boxes: np.ndarray,
                gt_cls: np.ndarray, thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """True-positive matrix (n_pred, n_thresholds) of one image's detections, COCO greedy matching."""
    tp = np.zeros((len(pred_boxes), len(thresholds)), dtype=bool)
    if not len(pred_boxes) or not len(gt_boxes):
        return tp
    iou = box_iou(np.asarray(pred_boxes, np.float64), np.asarray(gt_boxes, np.float64))
    iou[np.asarray(pred_cls)[:, None] != np.asarray(gt_cls)[None, :]] = 0.0
    order = np.argsort(-np.asarray(pred_scores), kind="stable")
    for t, thr in enumerate(thresholds):
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for i in order:
            cand = np.where(~taken & (iou[i] >= thr - 1e-9))[0]
            if len(cand):
                j = cand[np.argmax(iou[i, cand])]
                taken[j] = True
                tp[i, t] = True
    return tp


def ap_per_class(tp: np.ndarray, scores: np.ndarray, pred_cls: np.ndarray, gt_cls: np.ndarray,
                 n_classes: int, operating_conf: float = 0.25) -> dict[int, dict[str, float]]:
    """AP50, AP50-95 and precision/recall at ``operating_conf`` for every class with ground truth or
    predictions. ``tp`` is (n_pred, n_thresholds) over all images, first column IoU 0.5."""
    out: dict[int, dict[str, float]] = {}
    scores = np.asarray(scores, np.float64)
    pred_cls, gt_cls = np.asarray(pred_cls, np.int64), np.asarray(gt_cls, np.int64)
    for c in range(n_classes):
        n_gt = int((gt_cls == c).sum())
        sel = np.where(pred_cls == c)[0]
        if not n_gt and not len(sel):
            continue
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        ctp = tp[sel].astype(np.float64)
        cum_tp = ctp.cumsum(axis=0)
        cum_fp = (1.0 - ctp).cumsum(axis=0)
        aps = []
        for t in range(tp.shape[1]):
            if not n_gt:
                aps.append(0.0)
                continue
            rec = cum_tp[:, t] / n_gt
            prec = cum_tp[:, t] / np.maximum(cum_tp[:, t] + cum_fp[:, t], 1e-12)
            aps.append(average_precision(rec, prec))
        at = scores[sel] >= operating_conf
        tp_at = float(ctp[at, 0].sum()) if len(sel) else 0.0
        out[c] = {"ground_truth": n_gt, "predictions": int(at.sum()), "ap50": aps[0],
                  "ap50_95": float(np.mean(aps)),
                  "precision": tp_at / max(int(at.sum()), 1), "recall": tp_at / n_gt if n_gt else 0.0}
    return out


def dataset_names(root: Path) -> list[str] | None:
    """Class names from ``root/data.yaml`` (``names:`` as a list or an index mapping), None without one."""
    path = root / "data.yaml"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        import yaml  # optional: present with the training extras
    except ImportError:
        yaml = None
    if yaml is not None:
        names = (yaml.safe_load(text) or {}).get("names")
    else:
        names = _names_without_yaml(text)
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names] if names else None


def _names_without_yaml(text: str) -> list[str] | dict[int, str] | None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^names:\s*(.*)$", line)
        if not m:
            continue
        inline = m.group(1).strip()
        if inline.startswith("["):
            return [s.strip().strip("'\"") for s in inline.strip("[]").split(",") if s.strip()]
        items: dict[int, str] = {}
        seq: list[str] = []
        for sub in lines[i + 1:]:
            if sub and not sub[0].isspace():
                break
            km = re.match(r"^\s+(\d+)\s*:\s*(.+?)\s*$", sub)
            lm = re.match(r"^\s+-\s*(.+?)\s*$", sub)
            if km:
                items[int(km.group(1))] = km.group(2).strip("'\"")
            elif lm:
                seq.append(lm.group(1).strip("'\""))
        return items or seq or None
    return None


def read_labels(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """YOLO label file -> (xyxy boxes in pixels, class indices). Polygon lines become their bounding box;
    a missing file means no objects."""
    boxes, cls = [], []
    if path.is_file():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                vals = [float(v) for v in parts]
            except ValueError:
                raise ValueError(f"{path}:{n}: not a YOLO label line: {line!r}") from None
            if len(vals) == 5:
                cx, cy, w, h = vals[1:]
            elif len(vals) >= 7 and len(vals) % 2 == 1:
                xs, ys = vals[1::2], vals[2::2]
                cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
                w, h = max(xs) - min(xs), max(ys) - min(ys)
            else:
                raise ValueError(f"{path}:{n}: expected 'class cx cy w h' or a polygon, got {len(vals)} numbers")
            boxes.append([cx * width, cy * height, w * width, h * height])
            cls.append(int(vals[0]))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    return xywh2xyxy(np.asarray(boxes, np.float64)), np.asarray(cls, np.int64)


def split_images(root: Path, split: str) -> Iterator[tuple[Path, Path]]:
    """(image, label file) pairs of ``root/images/<split>`` (or ``root/<split>/images``), sorted."""
    for images, labels in ((root / "images" / split, root / "labels" / split),
                           (root / split / "images", root / split / "labels")):
        if images.is_dir():
            for p in sorted(images.rglob("*")):
                if p.is_file() and is_candidate(p):
                    yield p, labels / p.relative_to(images).with_suffix(".txt")
            return
    raise DatasetError(f"no images folder for split {split!r} under {root} "
                            f"(expected {root / 'images' / split} or {root / split / 'images'})")


def _split_pairs(root: Path, split: str, exclude: Collection[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """The split's (image, label) pairs without the ``exclude``d images, and those left out."""
    skip = {Path(p).as_posix() for p in exclude}
    pairs, excluded = [], []
    for img_path, lbl_path in split_images(root, split):
        key = img_path.relative_to(root).as_posix()
        if key in skip:
            excluded.append(key)
        else:
            pairs.append((img_path, lbl_path))
    return pairs, excluded


ImageMatch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # tp (n, thresholds), scores, pred cls, gt cls


def _match_split(detector: YoloDetector, root: Path, pairs: list[tuple[Path, Path]], names: list[str] | None,
                 tiles: bool, progress: Callable[[int, int], None] | None,
                 ) -> tuple[list[ImageMatch | None], dict[str, str], list[str]]:
    """Run the detector on each pair and match it with the labels: one ``ImageMatch`` per pair (None where the
    image or its labels could not be read: the reason is in the errors), and the class names (the model's,
    then label names it lacks)."""
    label_names = names or dataset_names(root) or list(detector.spec.classes)
    model_names = list(detector.spec.classes)
    unknown = sorted(set(label_names) - set(model_names))
    if unknown:
        logger.warning("label classes %s are not outputs of model %s: they count as missed", unknown,
                       detector.name)
    all_names = model_names + unknown
    to_model = np.array([all_names.index(n) for n in label_names], dtype=np.int64)
    matches: list[ImageMatch | None] = []
    errors: dict[str, str] = {}
    for i, (img_path, lbl_path) in enumerate(pairs):
        key = str(img_path.relative_to(root))
        try:
            image = load_image(img_path).array
            h, w = image.shape[:2]
            gt_boxes, gt_idx = read_labels(lbl_path, w, h)
            if len(gt_idx) and (gt_idx.min() < 0 or gt_idx.max() >= len(label_names)):
                raise ValueError(f"{lbl_path}: class index {int(gt_idx.max())} beyond the {len(label_names)} names")
            dets = detector.detect(image, tiles=tiles)
        except Exception as exc:  # one bad image never stops an evaluation
            errors[key] = f"{type(exc).__name__}: {exc}"
            logger.warning("skipped %s: %s", key, errors[key])
            matches.append(None)
        else:
            g = to_model[gt_idx]
            pb = np.asarray([d.box for d in dets], np.float64).reshape(-1, 4)
            ps = np.asarray([d.confidence for d in dets], np.float64)
            pc = np.asarray([model_names.index(d.label) for d in dets], np.int64)
            matches.append((match_image(pb, ps, pc, gt_boxes, g), ps, pc, g))
        if progress:
            progress(i + 1, len(pairs))
    return matches, errors, all_names


def _concat(matches: list[ImageMatch]) -> ImageMatch:
    """The images' matches as one set of arrays (empty arrays for no image)."""
    if not matches:
        return (np.zeros((0, len(IOU_THRESHOLDS)), bool), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    tp, scores, pcls, gcls = (np.concatenate(a) for a in zip(*matches))
    return tp, scores, pcls, gcls


def evaluate_detector(detector: YoloDetector, root: str | Path, split: str = "test",
                      names: list[str] | None = None, operating_conf: float = 0.25,
                      progress: Callable[[int, int], None] | None = None, tiles: bool = False,
                      exclude: Collection[str] = ()) -> DetectorEval:
    """Run ``detector`` on every image of the split and compare with its labels.

    Set the detector's ``conf_threshold`` low (e.g. 0.001) to measure AP over the whole score range;
    ``operating_conf`` is where precision and recall are reported. Label indices are named by ``names``,
    else by the folder's ``data.yaml``, else by the model's classes, and matched to the model by name.
    ``tiles`` runs the detector as ``wtivision scan --tiles`` does (whole image + tiles). ``exclude`` names
    images (paths relative to ``root``, as in ``images/test/x.jpg``) to leave out, e.g. the test images that
    ``python -m datasets.build --audit`` found mirrored or rotated in the training split; they are listed in
    the result's ``excluded``.
    """
    root = Path(root)
    pairs, excluded = _split_pairs(root, split, exclude)
    matches, errors, all_names = _match_split(detector, root, pairs, names, tiles, progress)
    per_image = [m for m in matches if m is not None]
    per = ap_per_class(*_concat(per_image), len(all_names), operating_conf)
    active = set(detector.active_classes)
    classes = [ClassEval(name=all_names[c], trained=all_names[c] in active,
                         **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()})
               for c, m in sorted(per.items())]
    with_gt = [c for c in classes if c.ground_truth]
    return DetectorEval(
        model=detector.name, model_sha256=detector.spec.sha256, dataset=str(root), split=split,
        images=len(per_image), operating_conf=operating_conf,
        map50=round(float(np.mean([c.ap50 for c in with_gt])), 4) if with_gt else 0.0,
        map50_95=round(float(np.mean([c.ap50_95 for c in with_gt])), 4) if with_gt else 0.0,
        classes=classes, errors=errors, tiles=tiles, excluded=excluded,
    )


def read_image_list(path: str | Path, column: str = "path") -> list[str]:
    """Image paths (or another ``column``, e.g. ``sha256``) from a file: that column of a CSV with a header
    (``leaks.csv`` of ``datasets.build --audit``, a manifest.csv), else one entry per line; blank lines and
    ``#`` comment lines are skipped."""
    import csv

    text = Path(path).read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if lines and column in [c.strip() for c in lines[0].split(",")]:
        return [row[column] for row in csv.DictReader(lines) if row.get(column)]
    return lines


# -- comparing two detectors on the same photos ---------------------------------------------------------
@dataclass
class ClassComparison(_Element):
    """AP50 of one class under detectors A and B, and the paired bootstrap interval of B - A."""

    name: str
    ground_truth: int
    ap50_a: float
    ap50_b: float
    diff: float  # ap50_b - ap50_a
    ci_low: float
    ci_high: float

    @property
    def verdict(self) -> str:
        """"better" / "worse" when the whole interval lies above / below 0, else "no clear difference"."""
        return "better" if self.ci_low > 0 else "worse" if self.ci_high < 0 else "no clear difference"


@dataclass
class DetectorComparison(_Element):
    """Detector B against detector A on one labelled split: per-class AP50 with paired bootstrap intervals
    (the photos are resampled with replacement, the same draw for both models)."""

    model_a: str
    model_a_sha256: str
    model_b: str
    model_b_sha256: str
    dataset: str
    split: str
    images: int
    resamples: int
    level: float
    seed: int
    classes: list[ClassComparison] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)


class _ClassCurve:
    """One class's detections sorted by score, with their images, for AP50 under image weights."""

    def __init__(self, matches: list[ImageMatch], c: int) -> None:
        tp, img, scores, gt_img = [], [], [], []
        for i, (t, s, pc, gc) in enumerate(matches):
            sel = pc == c
            tp.append(t[sel, 0])
            scores.append(s[sel])
            img.append(np.full(int(sel.sum()), i))
            gt_img.append(np.full(int((gc == c).sum()), i))
        order = np.argsort(-np.concatenate(scores), kind="stable")
        self.tp = np.concatenate(tp).astype(np.float64)[order]
        self.img = np.concatenate(img).astype(np.int64)[order]
        self.gt_img = np.concatenate(gt_img).astype(np.int64)

    def ap50(self, weights: np.ndarray) -> float:
        """AP50 with image i counted ``weights[i]`` times (a bootstrap draw); weights of 1 give the plain AP50."""
        n_gt = float(weights[self.gt_img].sum())
        if n_gt <= 0:
            return float("nan")
        w = weights[self.img]
        cum_tp = np.cumsum(w * self.tp)
        cum_fp = np.cumsum(w * (1.0 - self.tp))
        return average_precision(cum_tp / n_gt, cum_tp / np.maximum(cum_tp + cum_fp, 1e-12))


def compare_detectors(a: YoloDetector, b: YoloDetector, root: str | Path, split: str = "test",
                      names: list[str] | None = None, exclude: Collection[str] = (), resamples: int = 1000,
                      level: float = 0.95, seed: int = 0, progress: Callable[[int, int], None] | None = None,
                      tiles: bool = False) -> DetectorComparison:
    """Is B better than A on these photos, or is the difference noise? Both detectors run on every image of
    the split; for each class with ground truth, AP50 of each and a percentile interval of B - A from
    ``resamples`` bootstrap draws of the photos (paired: one draw serves both models). Only images both
    could read count. With a few dozen boxes of a class, differences of several points are often noise:
    that is what the interval shows. ``progress`` is called over both passes (2 x images)."""
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples must be >= 1 and level in (0, 1), got {resamples} and {level}")
    root = Path(root)
    pairs, excluded = _split_pairs(root, split, exclude)
    n = len(pairs)
    runs = []
    for k, det in enumerate((a, b)):
        step = (lambda d, t, k=k: progress(k * n + d, 2 * n)) if progress else None
        runs.append(_match_split(det, root, pairs, names, tiles, step))
    (ma, errors_a, names_a), (mb, errors_b, names_b) = runs
    both = [i for i in range(n) if ma[i] is not None and mb[i] is not None]
    ma = [ma[i] for i in both]
    mb = [mb[i] for i in both]
    counts = np.bincount(_concat(ma)[3], minlength=len(names_a))
    ones = np.ones(len(both))
    rng = np.random.default_rng(seed)
    draws = [np.bincount(rng.integers(0, len(both), len(both)), minlength=len(both)).astype(np.float64)
             for _ in range(resamples)] if both else []
    classes = []
    for ca, name in enumerate(names_a):
        if not counts[ca]:
            continue
        curve_a, curve_b = _ClassCurve(ma, ca), _ClassCurve(mb, names_b.index(name))
        ap_a, ap_b = curve_a.ap50(ones), curve_b.ap50(ones)
        diffs = np.array([curve_b.ap50(w) - curve_a.ap50(w) for w in draws])
        diffs = diffs[~np.isnan(diffs)]  # draws without a box of the class
        lo, hi = (np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2]) if len(diffs) else (np.nan, np.nan))
        classes.append(ClassComparison(name=name, ground_truth=int(counts[ca]), ap50_a=round(ap_a, 4),
                                       ap50_b=round(ap_b, 4), diff=round(ap_b - ap_a, 4),
                                       ci_low=round(float(lo), 4), ci_high=round(float(hi), 4)))
    return DetectorComparison(model_a=a.name, model_a_sha256=a.spec.sha256, model_b=b.name,
                              model_b_sha256=b.spec.sha256, dataset=str(root), split=split, images=len(both),
                              resamples=resamples, level=level, seed=seed, classes=classes,
                              errors={**errors_a, **errors_b}, excluded=excluded)
