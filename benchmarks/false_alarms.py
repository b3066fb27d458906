"""False alarms of detectors on photos known to hold none of some classes, side by side.

    python -m benchmarks.false_alarms --models detector-v1.5,detector-v1.7 [--models-dir DIR] \
        [--labels pistol,rifle] [--conf 0.25] \
        --set "real case heads=/path/imagesForTesting/*" --set "mine tiles=runs/data/external-pfm1/images/test/*"

For each model and each set (a name and a glob of photos that hold none of ``--labels``), counts the photos
with at least one box of those labels at ``--conf`` and lists the highest scores. AP on a labelled test set
already charges a model for false boxes on photos of other objects; this asks the narrower question a
technician meets: how often does a photo of a case head, a battery or a patch of ground come back "firearm"?
Writes a markdown table to stdout (and ``--json`` if given).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def count(models: list[str], sets: dict[str, list[str]], labels: set[str], conf: float,
          models_dir: Path) -> list[dict]:
    from wtivision.media import load_image
    from wtivision.registry import Registry
    from wtivision.runtime import YoloDetector

    reg = Registry(models_dir)
    rows = []
    for name in models:
        det = YoloDetector(reg.get(name), reg, conf_threshold=conf)
        for set_name, files in sets.items():
            photos = hits = 0
            scores: list[float] = []
            for f in files:
                try:
                    image = load_image(Path(f)).array
                except Exception as exc:  # noqa: BLE001 - an unreadable photo is skipped and counted out
                    logging.getLogger(__name__).warning("%s: skipped (%s)", f, exc)
                    continue
                photos += 1
                found = [d.confidence for d in det.detect(image) if d.label in labels]
                hits += bool(found)
                scores += found
            rows.append({"model": name, "set": set_name, "photos": photos, "photos_with_a_box": hits,
                         "boxes": len(scores), "top_scores": [round(s, 2) for s in sorted(scores, reverse=True)[:8]]})
    return rows


def to_markdown(rows: list[dict], labels: set[str], conf: float) -> str:
    lines = [f"Photos with a {' / '.join(sorted(labels))} box at conf {conf}, on photos without one:", "",
             "| model | set | photos | with a box | boxes | highest scores |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['set']} | {r['photos']} | {r['photos_with_a_box']} | {r['boxes']} | "
              f"{', '.join(map(str, r['top_scores'])) or '-'} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.false_alarms", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="comma-separated detector names of the manifest")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--labels", default="pistol,rifle", help="classes none of the photos hold (default firearms)")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--set", action="append", required=True, metavar="NAME=GLOB", help="repeatable")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sets = {}
    for s in a.set:
        name, sep, pattern = s.partition("=")
        if not sep:
            ap.error(f"--set {s!r}: expected NAME=GLOB")
        sets[name] = sorted(glob.glob(pattern))
        if not sets[name]:
            ap.error(f"--set {s!r}: no file matches")
    labels = {x for x in a.labels.split(",") if x}
    rows = count([m for m in a.models.split(",") if m], sets, labels, a.conf, a.models_dir)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(to_markdown(rows, labels, a.conf))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
