import csv
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, write_photo
from tests.test_media import _png_header_only
from wtivision.ops import TILE_MERGE
from wtivision.scan import AnalyzerConfig, scan


def _hashes(root: Path) -> dict[bytes, tuple[str, int]]:
    out = {}
    for dirpath, _, files in os.walk(os.fsencode(root)):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[p] = (hashlib.sha256(fh.read()).hexdigest(), st.st_mtime_ns)
    return out


@pytest.fixture()
def messy_archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    good = write_photo(root / "a.jpg", seed=1)
    write_photo(root / "nested" / "deeper" / "b.png", seed=2, fmt="PNG")
    (root / "nested" / "copy of a.jpg").write_bytes(good.read_bytes())  # duplicate
    write_photo(root / "Ünïcødé фото 写真.jpg", seed=3)
    odd = os.path.join(os.fsencode(root), b"odd-\xff\xfe-name.jpg")  # not valid UTF-8
    write_photo(tmp_path / "odd.jpg", seed=4)
    with open(odd, "wb") as fh:
        fh.write((tmp_path / "odd.jpg").read_bytes())
    data = good.read_bytes()
    (root / "corrupt.jpg").write_bytes(data[:200] + bytes(range(256)) * 4 + data[1200:])
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "zero.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is a text file named .jpg\n")
    (root / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    (root / "readme.txt").write_text("not a photo suffix: skipped and counted")
    return root


def _rows(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_messy_archive_every_file_reported_nothing_crashes(messy_archive, tiny_models_dir, tmp_path):
    before = _hashes(messy_archive)
    out = tmp_path / "out"
    s = scan(messy_archive, out, AnalyzerConfig(models_dir=str(tiny_models_dir), ocr=False))
    assert _hashes(messy_archive) == before  # originals untouched: same bytes, same mtime
    assert s.files == 10 and s.skipped == 1 and s.linked == 1 and s.analyzed == 9

    rows = _rows(out)
    paths = sorted(p for r in rows for p in [r["path"], *r["also_at"]])
    assert len(paths) == 10 and len(set(paths)) == 10
    by_path = {r["path"]: r for r in rows}
    dup = next(r for r in rows if r["also_at"])
    assert sorted([dup["path"], *dup["also_at"]]) == ["a.jpg", "nested/copy of a.jpg"]
    assert by_path["Ünïcødé фото 写真.jpg"]["status"] == "ok"
    assert by_path["nested/deeper/b.png"]["status"] == "ok"
    assert by_path["nested/deeper/b.png"]["detections"]  # the model ran
    codes = {r["path"]: r["error_code"] for r in rows if r["status"] == "error"}
    assert codes["zero.jpg"] == "empty"
    assert codes["notes.jpg"] == "not_image"
    assert codes["bomb.png"] == "too_large"
    assert codes["truncated.jpg"] in ("truncated", "corrupt")
    assert "corrupt.jpg" in codes
    assert by_path["odd-\\xff\\xfe-name.jpg"]["status"] == "ok"
    for r in rows:
        assert r["status"] == "ok" or r["error"], r
        if r["path"] != "zero.jpg" and r["status"] == "ok":
            assert len(r["sha256"]) == 64
    # every result validates against the published schema
    jsonschema = pytest.importorskip("jsonschema")
    from wtivision.schema import results_schema

    for r in rows:
        jsonschema.validate(r, results_schema())
    # objects.csv: one row per object, duplicates listed under both paths
    with open(out / "objects.csv", encoding="utf-8") as fh:
        objs = list(csv.DictReader(fh))
    assert sum(1 for o in objs if o["path"] == "nested/copy of a.jpg" and o["kind"] == "detection") == 2
    assert {o["error"] for o in objs if o["path"] == "zero.jpg"} == {"file is empty (0 bytes)"}
    summary = json.loads((out / "scan.json").read_text())["summary"]
    assert summary["errors"] == 5 and summary["ok"] == 4 and summary["objects"]["firearm"] == 5  # 1 pistol x 5 ok paths


def test_rescan_reuses_and_workers_agree(messy_archive, tiny_models_dir, tmp_path):
    cfg = AnalyzerConfig(models_dir=str(tiny_models_dir), ocr=False)
    one = tmp_path / "one"
    scan(messy_archive, one, cfg)
    again = scan(messy_archive, one, cfg)
    assert again.analyzed == 0 and again.reused == 10
    two = tmp_path / "two"
    s2 = scan(messy_archive, two, cfg, workers=2)
    assert s2.analyzed == 9

    def strip(rows):
        return sorted((r["path"], r["sha256"], r["status"], json.dumps(r["detections"])) for r in rows)

    assert strip(_rows(one)) == strip(_rows(two))
    # other settings give other results: a re-scan with --tiles analyses again and says so in scan.json
    tiled = scan(messy_archive, one, AnalyzerConfig(models_dir=str(tiny_models_dir), ocr=False, tiles=True))
    assert tiled.reused == 0 and tiled.analyzed == 9 and tiled.model_set != again.model_set
    info = json.loads((one / "scan.json").read_text())
    assert info["settings"] == {"conf": 0.25, "iou": 0.7, "ocr": False, "tiles": True, "tile_merge": TILE_MERGE}
    assert {r["status"] for r in _rows(one)} == {r["status"] for r in _rows(two)}


def test_scan_killed_with_sigkill_resumes_without_loss_or_duplicates(tiny_models_dir, tmp_path):
    root = tmp_path / "big"
    n = 60
    for i in range(n):
        write_photo(root / f"d{i % 3}" / f"p{i:03d}.png", w=1600, h=1200, seed=i, fmt="PNG")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wtivision", "scan", str(root), "--out", str(out), "-q",
           "--models-dir", str(tiny_models_dir), "--no-ocr"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = out / "store.sqlite"
    done_at_kill = 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as con:
                    done_at_kill = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.Error:
                pass
            if done_at_kill >= 5:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 5 <= done_at_kill < n, "the scan must be killed part-way"
    assert not (out / "results.jsonl").exists()

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = _rows(out)
    paths = [p for r in rows for p in [r["path"], *r["also_at"]]]
    assert sorted(paths) == sorted(f"d{i % 3}/p{i:03d}.png" for i in range(n))  # each exactly once
    assert all(r["status"] == "ok" for r in rows)
    summary = json.loads((out / "scan.json").read_text())["summary"]
    assert summary["reused"] >= done_at_kill - 1 and summary["analyzed"] + summary["reused"] == n
