"""training.distill: a narrow detector learns the wide one's raw head outputs; the CLI writes a checkpoint that
ultralytics (and so export.onnx) loads."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from tests.test_prune import _images, _wide_model, _yaml  # noqa: E402


def _excess(teacher, student, x) -> float:
    """Distillation loss of ``student`` on ``x`` above its floor (the teacher against itself)."""
    from training.distill import distill_loss, head_outputs

    with torch.no_grad():
        tb, tc = head_outputs(teacher.eval(), x)
        sb, sc = head_outputs(student.eval(), x)
        return (distill_loss(sb, sc, tb, tc)[0] - distill_loss(tb, tc, tb, tc)[0]).item()


def test_loss_is_zero_for_a_copy_and_positive_otherwise():
    from training.distill import distill_loss, head_outputs

    t = _wide_model()
    x = _images(2)
    with torch.no_grad():
        tb, tc = head_outputs(t, x)
        sb, sc = head_outputs(_wide_model(seed=1), x)
    same, _ = distill_loss(tb, tc, tb, tc)
    other, parts = distill_loss(sb, sc, tb, tc)
    # BCE against the teacher's own scores is their entropy, not 0: compare with the entropy itself
    p = tc.double().sigmoid()
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).sum() / p.sum().clamp(min=1.0)
    assert same.item() == pytest.approx(entropy.item(), rel=1e-4)
    assert other.item() > same.item() + 0.01 and parts["box"] > 0


def test_student_moves_towards_teacher_on_unseen_views():
    from ultralytics.nn.tasks import DetectionModel

    from training.distill import distill

    teacher = _wide_model()
    torch.manual_seed(3)
    student = DetectionModel(_yaml(0.125), nc=3, verbose=False)
    student.names = dict(teacher.names)
    batches = [_images(4, seed=s) for s in range(10, 14)]
    held = _images(4, seed=99)
    bn = [m.running_mean.clone() for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = _excess(teacher, student, held)
    log = distill(teacher, student, batches, lr=3e-3, steps=24)
    assert len(log) == 24 and all(np.isfinite(r["cls"]) and np.isfinite(r["box"]) for r in log)
    # on views it never trained on, the student's loss above the floor at least halves
    assert 0 <= _excess(teacher, student, held) < 0.5 * before
    # BatchNorm statistics are the student's own, untouched by the batches
    after = [m.running_mean for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(bn, after, strict=True))
    with pytest.raises(ValueError, match="classes"):
        other = DetectionModel(_yaml(0.125), nc=2, verbose=False)
        other.names = {0: "a", 1: "b"}
        distill(teacher, other, batches, steps=1)
    with pytest.raises(ValueError, match="nothing to do"):
        distill(teacher, student, batches, steps=0)


def test_views_are_square_and_in_range():
    from training.distill import augment_letterbox

    rng = np.random.default_rng(0)
    for h, w in ((50, 300), (400, 90), (640, 640)):
        im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        v = augment_letterbox(im, 64, rng)
        assert v.shape == (3, 64, 64) and v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1


def test_cli_writes_a_run_export_can_read(tmp_path, monkeypatch):
    import cv2
    from ultralytics import YOLO

    from training.distill import main

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "cfg"))
    teacher, student = tmp_path / "t.pt", tmp_path / "s.pt"
    names = {0: "pistol", 1: "rifle", 2: "battery"}  # taxonomy labels, so that export.onnx takes the run
    wide = _wide_model()
    wide.names = names
    torch.save({"model": wide, "ema": None, "train_args": {}}, teacher)
    from training.prune import prune

    narrow, _ = prune(wide, _yaml(0.125), [_images(4)], refit=False)
    torch.save({"model": narrow, "ema": None, "train_args": {}}, student)
    data = tmp_path / "ds"
    (data / "images" / "train").mkdir(parents=True)
    (data / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\n"
                                    "names: {0: pistol, 1: rifle, 2: battery}\n")
    for i, im in enumerate(_images(6, size=80)):
        pixels = (im.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        cv2.imwrite(str(data / "images" / "train" / f"{i}.jpg"), pixels)
    (data / "images" / "train" / "broken.jpg").write_bytes(b"not a jpeg")  # skipped, not a crash
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="no images folder"):
        main(["--teacher", str(teacher), "--student", str(student), "--data", str(tmp_path / "none"),
              "--out", str(out), "--steps", "1"])
    assert main(["--teacher", str(teacher), "--student", str(student), "--data", str(data), "--out", str(out),
                 "--steps", "3", "--batch", "2", "--imgsz", "64", "--workers", "0"]) == 0
    model = YOLO(str(out / "weights" / "best.pt"))
    assert model.model.args["imgsz"] == 64 and model.names == names
    assert sum(p.numel() for p in model.model.parameters()) == sum(p.numel() for p in narrow.parameters())
    assert (out / "run.json").is_file() and (out / "distill.json").is_file()
    # the run folder exports like a training run, and its card says how the weights were made
    from export.onnx import export_run

    models = tmp_path / "models"
    res = export_run(out, models_dir=models, name="det-distilled", data=data, n_parity=2)
    assert res["parity"]["raw_score_diff"] < 1e-3
    card = (models / "cards" / "det-distilled.md").read_text()
    assert "python -m training.distill" in card and "3 steps of 2 views of 6 train photos" in card
