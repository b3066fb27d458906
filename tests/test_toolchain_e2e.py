"""The whole toolchain on CPU through its command lines: recipe -> datasets.build (import, dedupe, split) ->
training.detect (1 epoch, imgsz 96) -> export.onnx (fp32 + int8, parity, card, manifest) -> wtivision's
YoloDetector and Analyzer. Also the parity criterion: the trained model gives the same boxes in wtivision
as in ultralytics (PyTorch weights and ONNX) on the same images."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("ultralytics")
pytest.importorskip("onnx")
pytest.importorskip("onnxslim")
pytest.importorskip("albumentations")
pytest.importorskip("imagehash")


@pytest.mark.slow
def test_build_train_export_detect(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics-config"))
    import cv2
    import onnx

    from datasets.build import main as build_main
    from export.onnx import int8_good_enough
    from export.onnx import main as export_main
    from training.detect import main as train_main
    from wtivision.analyzer import Analyzer
    from wtivision.registry import Registry
    from wtivision.runtime import YoloDetector
    from wtivision.taxonomy import DETECTOR_CLASSES

    t0 = time.perf_counter()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: e2e\nseed: 0\nsplit: {train: 0.7, val: 0.15, test: 0.15}\nsources:\n"
                      "  - {name: synth, format: scenes, n: 120, seed: 3, size: 128, licence: AGPL-3.0-or-later,"
                      " origin: datasets/synth/scenes.py}\n")
    ds = tmp_path / "ds"
    assert build_main(["--config", str(recipe), "--out", str(ds)]) == 0
    build = json.loads((ds / "build.json").read_text())
    assert build["leaks"] == {"sha256_overlap": 0, "near_duplicate_pairs": 0, "d4_near_duplicate_pairs": 0}

    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"name: e2e\nmodel: yolov8n.yaml\ndata: {ds}\nepochs: 1\nimgsz: 96\nbatch: 2\nworkers: 0\n"
                   f"seed: 0\ndevice: cpu\nval: false\nruns: {tmp_path / 'runs'}\naugment_strength: 1.0\n"
                   "train_args: {warmup_epochs: 0, optimizer: AdamW, lr0: 0.02, mosaic: 0.0}\n")
    assert train_main(["--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "e2e"
    assert (run / "weights" / "best.pt").is_file() and (run / "config.yaml").is_file()
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    assert json.loads((run / "run.json").read_text())["dataset_manifest_sha256"] == build["manifest_sha256"]
    assert "augmentations" in (run / "args.yaml").read_text()  # field augmentations reached ultralytics
    t_train = time.perf_counter()

    models = tmp_path / "models"
    assert export_main([str(run), "--switch-off", "bazooka", "--models-dir", str(tmp_path / "m0")]) == 1  # unknown
    assert export_main([str(run), "--int8", "--default", "--name", "e2e-det", "--models-dir", str(models),
                        "--switch-off", "grenade"]) == 0
    res = json.loads((run / "export.json").read_text())
    assert res["switched_off"] == ["grenade"] and "grenade" not in res["trained_classes"]  # grenade had boxes
    p = res["parity"]
    print("parity", p, "int8", res["int8"], "latency_ms_fp32", res["latency_ms_fp32"])
    # the parity criterion, against ultralytics with the PyTorch weights and with the ONNX file
    for key in ("pytorch", "onnx"):
        assert p[f"boxes_compared_vs_ultralytics_{key}"] > 0, "low conf threshold must leave boxes to compare"
        assert p[f"max_box_diff_px_vs_ultralytics_{key}"] <= 1.0
        assert p[f"max_score_diff_vs_ultralytics_{key}"] <= 1e-3
    assert p["raw_box_diff_px"] <= 1e-2 and p["raw_score_diff"] <= 1e-4
    assert 0.0 <= res["int8"]["agreement"]["conf_top10"] <= 1.0
    assert res["int8"]["agreement"]["fp32_detections_conf_top10"] > 0

    manifest = json.loads((models / "manifest.json").read_text())
    entries = {m["name"]: m for m in manifest["models"]}
    # the int8 twin is installed only where it meets the agreement rule (a 1-epoch model rarely does)
    assert res["int8"]["shipped"] == int8_good_enough(res["int8"])
    assert set(entries) == {"e2e-det"} | ({"e2e-det-int8"} if res["int8"]["shipped"] else set())
    assert ("NOT shipped" in (models / entries["e2e-det"]["card"]).read_text()) != res["int8"]["shipped"]
    fp32 = entries["e2e-det"]
    assert fp32["role"] == "detector" and fp32["classes"] == list(DETECTOR_CLASSES)
    assert fp32["preprocessing"] == {"letterbox": True, "pad_value": 114} and fp32["input_size"] == [96, 96]
    assert sum(m["default"] for m in manifest["models"]) == 1
    card = (models / fp32["card"]).read_text()
    assert "synthetic only" in card and build["manifest_sha256"] in card and "**Switched off**" in card
    assert fp32["extra"]["trained_classes"] == res["trained_classes"]
    m = onnx.load(str(models / fp32["file"]))
    meta = {q.key: q.value for q in m.metadata_props}
    assert json.loads(meta["wtivision_classes"]) == list(DETECTOR_CLASSES)
    assert meta["wtivision_task"] == "detect" and meta["wtivision_dataset_manifest_sha256"] == build["manifest_sha256"]
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 96, 96]

    reg = Registry(models)
    det = YoloDetector(reg.get("e2e-det"), reg, conf_threshold=0.0)
    image = cv2.imread(str(next((ds / "images" / "test").glob("*.jpg"))))
    dets = det.detect(image)
    assert dets and all(d.label in DETECTOR_CLASSES and d.label != "grenade" for d in dets)
    f = Analyzer(models_dir=models, ocr=False, conf_threshold=0.0).analyze(
        next((ds / "images" / "test").glob("*.jpg")))
    assert f.ok and f.models[0].name.startswith("e2e-det")
    t_end = time.perf_counter()
    print(f"build+train {t_train - t0:.1f} s, export+detect {t_end - t_train:.1f} s")
    assert t_end - t0 < 240

    # a dynamic input: exported so (`--dynamic`), or a shipped static model and its int8 twin re-exported
    from export.dynamic import main as dynamic_main
    from export.dynamic import quant_params

    wide = cv2.imread(str(next((ds / "images" / "test").glob("*.jpg"))))[:, :80]  # 128 x 80: rect 96 x 64
    dyn = tmp_path / "m-dyn"
    assert export_main([str(run), "--dynamic", "--name", "e2e-dyn", "--models-dir", str(dyn)]) == 0
    assert dynamic_main(["e2e-dyn", "--models-dir", str(dyn)]) == 1  # already dynamic: refused, nothing changed
    static = tmp_path / "m-static"
    assert export_main([str(run), "--int8", "--keep-int8", "--keep-pytorch", "--name", "e2e-s",
                        "--models-dir", str(static)]) == 0
    shutil.copytree(static, tmp_path / "m-before")  # the re-export replaces the files in place
    before = Registry(tmp_path / "m-before")
    assert dynamic_main(["e2e-s", "--models-dir", str(static)]) == 0
    for models_dir, name in ((dyn, "e2e-dyn"), (static, "e2e-s"), (static, "e2e-s-int8")):
        reg = Registry(models_dir)
        spec = reg.get(name)
        assert spec.preprocessing["rect_stride"] == 32 and spec.input_size == [96, 96]
        dims = onnx.load(str(models_dir / spec.file)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims][2:] == ["height", "width"]
        det = YoloDetector(spec, reg, conf_threshold=0.0)
        assert det.preprocess(wide)[0].shape == (1, 3, 96, 64)  # padded to the stride, not to 96 x 96
        assert det.detect(wide)
        if models_dir == static:
            assert spec.extra["static_export_sha256"] == before.get(name).sha256 != spec.sha256
    # same weights: on a square photo the old static file's boxes, to float noise; the int8 twin is the same
    # quantised model (its outputs may step one quantum where a value sits on a rounding edge)
    square = cv2.resize(wide, (96, 96))
    reg = Registry(static)
    ref, det = (YoloDetector(r.get("e2e-s"), r, conf_threshold=0.0) for r in (before, reg))
    a, b = ref.boxes(square), det.boxes(square)
    assert len(a[0]) == len(b[0]) > 0 and np.allclose(a[0], b[0], atol=1e-2)
    pa, pb = (quant_params(r.root / r.get("e2e-s-int8").file) for r in (before, reg))
    assert pa.keys() == pb.keys() and len(pa) > 100 and all(np.array_equal(pa[k], pb[k]) for k in pa)
    # a mixed-precision twin (training.int8_tune --fp32-modules) is re-quantised with the same modules in fp32
    from export.common import install_model
    from export.onnx import quantize_int8

    mixed = tmp_path / "m-mixed"
    shutil.copytree(tmp_path / "m-before", mixed)
    reg = Registry(mixed)
    fp, tw = reg.get("e2e-s"), reg.get("e2e-s-int8")
    q = quantize_int8(mixed / fp.file, YoloDetector(fp, reg), [square, wide], tmp_path / "mixed-int8.onnx",
                      fp32_modules=(0, 1))
    tw.extra = {**tw.extra, "fp32_modules": [0, 1]}
    install_model(q, tw, mixed)
    n_mixed = len(quant_params(mixed / tw.file))
    assert dynamic_main(["e2e-s", "--models-dir", str(mixed)]) == 0
    after = quant_params(mixed / Registry(mixed).get("e2e-s-int8").file)
    assert len(after) == n_mixed < len(pa)  # the stem stays fp32: no quantisation parameter gained or lost


@pytest.mark.slow
def test_training_resumes_after_interruption(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics-config"))
    from ultralytics.utils.callbacks import base

    from datasets.build import build
    from training.common import train

    ds = tmp_path / "ds"
    build({"name": "r", "seed": 0, "sources": [{"name": "s", "format": "scenes", "n": 16, "seed": 4, "size": 96,
                                                "licence": "AGPL-3.0-or-later", "origin": "scenes.py"}]}, ds)
    cfg = {"name": "r", "model": "yolov8n.yaml", "data": str(ds), "epochs": 2, "imgsz": 64, "batch": 4,
           "workers": 0, "seed": 0, "device": "cpu", "val": False, "runs": str(tmp_path / "runs")}

    class Interrupted(Exception):
        pass

    def interrupt(trainer):
        if trainer.epoch == 0:
            raise Interrupted

    original = list(base.default_callbacks["on_model_save"])
    base.default_callbacks["on_model_save"] = [*original, interrupt]  # stop right after epoch 1 is saved
    try:
        with pytest.raises(Interrupted):
            train(cfg, "detect")
    finally:
        base.default_callbacks["on_model_save"] = original
    run = tmp_path / "runs" / "r"
    assert (run / "weights" / "last.pt").is_file()
    assert len((run / "results.csv").read_text().strip().splitlines()) == 2  # header + epoch 1
    train(cfg, "detect", resume=True)
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert "augmentations" in (run / "args.yaml").read_text()


@pytest.mark.slow
def test_classifier_build_train_export(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics-config"))
    import csv

    import cv2
    import numpy as np

    from datasets.build import build
    from export.onnx import export_run
    from training.classify import train
    from wtivision.registry import Registry
    from wtivision.runtime import ImageClassifier

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    with open(src / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        for i in range(40):
            base = np.full((48, 64, 3), 60 if i % 2 else 190, np.float64)
            cv2.imwrite(str(src / f"{i}.jpg"), np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))
            w.writerow([f"{i}.jpg", "Pistol" if i % 2 else "Revolver"])
    ds = tmp_path / "ds"
    build({"name": "c", "seed": 0, "phash_distance": 0, "split": {"train": 0.6, "val": 0.2, "test": 0.2},
           "sources": [{"name": "c", "format": "csv", "path": str(src / "labels.csv"), "licence": "CC0-1.0",
                        "origin": "generated", "class_map": {"Pistol": "pistol", "Revolver": "revolver"}}]}, ds)
    run = train({"name": "cls", "model": "yolov8n-cls.yaml", "data": str(ds / "classify"), "epochs": 1,
                 "imgsz": 32, "batch": 4, "workers": 0, "runs": str(tmp_path / "runs")})
    models = tmp_path / "models"
    res = export_run(run, models_dir=models, name="cls", int8=True, role="typology", keep_int8=True)
    assert res["int8"]["shipped"] and Registry(models).get("cls-int8")  # --keep-int8 installs it whatever it scores
    p = res["parity"]
    assert p["top1_agreement_vs_ultralytics"] == 1.0 and p["max_prob_diff_vs_ultralytics"] <= 1e-3
    assert 0.0 <= res["int8"]["agreement"]["top1"] <= 1.0 and "top1" in res["metrics_test"]
    reg = Registry(models)
    clf = ImageClassifier(reg.get("cls"), reg)
    assert clf.classify(cv2.imread(str(src / "0.jpg"))).label in ("pistol", "revolver")


def test_gray_probability_reaches_the_field_augmentations():
    A = pytest.importorskip("albumentations")
    from training.augment import field_augmentations

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for gray, want_grey in ((1.0, True), (0.0, False)):
        out = A.Compose(field_augmentations(1.0, gray=gray))(image=img)["image"]
        grey = bool((out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all())
        assert grey == want_grey
