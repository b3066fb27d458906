"""training.pack (a dataset in chunks for a lent GPU machine) and the training CLI's --set overrides."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
yaml = pytest.importorskip("yaml")

from training.common import apply_overrides  # noqa: E402
from training.pack import choose, pack  # noqa: E402


def _dataset(root: Path, n: int = 12) -> Path:
    """A YOLO dataset of n noisy 300x200 photos (train) + 3 (val); photo 0 holds the only `battery` box."""
    rng = np.random.default_rng(0)
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/train",
                                                    "val": "images/val", "names": {0: "pistol", 1: "battery"}}))
    for split, count in (("train", n), ("val", 3)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            img = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "images" / split / f"p.{i:02d}.png"), img)
            cls = 1 if (split == "train" and i == 0) else 0
            (root / "labels" / split / f"p.{i:02d}.txt").write_text(f"{cls} 0.5 0.5 0.2 0.3\n")
    (root / "manifest.csv").write_text("path,sha256\n")
    (root / "images" / "train" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_pack_writes_downscaled_chunks_within_the_limit(tmp_path):
    data = _dataset(tmp_path / "ds")
    limit_mib = 0.05
    r = pack(data, tmp_path / "out", ["train", "val"], max_side=150, quality=80, chunk_mib=limit_mib)
    chunks = sorted((tmp_path / "out").glob("pack-*"))
    assert len(chunks) == len(r["chunks"]) > 1
    for c, info in zip(chunks, r["chunks"]):
        size = sum(f.stat().st_size for f in c.rglob("*") if f.is_file())
        assert size <= limit_mib * 2**20 or info["images"] == 1  # one photo larger than a chunk still travels
    assert r["splits"] == {"train": {"available": 13, "packed": 12}, "val": {"available": 3, "packed": 3}}
    assert any("broken.jpg: unreadable" in s for s in r["skipped"])
    first = chunks[0]
    assert yaml.safe_load((first / "data.yaml").read_text()) == {"train": "images/train", "val": "images/val",
                                                               "names": {0: "pistol", 1: "battery"}}
    assert (first / "manifest.csv").is_file()
    images = sorted(p for c in chunks for p in c.rglob("*.jpg"))
    assert len(images) == 15 and {p.name for p in images} >= {"p.00.jpg", "p.11.jpg"}  # dotted stems kept
    for p in images:
        img = cv2.imread(str(p))
        assert img.shape[:2] == (100, 150)  # longer side 300 -> 150, aspect kept
        label = p.parents[2] / "labels" / p.parent.name / f"{p.stem}.txt"
        assert label.read_text() == (data / "labels" / p.parent.name / f"{p.stem}.txt").read_text()
    assert json.loads((tmp_path / "out" / "pack.json").read_text())["total_mib"] == r["total_mib"]
    with pytest.raises(FileNotFoundError, match="data.yaml"):
        pack(tmp_path / "nowhere", tmp_path / "out2", ["train"])


def test_choose_keeps_rare_class_photos_first():
    items = [(Path(f"{i}.jpg"), [0]) for i in range(20)] + [(Path("rare.jpg"), [1])]
    for seed in range(5):
        picked = choose(items, 3, seed)
        assert len(picked) == 3 and Path("rare.jpg") in [p for p, _ in picked]
    assert choose(items, None, 0) == items


def test_set_overrides_config_keys_and_train_args():
    cfg = {"name": "x", "device": "cpu", "train_args": {"time": 1.0, "freeze": 6}}
    apply_overrides(cfg, ["device=0", "train_args.time=0.12", "data=/tmp/pack", "val=false"])
    assert cfg == {"name": "x", "device": 0, "data": "/tmp/pack", "val": False,
                   "train_args": {"time": 0.12, "freeze": 6}}
    for bad in ("novalue", "a.b.c=1", "name.x=1"):
        with pytest.raises(ValueError):
            apply_overrides(cfg, [bad])


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_device_train_script_refuses_to_train_without_staged_data(tmp_path):
    script = Path(__file__).resolve().parents[1] / "training" / "device_train.sh"
    env = {"PATH": "/usr/bin:/bin", "WTV_HOME": str(tmp_path / "home"), "OUT": str(tmp_path / "out")}
    r = subprocess.run(["bash", str(script), "train", "cfg.yaml", "0.1"], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 1 and "no staged data.yaml" in r.stderr
    r = subprocess.run(["bash", str(script), "bogus"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr
    (tmp_path / ".device" / "pack-00" / "images" / "train").mkdir(parents=True)
    (tmp_path / ".device" / "pack-00" / "images" / "train" / "a.jpg").write_bytes(b"x")
    (tmp_path / ".device" / "pack-00" / "data.yaml").write_text("names: {0: pistol}\n")
    r = subprocess.run(["bash", str(script), "stage"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "1 chunk(s); 1 images" in r.stdout
    assert (tmp_path / "home" / "data" / "data.yaml").is_file()
