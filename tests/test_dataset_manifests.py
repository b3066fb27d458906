"""The dataset manifests of shipped models, kept in ``datasets/manifests/`` (gzip of the ``manifest.csv`` that
``datasets.build`` wrote): each is the exact file whose SHA-256 the model's manifest entry records, and lists
every image with its source, origin (repository@commit), licence, SHA-256 and split, no image in two splits."""

import csv
import gzip
import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "datasets" / "manifests").glob("*.csv.gz"))


def shipped_dataset_hashes() -> dict[str, list[str]]:
    models = json.loads((REPO / "models" / "manifest.json").read_text())["models"]
    out: dict[str, list[str]] = {}
    for m in models:
        sha = (m.get("extra") or {}).get("dataset_manifest_sha256")
        if sha:
            out.setdefault(sha, []).append(m["name"])
    return out


def test_every_shipped_detector_has_its_dataset_manifest():
    held = {hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest() for p in MANIFESTS}
    missing = {sha: names for sha, names in shipped_dataset_hashes().items() if sha not in held}
    assert not missing, f"no datasets/manifests/*.csv.gz for the training data of {missing}"


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_dataset_manifest_rows(path):
    raw = gzip.decompress(path.read_bytes())
    sha = hashlib.sha256(raw).hexdigest()
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    assert rows and {"path", "source", "origin", "licence", "sha256", "split"} <= set(rows[0])
    splits: dict[str, set[str]] = {}
    for r in rows:
        assert re.fullmatch(r"[0-9a-f]{64}", r["sha256"]) and r["licence"].strip()
        assert r["split"] in ("train", "val", "test") and r["path"].startswith(f"images/{r['split']}/")
        assert "@" in r["origin"] or r["origin"].endswith(".py"), r["origin"]  # repository@commit, or a generator
        splits.setdefault(r["split"], set()).add(r["sha256"])
    assert not splits.get("train", set()) & (splits.get("val", set()) | splits.get("test", set()))
    counts = Counter(r["split"] for r in rows)
    # the model card states the split sizes of the data it was trained and measured on
    for name in shipped_dataset_hashes().get(sha, []):
        spec = next(m for m in json.loads((REPO / "models" / "manifest.json").read_text())["models"]
                    if m["name"] == name)
        card = (REPO / "models" / spec["card"]).read_text(encoding="utf-8")
        assert sha in card and str(dict(sorted(counts.items()))) in card
