"""The shipped firearm typology model: integrity and behaviour (runtime only), and parity with its
PyTorch original from the basegun-ml wheel (needs the [train] extra and the wheel)."""

import shutil
import zipfile

import numpy as np
import pytest

from wtivision.errors import ModelIntegrityError
from wtivision.registry import Registry
from wtivision.runtime import ImageClassifier
from wtivision.taxonomy import TYPOLOGY_CLASSES


@pytest.fixture(scope="module")
def spec():
    s = Registry().default_for("typology")
    if s is None:
        pytest.fail("no default typology model in models/manifest.json")
    return s


def _images(n):
    rng = np.random.default_rng(7)
    return [rng.integers(0, 255, (int(rng.integers(80, 500)), int(rng.integers(80, 500)), 3), dtype=np.uint8)
            for _ in range(n)]


def test_shipped_typology_model_classifies_into_12_classes(spec):
    clf = ImageClassifier(spec, Registry())
    assert spec.classes == list(TYPOLOGY_CLASSES)
    for img in _images(5):
        p = clf.probabilities(img)
        assert p.shape == (12,) and abs(p.sum() - 1) < 1e-4 and (p >= 0).all()
        c = clf.classify(img, label_map=TYPOLOGY_CLASSES)
        assert c.label in TYPOLOGY_CLASSES.values() and c.original_label in TYPOLOGY_CLASSES
        assert c.top_k[0][1] == pytest.approx(c.confidence)


def test_tampered_typology_model_is_refused(spec, tmp_path):
    reg = Registry()
    shutil.copy(reg.manifest_path, tmp_path / "manifest.json")
    data = bytearray(reg.path(spec).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / spec.file).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=spec.file):
        ImageClassifier(spec, Registry(tmp_path))


@pytest.mark.slow
def test_onnx_agrees_with_pytorch_original(spec, tmp_path):
    pytest.importorskip("ultralytics")
    from export.basegun import PROJECT, VERSION, varied_images
    from export.common import find_wheel, offline_ultralytics

    try:
        wheel = find_wheel(PROJECT, VERSION, download=False)
    except FileNotFoundError as exc:
        pytest.skip(f"{exc}; run: pip download basegun-ml==2.0.7 --no-deps -d .cache/wheels")
    offline_ultralytics()
    import cv2
    from PIL import Image
    from ultralytics import YOLO

    with zipfile.ZipFile(wheel) as z:
        (tmp_path / "classification.pt").write_bytes(z.read("basegun_ml/classification.pt"))
        (tmp_path / "warmup.jpg").write_bytes(z.read("basegun_ml/warmup.jpg"))
    torch_model = YOLO(str(tmp_path / "classification.pt"))
    clf = ImageClassifier(spec, Registry())
    imgs = varied_images(cv2.imread(str(tmp_path / "warmup.jpg")), 60, seed=99)  # not the export's seed
    agree, worst = 0, 0.0
    for img in imgs:
        p_onnx = clf.probabilities(img)
        p_pt = torch_model(Image.fromarray(img[:, :, ::-1]), verbose=False)[0].probs.data.cpu().numpy()
        agree += int(p_onnx.argmax() == p_pt.argmax())
        worst = max(worst, float(np.abs(p_onnx - p_pt).max()))
    assert agree / len(imgs) >= 0.99
    assert worst < 1e-3
