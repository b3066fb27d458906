"""training.prune: a wide YOLOv8 detector shrunk to a narrower layout (s -> n) keeps what it can of its function."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")


def _yaml(width: float, name: str = "yolov8.yaml") -> dict:
    """yolov8 layout at depth 0.33 and the given width (tiny widths keep the test fast)."""
    from ultralytics.nn.tasks import yaml_model_load

    d = copy.deepcopy(yaml_model_load(name))
    d["scales"] = {"x": [0.33, width, 1024]}
    d["scale"] = "x"
    return d


def _wide_model(seed: int = 0):
    """A randomly initialised 'wide' detector with non-trivial BatchNorm statistics (as after training)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    m = DetectionModel(_yaml(0.25), nc=3, verbose=False)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.weight.data = 0.5 + torch.rand(n, generator=g)
            mod.bias.data = 0.2 * torch.randn(n, generator=g)
            mod.running_mean = 0.1 * torch.randn(n, generator=g)
            mod.running_var = 0.5 + torch.rand(n, generator=g)
    m.names = {0: "a", 1: "b", 2: "c"}
    return m.eval()


def _images(n: int, size: int = 64, seed: int = 1):
    """Smooth random images (blurred noise), closer to photos than white noise."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = cv2.GaussianBlur(rng.random((size, size, 3), dtype=np.float32), (0, 0), 3)
        out.append(np.ascontiguousarray(((im - im.min()) / (np.ptp(im) + 1e-6)).transpose(2, 0, 1)))
    return torch.from_numpy(np.stack(out))


def test_same_widths_copy_is_exact():
    from training.prune import prune

    src = _wide_model()
    dst, report = prune(src, _yaml(0.25), [_images(4)])
    assert report["pruned_spaces"] == 0 and report["params_target"] == report["params_source"]
    x = _images(2, seed=7)
    with torch.no_grad():
        assert torch.equal(src(x)[0], dst(x)[0])


def test_half_width_has_target_size_and_refit_tracks_the_source():
    from ultralytics.nn.tasks import DetectionModel

    from training.prune import prune

    src = _wide_model()
    calib = [_images(8, seed=s) for s in (2, 3)]
    held = _images(4, seed=9)
    with torch.no_grad():
        ref = src(held)[0]
    errors = {}
    for refit in (False, True):
        dst, report = prune(src, _yaml(0.125), calib, refit=refit)
        expect = sum(p.numel() for p in DetectionModel(_yaml(0.125), nc=3, verbose=False).parameters())
        assert report["params_target"] == expect < report["params_source"] / 3
        assert report["pruned_spaces"] > 40 and dst.names == src.names
        with torch.no_grad():
            out = dst(held)[0]
        assert out.shape == ref.shape and torch.isfinite(out).all()
        errors[refit] = (out[:, :4] - ref[:, :4]).abs().mean().item()
    # on photos it never saw, the least-squares refit brings the narrow model's boxes far closer to the source's
    assert errors[True] < 0.5 * errors[False], errors


def test_unsupported_layout_is_refused():
    from ultralytics.nn.tasks import DetectionModel

    from training.prune import prune

    src = DetectionModel(_yaml(0.25, "yolo11.yaml"), nc=3, verbose=False).eval()
    with pytest.raises(ValueError, match="not supported"):
        prune(src, _yaml(0.125, "yolo11.yaml"), [_images(2)])
    with pytest.raises(ValueError, match="more channels"):
        prune(_wide_model(), _yaml(0.5), [_images(2)])


def test_cli_writes_a_checkpoint_ultralytics_loads(tmp_path, monkeypatch):
    import cv2
    import yaml
    from ultralytics import YOLO

    from training.prune import main

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "cfg"))
    weights = tmp_path / "wide.pt"
    torch.save({"model": _wide_model(), "ema": None, "train_args": {}}, weights)
    target = tmp_path / "narrow.yaml"
    target.write_text(yaml.safe_dump({k: v for k, v in _yaml(0.125).items() if k != "yaml_file"}))
    train = tmp_path / "ds" / "images" / "train"
    train.mkdir(parents=True)
    for i, im in enumerate(_images(5, size=80)):
        cv2.imwrite(str(train / f"{i}.jpg"), (im.numpy().transpose(1, 2, 0) * 255).astype(np.uint8))
    (train / "broken.jpg").write_bytes(b"not a jpeg")  # skipped with a warning, not a crash
    out = tmp_path / "narrow.pt"
    with pytest.raises(SystemExit, match="no training image"):
        main(["--weights", str(weights), "--data", str(tmp_path / "nowhere"), "--out", str(out)])
    assert main(["--weights", str(weights), "--to", str(target), "--data", str(tmp_path / "ds"),
                 "--imgsz", "64", "--images", "6", "--out", str(out)]) == 0
    report = torch.load(out, map_location="cpu", weights_only=False)["pruned"]
    assert report["calibration_images"] == 5 and report["pruned_spaces"] > 40
    model = YOLO(str(out))
    assert model.names == {0: "a", 1: "b", 2: "c"}
    assert sum(p.numel() for p in model.model.parameters()) == report["params_target"]
    assert len(model.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)) == 1
