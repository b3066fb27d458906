import json
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO, write_photo
from wtivision.cli import main


def test_analyze_json_and_text(tiny_models_dir, tmp_path, capsys):
    photo = write_photo(tmp_path / "p.jpg")
    assert main(["analyze", str(photo), "--json", "--models-dir", str(tiny_models_dir)]) == 0
    f = json.loads(capsys.readouterr().out)
    assert f["status"] == "ok" and [d["label"] for d in f["detections"]] == ["pistol", "cartridge"]
    assert main(["analyze", str(photo), "--models-dir", str(tiny_models_dir)]) == 0
    text = capsys.readouterr().out
    assert "firearm/pistol 0.90" in text and "tiny-detector" in text
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    assert main(["analyze", str(bad), "--models-dir", str(tiny_models_dir)]) == 2
    assert "error [empty]" in capsys.readouterr().out


def test_models_verify_flags_tampering(tiny_models_dir, capsys):
    assert main(["models", "--verify", "--models-dir", str(tiny_models_dir)]) == 0
    assert "OK" in capsys.readouterr().out
    with open(tiny_models_dir / "tiny.onnx", "r+b") as fh:
        fh.seek(40)
        fh.write(b"X")
    assert main(["models", "--verify", "--models-dir", str(tiny_models_dir)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_scan_cli_summary_and_export(tiny_models_dir, tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        write_photo(root / f"{i}.jpg", seed=i)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "wtivision", "scan", str(root), "--out", str(out),
                          "--models-dir", str(tiny_models_dir)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "3 files (3 analysed now" in res.stdout and "firearm 3" in res.stdout
    (out / "results.jsonl").unlink()
    assert main(["export", str(out)]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_wheel_bundles_every_manifest_model(tmp_path):
    pytest.importorskip("setuptools")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {res.stderr[-300:]}")
    (whl,) = tmp_path.glob("wtivision-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    manifest = json.loads((REPO / "models" / "manifest.json").read_text())
    assert "wtivision/_models/manifest.json" in names
    for m in manifest["models"]:
        assert f"wtivision/_models/{m['file']}" in names
    assert not any(n.startswith(("tests/", "training/", "datasets/")) for n in names)


def test_manifest_writes_are_stable_ascii(tiny_models_dir):
    """Adding an entry leaves every other line of the manifest as it was, non-ASCII labels included (escaped),
    so that an export's diff is the new entry only (the bundled OCR dictionaries hold Chinese characters)."""
    import json

    from wtivision.registry import ModelSpec, Registry, sha256_file, write_manifest_entry

    onnx = tiny_models_dir / "tiny.onnx"
    write_manifest_entry(tiny_models_dir, ModelSpec(name="a-ocr", file="tiny.onnx", sha256=sha256_file(onnx),
                                                    task="ocr_rec", classes=["路", "A"], role="ocr_rec"))
    before = (tiny_models_dir / "manifest.json").read_text(encoding="utf-8")
    assert before.isascii()
    write_manifest_entry(tiny_models_dir, ModelSpec(name="z-other", file="tiny.onnx", sha256=sha256_file(onnx),
                                                    task="detect", classes=["pistol"], role="detector"))
    after = (tiny_models_dir / "manifest.json").read_text(encoding="utf-8")
    removed = set(before.splitlines()) - set(after.splitlines())
    assert after.isascii() and removed <= {"  ]", "    }"}  # only the closing lines move down
    assert Registry(tiny_models_dir).get("a-ocr").classes == ["路", "A"]
    assert json.loads(after)["models"][-1]["name"] == "z-other"
