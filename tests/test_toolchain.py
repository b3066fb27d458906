"""Dataset tools on hand-built cases, and the whole chain on CPU:
generate -> import -> dedupe/split -> train 1 epoch -> export ONNX (+int8) -> wtivision detects."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets.build import build
from datasets.formats import read_coco, read_voc, read_yolo
from wtivision.taxonomy import DETECTOR_CLASSES


def _img(path: Path, w=200, h=100, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    small = rng.integers(0, 255, (h // 10, w // 10, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    return path


def test_importers_round_trip_boxes(tmp_path):
    _img(tmp_path / "yolo" / "images" / "a.jpg")
    (tmp_path / "yolo" / "labels").mkdir(parents=True)
    (tmp_path / "yolo" / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (it,) = list(read_yolo(tmp_path / "yolo", ["knife", "gun"]))
    b = it.boxes[0]
    assert b.label == "gun" and (b.x1, b.y1, b.x2, b.y2) == pytest.approx((80, 30, 120, 70))

    _img(tmp_path / "coco" / "a.jpg")
    (tmp_path / "coco" / "ann.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 200, "height": 100}],
        "categories": [{"id": 3, "name": "Handgun"}],
        "annotations": [{"image_id": 7, "category_id": 3, "bbox": [10, 20, 30, 40]}]}))
    (it,) = list(read_coco(tmp_path / "coco" / "ann.json"))
    assert it.boxes[0].label == "Handgun" and (it.boxes[0].x2, it.boxes[0].y2) == (40, 60)

    _img(tmp_path / "voc" / "a.jpg")
    (tmp_path / "voc" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>200</width><height>100</height></size>"
        "<object><name>pistol</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>50</xmax><ymax>60</ymax>"
        "</bndbox></object></annotation>")
    (it,) = list(read_voc(tmp_path / "voc"))
    assert it.boxes[0].label == "pistol" and (it.boxes[0].x1, it.boxes[0].y2) == (5, 60)


def _source(tmp_path: Path, n: int) -> Path:
    """A YOLO-layout source of generated scenes plus a re-encoded near-duplicate of scene 0."""
    import cv2

    from datasets.synth.scenes import write

    src = write(tmp_path / "src", n, seed=11, size=160)
    imgs = sorted((src / "images" / "train").glob("*.jpg"))
    im = cv2.imread(str(imgs[0]))
    cv2.imwrite(str(src / "images" / "train" / "zz_near_dup.jpg"), cv2.resize(im, (150, 150)),
                [cv2.IMWRITE_JPEG_QUALITY, 60])
    shutil.copy(src / "labels" / "train" / (imgs[0].stem + ".txt"), src / "labels" / "train" / "zz_near_dup.txt")
    shutil.copy(imgs[1], src / "images" / "train" / "zz_exact_dup.jpg")
    shutil.copy(src / "labels" / "train" / (imgs[1].stem + ".txt"), src / "labels" / "train" / "zz_exact_dup.txt")
    return src


def _recipe(src: Path) -> dict:
    return {"name": "t", "seed": 0, "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "phash_distance": 8,
            "sources": [{"name": "synth", "format": "yolo", "path": str(src), "names": list(DETECTOR_CLASSES),
                         "licence": "CC0-1.0", "origin": "datasets/synth/scenes.py seed 11",
                         "class_map": {c: c for c in DETECTOR_CLASSES}}]}


def test_build_keeps_duplicates_in_one_split_and_reports_no_leaks(tmp_path):
    src = _source(tmp_path, 30)
    rep = build(_recipe(src), tmp_path / "ds")
    assert rep["images"] == 32 and rep["groups"] <= 30
    assert rep["leaks"] == {"sha256_overlap": 0, "near_duplicate_pairs": 0}
    import csv

    rows = list(csv.DictReader(open(tmp_path / "ds" / "manifest.csv")))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["sha256"] and r["licence"] == "CC0-1.0" for r in rows)
    # both duplicates landed with their originals
    import hashlib

    def split_of(p):
        h = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        return next(r["split"] for r in rows if r["sha256"] == h)

    imgs = sorted((src / "images" / "train").glob("scene_*.jpg"))
    assert split_of(src / "images/train/zz_exact_dup.jpg") == split_of(imgs[1])
    assert split_of(src / "images/train/zz_near_dup.jpg") == split_of(imgs[0])


@pytest.mark.slow
def test_end_to_end_train_export_detect_matches_ultralytics(tmp_path, monkeypatch):
    pytest.importorskip("ultralytics")
    pytest.importorskip("onnx")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ycfg"))
    from export.onnx import export_run
    from training.detect import train
    from wtivision.analyzer import Analyzer

    src = _source(tmp_path, 24)
    ds = tmp_path / "ds"
    build(_recipe(src), ds)
    cfg = {"name": "e2e", "model": "yolov8n.yaml", "data": str(ds), "epochs": 1, "imgsz": 96, "batch": 8,
           "workers": 0, "seed": 0, "device": "cpu", "runs": str(tmp_path / "runs"), "val": False,
           "_config_path": str(Path(__file__).resolve().parents[1] / "training/configs/smoke-cpu.yaml")}
    run = train(cfg)
    assert (run / "weights" / "last.pt").is_file() and (run / "config.yaml").is_file()
    assert json.loads((run / "run.json").read_text())["dataset_manifest_sha256"]
    models = tmp_path / "models"
    res = export_run(run, models_dir=models, name="e2e-det", int8=True, default=True, data=ds, n_parity=4)
    p = res["parity"]
    assert p["boxes_compared"] > 0, "the 1-epoch model must produce boxes at conf 0.01 to compare"
    assert p["max_box_diff_px_vs_ultralytics"] <= 1.0 and p["max_score_diff_vs_ultralytics"] <= 1e-3
    assert p["max_raw_output_diff_vs_pytorch"] < 1e-2
    assert 0.0 <= res["int8"]["agreement"] <= 1.0
    manifest = json.loads((models / "manifest.json").read_text())
    assert {m["name"] for m in manifest["models"]} == {"e2e-det", "e2e-det-int8"}
    assert (models / "cards" / "e2e-det.md").is_file()
    f = Analyzer(models_dir=models, ocr=False, conf_threshold=0.001).analyze(
        next((ds / "images" / "test").glob("*.jpg")))
    assert f.ok and f.models[0].name.startswith("e2e-det")
    assert all(d.label in DETECTOR_CLASSES for d in f.detections)
