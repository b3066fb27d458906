"""Dataset tools on hand-built cases: importers, validation, dedupe across splits, manifest, scenes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("imagehash")
pytest.importorskip("yaml")
cv2 = pytest.importorskip("cv2")

from datasets.build import (  # noqa: E402
    Record,
    assign_splits,
    audit,
    build,
    hamming,
    leak_report,
    load_recipe,
    min_hamming,
    phash,
    phash_d4,
    read_manifest,
    validate,
)
from datasets.formats import Box, Item, load_class_map, map_items, read_coco, read_csv_labels, read_voc, read_yolo  # noqa: E402,E501
from wtivision.taxonomy import DETECTOR_CLASSES  # noqa: E402


def _img(path: Path, w: int = 200, h: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    small = rng.integers(0, 255, (max(h // 10, 2), max(w // 10, 2), 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    return path


def _xyxy(b: Box) -> tuple[float, float, float, float]:
    return (b.x1, b.y1, b.x2, b.y2)


def test_yolo_reader_pixels_and_names(tmp_path):
    _img(tmp_path / "images" / "sub" / "a.jpg")
    (tmp_path / "labels" / "sub").mkdir(parents=True)
    (tmp_path / "labels" / "sub" / "a.txt").write_text(
        "1 0.5 0.5 0.2 0.4\n0 0.1 0.2 0.1 0.2\nbad line\n"
        "1 0.2 0.1 0.6 0.3 0.4 0.9 0.2 0.1\n"  # segment (polygon) line -> its bounding box
        "1 0.2 0.1 0.6\n")  # neither a box nor a polygon
    (it,) = read_yolo(tmp_path, ["knife", "gun"])
    assert [b.label for b in it.boxes] == ["gun", "knife", "gun"]
    assert _xyxy(it.boxes[0]) == pytest.approx((80, 30, 120, 70))
    assert _xyxy(it.boxes[1]) == pytest.approx((10, 10, 30, 30))
    assert _xyxy(it.boxes[2]) == pytest.approx((40, 10, 120, 90))
    assert (it.width, it.height) == (200, 100) and sum("malformed" in p for p in it.problems) == 2
    (tmp_path / "data.yaml").write_text("names: {0: knife, 1: handgun}\n")  # names from the source's data.yaml
    assert [b.label for b in next(read_yolo(tmp_path)).boxes] == ["handgun", "knife", "handgun"]


def test_coco_reader(tmp_path):
    _img(tmp_path / "img" / "a.jpg")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 200, "height": 100}],
        "categories": [{"id": 3, "name": "Handgun"}],
        "annotations": [{"image_id": 7, "category_id": 3, "bbox": [10, 20, 30, 40]},
                        {"image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1}]}))
    (it,) = read_coco(ann, tmp_path / "img")
    assert it.image == tmp_path / "img" / "a.jpg" and len(it.boxes) == 1
    assert it.boxes[0].label == "Handgun" and _xyxy(it.boxes[0]) == (10, 20, 40, 60)


def test_voc_reader(tmp_path):
    _img(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>200</width><height>100</height></size>"
        "<object><name> pistol </name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>50.5</xmax><ymax>60</ymax>"
        "</bndbox></object><object><name>x</name></object></annotation>")
    (it,) = read_voc(tmp_path)
    assert it.boxes[0].label == "pistol" and _xyxy(it.boxes[0]) == (5, 6, 50.5, 60)
    assert (it.width, it.height) == (200, 100) and any("bndbox" in p for p in it.problems)


def test_csv_reader_and_class_map(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\na.jpg,revolver\nb.jpg,knife\nc.jpg,alien\n")
    items = list(map_items(read_csv_labels(tmp_path / "labels.csv"), {"revolver": "revolver", "knife": None}))
    assert [it.image_label for it in items] == ["revolver", None, None]
    assert items[0].image == tmp_path / "a.jpg" and any("unmapped" in p for p in items[2].problems)
    with pytest.raises(ValueError):
        load_class_map({"gun": "not_a_label"})
    (tmp_path / "map.yaml").write_text("gun: pistol\nperson: null\n")
    assert load_class_map("map.yaml", tmp_path) == {"gun": "pistol", "person": None}


def test_map_items_reports_unknown_and_drops_null():
    it = Item(Path("x.jpg"), [Box("gun", 0, 0, 5, 5), Box("person", 0, 0, 5, 5), Box("ufo", 0, 0, 5, 5)])
    (out,) = map_items([it], {"gun": "pistol", "person": None})
    assert [b.label for b in out.boxes] == ["pistol"] and out.problems == ["unmapped class 'ufo', box dropped"]


def test_validate_clips_and_drops():
    it = Item(Path("x.jpg"), [Box("pistol", -3, 10, 50, 60),  # slightly outside: clipped
                              Box("pistol", 10, 10, 11, 50),  # 1 px wide: degenerate
                              Box("pistol", 150, 10, 400, 50),  # far outside: dropped
                              Box("pistol", 60, 50, 20, 10)],  # corners swapped: normalised
              width=200, height=100)
    problems = validate(it)
    assert [_xyxy(b) for b in it.boxes] == [(0, 10, 50, 60), (20, 10, 60, 50)]
    assert len(problems) == 3 and any("clipped" in p for p in problems)


def test_hamming():
    hs = np.array([0, 0b1011, 2**64 - 1], dtype=np.uint64)
    assert hamming(0, hs).tolist() == [0, 3, 64]


def _source(tmp_path: Path, n: int = 30) -> Path:
    """A YOLO-layout source of generated scenes, a resized re-encoded copy of scene 0, an exact copy of
    scene 1, an unreadable image and an unknown class."""
    from datasets.synth.scenes import write

    src = write(tmp_path / "src", n, seed=11, size=160)
    imgs, labels = src / "images" / "train", src / "labels" / "train"
    first = sorted(imgs.glob("*.jpg"))
    cv2.imwrite(str(imgs / "zz_near_dup.jpg"), cv2.resize(cv2.imread(str(first[0])), (150, 150)),
                [cv2.IMWRITE_JPEG_QUALITY, 60])
    shutil.copy(labels / f"{first[0].stem}.txt", labels / "zz_near_dup.txt")
    shutil.copy(first[1], imgs / "zz_exact_dup.jpg")
    shutil.copy(labels / f"{first[1].stem}.txt", labels / "zz_exact_dup.txt")
    (imgs / "zz_broken.jpg").write_bytes(b"not a jpeg")
    (labels / "zz_broken.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (labels / f"{first[2].stem}.txt").write_text((labels / f"{first[2].stem}.txt").read_text() + "99 .5 .5 .1 .1\n")
    return src


def _recipe(src: Path, **kw) -> dict:
    recipe = {"name": "t", "seed": 0, "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "phash_distance": 8,
              "sources": [{"name": "synth", "format": "yolo", "path": str(src), "licence": "CC0-1.0",
                           "origin": "datasets/synth/scenes.py seed 11", "synthetic": True,
                           "class_map": {c: c for c in DETECTOR_CLASSES}}]}
    recipe.update(kw)
    return recipe


def test_build_dedupes_across_splits_and_writes_manifest(tmp_path):
    src = _source(tmp_path, 30)
    out = tmp_path / "ds"
    rep = build(_recipe(src), out)
    # 30 scenes + near duplicate; the exact copy and the broken file are dropped
    assert rep["images"] == 31 and rep["exact_duplicates_dropped"] == 1
    assert rep["near_duplicate_groups"] >= 1
    assert rep["leaks"] == {"sha256_overlap": 0, "near_duplicate_pairs": 0, "d4_near_duplicate_pairs": 0}
    rows = read_manifest(out)
    assert {r["split"] for r in rows} == set(rep["images_per_split"]) == {"train", "val", "test"}
    assert set(rows[0]) >= {"path", "source", "origin", "licence", "sha256", "phash", "split", "labels", "kind"}
    assert all(r["licence"] == "CC0-1.0" and r["kind"] == "synthetic" for r in rows)
    # zero overlap between splits, by sha256 and by pHash (independently of the builder's own report)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        ra, rb = [r for r in rows if r["split"] == a], [r for r in rows if r["split"] == b]
        assert not {r["sha256"] for r in ra} & {r["sha256"] for r in rb}
        hb = np.array([int(r["phash"], 16) for r in rb], dtype=np.uint64)
        assert all(hamming(int(r["phash"], 16), hb).min() > 8 for r in ra)
    by_original = {r["original"]: r for r in rows}
    first = sorted((src / "images" / "train").glob("scene_*.jpg"))[0]
    assert by_original["images/train/zz_near_dup.jpg"]["split"] == by_original[f"images/train/{first.name}"]["split"]
    # files, labels and stats agree with the manifest
    for r in rows:
        assert (out / r["path"]).is_file()
        lab = (out / r["path"].replace("images/", "labels/", 1)).with_suffix(".txt")
        classes = sorted(DETECTOR_CLASSES[int(line.split()[0])] for line in lab.read_text().splitlines())
        assert classes == sorted(filter(None, r["labels"].split(";")))
    problems = (out / "problems.txt").read_text()
    assert "zz_broken.jpg: unreadable image" in problems and "unmapped class '99'" in problems
    assert "exact duplicate" in problems
    stats = json.loads((out / "stats.json").read_text())
    assert sum(stats["images"].values()) == 31 and (out / "stats.md").is_file()
    assert {**leak_report(rows, 8), "d4_near_duplicate_pairs": 0} == rep["leaks"]
    # same recipe and seed: same manifest
    assert build(_recipe(src), tmp_path / "ds2")["manifest_sha256"] == rep["manifest_sha256"]


def _with_turned_copies(tmp_path: Path, n: int = 24, copies: int = 10) -> tuple[Path, dict[str, str]]:
    """Generated scenes plus, for the first ``copies`` of them, a mirrored or quarter-turned copy under
    another name (as public sets hold them); returns the source and {copy's original path: scene's}."""
    from datasets.synth.scenes import write

    src = write(tmp_path / "src", n, seed=3, size=160)
    imgs, labels = src / "images" / "train", src / "labels" / "train"
    turns = [lambda a: a[:, ::-1], lambda a: np.rot90(a, 1), lambda a: a[::-1], lambda a: np.rot90(a, 3)]
    twin = {}
    for i, f in enumerate(sorted(imgs.glob("scene_*.jpg"))[:copies]):
        name = f"zz_turned_{i}.jpg"
        cv2.imwrite(str(imgs / name), np.ascontiguousarray(turns[i % 4](cv2.imread(str(f)))))
        (labels / f"zz_turned_{i}.txt").write_text("")  # a background photo as far as the builder knows
        twin[f"images/train/{name}"] = f"images/train/{f.name}"
    return src, twin


def test_mirrored_and_rotated_copies_are_near_duplicates(tmp_path):
    """Plain pHash does not see a mirrored or quarter-turned copy; one of the original's D4 variants does."""
    src, twin = _with_turned_copies(tmp_path, n=8, copies=8)
    for copy, orig in twin.items():
        a, b = src / orig, src / copy
        assert phash_d4(a)[0] == phash(a)
        assert hamming(phash(a), np.array([phash(b)], dtype=np.uint64))[0] > 8
        assert min_hamming(phash_d4(a), np.array([phash(b)], dtype=np.uint64))[0] <= 2
        assert min_hamming(phash_d4(b), np.array([phash(a)], dtype=np.uint64))[0] <= 2  # both ways


def test_build_keeps_turned_copies_in_one_split_and_audit_finds_old_leaks(tmp_path):
    src, twin = _with_turned_copies(tmp_path)
    new = build(_recipe(src, split={"train": 0.5, "val": 0.25, "test": 0.25}), tmp_path / "d4")
    rows = {r["original"]: r for r in read_manifest(tmp_path / "d4")}
    assert all(rows[c]["split"] == rows[o]["split"] for c, o in twin.items())
    assert new["phash_transforms"] == "d4" and new["leaks"]["d4_near_duplicate_pairs"] == 0
    assert audit(tmp_path / "d4", 8)["pairs"] == {}
    # as v1-v1.3 were built: copies land in other splits; the audit lists exactly those val/test images
    old = build(_recipe(src, split={"train": 0.5, "val": 0.25, "test": 0.25}, phash_transforms="none",
                        match_features=False), tmp_path / "none")
    assert "d4_near_duplicate_pairs" not in old["leaks"] and old["leaks"]["near_duplicate_pairs"] == 0
    rows = {r["original"]: r for r in read_manifest(tmp_path / "none")}
    order = {"train": 0, "val": 1, "test": 2}
    expected = set()
    for c, o in twin.items():
        a, b = sorted((rows[c], rows[o]), key=lambda r: order[r["split"]])
        if a["split"] != b["split"]:
            expected.add((b["path"], a["path"]))
    assert expected  # the seeded split does put some copies apart
    rep = audit(tmp_path / "none", 8, features=False)
    with open(tmp_path / "none" / "leaks.csv", newline="") as fh:
        found = {(r["path"], r["twin"]) for r in csv.DictReader(fh)}
    assert found == expected and rep["pairs"] == {"phash-d4": len(expected)}
    assert sum(rep["images_with_a_twin_in_an_earlier_split"].values()) == len({p for p, _ in expected})
    with pytest.raises(ValueError, match="phash_transforms"):
        build(_recipe(src, phash_transforms="rot45"), tmp_path / "bad")


def test_twins_found_rotated_by_any_angle_cropped_or_recoloured(tmp_path):
    """datasets.twins: copies that no pHash finds (15 degrees with black corners, an 80 % crop, a hue shift,
    a mirrored crop) are twins of their photo; the other scenes are nobody's twin."""
    from datasets.synth.scenes import write
    from datasets.twins import find_twins, inliers, signature

    src = write(tmp_path / "src", 6, seed=21, size=400)
    photos = sorted((src / "images" / "train").glob("scene_*.jpg"))
    im = cv2.imread(str(photos[0]))
    h, w = im.shape[:2]
    hsv = cv2.cvtColor(im, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 25) % 180
    copies = {
        "rot15": cv2.warpAffine(im, cv2.getRotationMatrix2D((w / 2, h / 2), 15, 1.0), (w, h)),
        "crop80": cv2.resize(im[h // 10: h - h // 10, w // 10: w - w // 10], (w, h)),
        "hue": cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR),
        "mirror_crop": np.ascontiguousarray(im[h // 8:, : w - w // 8][:, ::-1]),
    }
    for name, c in copies.items():
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), c)
        if name != "hue":  # pHash reads grey levels: a hue shift is the one copy it does see
            assert hamming(phash(photos[0]), np.array([phash(tmp_path / f"{name}.jpg")], dtype=np.uint64))[0] > 2
    sigs = [signature(p) for p in photos] + [signature(tmp_path / f"{n}.jpg") for n in copies]
    pairs = find_twins(sigs)
    family = [0, *range(len(photos), len(sigs))]  # the photo and its copies, each a twin of every other
    assert {(i, j) for i, j, _ in pairs} == {(i, j) for i in family for j in family if i < j}
    assert all(n >= 20 for *_, n in pairs)
    assert max(inliers(sigs[i], sigs[j]) for i in range(1, len(photos)) for j in range(len(photos)) if i != j) < 20
    with pytest.raises(ValueError, match="not readable"):
        signature(tmp_path / "missing.jpg")


def test_build_groups_feature_twins(tmp_path):
    """A 15-degree rotated copy of 8 textured scenes: with match_features each lands in its photo's split.
    (A plain scene with a handful of key points cannot be matched: it is left out here, see datasets.twins.)"""
    from datasets.synth.scenes import write
    from datasets.twins import signature

    src = write(tmp_path / "src", 16, seed=4, size=320)
    imgs, labels = src / "images" / "train", src / "labels" / "train"
    textured = [f for f in sorted(imgs.glob("scene_*.jpg")) if len(signature(f).points) >= 50][:8]
    assert len(textured) == 8
    for i, f in enumerate(textured):
        im = cv2.imread(str(f))
        h, w = im.shape[:2]
        turned = cv2.warpAffine(im, cv2.getRotationMatrix2D((w / 2, h / 2), 15, 1), (w, h))
        cv2.imwrite(str(imgs / f"zz_rot_{i}.jpg"), turned)
        (labels / f"zz_rot_{i}.txt").write_text("")
    rep = build(_recipe(src, split={"train": 0.5, "val": 0.25, "test": 0.25}), tmp_path / "ds")
    assert rep["feature_twin_pairs"] == 8
    rows = {r["original"]: r for r in read_manifest(tmp_path / "ds")}
    assert all(rows[f"images/train/zz_rot_{i}.jpg"]["split"] == rows[f"images/train/{f.name}"]["split"]
               for i, f in enumerate(textured))
    assert len({rows[f"images/train/{f.name}"]["split"] for f in textured}) > 1  # not all in one split by chance
    assert audit(tmp_path / "ds", 8)["pairs"] == {}
    broken = next(r for r in rows.values() if r["split"] == "test")
    (tmp_path / "ds" / broken["path"]).write_bytes(b"no longer a jpeg")  # damaged after the build
    assert audit(tmp_path / "ds", 8)["images"]["test"] == sum(r["split"] == "test" for r in rows.values())


def test_build_stratifies_and_handles_image_labels(tmp_path):
    for i in range(10):
        _img(tmp_path / "cls" / f"{i}.jpg", 64, 64, seed=100 + i)
    with open(tmp_path / "cls" / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows([(f"{i}.jpg", "Revolver" if i % 2 else "Pistol") for i in range(10)])
    recipe = {"name": "c", "seed": 1, "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "phash_distance": 4,
              "sources": [{"name": "cls", "format": "csv", "path": str(tmp_path / "cls" / "labels.csv"),
                           "licence": "CC-BY-4.0", "origin": "hand-made",
                           "class_map": {"Revolver": "revolver", "Pistol": "pistol"}}]}
    build(recipe, tmp_path / "ds")
    rows = read_manifest(tmp_path / "ds")
    assert len(rows) == 10 and all(r["path"].startswith(f"classify/{r['split']}/{r['labels']}/") for r in rows)
    for lab in ("pistol", "revolver"):  # 5 each: 3 train, 1 val, 1 test
        assert sorted(r["split"] for r in rows if r["labels"] == lab) == ["test", "train", "train", "train", "val"]


def test_recipe_with_scenes_source(tmp_path):
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text("name: s\nseed: 0\nsources:\n  - {name: gen, format: scenes, n: 12, seed: 5, size: 96,"
                           " licence: AGPL-3.0-or-later, origin: scenes.py}\n")
    rep = build(load_recipe(recipe_path), tmp_path / "ds")
    assert rep["images"] == 12 and sum(rep["images_per_split"].values()) == 12
    assert {r["kind"] for r in read_manifest(tmp_path / "ds")} == {"synthetic"}
    assert "test: images/test" in (tmp_path / "ds" / "data.yaml").read_text()
    # text_objects: markings and case heads from the stamped-text generator reach the built dataset
    recipe_path.write_text("name: t\nseed: 0\nsources:\n  - {name: gen, format: scenes, n: 40, seed: 6, size: 160,"
                           " text_objects: true, classes: [marking, case_head], licence: AGPL-3.0-or-later,"
                           " origin: scenes.py}\n")
    rep = build(load_recipe(recipe_path), tmp_path / "ds2")
    stats = json.loads((tmp_path / "ds2" / "stats.json").read_text())
    assert set(stats["classes"]) == {"marking", "case_head"}, stats


def test_scenes_deterministic_with_exact_boxes(tmp_path):
    from datasets.synth.scenes import CutoutBank, scene, write

    a = write(tmp_path / "a", 6, seed=3, size=128)
    b = write(tmp_path / "b", 6, seed=3, size=128)
    for p in sorted((a / "labels" / "train").glob("*.txt")):
        assert p.read_text() == (b / "labels" / "train" / p.name).read_text()
    assert (a / "preview.jpg").is_file() and (a / "data.yaml").is_file()
    img, boxes = scene(np.random.default_rng(0), 160)
    assert img.shape == (160, 160, 3) and boxes
    for _lab, x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
    # cut-outs from labelled images: the pasted crop's box is where its pixels went
    bank = CutoutBank.from_yolo(a)
    assert bank.crops
    img, boxes = scene(np.random.default_rng(1), 160, cutouts=bank, p_cutout=1.0)
    assert boxes and all(lab in bank.crops for lab, *_ in boxes)


def test_scenes_with_text_objects_box_the_stamped_text(tmp_path):
    from datasets.synth.scenes import scene, text_object, write

    rng = np.random.default_rng(4)
    tile, mask = text_object("marking", 120, rng)
    assert max(tile.shape[:2]) == 120 and tile.shape[:2] == mask.shape and (mask == 255).all()
    tile, mask = text_object("case_head", 90, rng)
    h, w = mask.shape
    assert tile.shape[:2] == mask.shape and max(h, w) == 90 and min(h, w) > 80  # about square (perspective)
    assert mask[h // 2, w // 2] == 255 and mask[0, 0] == 0  # the disc, not its corners
    with pytest.raises(ValueError, match="no text object"):
        text_object("pistol", 50, rng)
    seen = set()
    for k in range(12):
        img, boxes = scene(np.random.default_rng(k), 320, classes=("marking", "case_head"), text_objects=True)
        for lab, x1, y1, x2, y2 in boxes:
            seen.add(lab)
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 320
            # a marking is a line of characters (wide), a case head a disc (about square)
            aspect = (x2 - x1) / (y2 - y1)
            assert aspect > 1.5 if lab == "marking" else 0.8 < aspect < 1.25, (lab, aspect)
    assert seen == {"marking", "case_head"}
    out = write(tmp_path / "s", 4, seed=2, size=256, text_objects=True)
    assert (out / "preview.jpg").is_file() and len(list((out / "labels" / "train").glob("*.txt"))) == 4


def test_keep_splits_pins_earlier_images_when_sources_are_added(tmp_path, caplog):
    first = tmp_path / "r1.yaml"
    head = "seed: 0\nsplit: {train: 0.6, val: 0.2, test: 0.2}\n"
    first.write_text("name: a\n" + head + "sources:\n  - {name: a, format: scenes, n: 30, seed: 8, size: 96,"
                     " licence: AGPL-3.0-or-later, origin: scenes.py}\n")
    build(load_recipe(first), tmp_path / "v1")
    before = {r["sha256"]: r["split"] for r in read_manifest(tmp_path / "v1")}
    assert set(before.values()) >= {"train", "test"}
    # the same source plus a new one whose strata come first: without keep_splits the draws would move
    second = tmp_path / "r2.yaml"
    sources = ("  - {name: a, format: scenes, n: 30, seed: 8, size: 96, licence: AGPL-3.0-or-later, origin: s}\n"
               "  - {name: b, format: scenes, n: 20, seed: 9, size: 96, text_objects: true,"
               " classes: [case_head, marking], licence: AGPL-3.0-or-later, origin: s}\n")
    second.write_text("name: b\n" + head + "keep_splits: v1/manifest.csv\nsources:\n" + sources)
    build(load_recipe(second), tmp_path / "v2")
    after = {r["sha256"]: r["split"] for r in read_manifest(tmp_path / "v2")}
    assert all(after[h] == s for h, s in before.items())
    assert len(after) == len(before) + 20
    unpinned = tmp_path / "r3.yaml"
    unpinned.write_text("name: c\n" + head + "sources:\n" + sources)
    build(load_recipe(unpinned), tmp_path / "v3")
    moved = {r["sha256"]: r["split"] for r in read_manifest(tmp_path / "v3")}
    assert any(moved[h] != s for h, s in before.items())  # what keep_splits prevents
    # pin only v1's test photos, but one of them (listed as leaked): the other test photos stay, the rest is drawn
    v1_rows = read_manifest(tmp_path / "v1")
    tests = sorted(r["path"] for r in v1_rows if r["split"] == "test")
    (tmp_path / "v1" / "leaks.csv").write_text(f"path,split\n{tests[0]},test\n")
    partial = tmp_path / "r5.yaml"
    partial.write_text("name: e\n" + head + "keep_splits: v1/manifest.csv\nkeep_splits_only: [test]\n"
                       "keep_splits_skip: v1/leaks.csv\nsources:\n" + sources)
    caplog.clear()
    with caplog.at_level("INFO", logger="datasets.build"):
        build(load_recipe(partial), tmp_path / "v5")
    pinned = {r["sha256"]: r["split"] for r in read_manifest(tmp_path / "v5")}
    sha = {r["path"]: r["sha256"] for r in v1_rows}
    assert all(pinned[sha[p]] == "test" for p in tests[1:])
    assert any(pinned[h] != s for h, s in before.items() if s != "test")  # train / val drawn afresh
    assert f"keeping the splits of {len(tests) - 1} images" in caplog.text  # only the unlisted test photos
    missing = tmp_path / "r4.yaml"
    missing.write_text("name: d\nseed: 0\nkeep_splits: nowhere.csv\nsources:\n" + sources)
    with pytest.raises(FileNotFoundError, match="keep_splits"):
        build(load_recipe(missing), tmp_path / "v4")


def test_strict_keep_splits_never_moves_a_pinned_image():
    """A twin group holding an earlier train image and an earlier test image, plus a new copy: by default the
    group goes to test whole (the old train image with it); strict pins keep each old image where it was and
    send the new copy to test, the strictest split of its group."""
    def rec(i: int, group: int) -> Record:
        return Record(Item(Path(f"{i}.jpg"), [Box("pistol", 0.1, 0.1, 0.5, 0.5)]), "s", "o", "l", "photo", str(i),
                      f"sha{i}", 0, group)

    fixed = {"sha0": "train", "sha1": "test", "sha3": "val"}
    for strict, want in ((False, ["test", "test", "test", "val", "val"]),
                         (True, ["train", "test", "test", "val", "val"])):
        records = [rec(0, 0), rec(1, 0), rec(2, 0), rec(3, 1), rec(4, 1)]
        assign_splits(records, {"train": 0.8, "val": 0.1, "test": 0.1}, 0, fixed, strict)
        assert [r.split for r in records] == want


def test_only_sha256_picks_a_named_test_set_out_of_a_source(tmp_path):
    """A source with ``only_sha256`` gives exactly the listed images, from a manifest-style CSV or a plain list;
    a listed image the source lacks is reported; a malformed list is refused."""
    src = _source(tmp_path, 12)
    full = build(_recipe(src), tmp_path / "all")
    rows = read_manifest(tmp_path / "all")[::3]
    listed = tmp_path / "list.csv"
    with listed.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sha256", "original"])
        w.writeheader()
        w.writerows({"sha256": r["sha256"], "original": r["original"]} for r in rows)
    recipe = _recipe(src, split={"test": 1.0})
    recipe["sources"][0]["only_sha256"] = str(listed)
    rep = build(recipe, tmp_path / "named")
    got = read_manifest(tmp_path / "named")
    assert sorted(r["sha256"] for r in got) == sorted(r["sha256"] for r in rows) and rep["images"] < full["images"]
    assert {r["split"] for r in got} == {"test"}
    assert "not found" not in (tmp_path / "named" / "problems.txt").read_text()
    absent = "ab" * 32
    plain = tmp_path / "list.txt"
    plain.write_text(f"# one per line\n{rows[0]['sha256'].upper()}  # upper case is fine\n{absent}\n")
    recipe["sources"][0]["only_sha256"] = str(plain)
    build(recipe, tmp_path / "one")
    assert [r["sha256"] for r in read_manifest(tmp_path / "one")] == [rows[0]["sha256"]]
    assert f"1 of the 2 images listed in {plain} not found, e.g. {absent}" in (
        tmp_path / "one" / "problems.txt").read_text()
    plain.write_text("not-a-hash\n")
    with pytest.raises(ValueError, match="not SHA-256"):
        build(recipe, tmp_path / "bad")
    # drop_sha256: the listed images (and only they) are left out, and the build says how many
    dropper = _recipe(src)
    dropper["sources"][0]["drop_sha256"] = str(listed)
    build(dropper, tmp_path / "dropped")
    kept = {r["sha256"] for r in read_manifest(tmp_path / "dropped")}
    assert kept == {r["sha256"] for r in read_manifest(tmp_path / "all")} - {r["sha256"] for r in rows}
    assert f"{len(rows)} images left out as listed in {listed}" in (tmp_path / "dropped" / "problems.txt").read_text()
    # the named set as a pinned source beside the whole source: the listed images (scene 0 among them) and their
    # twins (zz_near_dup, a resized copy of scene 0 left in the other source) land in test
    first = sorted((src / "images" / "train").glob("scene_*.jpg"))[0].name
    pick = [r for r in read_manifest(tmp_path / "all") if r["original"].endswith(first)] + rows
    listed.write_text("sha256\n" + "".join(r["sha256"] + "\n" for r in pick))
    src_all = {**_recipe(src)["sources"][0], "name": "all"}
    held = {**recipe["sources"][0], "name": "held", "only_sha256": str(listed), "pin_split": "test"}
    # the whole source first: the held-out photos are its exact duplicates there, dropped from `held`, and the
    # pin must hold all the same
    both = _recipe(src, sources=[src_all, held])
    unpinned = _recipe(src, sources=[src_all, {**held, "pin_split": None}])
    build(unpinned, tmp_path / "unpinned")
    listed_sha = {r["sha256"] for r in pick}
    assert {r["split"] for r in read_manifest(tmp_path / "unpinned") if r["sha256"] in listed_sha} != {"test"}
    build(both, tmp_path / "pinned")
    got = read_manifest(tmp_path / "pinned")
    assert {r["split"] for r in got if r["sha256"] in listed_sha} == {"test"}
    assert {r["source"] for r in got if r["sha256"] in listed_sha} == {"all"}
    assert next(r for r in got if r["original"] == "images/train/zz_near_dup.jpg")["split"] == "test"
    held["pin_split"] = "holdout"
    with pytest.raises(ValueError, match="pin_split"):
        build(both, tmp_path / "bad2")


def test_prepare_raw_reads_a_flat_git_set_and_records_unreadable_images(tmp_path):
    """A set without split folders (``images/`` + ``labels/``) is read from git; a large photo is downscaled to
    640 px with its normalised boxes unchanged; a file that is not an image is listed, not fatal."""
    import subprocess

    from datasets import prepare_raw

    work = tmp_path / "src"
    _img(work / "set" / "images" / "big.jpg", w=1600, h=1200, seed=1)
    _img(work / "set" / "images" / "small.jpg", w=320, h=240, seed=2)
    (work / "set" / "images" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (work / "set" / "labels").mkdir(parents=True)
    (work / "set" / "labels" / "big.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (work / "set" / "labels" / "small.txt").write_text("")
    (work / "set" / "labels" / "broken.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (work / "set" / "data.yaml").write_text("names: ['Phone', 'mouse']\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "set"]):
        subprocess.run(["git", *cmd], cwd=work, check=True, env=env)
    out = tmp_path / "raw"
    (out / "phones" / "images").mkdir(parents=True)
    (out / "phones" / "images" / "stale.jpg").write_bytes(b"from an earlier run")

    prepare_raw.main(["--git-dir", str(work / ".git"), "--source", "phones", "--prefix", "set/", "--out", str(out)])

    prov = json.loads((out / "phones" / "PROVENANCE.json").read_text())
    assert prov["names"] == ["Phone", "mouse"]
    assert (prov["unique_source_images"], prov["kept"], prov["boxes"], prov["images_without_boxes"]) == (3, 2, 1, 1)
    assert list(prov["unreadable"]) == ["set/images/broken.jpg"]
    assert sorted(prov["files"].values()) == ["set/images/big.jpg", "set/images/small.jpg"]
    images = sorted(p.name for p in (out / "phones" / "images").iterdir())
    assert "stale.jpg" not in images and len(images) == 2
    big = next(k for k, v in prov["files"].items() if v.endswith("big.jpg"))
    im = cv2.imread(str(out / "phones" / "images" / f"{big}.jpg"))
    assert im.shape[:2] == (480, 640)
    assert (out / "phones" / "labels" / f"{big}.txt").read_text() == "0 0.5 0.5 0.25 0.5\n"


def test_prepare_raw_keeps_roboflow_tiles_and_reads_chosen_splits(tmp_path):
    """Roboflow tiles of one mosaic share its name (``mosaic_jpg.rf.<hash>.jpg``): by default they collapse to
    one image (the augmented-copy rule); ``--tiles-not-copies`` keeps each; ``--splits`` skips the others."""
    import subprocess

    from datasets import prepare_raw

    work = tmp_path / "src"
    for split, n in (("train", 3), ("valid", 2), ("test", 2)):
        for i in range(n):
            name = f"mosaic_{split}_jpg.rf.{i:032x}"
            _img(work / split / "images" / f"{name}.jpg", 64, 64, seed=10 * len(split) + i)
            (work / split / "labels").mkdir(parents=True, exist_ok=True)
            (work / split / "labels" / f"{name}.txt").write_text("1 0.5 0.5 0.1 0.1\n" if i == 0 else "")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "set"]):
        subprocess.run(["git", *cmd], cwd=work, check=True, env=env)
    base = ["--git-dir", str(work / ".git"), "--source", "mines", "--names", "casing,mine", "--out"]
    prepare_raw.main([*base, str(tmp_path / "a")])
    prov = json.loads((tmp_path / "a" / "mines" / "PROVENANCE.json").read_text())
    assert prov["kept"] == 3  # one per mosaic name: train, valid, test
    prepare_raw.main([*base, str(tmp_path / "b"), "--tiles-not-copies", "--splits", "valid,test"])
    prov = json.loads((tmp_path / "b" / "mines" / "PROVENANCE.json").read_text())
    assert (prov["kept"], prov["boxes"], prov["images_without_boxes"]) == (4, 2, 2)
    assert all("/train/" not in v for v in prov["files"].values()) and prov["splits"] == ["valid", "test"]
    prepare_raw.main([*base, str(tmp_path / "c"), "--tiles-not-copies", "--include", r"mosaic_(train|test)_"])
    prov = json.loads((tmp_path / "c" / "mines" / "PROVENANCE.json").read_text())
    assert prov["kept"] == 5 and not any("valid" in v for v in prov["files"].values())


def test_tiles_are_crops_of_train_and_val_photos_with_their_boxes(tmp_path):
    from datasets.tiles import clip_boxes, windows

    src = _source(tmp_path, 30)
    spec = {"source": "synth", "size": 96, "jitter": 0.1, "per_box": 2, "negatives": 1, "seed": 3}
    out = tmp_path / "ds"
    rep = build(_recipe(src, tiles=[spec]), out)
    rows = read_manifest(out)
    tiles = [r for r in rows if "#tile=" in r["original"]]
    parents = {r["original"]: r for r in rows if "#tile=" not in r["original"]}
    assert rep["tiles"] == len(tiles) > 20 and rep["leaks"] == {"sha256_overlap": 0, "near_duplicate_pairs": 0,
                                                             "d4_near_duplicate_pairs": 0}
    assert {r["split"] for r in tiles} <= {"train", "val"}  # the test split stays whole photos
    items = {it.image.resolve(): it for it in read_yolo(out)}  # boxes in pixels, as written
    for t in tiles:
        original, where = t["original"].split("#tile=")
        parent = parents[original]
        assert t["split"] == parent["split"] and t["source"] == "synth" and t["kind"] == parent["kind"]
        x, y, w, h = map(int, where.split(","))
        big = cv2.imread(str(out / parent["path"]))
        tile = cv2.imread(str(out / t["path"]))
        assert tile.shape[:2] == (h, w)
        assert np.abs(tile.astype(int) - big[y:y + h, x:x + w].astype(int)).mean() < 3  # JPEG q95 of the crop
        want = sorted((b.label, round(b.x1), round(b.y1), round(b.x2), round(b.y2))
                      for b in clip_boxes(items[(out / parent["path"]).resolve()].boxes, x, y, w, h))
        got = sorted((b.label, round(b.x1), round(b.y1), round(b.x2), round(b.y2))
                     for b in items[(out / t["path"]).resolve()].boxes)
        assert got == want
    assert any(not r["labels"] for r in tiles) and any(r["labels"] for r in tiles)  # negatives and positives
    assert build(_recipe(src, tiles=[spec]), tmp_path / "ds2")["manifest_sha256"] == rep["manifest_sha256"]
    # every window made around a box holds it whole
    item = Item(Path("x.jpg"), [Box("pistol", 100, 50, 130, 90)], width=300, height=200)
    for wx, wy, ww, wh in windows(item, np.random.default_rng(0), 96, jitter=0.2, per_box=20, negatives=0):
        assert wx <= 100 and wy <= 50 and wx + ww >= 130 and wy + wh >= 90 and wx + ww <= 300 and wy + wh <= 200
    with pytest.raises(ValueError, match="no photo with boxes"):
        build(_recipe(src, tiles=[{**spec, "source": "nope"}]), tmp_path / "ds3")


def test_twin_candidates_above_the_exact_limit_still_find_copies():
    """Above ``exact_limit`` refs the histogram candidates come from k-means groups (n^1.5, not n^2): a
    slightly altered copy of a photo is still among its candidates, and no photo is its own candidate."""
    from datasets import twins

    rng = np.random.default_rng(3)
    empty = (np.zeros((0, 2)), np.zeros((0, 32), np.uint8), np.zeros((0, 2)), np.zeros((0, 32), np.uint8))
    scenes_c, scenes_g = rng.dirichlet(np.full(432, 0.05), 40), rng.dirichlet(np.full(32, 0.3), 40)

    def sig(c, g):
        return twins.Signature((c / c.sum()).astype(np.float32), (g / g.sum()).astype(np.float32), *empty)

    sigs = []
    for _ in range(800):
        w, idx = rng.dirichlet(np.ones(3)), rng.choice(40, 3)
        sigs.append(sig(w @ scenes_c[idx] * rng.uniform(0.5, 1.5, 432), w @ scenes_g[idx] * rng.uniform(0.7, 1.3, 32)))
    pairs = []
    for i in rng.choice(800, 40, replace=False):
        sigs.append(sig(sigs[i].colour * rng.uniform(0.9, 1.1, 432), sigs[i].grey * rng.uniform(0.9, 1.1, 32)))
        pairs.append((int(i), len(sigs) - 1))
    grouped = twins.candidates(sigs, sigs, same=True, exact_limit=100)
    exact = twins.candidates(sigs, sigs, same=True)
    assert all(b in grouped[a] or a in grouped[b] for a, b in pairs)
    assert all(b in exact[a] or a in exact[b] for a, b in pairs)
    assert not any(i in c for i, c in enumerate(grouped))
    # the grouped search compares each photo with a fraction of the others, so it may pick other runners-up
    same_sets = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(grouped, exact))
    assert same_sets < len(sigs)
