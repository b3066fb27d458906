"""OCR accuracy and speed on fixed-seed synthetic sets (never used to tune thresholds).

    python -m benchmarks.ocr [--serials 100] [--headstamps 60] [--json] [--paddle-python PY]

Writes docs/ocr-benchmark.md and docs/ocr-benchmark.json. Test seeds are 3000 (serials) and 4000
(headstamps); development looked only at seeds 1000-2000.

``--paddle-python`` (or ``WTIVISION_PADDLE_PYTHON``): a Python with ``paddlepaddle`` and ``rapidocr_paddle``;
the same crops are then read by PaddleOCR's pipeline on Paddle Inference (``benchmarks/ocr_paddle.py``) and
compared with wtivision's reading: accuracy of each, agreement between them, ms per crop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine
from datasets.synth.text import generate
from wtivision.ocr import OcrEngine, parse_headstamp
from wtivision.ocr.normalize import normalise
from wtivision.registry import Registry

REPO = Path(__file__).resolve().parents[1]
SERIAL_SEED, HEADSTAMP_SEED = 3000, 4000  # development used seeds 1000-2000


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _norm_token(t: str) -> str:
    return "+" if t in ("+", "⊕") else normalise(t)[0]


def token_counts(truth: list[str], got: list[str]) -> tuple[int, int, int]:
    """True positives, false positives, false negatives of ``got`` against ``truth`` as multisets."""
    remaining = list(got)
    tp = 0
    for t in truth:
        if t in remaining:
            tp += 1
            remaining.remove(t)
    return tp, len(remaining), len(truth) - tp


def run(n_serials: int, n_headstamps: int, keep: dict | None = None) -> dict:
    """Read both sets; with ``keep`` (a dict), also keep each sample's image, truth and reading there
    (``keep["serials"]``, ``keep["headstamps"]``) for the comparison with PaddleOCR."""
    eng = OcrEngine.from_registry(Registry())
    res: dict = {"machine": machine()}
    exact, edits, chars, ms, review = 0, 0, 0, [], 0
    failures = []
    if keep is not None:
        keep.setdefault("serials", [])
        keep.setdefault("headstamps", [])
    for s in generate("serials", n_serials, SERIAL_SEED):
        t0 = time.perf_counter()
        r = eng.read_serial(s.image, [0, 0, s.image.shape[1], s.image.shape[0]])
        ms.append((time.perf_counter() - t0) * 1000)
        truth = normalise(s.text)[0]
        got = r.text if r else ""
        exact += got == truth
        review += bool(r and r.needs_review)
        edits += levenshtein(got, truth)
        chars += len(truth)
        if got != truth and len(failures) < 10:
            failures.append({"truth": truth, "read": got, "candidates": r.candidates if r else []})
        if keep is not None:
            keep["serials"].append({"image": s.image, "truth": truth, "read": got, "ms": ms[-1]})
    res["serials"] = {"n": n_serials, "exact_match": round(exact / n_serials, 4), "cer": round(edits / chars, 4),
                      "needs_review_rate": round(review / n_serials, 4),
                      "ms_per_crop_median": round(float(np.median(ms)), 1),
                      "ms_per_crop_p90": round(float(np.percentile(ms, 90)), 1), "failures": failures}
    tp = fp = fn = 0
    code_ok = year_ok = years = 0
    ms = []
    failures = []
    for s in generate("headstamps", n_headstamps, HEADSTAMP_SEED):
        t0 = time.perf_counter()
        r = eng.read_headstamp(s.image, [0, 0, s.image.shape[1], s.image.shape[0]])
        ms.append((time.perf_counter() - t0) * 1000)
        truth = [_norm_token(t) for t in s.tokens]
        got = [_norm_token(t) for t in (r.headstamp.tokens if r and r.headstamp else [])]
        if r and r.headstamp and r.headstamp.nato_mark and "+" not in got:
            got.append("+")
        got = [g for g in got if g]
        counts = token_counts(truth, got)
        tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
        if keep is not None:
            keep["headstamps"].append({"image": s.image, "truth": truth, "read": got, "ms": ms[-1]})
        code_ok += bool(r and r.headstamp and r.headstamp.factory_code == truth[0])
        want_year = parse_headstamp(s.tokens).year
        if want_year:
            years += 1
            year_ok += bool(r and r.headstamp and r.headstamp.year == want_year)
        if len(failures) < 10 and sorted(truth) != sorted(got):
            failures.append({"truth": truth, "read": got, "raw": r.raw_text if r else ""})
    res["headstamps"] = {"n": n_headstamps, "token_recall": round(tp / max(tp + fn, 1), 4),
                         "token_precision": round(tp / max(tp + fp, 1), 4),
                         "factory_code_accuracy": round(code_ok / n_headstamps, 4),
                         "year_accuracy": round(year_ok / max(years, 1), 4),
                         "ms_per_crop_median": round(float(np.median(ms)), 1),
                         "ms_per_crop_p90": round(float(np.percentile(ms, 90)), 1), "failures": failures}
    return res


def compare_paddle(kept: dict, python: str) -> dict:
    """Read the kept crops with PaddleOCR on Paddle Inference (``benchmarks/ocr_paddle.py`` run by ``python``)
    and compare: each engine's accuracy against the truth, their agreement, and ms per crop. PaddleOCR's
    lines are joined in reading order (serials: one normalised string; headstamps: normalised tokens)."""
    import cv2

    with tempfile.TemporaryDirectory() as td:
        index = []
        for kind in ("serials", "headstamps"):
            for i, k in enumerate(kept[kind]):
                name = f"{kind}_{i:04d}.png"
                cv2.imwrite(str(Path(td) / name), k["image"])
                index.append({"file": name, "kind": kind, "i": i})
        (Path(td) / "index.json").write_text(json.dumps(index), encoding="utf-8")
        out = Path(td) / "paddle.json"
        proc = subprocess.run([python, str(REPO / "benchmarks" / "ocr_paddle.py"), td, str(out)],
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0 or not out.is_file():
            return {"error": f"{python} benchmarks/ocr_paddle.py failed: {proc.stderr.strip()[-800:]}"}
        paddle = json.loads(out.read_text(encoding="utf-8"))
    by_kind: dict[str, list] = {"serials": [], "headstamps": []}
    for item, row in zip(index, paddle["rows"]):
        by_kind[item["kind"]].append(row)
    res: dict = {"versions": paddle["meta"]}
    rows = by_kind["serials"]
    if rows:
        ours = kept["serials"]
        theirs = ["".join(normalise(line["text"])[0] for line in row["lines"]) for row in rows]
        res["serials"] = {
            "n": len(rows),
            "exact_match_wtivision": round(sum(k["read"] == k["truth"] for k in ours) / len(rows), 4),
            "exact_match_paddleocr": round(sum(t == k["truth"] for t, k in zip(theirs, ours)) / len(rows), 4),
            "agreement": round(sum(t == k["read"] for t, k in zip(theirs, ours)) / len(rows), 4),
            "ms_per_crop_median_wtivision": round(float(np.median([k["ms"] for k in ours])), 1),
            "ms_per_crop_median_paddleocr": round(float(np.median([r["ms"] for r in rows])), 1)}
    rows = by_kind["headstamps"]
    if rows:
        ours = kept["headstamps"]
        totals = {"wtivision": [0, 0, 0], "paddleocr": [0, 0, 0]}
        agree = 0
        for row, k in zip(rows, ours):
            theirs = [t for line in row["lines"] for t in (_norm_token(w) for w in line["text"].split()) if t]
            for name, got in (("wtivision", k["read"]), ("paddleocr", theirs)):
                totals[name] = [a + b for a, b in zip(totals[name], token_counts(k["truth"], got))]
            agree += sorted(theirs) == sorted(k["read"])
        res["headstamps"] = {"n": len(rows), "agreement": round(agree / len(rows), 4),
                             "ms_per_crop_median_wtivision": round(float(np.median([k["ms"] for k in ours])), 1),
                             "ms_per_crop_median_paddleocr": round(float(np.median([r["ms"] for r in rows])), 1)}
        for name, (tp, fp, fn) in totals.items():
            res["headstamps"][f"token_recall_{name}"] = round(tp / max(tp + fn, 1), 4)
            res["headstamps"][f"token_precision_{name}"] = round(tp / max(tp + fp, 1), 4)
    return res


def paddle_markdown(p: dict | None) -> str:
    if not p:
        return ("PaddleOCR (Paddle Inference) was not run: pass `--paddle-python` with a Python that has "
                "`paddlepaddle` and `rapidocr_paddle` (see `benchmarks/ocr_paddle.py`).")
    if "error" in p:
        return f"PaddleOCR comparison failed: {p['error']}"
    s, h = p.get("serials", {}), p.get("headstamps", {})
    rows = [["serials", s.get("n"), "exact match", s.get("exact_match_wtivision"), s.get("exact_match_paddleocr")],
            ["serials", s.get("n"), "ms per crop (median)", s.get("ms_per_crop_median_wtivision"),
             s.get("ms_per_crop_median_paddleocr")],
            ["headstamps", h.get("n"), "token recall", h.get("token_recall_wtivision"),
             h.get("token_recall_paddleocr")],
            ["headstamps", h.get("n"), "token precision", h.get("token_precision_wtivision"),
             h.get("token_precision_paddleocr")],
            ["headstamps", h.get("n"), "ms per crop (median)", h.get("ms_per_crop_median_wtivision"),
             h.get("ms_per_crop_median_paddleocr")]]
    table = "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows)
    return f"""Same crops, read by PaddleOCR's own pipeline (det -> cls -> rec, PP-OCRv4 weights, Paddle Inference
{p['versions'].get('paddle')}, rapidocr_paddle {p['versions'].get('rapidocr_paddle')}) and by wtivision's onnxruntime
OCR with its stamped-metal preprocessing and headstamp unwrap. Agreement (same normalised reading): serials
{s.get('agreement')}, headstamps {h.get('agreement')} (same token multiset).

| set | n | metric | wtivision (onnxruntime) | PaddleOCR (paddle) |
| --- | --- | --- | --- | --- |
{table}
"""


def to_markdown(r: dict) -> str:
    s, h = r["serials"], r["headstamps"]
    serial_failures = "\n".join(f"- truth `{f['truth']}` read `{f['read']}` candidates {f['candidates']}"
                                 for f in s["failures"]) or "- none"
    m = r["machine"]
    return f"""# OCR benchmark (synthetic, fixed seeds)

Machine: {m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}. Generated by `python -m benchmarks.ocr`.
Sets come from `datasets/synth/text.py` with seeds {SERIAL_SEED} (serials) and {HEADSTAMP_SEED} (headstamps);
no threshold was tuned on them. No real stamped-text photos with ground truth are available to the project
yet, so these figures say nothing about real worn, painted or rusted stamps.

Serials: one crop per sample, read through `OcrEngine.read_serial` (text detection, deskew, rotations,
CLAHE/glare variants). Headstamps: `OcrEngine.read_headstamp` on the end-on case-head image (Hough circle,
polar unwrap, words de-duplicated around the ring, gaps read, NATO mark by template match). Tokens are compared
as multisets after normalisation (upper case, separators removed); the NATO cross-in-circle counts as token `+`.
Timings are wall-clock per crop in one process on a shared machine (other jobs were running).

| set | n | metric | value | target |
| --- | --- | --- | --- | --- |
| serials | {s['n']} | exact match | {s['exact_match']} | >= 0.90 |
| serials | {s['n']} | character error rate | {s['cer']} | <= 0.03 |
| serials | {s['n']} | flagged for review | {s['needs_review_rate']} | |
| serials | {s['n']} | ms per crop (median / p90) | {s['ms_per_crop_median']} / {s['ms_per_crop_p90']} | <= 150 |
| headstamps | {h['n']} | token recall | {h['token_recall']} | >= 0.85 |
| headstamps | {h['n']} | token precision | {h['token_precision']} | |
| headstamps | {h['n']} | factory code correct | {h['factory_code_accuracy']} | |
| headstamps | {h['n']} | year correct (where stamped) | {h['year_accuracy']} | |
| headstamps | {h['n']} | ms per crop (median / p90) | {h['ms_per_crop_median']} / {h['ms_per_crop_p90']} | <= 150 |

## PaddleOCR on Paddle Inference, same crops
{paddle_markdown(r.get("paddleocr"))}

## First failures (serials)
{serial_failures}

## First failures (headstamps)
{chr(10).join(f"- truth {f['truth']} read {f['read']} (raw `{f['raw']}`)" for f in h['failures']) or '- none'}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serials", type=int, default=100)
    ap.add_argument("--headstamps", type=int, default=60)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ap.add_argument("--seeds", default="", help="SERIAL,HEADSTAMP seeds for development runs")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "ocr-benchmark.md")
    ap.add_argument("--paddle-python", default="", help="a Python with paddlepaddle + rapidocr_paddle")
    a = ap.parse_args(argv)
    global SERIAL_SEED, HEADSTAMP_SEED
    if a.seeds:
        SERIAL_SEED, HEADSTAMP_SEED = (int(x) for x in a.seeds.split(","))
    py = a.paddle_python or os.environ.get("WTIVISION_PADDLE_PYTHON", "")
    kept: dict | None = {} if py else None
    r = run(a.serials, a.headstamps, kept)
    if py:
        r["paddleocr"] = compare_paddle(kept, py)
    a.out.write_text(to_markdown(r), encoding="utf-8")
    a.out.with_suffix(".json").write_text(json.dumps(r, indent=2, ensure_ascii=False), encoding="utf-8")
    if a.json:
        print(json.dumps({k: v for k, v in r.items() if k != "machine"}))
    else:
        print(to_markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
