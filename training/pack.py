"""Pack a built dataset for a lent GPU machine: downscaled JPEG copies in chunks that fit its transfer limit.

    python -m training.pack --data runs/data/detector-v2 --out .device [--max-side 416] [--quality 70] \
        [--chunk-mib 40] [--splits train,val] [--max-images N] [--seed 0]

The `device` tool sends the checkout (tracked and untracked-not-ignored files) plus the ignored paths named in
`carry`, 64 MiB in all per call; a warm machine keeps what earlier calls brought for about 30 s between calls.
So the photos travel as chunks, one per call, each a folder ``OUT/pack-NN/`` in the YOLO layout
(``images/<split>/``, ``labels/<split>/``), chunk 00 also holding ``data.yaml`` and the source dataset's
``manifest.csv`` (so the run records which dataset it was made from). ``training/device_train.sh`` gathers the
chunks on the machine and trains. Nothing is changed in the source dataset.

Images are shrunk so that their longer side is at most ``--max-side`` (never enlarged) and re-encoded as JPEG
at ``--quality``; YOLO labels are normalised, so they are copied unchanged. With ``--max-images`` a seeded
subset is taken, every image holding a box of a class rarer than the median class kept first. ``OUT/pack.json``
lists the chunks, their sizes and what was packed. Add ``OUT`` to ``.git/info/exclude`` (it is a cache).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _classes(label: Path) -> list[int]:
    if not label.is_file():
        return []
    return [int(line.split()[0]) for line in label.read_text(encoding="utf-8").splitlines() if line.strip()]


def choose(items: list[tuple[Path, list[int]]], max_images: int | None, seed: int) -> list[tuple[Path, list[int]]]:
    """All items, or ``max_images`` of them: first every image with a box of a class rarer than the median
    class (by boxes), then a seeded draw of the rest."""
    if max_images is None or len(items) <= max_images:
        return items
    counts = Counter(c for _, cs in items for c in cs)
    median = float(np.median(list(counts.values()))) if counts else 0.0
    rare = {c for c, n in counts.items() if n < median}
    first = [it for it in items if rare & set(it[1])]
    rest = [it for it in items if not rare & set(it[1])]
    rng = np.random.default_rng(seed)
    rng.shuffle(rest)
    picked = (first + rest)[:max_images]
    return sorted(picked, key=lambda it: str(it[0]))


def encode(image: Path, max_side: int, quality: int) -> bytes:
    """The image shrunk to ``max_side`` on its longer side (never enlarged), as JPEG bytes."""
    import cv2

    img = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{image}: unreadable")
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"{image}: JPEG encoding failed")
    return buf.tobytes()


def pack(data: Path, out: Path, splits: list[str], max_side: int = 416, quality: int = 70, chunk_mib: float = 40,
         max_images: int | None = None, seed: int = 0) -> dict:
    """Write the chunks and ``pack.json``; return its content."""
    import yaml

    from wtivision.evaluate import split_images

    data, out = Path(data), Path(out)
    if not (data / "data.yaml").is_file():
        raise FileNotFoundError(f"{data}: no data.yaml (build the dataset first: python -m datasets.build)")
    limit = int(chunk_mib * 1024 * 1024)
    for old in out.glob("pack-*"):
        shutil.rmtree(old)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"source": str(data), "max_side": max_side, "quality": quality, "chunk_mib": chunk_mib,
                    "splits": {}, "chunks": [], "skipped": []}
    chunk, used = 0, 0
    names = yaml.safe_load((data / "data.yaml").read_text(encoding="utf-8"))["names"]

    def start_chunk(k: int) -> Path:
        d = out / f"pack-{k:02d}"
        d.mkdir(parents=True, exist_ok=True)
        report["chunks"].append({"folder": d.name, "bytes": 0, "images": 0})
        return d

    folder = start_chunk(0)
    # no `path`: ultralytics then resolves the splits against the yaml's own folder, wherever it is staged
    yaml_text = yaml.safe_dump({**{s: f"images/{s}" for s in splits}, "names": names}, sort_keys=False)
    (folder / "data.yaml").write_text(yaml_text, encoding="utf-8")
    used += len(yaml_text)
    if (data / "manifest.csv").is_file():
        shutil.copy(data / "manifest.csv", folder / "manifest.csv")
        used += (data / "manifest.csv").stat().st_size
    for split in splits:
        # (image, label) pairs as `wtivision evaluate` reads them; a split the dataset lacks packs nothing
        labels = dict(split_images(data, split)) if (data / "images" / split).is_dir() else {}
        images = sorted(labels)
        items = choose([(p, _classes(labels[p])) for p in images], max_images if split == "train" else None, seed)
        n = 0
        for image, _ in items:
            try:
                blob = encode(image, max_side, quality)
            except ValueError as exc:
                report["skipped"].append(str(exc))
                continue
            label = labels[image]
            text = label.read_bytes() if label.is_file() else b""
            size = len(blob) + len(text)
            if used + size > limit and report["chunks"][-1]["images"]:
                report["chunks"][-1]["bytes"] = used
                chunk, used = chunk + 1, 0
                folder = start_chunk(chunk)
            stem = image.relative_to(data / "images" / split).with_suffix("")
            (folder / "images" / split / stem).parent.mkdir(parents=True, exist_ok=True)
            (folder / "labels" / split / stem).parent.mkdir(parents=True, exist_ok=True)
            (folder / "images" / split / f"{stem}.jpg").write_bytes(blob)
            (folder / "labels" / split / f"{stem}.txt").write_bytes(text)
            used += size
            report["chunks"][-1]["images"] += 1
            n += 1
        report["splits"][split] = {"available": len(images), "packed": n}
    report["chunks"][-1]["bytes"] = used
    report["total_mib"] = round(sum(c["bytes"] for c in report["chunks"]) / 2**20, 1)
    (out / "pack.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    logger.info("packed %s into %d chunk(s), %.1f MiB: %s", data, len(report["chunks"]), report["total_mib"],
                report["splits"])
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a dataset built by datasets.build")
    ap.add_argument("--out", type=Path, default=Path(".device"))
    ap.add_argument("--splits", default="train,val")
    ap.add_argument("--max-side", type=int, default=416)
    ap.add_argument("--quality", type=int, default=70)
    ap.add_argument("--chunk-mib", type=float, default=40.0,
                    help="per chunk; leave room for the checkout and the wheels in the same call (default 40)")
    ap.add_argument("--max-images", type=int, help="training images to pack at most (seeded, rare classes first)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    r = pack(a.data, a.out, [s for s in a.splits.split(",") if s], a.max_side, a.quality, a.chunk_mib,
             a.max_images, a.seed)
    print(json.dumps({k: r[k] for k in ("splits", "total_mib")} | {"chunks": [c["folder"] for c in r["chunks"]]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
