"""Shared fixtures: generated photos and a tiny, hand-built ONNX detector.

The tiny detector ignores its input's content and always emits the same raw head
output, which makes the whole post-processing chain (letterbox, NMS, rescale to
original pixels) checkable against hand-computed boxes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def write_photo(path: Path, w: int = 320, h: int = 240, seed: int = 0, fmt: str | None = None) -> Path:
    """A generated photo-like image (gradient + noise + shapes), saved with PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 / max(w, 1)), (y * 255 / max(h, 1)), np.full_like(x, 128)], -1)
    img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt)
    return path


def build_constant_detector(path: Path, raw: np.ndarray, size: int = 64, dynamic: bool = False) -> None:
    """An ONNX graph: images (1,3,size,size) -> output0 = raw + 0 * mean(images); ``dynamic``: images
    (1,3,h,w) of any height and width."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    raw = raw.astype(np.float32)
    const = numpy_helper.from_array(raw, "raw")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["raw", "z"], ["output0"]),
    ]
    shape: list[int | str] = [1, 3, "h", "w"] if dynamic else [1, 3, size, size]
    graph = helper.make_graph(
        nodes,
        "constant_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(raw.shape))],
        initializer=[const, numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# raw head output for a 64x64 input, 3 classes, 4 anchors (xywh centre, class scores)
TINY_CLASSES = ["pistol", "cartridge", "marking"]
TINY_RAW = np.array(
    [
        [
            # anchor:  0     1     2     3
            [16.0, 17.0, 48.0, 40.0],  # cx
            [32.0, 32.0, 32.0, 20.0],  # cy
            [16.0, 16.0, 8.0, 10.0],  # w
            [8.0, 8.0, 8.0, 4.0],  # h
            [0.90, 0.80, 0.05, 0.10],  # pistol
            [0.02, 0.05, 0.70, 0.10],  # cartridge
            [0.01, 0.01, 0.01, 0.20],  # marking (below 0.25)
        ]
    ],
    dtype=np.float32,
)


@pytest.fixture()
def tiny_models_dir(tmp_path: Path) -> Path:
    """A models folder holding the constant detector, registered in a manifest."""
    from wtivision.registry import ModelSpec, sha256_file, write_manifest_entry

    d = tmp_path / "models"
    d.mkdir()
    build_constant_detector(d / "tiny.onnx", TINY_RAW)
    write_manifest_entry(
        d,
        ModelSpec(
            name="tiny-detector", file="tiny.onnx", sha256=sha256_file(d / "tiny.onnx"), task="detect",
            classes=TINY_CLASSES, input_size=[64, 64], preprocessing={"letterbox": True, "pad_value": 114},
            licence="AGPL-3.0-or-later", source="tests/conftest.py", role="detector", default=True,
        ),
    )
    return d
