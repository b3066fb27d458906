"""Rebuild the shipped detector's datasets from their public sources, in one command.

    python -m datasets.rebuild --mirrors DIR [--datasets detector-v1.7,heldout-elgarh,external-pfm1] [--audit]

``DIR`` holds a bare git mirror of each source repository at ``DIR/<owner>+<name>/repo`` (the layout of this
project's snapshot tool; by hand: ``git clone --mirror https://github.com/<owner>/<name> DIR/<owner>+<name>/repo``).
Each raw source is brought out of its mirror at a pinned commit by ``datasets.prepare_raw`` into ``.data/raw/``
(the flags are the ones in the recipes' comments and ``datasets/SOURCES.md``), then the recipes are built into
``runs/data/<recipe>`` in the order their ``keep_splits`` chain needs (detector-v1 -> v1.2 -> v1.3 -> v1.5 ->
v1.7). A dataset whose manifest is kept in ``datasets/manifests/`` is checked against it: same SHA-256, so the
same images in the same splits as the shipped model's. ``--audit`` also writes ``runs/data/detector-v1.3/leaks.csv``
(the twins that define the 346 "clean" test photos; ~3 min). ``detector-v2`` (the next GPU run's data) is
built after detector-v1.3 and its audit, which it needs.

Measured 2026-11-30 on 2 cores: about 7 min of preparing, 3 min of building, 4 min of auditing; the detector-v1.7
manifest came out byte-identical to the one the model records.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from datasets.build import main as build_main
from datasets.prepare_raw import main as prepare_main

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RawSource:
    name: str
    repo: str  # owner/name on GitHub
    commit: str
    args: tuple[str, ...] = ()


ALEMA1 = "Alema1/realtime-handgun-detection", "fe4129862886a2142c089b24bfcadf55f09bcc1d"
ELGARH = "AhmedMohsenElgarh/new-dataset-weapon", "60676f9626c95022db7dfd9e84aebc53c62b0cf0"
PFM1 = "joelUSD/PFM1-Detection", "49435db300c1942aaf1c10bf1b2fed8b50b00292"
EWASTE = "YiJen10/ewasteClassifier", "ea90c0bd14c2732d7b482aa8dbcbba21b1d8d6ed"
#: The stems of yijen10-ewaste kept as real photos (datasets/recipes/detector-v1.7.yaml explains the choice).
EWASTE_INCLUDE = (
    r"/images/(?!(ArduinoMega_Bottom|DuetWIFI_Top|OlimexRed)_png_jpg|pcb23rec1_)(battery|alkaline_jpg|ezgif-|"
    r"pcb[0-9]+rec|cable_img|dog_image_|(ACM-109|ATTIOT|ArduinoMega|Arty|DigitalDiscovery|DuetWIFI|EDA-008|HackRF|"
    r"ML365|ML450|MicroZed|OlimexRed|RPI3B|STK644|Spartan6|Spartan6Redux|SystemAce|Virtex5|Virtex6|XCM-307A|"
    r"XLVDSproSupply|ZTurn|Zedboard|Ztex|Zybo)_)")
PFM1_ARGS = ("--prefix", "BinghamtonDataset/", "--tiles-not-copies", "--names", "ksf-casing,pfm-1")

SOURCES = (
    RawSource("alema1-armas-pistols", *ALEMA1, ("--names", "pistol")),
    RawSource("elgarh-weapons", *ELGARH, ("--max", "3000", "--seed", "0", "--names", "pistol,knife,long_weapon")),
    RawSource("elgarh-weapons-all", *ELGARH, ("--names", "pistol,knife,long_weapon", "--licence", "CC-BY-4.0",
                                              "--origin", f"github.com/{ELGARH[0]}@{ELGARH[1]}")),
    RawSource("robotkos-landmine", "robotkos/yolo_dataset", "7a49f9edec9d340f251f1d7ead8ce5ad1e5f592f",
              ("--prefix", "data/", "--names", "landmine")),
    RawSource("utshobs-ewaste-phones",
              "utshobs/YOLO11-for-High-Accuracy-Real-Time-Detection-and-Classification-of-Diverse-E-Waste",
              "1ff263a4ab0344af7459a31ba23acb72519b41c2", ("--prefix", "Dataset_1/")),
    RawSource("binghamton-pfm1-train", *PFM1, (*PFM1_ARGS, "--include", "/(M600_191105|Phan4_200316)_")),
    RawSource("binghamton-pfm1", *PFM1, (*PFM1_ARGS, "--include", "/Phan4_210414_")),
    RawSource("yijen10-ewaste", *EWASTE, (
        "--prefix", "datasets/ewaste_v2/", "--include", EWASTE_INCLUDE,
        "--licence", "CC BY 4.0 (as declared by its Roboflow export: datasets/ewaste_v2/data.yaml and "
                     "README.dataset.txt, ewaste-4uqej/ewaste-3-classes-xouac v2)",
        "--origin", f"github.com/{EWASTE[0]}@{EWASTE[1]}")),
)

#: Recipes in build order (each ``keep_splits`` names the manifest of one before it) and the raw sources each
#: needs, its own and its chain's.
CHAIN = ("detector-v1", "detector-v1.2", "detector-v1.3", "detector-v1.5", "detector-v1.7")
NEEDS = {
    "detector-v1": ("alema1-armas-pistols", "elgarh-weapons", "robotkos-landmine"),
    "detector-v1.2": ("utshobs-ewaste-phones",),
    "detector-v1.5": ("binghamton-pfm1-train",),
    "detector-v1.7": ("yijen10-ewaste",),
    "heldout-elgarh": ("elgarh-weapons-all",),
    "external-pfm1": ("binghamton-pfm1",),
    # the next GPU run's data: the v1.7 photo sources with every elgarh photo, plus synthetic scenes
    "detector-v2": ("alema1-armas-pistols", "elgarh-weapons", "elgarh-weapons-all", "robotkos-landmine",
                    "utshobs-ewaste-phones", "binghamton-pfm1-train", "yijen10-ewaste"),
}
#: Recipes outside the chain that keep splits of a chain recipe: built after it, and after its audit when they
#: read its leaks.csv (``keep_splits_skip``).
AFTER = {"detector-v2": ("detector-v1.3", True)}


def plan(datasets: list[str]) -> tuple[list[RawSource], list[str], bool]:
    """The raw sources to prepare, the recipes to build (in order) for ``datasets``, and whether a recipe needs
    the detector-v1.3 audit (its leaks.csv) before it is built."""
    unknown = sorted(set(datasets) - set(CHAIN) - set(NEEDS))
    if unknown:
        known = [*CHAIN, *sorted(set(NEEDS) - set(CHAIN))]
        raise ValueError(f"unknown dataset(s) {unknown}; known: {', '.join(known)}")
    recipes: list[str] = []
    needs_audit = False
    for d in datasets:
        before, audit = AFTER.get(d, (None, False))
        needs_audit |= audit
        chain = CHAIN[:CHAIN.index(d) + 1] if d in CHAIN else (*CHAIN[:CHAIN.index(before) + 1], d) if before else (d,)
        for r in chain:
            if r not in recipes:
                recipes.append(r)
    recipes.sort(key=lambda r: r in AFTER)  # after the chain (and its audit)
    names = {n for r in recipes for n in NEEDS.get(r, ())}
    return [s for s in SOURCES if s.name in names], recipes, needs_audit


def mirror_of(mirrors: Path, repo: str) -> Path:
    path = Path(mirrors) / repo.replace("/", "+") / "repo"
    if not path.is_dir():
        raise FileNotFoundError(f"no mirror of {repo} at {path} "
                                f"(git clone --mirror https://github.com/{repo} {path})")
    return path


def kept_manifest_sha256(name: str) -> str | None:
    """SHA-256 of the manifest kept for ``name`` in datasets/manifests/ (None if there is none)."""
    p = REPO / "datasets" / "manifests" / f"{name}.csv.gz"
    return hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest() if p.is_file() else None


def rebuild(mirrors: Path, datasets: list[str], audit: bool = False) -> dict:
    """Prepare, build (and audit) ``datasets``; returns the timings and manifest checks. The recipes name
    ``.data/raw/<source>`` and ``runs/data/<recipe>`` of this checkout, so those are where everything goes."""
    out, raw = REPO / "runs" / "data", REPO / ".data" / "raw"
    sources, recipes, needs_audit = plan(datasets)
    audit = audit or needs_audit
    if audit and "detector-v1.3" not in recipes:
        raise ValueError("--audit needs detector-v1.3 built (ask for detector-v1.3 or a later detector recipe)")
    for s in sources:  # fail before any work if a mirror is missing
        mirror_of(mirrors, s.repo)
    report: dict = {"prepared": {}, "built": {}}
    for s in sources:
        t0 = time.perf_counter()
        prepare_main(["--git-dir", str(mirror_of(mirrors, s.repo)), "--commit", s.commit, "--source", s.name,
                      "--out", str(raw), *s.args])
        report["prepared"][s.name] = round(time.perf_counter() - t0, 1)
        logger.info("prepared %s in %.0f s", s.name, report["prepared"][s.name])
    for r in recipes:
        if r in AFTER and audit and "audit_seconds" not in report:
            _audit(out, report)
        t0 = time.perf_counter()
        if build_main(["--config", str(REPO / "datasets" / "recipes" / f"{r}.yaml"), "--out", str(out / r)]) != 0:
            raise RuntimeError(f"datasets.build failed for {r}")
        sha = json.loads((out / r / "build.json").read_text())["manifest_sha256"]
        expected = kept_manifest_sha256(r)
        report["built"][r] = {"seconds": round(time.perf_counter() - t0, 1), "manifest_sha256": sha,
                              "matches_kept_manifest": None if expected is None else sha == expected}
        logger.info("built %s: %s", r, report["built"][r])
        if expected is not None and sha != expected:
            raise RuntimeError(f"{r}: manifest SHA-256 {sha} differs from datasets/manifests/{r}.csv.gz ({expected})")
    if audit and "audit_seconds" not in report:
        _audit(out, report)
    return report


def _audit(out: Path, report: dict) -> None:
    t0 = time.perf_counter()
    build_main(["--audit", str(out / "detector-v1.3")])
    report["audit_seconds"] = round(time.perf_counter() - t0, 1)
    logger.info("audited detector-v1.3 in %.0f s", report["audit_seconds"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.rebuild", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirrors", type=Path, required=True, help="folder of <owner>+<name>/repo bare git mirrors")
    ap.add_argument("--datasets", default="detector-v1.7,heldout-elgarh,external-pfm1",
                    help="comma list (default: the shipped detector's data and its two independent test sets)")
    ap.add_argument("--audit", action="store_true", help="also write runs/data/detector-v1.3/leaks.csv")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = rebuild(a.mirrors, [d for d in a.datasets.split(",") if d], a.audit)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        logger.error("rebuild FAILED: %s", exc)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
