"""The export's parity helpers on hand-built raw outputs (no torch needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from export.common import box_agreement, top1_agreement
from export.onnx import ParityError, compare_detections, gap_threshold, int8_good_enough
from wtivision.results import Detection


def _raw(rows: list[tuple[float, float, float, float, float, float]]) -> np.ndarray:
    """(1, 4 + 2, N) head output from (cx, cy, w, h, score_a, score_b) rows."""
    return np.asarray(rows, np.float32).T[None]


def test_gap_threshold_keeps_well_separated_candidates():
    raw = _raw([(10, 10, 8, 8, 0.9, 0.1), (40, 40, 8, 8, 0.6, 0.1), (70, 70, 8, 8, 0.3, 0.1),
                (90, 90, 8, 8, 0.1, 0.05)])
    t = gap_threshold(raw, abs_margin=1e-3)
    assert 0.1 < t < 0.3  # all three clear candidates above, the fourth below


def test_gap_threshold_stops_at_ties():
    # candidate 2 ties candidate 1 and overlaps it (same class): NMS order would be arbitrary
    raw = _raw([(10, 10, 8, 8, 0.9, 0.1), (50, 50, 8, 8, 0.5, 0.1), (50.5, 50, 8, 8, 0.5 + 1e-8, 0.1),
                (90, 90, 8, 8, 0.2, 0.1)])
    t = gap_threshold(raw, abs_margin=1e-6)
    assert 0.5 < t < 0.9
    # a near-tie between the two best classes of a candidate also stops it
    raw = _raw([(10, 10, 8, 8, 0.9, 0.1), (50, 50, 8, 8, 0.5, 0.5 - 1e-9), (90, 90, 8, 8, 0.2, 0.1)])
    assert 0.5 < gap_threshold(raw, abs_margin=1e-6) < 0.9
    # nothing separable: threshold above the top score
    raw = _raw([(10, 10, 8, 8, 0.5, 0.1), (10.2, 10, 8, 8, 0.5, 0.1)])
    assert gap_threshold(raw, abs_margin=1e-6) > 0.5


def _results(boxes, scores, cls):
    import torch

    return SimpleNamespace(boxes=SimpleNamespace(xyxy=torch.tensor(boxes), conf=torch.tensor(scores),
                                                 cls=torch.tensor(cls)))


def test_compare_detections():
    pytest.importorskip("torch")
    ours = [Detection.of("pistol", 0.9, [10, 10, 50, 50]), Detection.of("rifle", 0.5, [0, 0, 5, 5])]
    n, bd, sd = compare_detections(ours, _results([[0.0, 0.5, 5, 5], [10.2, 10, 50, 50]], [0.5, 0.9004], [1, 0]),
                                   ["pistol", "rifle"])
    assert n == 2 and bd == pytest.approx(0.5) and sd == pytest.approx(4e-4, abs=1e-6)
    with pytest.raises(ParityError):
        compare_detections(ours, _results([[10.0, 10, 50, 50]], [0.9], [0]), ["pistol", "rifle"])
    with pytest.raises(ParityError):
        compare_detections(ours, _results([[10.0, 10, 50, 50], [0, 0, 5, 5]], [0.9, 0.5], [0, 0]),
                           ["pistol", "rifle"])


def test_agreements():
    a = [[Detection.of("pistol", 0.9, [0, 0, 10, 10]), Detection.of("rifle", 0.8, [20, 20, 40, 40])]]
    b = [[Detection.of("pistol", 0.7, [1, 1, 10, 10]), Detection.of("pistol", 0.8, [20, 20, 40, 40])]]
    assert box_agreement(a, b) == 0.5 and box_agreement([[]], b) == 1.0
    assert top1_agreement(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75
    assert not int8_good_enough({"agreement": {"conf_0.25": 1.0, "fp32_detections_conf_0.25": 0,
                                               "conf_0.1": 1.0, "fp32_detections_conf_0.1": 0}})
    assert int8_good_enough({"agreement": {"conf_0.25": 0.99, "fp32_detections_conf_0.25": 100,
                                           "conf_0.1": 0.985, "fp32_detections_conf_0.1": 200}})


def test_sample_images_top_up_only_when_asked(tmp_path):
    from conftest import write_photo

    from export.onnx import sample_images

    for i in range(3):
        write_photo(tmp_path / f"{i}.jpg", 64, 48, seed=i)
    assert len(sample_images(tmp_path, 10, top_up=False)) == 3  # the int8 check uses real images only
    assert len(sample_images(tmp_path, 10, fallback_size=64)) == 10  # parity/calibration: topped up with scenes
    assert len(sample_images(tmp_path, 2, top_up=False)) == 2


def test_module_nodes_selects_ultralytics_modules_by_index(tmp_path):
    """Mixed-precision int8 keeps whole ultralytics modules in fp32: module 1 must not catch 10-19, and nodes
    outside ``/model.N/`` (graph inputs' casts, the exporter's own nodes) are never selected."""
    import onnx
    from onnx import TensorProto, helper

    from export.onnx import module_nodes

    names = ["/model.0/conv/Conv", "/model.1/Relu", "/model.10/Relu", "/model.12/m.0/Relu", "/model.1x/Relu",
             "/other/Relu", "Relu_7"]
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=n) for i, n in enumerate(names)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"t{len(names)}", TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert module_nodes(path, 0, 1) == ["/model.0/conv/Conv", "/model.1/Relu"]
    assert module_nodes(path, 10, 22) == ["/model.10/Relu", "/model.12/m.0/Relu"]
    assert module_nodes(path, 2, 9) == []


def test_head_output_nodes_are_the_plain_convs_ending_each_branch(tmp_path):
    """int8 variant `head_out_fp32`: only the detection head's (last module's) plain output convolutions of the
    cv2 / cv3 branches, not their Conv blocks (``/conv/Conv``), the DFL conv or convs of other modules."""
    import onnx
    from onnx import TensorProto, helper

    from export.onnx import head_output_nodes

    names = [("Conv", "/model.21/cv2/conv/Conv"), ("Conv", "/model.21/cv2.0/cv2.0.2/Conv"),
             ("Conv", "/model.22/cv2.0/cv2.0.0/conv/Conv"), ("Conv", "/model.22/cv2.0/cv2.0.2/Conv"),
             ("Conv", "/model.22/cv3.0/cv3.0.0/conv/Conv"), ("Conv", "/model.22/cv3.2/cv3.2.2/Conv"),
             ("Sigmoid", "/model.22/cv3.2/Sigmoid"), ("Conv", "/model.22/dfl/conv/Conv")]
    nodes = [helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], name=n) for i, (op, n) in enumerate(names)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"t{len(names)}", TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert head_output_nodes(path) == ["/model.22/cv2.0/cv2.0.2/Conv", "/model.22/cv3.2/cv3.2.2/Conv"]
