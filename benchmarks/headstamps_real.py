"""Headstamps on real phone photos: how much of what a person reads does the pipeline read?

The photos: the 44 cartridge photos in Tech4Tracing/CartridgeOCR (MIT licence; phone cameras: Pixel 5,
iPhone 11, one sent through WhatsApp; cartridges held in the hand, on a desk, on a white board). They are
not in this repository; they are read straight from a bare mirror of it (the `fetch` tool, or
`git clone --mirror https://github.com/Tech4Tracing/CartridgeOCR`), bytes unchanged::

    python -m benchmarks.headstamps_real --git-dir <mirror> --json docs/headstamps-real.json

(``--folder`` takes a checkout's ``imagesForTesting`` folder instead.)

Ground truth (``OBJECTS``/``PHOTOS`` below) is a person's reading of each photo (2026-11-29, read on the
full-resolution photos): which cartridges are seen end-on and what is stamped on them. There are six
distinct cartridges, each photographed several times, so these figures describe six headstamps seen
under varied light, distance and angle, not a population. The photos were looked at while the case-head
finder was written (a development set, not held out); its thresholds were set before measuring.

Case-head boxes (``data/cartridgeocr_case_heads.csv``, 49 heads on the 44 photos, pixels of the upright photo):
made 2026-11-29 by a person looking at every photo: proposals of the case-head finder kept where they sit on
a head's rim, every other head drawn by eye and snapped to the nearest Hough circle of that size. With them
the finder's localisation is measured (recall/precision at IoU >= 0.5), and so is a detector's ``case_head``
class once one has it.

Figures: photos with a headstamp reading; exact token recall/precision (a read token equal to a stamped
one, dots and spaces ignored); substring recall (a stamped token found anywhere in the photo's readings,
the most lenient measure: what a person reviewing the reading could recognise).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import time
from pathlib import Path

COMMIT = "a93185a9ff5d6d490ce367cd01b5d0fd697967e2"
BOXES = Path(__file__).resolve().parent / "data" / "cartridgeocr_case_heads.csv"

# What is stamped on each cartridge (clockwise tokens; "+" would be the NATO mark).
OBJECTS: dict[str, list[str]] = {
    "S&B 9x19": ["S&B", "9X19"],
    "WINCHESTER 45 AUTO": ["WINCHESTER", "45", "AUTO"],
    "AGUILA 16 16 (shotshell)": ["AGUILA", "16", "16"],
    "WINCHESTER 12 GA (shotshell)": ["WINCHESTER", "12", "GA"],
    "WIN USA 5.56MM": ["WIN", "USA", "5.56MM"],
    "FC 9MM LUGER": ["FC", "9MM", "LUGER"],
}

_SB, _W45, _AG, _W12, _WIN, _FC = OBJECTS
# photo (path under imagesForTesting/) -> cartridges whose head is visible in it
PHOTOS: dict[str, list[str]] = {
    "2021-05-15/PXL_20210515_181244332.jpg": [_SB],
    "2021-05-15/PXL_20210515_181259473.jpg": [_W45],
    "2021-05-15/PXL_20210515_181305750.jpg": [_W45],
    "2021-05-15/PXL_20210515_181322806.jpg": [_SB],
    "2021-05-18/PXL_20210518_205445284.jpg": [_AG],
    "2021-05-18/PXL_20210518_205451963.jpg": [_AG],
    "2021-05-18/PXL_20210518_205459892.jpg": [_AG],
    "2021-05-18/PXL_20210518_205508205.jpg": [_W12],
    "2021-05-18/PXL_20210518_205520152.jpg": [_W12],
    "2021-05-18/PXL_20210518_205528538.jpg": [_AG, _W12],
    "2021-05-18/PXL_20210518_205537288.jpg": [_AG, _W12],
    "2021-05-18/PXL_20210518_205543325.jpg": [_AG, _W12],
    "2021-05-18/PXL_20210518_205554304.jpg": [_AG, _W12],
    **{f"2021-05-18/PXL_20210518_{t}.jpg": [_WIN] for t in
       ("205607661", "205615607", "205630272", "205641504", "205656214", "205723075")},
    **{f"2021-05-18/PXL_20210518_{t}.jpg": [_FC] for t in
       ("205747575", "205752479", "205800677", "205824854", "205925515", "205931163", "205936665",
        "205940362", "205945864")},
    "deviceComparison/androidPixel5/PXL_20210518_214134004.jpg": [_WIN],
    **{f"deviceComparison/androidPixel5/PXL_20210518_{t}.jpg": [_FC] for t in
       ("214205292", "214224624", "214228334", "214231388")},
    **{f"deviceComparison/iPhone11/IMG_{n}.JPG": [_WIN] for n in range(5809, 5814)},
    **{f"deviceComparison/iPhone11/IMG_{n}.JPG": [_FC] for n in range(5814, 5819)},
    "deviceComparison/receivedWhatsApp/a722d489-5195-47ab-ba75-0b72e7e82d9f.jpg": [_WIN],
}


def norm(token: str) -> str:
    return re.sub(r"[^A-Z0-9&]", "", token.upper())


def score(readings: dict[str, list[dict]]) -> dict:
    """Figures over PHOTOS from each photo's text readings (``TextReading.to_dict()`` items)."""
    expected_n = exact = substring = read_n = read_ok = with_headstamp = code = 0
    for photo, objs in PHOTOS.items():
        texts = readings.get(photo, [])
        tokens = [norm(t) for r in texts if r["kind"] == "headstamp" for t in r["text"].split()]
        joined = "".join(norm(r["text"]) for r in texts)
        expected = [norm(t) for o in objs for t in OBJECTS[o]]
        with_headstamp += bool(tokens)
        code += any(norm(OBJECTS[o][0]) in tokens for o in objs)
        pool = list(tokens)
        for e in expected:
            if e in pool:
                exact += 1
                pool.remove(e)
            substring += e in joined
        expected_n += len(expected)
        read_n += len(tokens)
        read_ok += sum(t in expected for t in tokens)
    return {
        "photos": len(PHOTOS), "photos_with_headstamp_reading": with_headstamp, "photos_with_maker_read": code,
        "stamped_tokens": expected_n, "exact_token_recall": round(exact / expected_n, 3),
        "exact_token_precision": round(read_ok / read_n, 3) if read_n else None,
        "substring_recall": round(substring / expected_n, 3),
    }


def case_head_boxes(path: Path = BOXES) -> dict[str, list[list[float]]]:
    """photo -> case-head boxes [x1, y1, x2, y2] (pixels of the EXIF-upright photo)."""
    boxes: dict[str, list[list[float]]] = {p: [] for p in PHOTOS}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            boxes[row["photo"]].append([float(row[k]) for k in ("x1", "y1", "x2", "y2")])
    return boxes


def localisation(found: dict[str, list[list[float]]], truth: dict[str, list[list[float]]],
                 iou: float = 0.5) -> dict:
    """Recall / precision of case-head boxes found per photo against the person's boxes (one match per head)."""
    import numpy as np

    from wtivision.evaluate import match_image

    n_found = n_true = tp = photos_hit = 0
    for photo, gt in truth.items():
        pred = found.get(photo, [])
        hit = match_image(np.array(pred).reshape(-1, 4), np.arange(len(pred), 0, -1), np.zeros(len(pred)),
                          np.array(gt).reshape(-1, 4), np.zeros(len(gt)), np.array([iou]))[:, 0]
        n_found, n_true, tp = n_found + len(pred), n_true + len(gt), tp + int(hit.sum())
        photos_hit += bool(hit.any())
    return {"heads": n_true, "found": n_found, "correct": tp, "recall": round(tp / n_true, 3) if n_true else None,
            "precision": round(tp / n_found, 3) if n_found else None, "photos_with_a_correct_head": photos_hit,
            "iou": iou}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--git-dir", help="bare mirror of Tech4Tracing/CartridgeOCR")
    src.add_argument("--folder", help="the imagesForTesting folder of a checkout")
    ap.add_argument("--commit", default=COMMIT)
    ap.add_argument("--json", help="write figures and every reading here")
    args = ap.parse_args(argv)
    from wtivision.analyzer import Analyzer
    from wtivision.media import load_image_bytes
    from wtivision.ocr.headstamp import find_case_heads

    def photo_bytes(photo: str) -> bytes:
        if args.folder:
            return (Path(args.folder) / photo).read_bytes()
        return subprocess.run(["git", "--git-dir", args.git_dir, "show", f"{args.commit}:imagesForTesting/{photo}"],
                              check=True, capture_output=True).stdout

    analyzer = Analyzer()
    readings: dict[str, list[dict]] = {}
    heads = 0
    finder: dict[str, list[list[float]]] = {}
    detector: dict[str, list[list[float]]] = {}
    seconds = 0.0
    for photo in PHOTOS:
        data = photo_bytes(photo)
        t0 = time.perf_counter()
        f = analyzer.analyze(data, path=photo)
        seconds += time.perf_counter() - t0
        readings[photo] = [t.to_dict() for t in f.texts]
        heads += sum(t.kind == "headstamp" for t in f.texts)
        detector[photo] = [d.box for d in f.detections if d.label == "case_head"]
        finder[photo] = [c.box for c in find_case_heads(load_image_bytes(data).array)]
    res = score(readings)
    res["headstamp_readings"] = heads
    res["seconds_per_photo"] = round(seconds / len(PHOTOS), 2)
    truth = case_head_boxes()
    res["case_head_finder"] = localisation(finder, truth)
    res["detector_case_head"] = localisation(detector, truth)
    res["models"] = [m.to_dict() for m in analyzer.models]
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**res, "readings": readings}, indent=1, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
