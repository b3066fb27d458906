"""The shipped default detector: ONNX in wtivision vs its PyTorch source (``models/<extra.pytorch_weights>``)
run by ultralytics, on the example photos, plus its int8 twin's agreement with it.

Parity: every box within ``BOX_PX`` px and every score within ``SCORE_TOL`` of ultralytics' (``detect_parity``,
the check the export itself runs). Needs ultralytics (the ``[train]`` extra); fails when the manifest names
PyTorch weights that are not there.
"""

from pathlib import Path

import numpy as np
import pytest

from wtivision.registry import Registry, sha256_file
from wtivision.runtime import YoloDetector

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (REPO / "examples").iterdir() if p.suffix.lower() in (".jpg", ".png"))


@pytest.fixture(scope="module")
def registry():
    return Registry(REPO / "models")


@pytest.fixture(scope="module")
def detector(registry):
    spec = next((s for s in registry.specs() if s.role == "detector" and s.precision == "fp32"), None)
    if spec is None:
        pytest.skip("no fp32 detector in models/manifest.json")
    return YoloDetector(spec, registry)


@pytest.fixture(scope="module")
def images():
    import cv2

    return [cv2.imread(str(p)) for p in EXAMPLES]


def test_detector_manifest_entry(detector, registry):
    spec = detector.spec
    assert spec.task == "detect" and spec.licence == "AGPL-3.0-or-later" and (REPO / "models" / spec.card).is_file()
    assert set(detector.active_classes) <= set(spec.classes) and detector.active_classes
    assert spec.metrics["test"]["per_class_AP50"], "the card's test-split metrics are missing"
    src = spec.extra.get("pytorch_weights")
    assert src, "extra.pytorch_weights names the PyTorch source of the export"
    assert sha256_file(registry.root / src) == spec.extra["pytorch_weights_sha256"]


def test_onnx_matches_pytorch_source(detector, registry, images):
    pytest.importorskip("ultralytics", reason="pip install 'wtivision[train]'")
    from ultralytics import YOLO

    from export.common import offline_ultralytics
    from export.onnx import BOX_PX, SCORE_TOL, detect_parity

    offline_ultralytics()
    pt = YOLO(str(registry.root / detector.spec.extra["pytorch_weights"]))
    r = detect_parity(pt, detector, images)
    assert r["boxes_compared_vs_ultralytics_pytorch"] >= len(images)
    assert r["max_box_diff_px_vs_ultralytics_pytorch"] <= BOX_PX
    assert r["max_score_diff_vs_ultralytics_pytorch"] <= SCORE_TOL


def test_int8_twin_agrees_with_fp32(detector, registry, images):
    from export.common import box_agreement

    qspec = next((s for s in registry.specs() if s.name == f"{detector.spec.name}-int8"), None)
    if qspec is None:
        pytest.skip("no int8 twin shipped")
    q = YoloDetector(qspec, registry)
    detector.conf_threshold = q.conf_threshold = 0.25
    ref = [detector.detect(im) for im in images]
    other = [q.detect(im) for im in images]
    assert sum(map(len, ref)) > 0
    # the export measured agreement on the test split; on the examples it must be of the same order
    assert box_agreement(ref, other) >= min(0.9, qspec.metrics["int8_agreement_with_fp32"]["conf_0.25"] - 0.05)
    assert np.isfinite([d.confidence for ds in other for d in ds]).all()


def test_an_int8_default_is_the_twin_of_a_shipped_fp32_model_and_met_the_rule(registry):
    """The rule for an int8 default (issue 5): it matched >= 0.98 of its fp32 model's detections at conf 0.25 and
    0.1 and is faster; the manifest must name that fp32 model by name and SHA-256, and the numbers must say so."""
    from export.onnx import int8_good_enough

    default = registry.default_for("detector")
    if default is None or default.precision != "int8":
        pytest.skip("the default detector is not int8")
    ref = registry.get(default.extra["int8_of"])
    assert ref.precision == "fp32" and not ref.default
    assert default.extra["int8_of_sha256"] == ref.sha256  # the twin of this very file, not of an earlier export
    assert default.extra["meets_agreement_rule"] is True
    assert int8_good_enough({"agreement": default.metrics["int8_agreement_with_fp32"]})
    assert default.metrics["latency_ms"] < default.metrics["fp32_latency_ms"]
    assert default.classes == ref.classes and default.card == ref.card
    assert default.extra.get("trained_classes") == ref.extra.get("trained_classes")
