"""onnxruntime sessions and the two generic runners: YOLO-style detection and
image classification. Outputs of the ONNX graphs are raw; all post-processing is
numpy (``wtivision.ops``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelError, require
from .ops import inner_edge_mask, letterbox, merge_tile_boxes, scale_boxes, tile_windows, yolo_postprocess
from .registry import ModelSpec, Registry
from .results import Classification, Detection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    """onnxruntime settings. ``intra_threads=0`` lets onnxruntime choose (all cores)."""

    intra_threads: int = 0
    inter_threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


def create_session(path: str, options: RuntimeOptions = RuntimeOptions()) -> Any:
    ort = require("onnxruntime", "core", "running ONNX models")
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_threads
    so.inter_op_num_threads = options.inter_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=list(options.providers))
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load {path}: {exc}") from exc


class OnnxModel:
    """A verified model file and its session (created on first use)."""

    def __init__(self, spec: ModelSpec, registry: Registry, options: RuntimeOptions = RuntimeOptions()):
        self.spec = spec
        self.registry = registry
        self.options = options
        self.path = registry.verify(spec)  # SHA-256 before anything else touches the file
        self._session = None

    @property
    def session(self):
        if self._session is None:
            session = create_session(str(self.path), self.options)
            self.check_input(session.get_inputs()[0].shape)
            self.input_name = session.get_inputs()[0].name
            self._session = session
        return self._session

    def check_input(self, shape: list) -> None:
        """Raise ModelError if the file's input ``shape`` cannot take what the manifest entry will feed it."""

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        sess = self.session
        return sess.run(None, {self.input_name: batch})

    @property
    def name(self) -> str:
        return self.spec.name


class YoloDetector(OnnxModel):
    """Runs an ultralytics YOLOv8/11 detection graph exported to ONNX (output 1 x (4+nc) x N)."""

    def __init__(self, spec: ModelSpec, registry: Registry, options: RuntimeOptions = RuntimeOptions(),
                 conf_threshold: float = 0.25, iou_threshold: float = 0.7, max_det: int = 300):
        super().__init__(spec, registry, options)
        if spec.task != "detect":
            raise ModelError(f"model {spec.name!r} has task {spec.task!r}, not 'detect'")
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.max_det = max_det
        h, w = (spec.input_size + spec.input_size)[:2] if len(spec.input_size) == 1 else spec.input_size[:2]
        self.input_hw = (int(h), int(w))
        self.pad_value = int(spec.preprocessing.get("pad_value", 114))
        #: ``preprocessing.rect_stride`` (a model exported with a dynamic input): photos are letterboxed to the
        #: smallest multiple of the stride that holds them at ``input_size`` (640 x 480 for a 4:3 photo at 640)
        #: instead of to the full square; ``None``: the square input.
        self.rect_stride = int(spec.preprocessing.get("rect_stride") or 0) or None
        trained = spec.extra.get("trained_classes") if spec.extra else None
        unknown = sorted(set(trained or []) - set(spec.classes))
        if unknown:
            raise ModelError(f"model {spec.name!r}: trained_classes {unknown} are not among its classes")
        #: Classes the model had training boxes for; detections of the others (untrained outputs) are dropped.
        self.active_classes: list[str] = list(trained) if trained else list(spec.classes)
        self.class_filter = None if not trained else [spec.classes.index(c) for c in trained]

    @property
    def feed(self) -> str | None:
        """How photos are fed to a dynamic-input model, which its file alone does not fix (part of what produced
        a result: ``Analyzer`` keys stored results with it); None for a fixed-size file (its SHA-256 says all)."""
        if not self.rect_stride:
            return None
        return f"{self.input_hw[0]}x{self.input_hw[1]} letterbox, padded to stride {self.rect_stride}"

    def check_input(self, shape: list) -> None:
        fixed = [d if isinstance(d, int) else None for d in list(shape)[2:4]]
        if self.rect_stride and None not in fixed:
            raise ModelError(f"model {self.name!r}: its manifest entry asks for stride-padded photos "
                             f"(preprocessing.rect_stride) but {self.path.name} has a fixed {fixed[0]} x {fixed[1]} "
                             "input: re-export it with a dynamic input (python -m export.dynamic) or drop rect_stride")
        if not self.rect_stride and None not in fixed and tuple(fixed) != self.input_hw:
            raise ModelError(f"model {self.name!r}: {self.path.name} takes {fixed[0]} x {fixed[1]} but its manifest "
                             f"entry says input_size {list(self.input_hw)}")

    def preprocess(self, image_bgr: np.ndarray, square: bool = False) -> tuple[np.ndarray, float, tuple[float, float]]:
        """The input tensor (1 x 3 x H x W, RGB in [0, 1]), the scale and the padding (left, top). ``square``:
        the full ``input_size`` square even for a dynamic-input model (tensors of one shape, to batch)."""
        stride = None if square else self.rect_stride
        padded, r, pad = letterbox(image_bgr, self.input_hw, color=self.pad_value, stride=stride)
        x = padded[:, :, ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW
        x = np.ascontiguousarray(x, dtype=np.float32) / 255.0
        return x[None], r, pad

    def raw(self, image_bgr: np.ndarray) -> tuple[np.ndarray, float, tuple[float, float]]:
        x, r, pad = self.preprocess(image_bgr)
        return self.run(x)[0], r, pad

    def boxes(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pass over the whole image: boxes (xyxy, image pixels), scores and class indices."""
        out, r, pad = self.raw(image_bgr)
        return self.decode(out, r, pad, image_bgr.shape[:2])

    def decode(self, out: np.ndarray, r: float, pad: tuple[float, float], hw: tuple[int, int],
               conf: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (xyxy, pixels of an image of size ``hw``), scores and class indices from this model's raw
        output for that image (``raw``), at ``conf`` (default ``conf_threshold``): one inference can be read
        at several thresholds."""
        boxes, scores, cls = yolo_postprocess(
            out, self.conf_threshold if conf is None else conf, self.iou_threshold, self.max_det,
            classes=self.class_filter
        )
        return scale_boxes(boxes, r, pad, hw), scores, cls

    def tiled_boxes(self, image_bgr: np.ndarray, zoom: float = 2.0, overlap: float = 0.2, merge_iou: float = 0.5,
                    max_side: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole-image pass plus one pass per tile (``ops.tile_windows``: crops seen at ``zoom`` times
        the whole image's scale), for objects too small once the whole photo is shrunk to the input size.

        Tiles only add small objects: a tile's box is dropped when an inner edge of the tile cuts it (the
        object is whole elsewhere) or when its longer side exceeds ``max_side`` of the tile (large objects are
        the whole pass's); the rest are merged with the whole pass's boxes by ``ops.merge_tile_boxes`` (a tile box
        inside a whole-pass box of its class that scores at least as high is dropped, overlapping boxes of a class
        keep the higher score, at ``merge_iou``). Costs one extra inference per tile (6 for a 16:9 photo at zoom
        2); photos no larger than the input size get the whole-image pass only."""
        whole = self.boxes(image_bgr)
        hw = image_bgr.shape[:2]
        parts = []
        for x, y, w, h in tile_windows(hw[0], hw[1], zoom, overlap, min_size=max(self.input_hw)):
            b, s, c = self.boxes(image_bgr[y:y + h, x:x + w])
            keep = ~inner_edge_mask(b, (x, y, w, h), hw) & (np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
                                                             <= max_side * max(w, h))
            parts.append((b[keep] + np.array([x, y, x, y], dtype=np.float64), s[keep], c[keep]))
        if not parts:
            return whole
        tiles = tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
        boxes, scores, cls = merge_tile_boxes(whole, tiles, merge_iou)
        return boxes[:self.max_det], scores[:self.max_det], cls[:self.max_det]

    def detect(self, image_bgr: np.ndarray, tiles: bool = False) -> list[Detection]:
        """Detections in original pixels; ``tiles=True`` adds the tiled passes (``tiled_boxes``)."""
        return self.detections(*(self.tiled_boxes(image_bgr) if tiles else self.boxes(image_bgr)))

    def detections(self, boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray) -> list[Detection]:
        """``Detection`` records (named by this model) of boxes, scores and class indices."""
        names = self.spec.classes
        dets = []
        for b, s, c in zip(boxes, scores, cls):
            if c >= len(names):
                raise ModelError(f"model {self.name!r} predicted class {c}, manifest lists {len(names)}")
            dets.append(Detection.of(names[c], float(s), [round(float(v), 2) for v in b], model=self.name))
        return dets


class ImageClassifier(OnnxModel):
    """Runs an ultralytics-style classification graph (input 1x3xSxS RGB in [0, 1]).

    Preprocessing matches ultralytics' classify transforms: resize the shorter side to
    S with PIL bilinear, centre-crop S x S, scale to [0, 1] (mean 0, std 1 unless the
    manifest's preprocessing says otherwise).
    """

    def __init__(self, spec: ModelSpec, registry: Registry, options: RuntimeOptions = RuntimeOptions()):
        super().__init__(spec, registry, options)
        if spec.task != "classify":
            raise ModelError(f"model {spec.name!r} has task {spec.task!r}, not 'classify'")
        self.size = int(spec.input_size[0])
        self.mean = np.asarray(spec.preprocessing.get("mean", [0.0, 0.0, 0.0]), np.float32)[:, None, None]
        self.std = np.asarray(spec.preprocessing.get("std", [1.0, 1.0, 1.0]), np.float32)[:, None, None]
        self.output_is_prob = bool(spec.preprocessing.get("output_softmax", True))

    def preprocess(self, image_bgr: np.ndarray) -> np.ndarray:
        from PIL import Image

        rgb = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1]))
        w, h = rgb.size
        s = self.size
        if w <= h:
            nw, nh = s, int(s * h / w)
        else:
            nw, nh = int(s * w / h), s
        rgb = rgb.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
        rgb = rgb.crop((left, top, left + s, top + s))
        x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
        x = (x - self.mean) / self.std
        return np.ascontiguousarray(x[None], dtype=np.float32)

    def probabilities(self, image_bgr: np.ndarray) -> np.ndarray:
        out = self.run(self.preprocess(image_bgr))[0][0].astype(np.float64)
        if not self.output_is_prob:
            out = np.exp(out - out.max())
            out /= out.sum()
        return out

    def classify(self, image_bgr: np.ndarray, k: int = 3, label_map: dict[str, str] | None = None,
                 detection_index: int | None = None) -> Classification:
        p = self.probabilities(image_bgr)
        order = np.argsort(-p)[:k]
        names = self.spec.classes

        def name(i: int) -> str:
            return label_map.get(names[i], names[i]) if label_map else names[i]

        best = int(order[0])
        return Classification(
            task=self.spec.role or "classify",
            label=name(best),
            confidence=float(p[best]),
            top_k=[(name(int(i)), float(p[i])) for i in order],
            detection_index=detection_index,
            original_label=names[best],
            model=self.name,
        )
