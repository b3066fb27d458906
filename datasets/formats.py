"""Importers: YOLO txt, COCO json, Pascal VOC xml and image-level CSV labels -> one internal record.

Every importer yields :class:`Item` records (an image path and boxes in *pixels*, labelled with the
source's own class names). ``map_items`` maps source class names onto the wtivision taxonomy with a
per-source class map (source name -> taxonomy label, or ``None`` to drop the box on purpose); a
class the map does not name is reported and dropped.

Readers never raise on a bad annotation line: they record it in ``Item.problems`` so that
``datasets.build`` can report it in ``problems.txt``.
"""

from __future__ import annotations

import csv
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wtivision.taxonomy import LABELS, TYPOLOGY_CLASSES

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

#: labels an image-level (classification) source may map onto: detector labels and typology labels
IMAGE_LABELS = set(LABELS) | set(TYPOLOGY_CLASSES.values())


@dataclass
class Box:
    """An axis-aligned box in image pixels (x2 > x1, y2 > y1 once validated)."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class Item:
    """One image with its boxes (detection) or its image-level label (classification)."""

    image: Path
    boxes: list[Box] = field(default_factory=list)
    image_label: str | None = None
    width: int = 0
    height: int = 0
    problems: list[str] = field(default_factory=list)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, EXIF orientation ignored (labels use the stored pixels)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _yolo_names(root: Path) -> list[str]:
    """Class names from ``root/data.yaml`` (list or {index: name}), or [] if there is none."""
    cfg = root / "data.yaml"
    if not cfg.is_file():
        return []
    import yaml

    names = yaml.safe_load(cfg.read_text(encoding="utf-8")).get("names", [])
    if isinstance(names, dict):
        return [names[k] for k in sorted(names)]
    return list(names)


def read_yolo(root: Path, names: list[str] | None = None) -> Iterator[Item]:
    """``root/images/**/x.jpg`` with ``root/labels/**/x.txt`` (``class cx cy w h``, normalised; a segment
    line ``class x1 y1 x2 y2 ...``, as Roboflow exports mix them in, gives its polygon's bounding box).

    ``names`` maps class index -> source class name; default: ``root/data.yaml``'s names.
    """
    root = Path(root)
    names = list(names) if names else _yolo_names(root)
    for img in sorted(p for p in (root / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        item = Item(img)
        try:
            item.width, item.height = image_size(img)
        except Exception as exc:  # noqa: BLE001 - any decoder error means unreadable
            item.problems.append(f"unreadable image ({exc})")
            yield item
            continue
        lab = root / "labels" / img.relative_to(root / "images").with_suffix(".txt")
        lines = lab.read_text(encoding="utf-8").splitlines() if lab.is_file() else []
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                c = int(parts[0])
                v = [float(x) for x in parts[1:]]
            except ValueError:
                v = []
            if len(v) == 4:
                cx, cy, bw, bh = v
                x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
            elif len(v) >= 6 and len(v) % 2 == 0:  # segment line (x1 y1 x2 y2 ...): its bounding box
                x1, x2, y1, y2 = min(v[0::2]), max(v[0::2]), min(v[1::2]), max(v[1::2])
            else:
                item.problems.append(f"{lab.name}:{n}: malformed line {line!r}")
                continue
            w, h = item.width, item.height
            item.boxes.append(Box(names[c] if 0 <= c < len(names) else str(c), x1 * w, y1 * h, x2 * w, y2 * h))
        yield item


def read_coco(json_path: Path, image_dir: Path | None = None) -> Iterator[Item]:
    """A COCO detection json (``bbox`` = [x, y, w, h] in pixels); images relative to ``image_dir``
    (default: the json's folder). Crowd annotations are skipped."""
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    by_img: dict[int, list[Box]] = {}
    for a in data.get("annotations", []):
        if a.get("iscrowd"):
            continue
        x, y, bw, bh = (float(v) for v in a["bbox"])
        name = cats.get(a["category_id"], str(a["category_id"]))
        by_img.setdefault(a["image_id"], []).append(Box(name, x, y, x + bw, y + bh))
    base = Path(image_dir) if image_dir else Path(json_path).parent
    for im in data.get("images", []):
        yield Item(base / im["file_name"], by_img.get(im["id"], []), width=int(im.get("width") or 0),
                   height=int(im.get("height") or 0))


def read_voc(ann_dir: Path, image_dir: Path | None = None) -> Iterator[Item]:
    """Pascal VOC xml files under ``ann_dir`` (pixel ``bndbox``); images in ``image_dir`` or beside the xml."""
    for xml in sorted(Path(ann_dir).rglob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            yield Item(xml.with_suffix(".jpg"), problems=[f"{xml.name}: unreadable xml ({exc})"])
            continue
        fname = (root.findtext("filename") or xml.with_suffix(".jpg").name).strip()
        item = Item((Path(image_dir) if image_dir else xml.parent) / fname)
        size = root.find("size")
        if size is not None:
            item.width = int(float(size.findtext("width", "0") or 0))
            item.height = int(float(size.findtext("height", "0") or 0))
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            name = (obj.findtext("name") or "").strip()
            try:
                coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr]
            except (AttributeError, TypeError, ValueError):
                item.problems.append(f"{xml.name}: object {name!r} without a valid bndbox")
                continue
            item.boxes.append(Box(name, *coords))
        yield item


def read_csv_labels(csv_path: Path, image_dir: Path | None = None) -> Iterator[Item]:
    """Image-level labels: a CSV with columns ``image,label`` (image relative to ``image_dir`` or the CSV)."""
    base = Path(image_dir) if image_dir else Path(csv_path).parent
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            yield Item(base / row["image"].strip(), image_label=row["label"].strip())


def _read_yolo_source(path: Path, images: Path | None, names: list[str] | None) -> Iterator[Item]:
    return read_yolo(path, names)


def _read_other(reader: Callable[[Path, Path | None], Iterator[Item]]):
    def read(path: Path, images: Path | None, names: list[str] | None) -> Iterator[Item]:
        return reader(path, images)

    return read


#: format name -> reader(path, images, names)
READERS: dict[str, Callable[[Path, Path | None, list[str] | None], Iterator[Item]]] = {
    "yolo": _read_yolo_source,
    "coco": _read_other(read_coco),
    "voc": _read_other(read_voc),
    "csv": _read_other(read_csv_labels),
}


def load_class_map(spec: dict | str | Path | None, base: Path | None = None) -> dict[str, str | None]:
    """A class map given inline (dict) or as a yaml file (path, relative to ``base``); checked against
    the taxonomy (``None`` = drop the class on purpose)."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        import yaml

        p = Path(spec)
        if not p.is_absolute() and base is not None:
            p = base / p
        spec = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    out: dict[str, str | None] = {}
    for src, target in spec.items():
        if target is not None and target not in IMAGE_LABELS:
            raise ValueError(f"class map sends {src!r} to {target!r}, which is not a taxonomy label")
        out[str(src)] = target
    return out


def map_items(items: Iterable[Item], class_map: dict[str, str | None]) -> Iterator[Item]:
    """Map source labels onto the taxonomy in place. Classes absent from the map are reported in
    ``item.problems`` and dropped; ``None`` drops a class silently. Box targets must be detector labels."""
    for it in items:
        kept = []
        for b in it.boxes:
            if b.label not in class_map:
                it.problems.append(f"unmapped class {b.label!r}, box dropped")
                continue
            target = class_map[b.label]
            if target is None:
                continue
            if target not in LABELS:
                raise ValueError(f"class map sends box class {b.label!r} to {target!r}, not a detector label")
            kept.append(Box(target, b.x1, b.y1, b.x2, b.y2))
        it.boxes = kept
        if it.image_label is not None:
            if it.image_label not in class_map:
                it.problems.append(f"unmapped image label {it.image_label!r}, image dropped")
            it.image_label = class_map.get(it.image_label)
        yield it
