"""Importers: YOLO txt, COCO json, Pascal VOC xml and image-level CSV labels -> one internal record.

Every importer yields :class:`Item` records (an image path and boxes in *pixels*, labelled with the
source's own class names). ``map_items`` maps source class names onto the wtivision taxonomy with a
per-source class map (source name -> taxonomy label, or ``None`` to drop the box).
"""

from __future__ import annotations

import csv
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wtivision.taxonomy import LABELS

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Box:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class Item:
    image: Path
    boxes: list[Box] = field(default_factory=list)
    image_label: str | None = None  # for image-level (classification) labels
    width: int = 0
    height: int = 0


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def read_yolo(root: Path, names: list[str]) -> Iterator[Item]:
    """``root/images/**/x.jpg`` with ``root/labels/**/x.txt`` (class cx cy w h, normalised)."""
    for img in sorted(p for p in (root / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rel = img.relative_to(root / "images").with_suffix(".txt")
        lab = root / "labels" / rel
        try:
            w, h = _size(img)
        except Exception as exc:
            logger.warning("unreadable image %s: %s", img, exc)
            yield Item(img)
            continue
        boxes = []
        if lab.is_file():
            for line in lab.read_text().splitlines():
                parts = line.split()
                if len(parts) < 5:
                    continue
                c, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
                boxes.append(Box(names[c] if c < len(names) else str(c), (cx - bw / 2) * w, (cy - bh / 2) * h,
                                 (cx + bw / 2) * w, (cy + bh / 2) * h))
        yield Item(img, boxes, width=w, height=h)


def read_coco(json_path: Path, image_dir: Path | None = None) -> Iterator[Item]:
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    by_img: dict[int, list[Box]] = {}
    for a in data.get("annotations", []):
        x, y, bw, bh = a["bbox"]
        by_img.setdefault(a["image_id"], []).append(Box(cats.get(a["category_id"], str(a["category_id"])),
                                                        x, y, x + bw, y + bh))
    base = image_dir or Path(json_path).parent
    for im in data.get("images", []):
        yield Item(base / im["file_name"], by_img.get(im["id"], []), width=int(im.get("width", 0)),
                   height=int(im.get("height", 0)))


def read_voc(ann_dir: Path, image_dir: Path | None = None) -> Iterator[Item]:
    for xml in sorted(Path(ann_dir).rglob("*.xml")):
        root = ET.parse(xml).getroot()
        fname = root.findtext("filename") or xml.with_suffix(".jpg").name
        img = (image_dir or xml.parent) / fname
        size = root.find("size")
        w = int(float(size.findtext("width", "0"))) if size is not None else 0
        h = int(float(size.findtext("height", "0"))) if size is not None else 0
        boxes = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            if bb is None:
                continue
            boxes.append(Box(obj.findtext("name", "").strip(), *(float(bb.findtext(k, "0"))
                                                                  for k in ("xmin", "ymin", "xmax", "ymax"))))
        yield Item(img, boxes, width=w, height=h)


def read_csv_labels(csv_path: Path, image_dir: Path | None = None) -> Iterator[Item]:
    """Image-level labels: a CSV with columns ``image,label``."""
    base = image_dir or Path(csv_path).parent
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            yield Item(base / row["image"], image_label=row["label"].strip())


READERS = {"yolo": read_yolo, "coco": read_coco, "voc": read_voc, "csv": read_csv_labels}


def map_items(items, class_map: dict[str, str | None]) -> Iterator[tuple[Item, list[str]]]:
    """Map source labels onto the taxonomy. Yields (item, problems). Unknown source classes are reported
    and dropped; ``None`` in the map drops a class on purpose."""
    for it in items:
        problems = []
        kept = []
        for b in it.boxes:
            if b.label not in class_map:
                problems.append(f"unmapped class {b.label!r}")
                continue
            target = class_map[b.label]
            if target is None:
                continue
            if target not in LABELS:
                raise ValueError(f"class map sends {b.label!r} to {target!r}, not a taxonomy label")
            kept.append(Box(target, b.x1, b.y1, b.x2, b.y2))
        it.boxes = kept
        if it.image_label is not None:
            it.image_label = class_map.get(it.image_label, it.image_label)
        yield it, problems
