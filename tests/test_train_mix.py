"""training.common.mix_train_split: re-weighting a dataset's training split by manifest rules."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from training.common import mix_train_split

FIELDS = ["path", "source", "origin", "licence", "kind", "sha256", "phash", "split", "labels", "width", "height",
          "original"]


def _dataset(root: Path) -> Path:
    rows = []
    for i in range(40):
        split = "val" if i % 10 == 0 else "train"
        mine, tile = i % 4 == 0, i % 8 == 0
        rows.append({"path": f"images/{split}/im{i:02d}.jpg", "source": "drone" if mine else "guns",
                     "split": split, "labels": "landmine_uxo;landmine_uxo" if mine else "pistol",
                     "original": f"images/raw{i}.jpg" + ("#tile=0,0,300,300" if tile else "")})
    root.mkdir(parents=True)
    for r in rows:
        (root / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        (root / r["path"]).write_bytes(b"")  # only the names matter here
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, FIELDS, restval="")
        w.writeheader()
        w.writerows(rows)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                                    "names": {0: "pistol", 12: "landmine_uxo"}}))
    return root / "data.yaml"


def test_mix_repeats_draws_and_leaves_val_alone(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "ds")
    mix = [{"where": {"label": "landmine_uxo", "tile": False}, "repeat": 3},
           {"where": {"label": "landmine_uxo", "tile": True}, "repeat": 0},
           {"where": {"source": "guns"}, "fraction": 0.5}]
    out, info = mix_train_split(data, mix, tmp_path / "run", seed=3)
    lines = (tmp_path / "run" / "train.txt").read_text().split()
    cfg = yaml.safe_load(out.read_text())
    assert cfg["train"] == str(tmp_path / "run" / "train.txt") and cfg["val"] == "images/val"
    # train images: i not a multiple of 10 -> 36; whole-photo mines i % 4 == 0 and i % 8 != 0 (4, 12, 28, 36)
    whole = [f"im{i:02d}.jpg" for i in (4, 12, 28, 36)]
    assert sorted({ln.rsplit("/", 1)[1] for ln in lines if "im" in ln} & set(whole)) == whole
    assert all(sum(ln.endswith(w) for ln in lines) == 3 for w in whole)
    assert not any(ln.endswith(f"im{i:02d}.jpg") for i in (8, 16, 24, 32) for ln in lines)  # tiles dropped
    assert not any("/val/" in ln for ln in lines)
    counts = info["counts"]
    assert [c["images"] for c in counts] == [4, 4, 28, 0]
    assert counts[0]["listed"] == 12 and counts[1]["listed"] == 0
    assert 0 < counts[2]["drawn"] < 28 and counts[2]["listed"] == counts[2]["drawn"]
    assert len(lines) == 12 + counts[2]["drawn"]
    again, _ = mix_train_split(data, mix, tmp_path / "run2", seed=3)
    assert (tmp_path / "run2" / "train.txt").read_text() == "\n".join(lines) + "\n"  # seeded


def test_mix_follows_a_pack(tmp_path: Path) -> None:
    """A training.pack copy re-encodes every image as .jpg and may hold a subset: rows follow, or are counted."""
    data = _dataset(tmp_path / "ds")
    root = data.parent
    (root / "images/train/im04.jpg").rename(root / "images/train/im04.png")  # manifest says .jpg, pack has .png
    (root / "images/train/im05.jpg").unlink()
    manifest = (root / "manifest.csv").read_text().replace("im01.jpg", "im01.png")  # a .png original, packed as .jpg
    (root / "manifest.csv").write_text(manifest)
    _, info = mix_train_split(data, [{"repeat": 1}], tmp_path / "run", seed=0)
    lines = (tmp_path / "run" / "train.txt").read_text().split()
    assert info["missing"] == 2  # im04 (.png on disk, no .jpg) and im05 (not packed)
    assert str((root / "images/train/im01.jpg").resolve()) in lines
    assert len(lines) == 36 - 2


def test_mix_refuses_unknown_keys_and_empty_lists(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "ds")
    with pytest.raises(ValueError, match="unknown keys"):
        mix_train_split(data, [{"where": {"class": "pistol"}}], tmp_path / "r", seed=0)
    with pytest.raises(ValueError, match="fraction"):
        mix_train_split(data, [{"fraction": 2}], tmp_path / "r", seed=0)
    with pytest.raises(ValueError, match="no training image"):
        mix_train_split(data, [{"repeat": 0}], tmp_path / "r", seed=0)
