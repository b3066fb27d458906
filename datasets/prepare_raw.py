"""Bring a labelled YOLO image set out of a local bare git mirror into ``.data/raw/<source>/``.

    python -m datasets.prepare_raw --git-dir /work/.mirror/owner+repo/repo --source NAME \
        [--commit SHA] [--prefix sub/dir/] [--max N] [--seed 0] [--names a,b] [--licence L] [--origin O]

Reads only the local git directory (no network). For each image under ``<prefix>{train,valid,val,test}/images`` (or
``<prefix>images`` for a set without split folders) with its ``labels/*.txt``:

- Roboflow exports hold up to three augmented copies of a source image (``name_jpg.rf.<hash>.jpg``); only
  one copy per source image is kept (the one from valid/test when there is one, those are unaugmented,
  else the first by name), so near-identical copies cannot straddle our own train/test split;
- ``--tiles-not-copies``: for a set whose ``.rf.`` files are distinct tiles of one large photo (Roboflow's
  tiling gives every tile the large photo's name), every file is kept; ``--splits`` then limits the
  source's split folders read (e.g. ``valid,test``: Roboflow augments only its train split);
- images are downscaled to at most 640 px on the longer side and re-encoded as JPEG quality 90;
  normalised YOLO boxes are unchanged by a uniform resize, so the label files are copied as they are;
- ``--max`` keeps a seeded random subset (recorded in ``PROVENANCE.json``).

Output: ``images/*.jpg``, ``labels/*.txt``, ``data.yaml`` (names) and ``PROVENANCE.json`` (repo, commit,
licence, original path of every kept image, counts, images that could not be decoded and why: they are left
out, not fatal). ``datasets.build`` then imports the folder as a
``yolo`` source; its own split ignores the source's split.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

MAX_SIDE = 640
SPLIT_DIRS = ("valid", "val", "test", "train", "")  # preference order when choosing one augmented copy;
# "" is a set with no split folders (``<prefix>images/`` beside ``<prefix>labels/``)
RF_SUFFIX = re.compile(r"\.rf\.[0-9a-f]+(?=\.[A-Za-z]+$)")


def git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True).stdout


def base_name(path: str) -> str:
    """Source image identity: the file name without Roboflow's ``.rf.<hash>`` augmentation tag."""
    return RF_SUFFIX.sub("", path.rsplit("/", 1)[-1])


def downscale_jpeg(data: bytes) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im
        im = im.convert("RGB")
        scale = MAX_SIDE / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=90)
        return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--git-dir", type=Path, required=True)
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--source", required=True)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--names", default="", help="comma-separated class names (default: the repo's data.yaml)")
    ap.add_argument("--max", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--licence", default="unknown")
    ap.add_argument("--origin", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / ".data" / "raw")
    ap.add_argument("--splits", default="", help="comma-separated source split folders to read (default: all)")
    ap.add_argument("--include", default="", help="regular expression: only image paths it matches (e.g. one flight)")
    ap.add_argument("--tiles-not-copies", action="store_true",
                    help="keep every .rf. file: they are tiles of one photo, not augmented copies of it")
    a = ap.parse_args(argv)

    import yaml

    commit = git(a.git_dir, "rev-parse", a.commit).decode().strip()
    files = git(a.git_dir, "ls-tree", "-r", "--name-only", commit).decode().splitlines()
    names = (a.names.split(",") if a.names
             else yaml.safe_load(git(a.git_dir, "show", f"{commit}:{a.prefix}data.yaml"))["names"])
    chosen: dict[str, str] = {}
    splits = [s for s in SPLIT_DIRS if not a.splits or s in a.splits.split(",")]
    for split in splits:
        for f in sorted(files):
            folder = f"{a.prefix}{split}/images/" if split else f"{a.prefix}images/"
            if (f.startswith(folder) and f.lower().endswith((".jpg", ".jpeg", ".png"))
                    and (not a.include or re.search(a.include, f))):
                chosen.setdefault(f if a.tiles_not_copies else base_name(f), f)
    keys = sorted(chosen)
    if a.max and len(keys) > a.max:
        keys = sorted(random.Random(a.seed).sample(keys, a.max))
    out = a.out / a.source
    for d in ("images", "labels"):  # a re-run must not keep files of an earlier, different run
        shutil.rmtree(out / d, ignore_errors=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    kept, boxes, empty = {}, 0, 0
    unreadable: dict[str, str] = {}
    for i, key in enumerate(keys):
        src = chosen[key]
        lab = re.sub(r"\.[A-Za-z]+$", ".txt", src.replace("/images/", "/labels/", 1))
        try:
            text = git(a.git_dir, "show", f"{commit}:{lab}").decode()
        except subprocess.CalledProcessError:
            text = ""
        stem = f"{a.source}-{i:05d}"
        try:
            jpeg = downscale_jpeg(git(a.git_dir, "show", f"{commit}:{src}"))
        except subprocess.CalledProcessError:  # e.g. a large file a snapshot left out
            unreadable[src] = "not in the git snapshot (git show failed)"
            continue
        except Exception as exc:  # corrupt or not an image (or a decoder patched in by another library failing)
            unreadable[src] = f"{type(exc).__name__}: {exc}"
            continue
        (out / "images" / f"{stem}.jpg").write_bytes(jpeg)
        (out / "labels" / f"{stem}.txt").write_text(text, encoding="utf-8")
        n = sum(1 for line in text.splitlines() if line.strip())
        boxes += n
        empty += n == 0
        kept[stem] = src
    (out / "data.yaml").write_text(yaml.safe_dump({"names": list(names)}), encoding="utf-8")
    prov = {"source": a.source, "git_dir": str(a.git_dir), "commit": commit, "origin": a.origin, "licence": a.licence,
            "unique_source_images": len(chosen), "kept": len(kept), "boxes": boxes, "images_without_boxes": empty,
            "max": a.max, "seed": a.seed, "names": list(names), "splits": splits, "include": a.include,
            "tiles_not_copies": a.tiles_not_copies, "unreadable": unreadable, "files": kept}
    (out / "PROVENANCE.json").write_text(json.dumps(prov, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in prov.items() if k != "files"}))


if __name__ == "__main__":
    main()
