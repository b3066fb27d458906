"""The shipped firearm typology model (basegun-ml 2.0.7 converted to ONNX).

Runtime tests (no torch): integrity, manifest entry, behaviour on warm-up-like images.
Parity and conversion tests (need ultralytics and the basegun-ml wheel, looked for in
``$WTIVISION_WHEEL_CACHE`` (default ``.cache/wheels``) and ``/tmp/dl``, downloaded by pip if absent; skipped
when it cannot be had): ONNX in wtivision vs ``ultralytics.YOLO(classification.pt)(PIL image)``.
"""

import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from export.basegun import FILE, MIN_AGREEMENT, NAME, PROJECT, VERSION, parity, varied_images
from wtivision.errors import ModelIntegrityError
from wtivision.registry import Registry, sha256_file
from wtivision.runtime import ImageClassifier
from wtivision.taxonomy import TYPOLOGY_CLASSES

REPO = Path(__file__).resolve().parents[1]
WARMUP = REPO / "examples" / "revolver_basegun-warmup.jpg"  # basegun_ml/warmup.jpg, see examples/ATTRIBUTION.md
PROB_TOL = 1e-3


@pytest.fixture(scope="module")
def spec():
    s = Registry().default_for("typology")
    if s is None:
        pytest.fail("no default typology model in models/manifest.json")
    return s


@pytest.fixture(scope="module")
def warmup_bgr():
    import cv2

    img = cv2.imread(str(WARMUP))
    assert img is not None, f"cannot read {WARMUP}"
    return img


@pytest.fixture(scope="module")
def wheel():
    from export.common import find_wheel, wheel_dirs

    try:
        return find_wheel(PROJECT, VERSION, download=True, timeout_s=120)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"{PROJECT}=={VERSION} wheel not in {' or '.join(map(str, wheel_dirs()))} and pip could not "
                    f"download it ({exc}); run: pip download {PROJECT}=={VERSION} --no-deps -d .cache/wheels")


def test_manifest_entry_of_the_typology_model(spec):
    assert (spec.name, spec.file, spec.task, spec.role, spec.default) == (NAME, FILE, "classify", "typology", True)
    assert spec.classes == list(TYPOLOGY_CLASSES) and len(spec.classes) == 12
    assert spec.input_size == [320] and spec.licence == "AGPL-3.0"
    assert spec.source.startswith(f"PyPI {PROJECT}=={VERSION} (classification.pt, sha256 ")
    assert spec.metrics["parity_top1_agreement_vs_pytorch"] >= MIN_AGREEMENT
    assert (Registry().root / spec.card).is_file()


def test_shipped_typology_model_classifies_into_12_classes(spec, warmup_bgr):
    clf = ImageClassifier(spec, Registry())  # verifies the SHA-256 first
    assert clf.classify(warmup_bgr, label_map=TYPOLOGY_CLASSES).label == "revolver"
    for img in varied_images(warmup_bgr, 12, seed=3):
        p = clf.probabilities(img)
        assert p.shape == (12,) and abs(p.sum() - 1) < 1e-4 and (p >= 0).all()
        c = clf.classify(img, label_map=TYPOLOGY_CLASSES)
        assert c.label in TYPOLOGY_CLASSES.values() and c.original_label in TYPOLOGY_CLASSES
        assert TYPOLOGY_CLASSES[c.original_label] == c.label
        assert c.top_k[0][1] == pytest.approx(c.confidence) and c.confidence == pytest.approx(p.max())


def test_tampered_typology_model_is_refused(spec, tmp_path):
    reg = Registry()
    shutil.copy(reg.manifest_path, tmp_path / "manifest.json")
    data = bytearray(reg.path(spec).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / spec.file).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=spec.file):
        ImageClassifier(spec, Registry(tmp_path))


@pytest.mark.slow
def test_shipped_onnx_agrees_with_pytorch_original(spec, wheel, warmup_bgr, tmp_path):
    pytest.importorskip("ultralytics")
    from export.common import offline_ultralytics

    offline_ultralytics()
    from ultralytics import YOLO

    with zipfile.ZipFile(wheel) as z:
        (tmp_path / "classification.pt").write_bytes(z.read("basegun_ml/classification.pt"))
    assert sha256_file(tmp_path / "classification.pt") in spec.source, "shipped ONNX is not from this wheel's .pt"
    torch_model = YOLO(str(tmp_path / "classification.pt"))
    r = parity(ImageClassifier(spec, Registry()), torch_model, varied_images(warmup_bgr, 120, seed=99))
    assert r["top1_agreement"] >= MIN_AGREEMENT, r
    assert r["max_abs_prob_diff"] < PROB_TOL, r


@pytest.mark.slow
def test_conversion_from_the_wheel(spec, wheel, tmp_path):
    pytest.importorskip("ultralytics")
    from export.basegun import convert

    r = convert(wheel, tmp_path, n_parity=16, latency_runs=0)
    assert r["top1_agreement"] >= MIN_AGREEMENT and r["max_abs_prob_diff"] < PROB_TOL, r
    assert r["opset"] >= 17 and r["imgsz"] == 320
    new = Registry(tmp_path).get(NAME)
    assert new.sha256 == sha256_file(tmp_path / FILE) == r["onnx_sha256"]
    assert (new.classes, new.input_size, new.role, new.default) == (spec.classes, [320], "typology", True)
    assert (tmp_path / "cards" / "typology-basegun.md").read_text(encoding="utf-8").count("AGPL-3.0") >= 1
    ImageClassifier(new, Registry(tmp_path)).probabilities(np.zeros((64, 200, 3), np.uint8))
