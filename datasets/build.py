"""Build a training dataset from a recipe: import, validate, deduplicate, split, write YOLO layout
and a manifest.

    python -m datasets.build --config datasets/recipes/<name>.yaml --out DIR

Recipe (yaml)::

    name: detector-v1
    seed: 0
    split: {train: 0.8, val: 0.1, test: 0.1}
    phash_distance: 6            # near-duplicate threshold (Hamming, 64-bit pHash)
    sources:
      - name: granada-pistols
        format: voc              # yolo | coco | voc | csv
        path: ../shared/data/granada/annotations
        images: ../shared/data/granada/images
        names: [pistol]          # yolo only: class index -> source name
        licence: CC-BY-4.0
        origin: github.com/owner/repo@<commit>
        class_map: {pistol: pistol, knife: null}

Output: ``DIR/images/{train,val,test}``, ``DIR/labels/...``, ``DIR/data.yaml`` (ultralytics),
``DIR/manifest.csv`` (file, source, origin, licence, sha256, phash, split, labels, width, height),
``DIR/stats.json`` (per class and split) and ``DIR/problems.txt``. Images are copied unchanged.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.formats import READERS, Item, map_items
from wtivision.taxonomy import DETECTOR_CLASSES

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class Record:
    item: Item
    source: str
    origin: str
    licence: str
    sha256: str
    phash: int
    group: int = -1
    split: str = ""


def phash(path: Path) -> int:
    """64-bit perceptual hash (DCT of a 32x32 grey thumbnail), as imagehash.phash computes it."""
    import cv2
    from PIL import Image

    with Image.open(path) as im:
        g = np.asarray(im.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float32)
    d = cv2.dct(g)[:8, :8]
    bits = (d > np.median(d)).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def validate(item: Item) -> list[str]:
    """Clip boxes slightly outside the image, drop degenerate ones; return the problems found."""
    problems = []
    w, h = item.width, item.height
    kept = []
    for b in item.boxes:
        x1, y1, x2, y2 = max(0.0, b.x1), max(0.0, b.y1), min(float(w), b.x2), min(float(h), b.y2)
        if (x1, y1, x2, y2) != (b.x1, b.y1, b.x2, b.y2):
            outside = max(-b.x1, -b.y1, b.x2 - w, b.y2 - h)
            if outside > 0.05 * max(w, h):
                problems.append(f"box {b.label} far outside the image, dropped")
                continue
        if x2 - x1 < 2 or y2 - y1 < 2:
            problems.append(f"degenerate box {b.label} dropped")
            continue
        b.x1, b.y1, b.x2, b.y2 = x1, y1, x2, y2
        kept.append(b)
    item.boxes = kept
    return problems


def group_duplicates(records: list[Record], max_distance: int) -> None:
    """Give exact (sha256) and near (pHash within ``max_distance``) duplicates the same group."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_sha: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.sha256 in by_sha:
            parent[find(i)] = find(by_sha[r.sha256])
        else:
            by_sha[r.sha256] = i
    hashes = np.array([r.phash for r in records], dtype=np.uint64)
    for i in range(len(records)):
        x = np.bitwise_xor(hashes[i + 1:], hashes[i])
        dist = np.array([bin(int(v)).count("1") for v in x]) if len(x) else np.array([])
        for j in np.nonzero(dist <= max_distance)[0]:
            parent[find(i + 1 + int(j))] = find(i)
    for i, r in enumerate(records):
        r.group = find(i)


def assign_splits(records: list[Record], fractions: dict[str, float], seed: int) -> None:
    """Stratified split by each group's rarest class; a duplicate group never straddles two splits."""
    groups: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.group].append(r)
    freq = Counter(b.label for r in records for b in r.item.boxes)
    strata: dict[str, list[int]] = defaultdict(list)
    for g, rs in groups.items():
        labels = {b.label for r in rs for b in r.item.boxes} or {r.item.image_label or "_background" for r in rs}
        key = min(labels, key=lambda lab: (freq.get(lab, 0), lab))
        strata[key].append(g)
    rng = np.random.default_rng(seed)
    names = list(fractions)
    cum = np.cumsum([fractions[n] for n in names])
    cum = cum / cum[-1]
    for key in sorted(strata):
        gs = sorted(strata[key])
        rng.shuffle(gs)
        n = len(gs)
        bounds = [int(round(c * n)) for c in cum]
        start = 0
        for name, end in zip(names, bounds):
            for g in gs[start:end]:
                for r in groups[g]:
                    r.split = name
            start = end


def load_recipe(path: Path) -> dict:
    import yaml

    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    base = path.parent
    for s in recipe["sources"]:
        for k in ("path", "images"):
            if s.get(k) and not Path(s[k]).is_absolute():
                s[k] = str((base / s[k]).resolve())
    return recipe


def collect(recipe: dict) -> tuple[list[Record], list[str]]:
    records, problems = [], []
    for src in recipe["sources"]:
        fmt = src["format"]
        path = Path(src["path"])
        images = Path(src["images"]) if src.get("images") else None
        if fmt == "yolo":
            items = READERS[fmt](path, src.get("names", []))
        else:
            items = READERS[fmt](path, images)
        for item, probs in map_items(items, src.get("class_map", {})):
            problems += [f"{item.image}: {p}" for p in probs]
            try:
                data = item.image.read_bytes()
                if not item.width or not item.height:
                    from datasets.formats import _size

                    item.width, item.height = _size(item.image)
                ph = phash(item.image)
            except Exception as exc:
                problems.append(f"{item.image}: unreadable image ({exc}), skipped")
                continue
            problems += [f"{item.image}: {p}" for p in validate(item)]
            records.append(Record(item, src["name"], src.get("origin", ""), src.get("licence", "unknown"),
                                  hashlib.sha256(data).hexdigest(), ph))
    return records, problems


def write(records: list[Record], out: Path, classes: tuple[str, ...] = DETECTOR_CLASSES) -> dict:
    index = {c: i for i, c in enumerate(classes)}
    rows = []
    for r in records:
        stem = f"{r.source}_{r.sha256[:16]}"
        dst = out / "images" / r.split / f"{stem}{r.item.image.suffix.lower()}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r.item.image, dst)
        lab = out / "labels" / r.split / f"{stem}.txt"
        lab.parent.mkdir(parents=True, exist_ok=True)
        w, h = r.item.width, r.item.height
        lab.write_text("".join(
            f"{index[b.label]} {(b.x1 + b.x2) / 2 / w:.6f} {(b.y1 + b.y2) / 2 / h:.6f} "
            f"{(b.x2 - b.x1) / w:.6f} {(b.y2 - b.y1) / h:.6f}\n" for b in r.item.boxes))
        rows.append({"file": str(dst.relative_to(out)), "source": r.source, "origin": r.origin,
                     "licence": r.licence, "sha256": r.sha256, "phash": f"{r.phash:016x}", "split": r.split,
                     "labels": ";".join(sorted(b.label for b in r.item.boxes)), "width": w, "height": h})
    rows.sort(key=lambda x: x["file"])
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["file"])
        wr.writeheader()
        wr.writerows(rows)
    stats: dict = {s: Counter() for s in SPLITS}
    for r in records:
        stats[r.split]["_images"] += 1
        for b in r.item.boxes:
            stats[r.split][b.label] += 1
    (out / "data.yaml").write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n"
        + "".join(f"  {i}: {c}\n" for i, c in enumerate(classes)), encoding="utf-8")
    stats_out = {s: dict(sorted(c.items())) for s, c in stats.items()}
    (out / "stats.json").write_text(json.dumps(stats_out, indent=2), encoding="utf-8")
    return stats_out


def manifest_hash(out: Path) -> str:
    return hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest()


def leak_report(out: Path, max_distance: int) -> dict:
    """Cross-split overlaps in a written manifest: exact sha256 and pHash pairs (must both be zero)."""
    with open(out / "manifest.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_split = defaultdict(list)
    for r in rows:
        by_split[r["split"]].append(r)
    sha_overlap = near = 0
    for a in SPLITS:
        for b in SPLITS:
            if a >= b:
                continue
            sa = {r["sha256"] for r in by_split[a]}
            sha_overlap += sum(r["sha256"] in sa for r in by_split[b])
            for ra in by_split[a]:
                ha = int(ra["phash"], 16)
                near += sum(bin(ha ^ int(rb["phash"], 16)).count("1") <= max_distance for rb in by_split[b])
    return {"sha256_overlap": sha_overlap, "near_duplicate_pairs": near}


def build(recipe: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    records, problems = collect(recipe)
    dist = int(recipe.get("phash_distance", 6))
    group_duplicates(records, dist)
    assign_splits(records, recipe.get("split", {"train": 0.8, "val": 0.1, "test": 0.1}),
                  int(recipe.get("seed", 0)))
    stats = write(records, out)
    (out / "problems.txt").write_text("\n".join(problems) + ("\n" if problems else ""), encoding="utf-8")
    report = {"images": len(records), "groups": len({r.group for r in records}), "problems": len(problems),
              "stats": stats, "leaks": leak_report(out, dist), "manifest_sha256": manifest_hash(out)}
    (out / "build.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(build(load_recipe(a.config), a.out), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
