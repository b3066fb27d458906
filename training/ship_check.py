"""May a candidate detector replace the default? The project's rule, run in one command.

    python -m training.ship_check --candidate detector-v2 [--baseline detector-v1.7] [--models-dir DIR] \
        [--checks training/configs/ship-checks.yaml] [--resamples 1000] [--json FILE]

For every check of the checks file (a labelled test set never trained on, and the classes judged on it) the two
detectors run on the same photos (``wtivision.evaluate.compare_detectors``: AP50 of each and a paired bootstrap
interval of candidate - baseline). The rule, written before any candidate's figures were known (training/README.md,
detector v1.8): **the candidate passes only if no judged class is clearly worse** (interval entirely below 0) on
any check. Every check must be present: a missing test set is an error naming the recipe that builds it, not a
pass. What the rule does not judge (int8 agreement, new classes, false alarms, the examples) is for the person
shipping, from the card.

Prints one line per class and the verdict; exit status 0 if the candidate passes, 1 if not, 2 on a usage error.
Nothing runs on torch: the candidate must be exported (``python -m export.onnx ... --models-dir DIR``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKS = REPO / "training" / "configs" / "ship-checks.yaml"
logger = logging.getLogger(__name__)


@dataclass
class Check:
    """One test set and the classes judged on it."""

    name: str
    dataset: Path
    classes: list[str]
    exclude: list[Path] = field(default_factory=list)  # image lists (``read_image_list``) left out
    recipe: str = ""  # how to build the dataset folder, for the error message

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path) -> Check:
        def path(p: str | None) -> Path | None:
            return None if not p else (Path(p) if Path(p).is_absolute() else base / p)

        missing = [k for k in ("name", "dataset", "classes") if not d.get(k)]
        if missing:
            raise ValueError(f"ship check {d!r}: missing {', '.join(missing)}")
        ex = d.get("exclude") or []
        ex = [ex] if isinstance(ex, str) else list(ex)
        return cls(d["name"], path(d["dataset"]), list(d["classes"]), [path(p) for p in ex], d.get("recipe", ""))


@dataclass
class ShipReport:
    baseline: str
    candidate: str
    passes: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_checks(path: Path, base: Path = REPO) -> list[Check]:
    """The checks of a yaml file (``checks: [{name, dataset, classes, exclude?, recipe?}]``; ``exclude``: one
    image list or several); relative paths are relative to ``base`` (the repository root)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    checks = [Check.from_dict(d, base) for d in data.get("checks") or []]
    if not checks:
        raise ValueError(f"{path}: no checks")
    return checks


def ship_check(baseline: Any, candidate: Any, checks: list[Check], resamples: int = 1000) -> ShipReport:
    """Run every check (``baseline`` / ``candidate``: ``YoloDetector``s) and apply the rule."""
    from wtivision.evaluate import compare_detectors, read_image_list

    absent = [c for c in checks if not (c.dataset / "images").is_dir()]
    if absent:
        raise FileNotFoundError("; ".join(f"check {c.name!r}: no test set at {c.dataset}"
                                          + (f" (build it: {c.recipe})" if c.recipe else "") for c in absent))
    report = ShipReport(baseline.spec.name, candidate.spec.name, True)
    for c in checks:
        exclude = [p for f in c.exclude for p in read_image_list(f)]
        cmp = compare_detectors(baseline, candidate, c.dataset, exclude=exclude, resamples=resamples)
        report.comparisons[c.name] = cmp.to_dict()
        per = {k.name: k for k in cmp.classes}
        for cls in c.classes:
            k = per.get(cls)
            if k is None:  # no ground truth of the class on this set: the check cannot judge it
                raise ValueError(f"check {c.name!r}: no {cls!r} box in {c.dataset} ({cmp.images} images)")
            row = {"check": c.name, "images": cmp.images, "class": cls, "boxes": k.ground_truth,
                   "baseline": k.ap50_a, "candidate": k.ap50_b, "diff": k.diff, "low": k.ci_low,
                   "high": k.ci_high, "verdict": k.verdict}
            report.rows.append(row)
            report.passes &= k.verdict != "worse"
    return report


def to_text(r: ShipReport) -> str:
    lines = [f"{r.candidate} (candidate) against {r.baseline} (baseline): AP50, 95 % paired bootstrap interval of "
             "candidate - baseline", f"  {'check':16s} {'class':14s} {'boxes':>5s} {'base':>6s} {'cand':>6s} "
             f"{'diff':>7s}  interval"]
    lines += [f"  {x['check']:16s} {x['class']:14s} {x['boxes']:5d} {x['baseline']:6.3f} {x['candidate']:6.3f} "
              f"{x['diff']:+7.3f}  [{x['low']:+.3f}, {x['high']:+.3f}] {x['verdict']}" for x in r.rows]
    worse = [f"{x['class']} on {x['check']}" for x in r.rows if x["verdict"] == "worse"]
    lines.append("PASSES: no judged class clearly worse" if r.passes
                 else "FAILS: clearly worse: " + ", ".join(worse))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from wtivision.registry import Registry
    from wtivision.runtime import YoloDetector

    ap = argparse.ArgumentParser(prog="python -m training.ship_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", required=True, help="detector name in the manifest")
    ap.add_argument("--baseline", help="detector name (default: the default detector)")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models",
                    help="folder with manifest.json holding both (default models/)")
    ap.add_argument("--checks", type=Path, default=DEFAULT_CHECKS)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    reg = Registry(a.models_dir)
    base_spec = reg.get(a.baseline) if a.baseline else reg.default_for("detector")
    if base_spec is None:
        ap.error("no baseline: name one with --baseline")
    try:
        checks = load_checks(a.checks)
        detectors = [YoloDetector(s, reg, conf_threshold=0.001) for s in (base_spec, reg.get(a.candidate))]
        report = ship_check(*detectors, checks, a.resamples)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}")
        return 2
    print(to_text(report))
    if a.json:
        a.json.write_text(json.dumps(report.__dict__, indent=1) + "\n", encoding="utf-8")
    return 0 if report.passes else 1


if __name__ == "__main__":
    raise SystemExit(main())
