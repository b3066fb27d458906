import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, write_photo
from wtivision.analyzer import Analyzer
from wtivision.errors import ModelIntegrityError, ModelNotFoundError
from wtivision.ops import TILE_MERGE


def test_boxes_come_back_in_original_pixels(tiny_models_dir, tmp_path):
    photo = write_photo(tmp_path / "p.jpg", w=320, h=240)
    f = Analyzer(models_dir=tiny_models_dir, ocr=False).analyze(photo)
    assert f.ok, f.error
    # letterbox 320x240 -> 64x64: r = 0.2, 8 px of padding on top; see TINY_RAW
    got = [(d.label, round(d.confidence, 3), d.box) for d in f.detections]
    assert got == [("pistol", 0.9, [40.0, 100.0, 120.0, 140.0]), ("cartridge", 0.7, [220.0, 100.0, 260.0, 140.0])]
    assert [d.family for d in f.detections] == ["firearm", "ammunition"]
    assert f.models[0].name == "tiny-detector" and len(f.models[0].sha256) == 64
    assert f.width == 320 and f.height == 240 and len(f.sha256) == 64


def test_array_input_and_bad_array(tiny_models_dir):
    a = Analyzer(models_dir=tiny_models_dir, ocr=False)
    f = a.analyze(np.zeros((240, 320, 3), np.uint8))
    assert f.ok and len(f.detections) == 2 and f.format == "array"
    bad = a.analyze(np.zeros((10, 10), np.float32))
    assert bad.status == "error" and bad.error_code == "bad_array"


def test_altered_model_is_refused(tiny_models_dir):
    with open(tiny_models_dir / "tiny.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="tiny.onnx"):
        Analyzer(models_dir=tiny_models_dir, ocr=False)


def test_missing_model_is_named(tiny_models_dir):
    (tiny_models_dir / "tiny.onnx").unlink()
    with pytest.raises(ModelNotFoundError, match="tiny.onnx"):
        Analyzer(models_dir=tiny_models_dir, ocr=False)


def test_runtime_never_imports_torch_nor_touches_network(tiny_models_dir, tmp_path):
    photo = write_photo(tmp_path / "p.png", fmt="PNG")
    code = f"""
import socket, sys, os
def _no_net(*a, **k):
    raise AssertionError("network access attempted")
socket.socket.connect = _no_net
socket.create_connection = _no_net
before = set(os.listdir('.'))
import wtivision
from wtivision import Analyzer
assert set(os.listdir('.')) == before, "import wrote files"
f = Analyzer(models_dir={str(tiny_models_dir)!r}).analyze({str(photo)!r})
assert f.ok and f.detections, f
g = Analyzer().analyze({str(photo)!r})  # the bundled models: typology and OCR
assert g.ok and {{m.task for m in g.models}} >= {{"classify", "ocr_rec"}}, g
from wtivision.cli import build_parser; build_parser()
HEAVY = ('torch', 'torchvision', 'ultralytics', 'paddle', 'paddleocr', 'albumentations')
heavy = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)
print('HEAVY', heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def _detector_dir(root, raw, trained=None, with_ocr=False):
    """A models folder with a constant detector (``raw`` head output) and, optionally, the shipped OCR models."""
    import shutil

    from tests.conftest import TINY_CLASSES, build_constant_detector
    from wtivision.registry import ModelSpec, Registry, sha256_file, write_manifest_entry

    root.mkdir()
    build_constant_detector(root / "tiny.onnx", raw)
    write_manifest_entry(root, ModelSpec(
        name="tiny-detector", file="tiny.onnx", sha256=sha256_file(root / "tiny.onnx"), task="detect",
        classes=TINY_CLASSES, input_size=[64, 64], role="detector", default=True,
        extra={"trained_classes": trained} if trained else {}))
    if with_ocr:
        for spec in Registry(REPO / "models").specs():
            if spec.role.startswith("ocr") and spec.default:
                shutil.copy(REPO / "models" / spec.file, root / spec.file)
                write_manifest_entry(root, spec)
    return root


def test_untrained_detector_classes_are_dropped(tmp_path):
    from tests.conftest import TINY_RAW

    photo = write_photo(tmp_path / "p.jpg", w=320, h=240)
    d = _detector_dir(tmp_path / "m", TINY_RAW, trained=["cartridge"])
    f = Analyzer(models_dir=d, ocr=False).analyze(photo)
    assert [dt.label for dt in f.detections] == ["cartridge"]
    with pytest.raises(Exception, match="not among its classes"):
        Analyzer(models_dir=_detector_dir(tmp_path / "bad", TINY_RAW, trained=["tank"]), ocr=False)


def test_close_up_with_nothing_detected_is_read_whole(tmp_path):
    """A detector without a trained `marking` class: a serial close-up (nothing detected) is read by OCR on
    the whole photo; a photo with a detected object is not."""
    import cv2

    from datasets.synth.text import generate
    from tests.conftest import TINY_RAW
    from wtivision.ocr.normalize import normalise

    sample = next(iter(generate("serials", 1, 77)))
    photo = tmp_path / "serial.png"
    cv2.imwrite(str(photo), cv2.copyMakeBorder(sample.image, 40, 40, 40, 40, cv2.BORDER_REPLICATE))
    quiet = TINY_RAW.copy()
    quiet[0, 4:] = 0.01  # no score above the threshold: nothing detected
    f = Analyzer(models_dir=_detector_dir(tmp_path / "quiet", quiet, trained=["pistol", "cartridge"],
                                          with_ocr=True)).analyze(photo)
    assert not f.detections and [t.kind for t in f.texts] == ["serial"]
    assert f.texts[0].text == normalise(sample.text)[0]
    f = Analyzer(models_dir=_detector_dir(tmp_path / "busy", TINY_RAW, trained=["pistol", "cartridge"],
                                          with_ocr=True)).analyze(photo)
    assert f.detections and not f.texts


def test_tiled_detection_adds_the_tiles_in_photo_pixels(tiny_models_dir, tmp_path):
    """The tiny detector finds a pistol at [8,28,24,36] and a cartridge at [44,28,52,36] of whatever 64 px
    input it gets: a 128 px photo is tiled into 9 crops of 64 px at x, y in (0, 32, 64); each crop's boxes
    come back shifted by its corner, beside the whole-photo pass's (scaled x2), none merged (no overlap)."""
    from wtivision.registry import Registry
    from wtivision.runtime import YoloDetector

    reg = Registry(tiny_models_dir)
    det = YoloDetector(reg.get("tiny-detector"), reg)
    img = np.full((128, 128, 3), 90, np.uint8)
    plain = det.detect(img)
    assert sorted((d.label, tuple(d.box)) for d in plain) == [("cartridge", (88, 56, 104, 72)),
                                                              ("pistol", (16, 56, 48, 72))]
    tiled = det.detect(img, tiles=True)
    want = {("pistol", (16, 56, 48, 72)), ("cartridge", (88, 56, 104, 72))}
    for x in (0, 32, 64):
        for y in (0, 32, 64):
            want |= {("pistol", (8 + x, 28 + y, 24 + x, 36 + y)), ("cartridge", (44 + x, 28 + y, 52 + x, 36 + y))}
    assert {(d.label, tuple(d.box)) for d in tiled} == want and len(tiled) == len(want) == 20
    # tiles only add small objects: with max_side 0.2 (12.8 px of a 64 px tile) the 16 px pistols are left
    # to the whole pass, the 8 px cartridges stay
    b, s, c = det.tiled_boxes(img, max_side=0.2)
    assert sorted(np.bincount(c, minlength=2)[:2].tolist()) == [1, 10] and len(b) == 11
    # a photo no larger than the input gets the whole-photo pass only
    small = np.full((64, 64, 3), 90, np.uint8)
    assert [d.box for d in det.detect(small, tiles=True)] == [d.box for d in det.detect(small)]


def test_settings_that_change_results_change_the_model_set(tiny_models_dir):
    from wtivision.analyzer import model_set_id

    default = Analyzer(models_dir=tiny_models_dir)
    assert default.settings == {} and default.model_set == model_set_id(default.models)  # ids of earlier scans
    ids = {default.model_set}
    for kw in ({"tiles": True}, {"ocr": False}, {"conf_threshold": 0.5}):
        a = Analyzer(models_dir=tiny_models_dir, **kw)
        tile_rule = {"tile_merge": TILE_MERGE} if "tiles" in kw else {}  # tiled results depend on the merge rule
        assert len(a.settings) == 1 + len(tile_rule) and a.settings.items() >= tile_rule.items()
        assert a.model_set not in ids
        ids.add(a.model_set)
    assert Analyzer(models_dir=tiny_models_dir, tiles=True).model_set == Analyzer(
        models_dir=tiny_models_dir, tiles=True).model_set


def test_a_non_default_detector_can_be_chosen_by_name(tiny_models_dir, tmp_path):
    """`Analyzer(detector=NAME)` / `scan --detector NAME`: a second detector of the manifest (here one that sees
    only a cartridge) replaces the default; the findings name it; unknown names and non-detectors are refused."""
    from tests.conftest import TINY_CLASSES, TINY_RAW, build_constant_detector
    from wtivision.cli import main as cli_main
    from wtivision.errors import ModelError
    from wtivision.registry import ModelSpec, sha256_file, write_manifest_entry

    raw = TINY_RAW.copy()
    raw[0, 4, :] = 0.01  # no pistol in the second model
    build_constant_detector(tiny_models_dir / "other.onnx", raw)
    write_manifest_entry(tiny_models_dir, ModelSpec(
        name="other-detector", file="other.onnx", sha256=sha256_file(tiny_models_dir / "other.onnx"),
        task="detect", classes=TINY_CLASSES, input_size=[64, 64], role="detector", default=False))
    photo = write_photo(tmp_path / "p.jpg", w=320, h=240)
    default = Analyzer(models_dir=tiny_models_dir, ocr=False).analyze(photo)
    other = Analyzer(models_dir=tiny_models_dir, ocr=False, detector="other-detector").analyze(photo)
    assert [d.label for d in default.detections] == ["pistol", "cartridge"]
    assert [d.label for d in other.detections] == ["cartridge"]
    assert default.models[0].name == "tiny-detector" and other.models[0].name == "other-detector"
    with pytest.raises(ModelNotFoundError, match="nope"):
        Analyzer(models_dir=tiny_models_dir, ocr=False, detector="nope")
    write_manifest_entry(tiny_models_dir, ModelSpec(
        name="a-classifier", file="other.onnx", sha256=sha256_file(tiny_models_dir / "other.onnx"),
        task="classify", classes=["x"], input_size=[64, 64], role="typology", default=False))
    with pytest.raises(ModelError, match="not a detector"):
        Analyzer(models_dir=tiny_models_dir, ocr=False, detector="a-classifier")
    out = tmp_path / "scan"
    assert cli_main(["scan", str(tmp_path), "--out", str(out), "--models-dir", str(tiny_models_dir), "--no-ocr",
                     "--detector", "other-detector", "-q"]) == 0
    import json

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [d["label"] for d in rows[0]["detections"]] == ["cartridge"]
    assert rows[0]["models"][0]["name"] == "other-detector"


def test_manifest_that_does_not_fit_the_file_is_a_clear_model_error(tiny_models_dir):
    from wtivision.errors import ModelError
    from wtivision.registry import ModelSpec, Registry
    from wtivision.runtime import YoloDetector

    reg = Registry(tiny_models_dir)
    spec = reg.get("tiny-detector")  # a fixed 64 x 64 input
    image = np.zeros((30, 60, 3), np.uint8)
    assert YoloDetector(spec, reg).preprocess(image)[0].shape == (1, 3, 64, 64)
    for bad, why in (({"preprocessing": {**spec.preprocessing, "rect_stride": 32}}, "rect_stride"),
                     ({"input_size": [96, 96]}, "input_size")):
        det = YoloDetector(ModelSpec(**{**spec.to_dict(), **bad}), reg)
        with pytest.raises(ModelError, match=why):
            det.detect(image)


def test_a_dynamic_input_detector_keys_results_with_how_it_is_fed(tiny_models_dir):
    import json

    from tests.conftest import TINY_RAW, build_constant_detector
    from wtivision.registry import sha256_file
    from wtivision.results import ImageFindings

    base = Analyzer(models_dir=tiny_models_dir, ocr=False)
    assert base.settings == {"ocr": False}
    assert [m.feed for m in base.models] == [""]  # a fixed-size file: its hash says all
    manifest = tiny_models_dir / "manifest.json"
    data = json.loads(manifest.read_text())
    ids = {base.model_set}
    for stride, size in ((32, 64), (32, 96), (16, 64)):  # same file, fed three other ways
        data["models"][0]["preprocessing"]["rect_stride"] = stride
        data["models"][0]["input_size"] = [size, size]
        manifest.write_text(json.dumps(data))
        a = Analyzer(models_dir=tiny_models_dir, ocr=False)
        feed = f"{size}x{size} letterbox, padded to stride {stride}"
        assert a.settings == {"ocr": False, "detector_input": feed}
        assert [m.feed for m in a.models] == [feed]
        assert a.model_set not in ids and [m.sha256 for m in a.models] == [m.sha256 for m in base.models]
        ids.add(a.model_set)
    # a file with a dynamic input, fed stride-padded photos: every record names the feed next to the file's hash
    build_constant_detector(tiny_models_dir / "dyn.onnx", TINY_RAW, dynamic=True)
    data["models"][0].update(file="dyn.onnx", sha256=sha256_file(tiny_models_dir / "dyn.onnx"), input_size=[64, 64])
    data["models"][0]["preprocessing"]["rect_stride"] = 32
    manifest.write_text(json.dumps(data))
    f = Analyzer(models_dir=tiny_models_dir, ocr=False).analyze(np.zeros((30, 60, 3), np.uint8))
    assert f.ok and f.detections, f.error
    assert [(m.name, m.feed) for m in f.models] == [("tiny-detector", "64x64 letterbox, padded to stride 32")]
    assert ImageFindings.from_json(f.to_json()).models == f.models
