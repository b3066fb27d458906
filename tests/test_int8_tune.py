"""training.int8_tune: the PyTorch simulation of onnxruntime's int8 rounding tracks the real quantised graph,
finds every simulated tensor in it, leaves the model untouched when removed, and learned ranges bring the
simulated int8 model closer to fp32 on photos it did not learn from."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime.quantization")

from tests.test_prune import _images, _wide_model  # noqa: E402

SIZE = 64


def test_onnx_scope():
    from training.int8_tune import onnx_scope

    assert onnx_scope("/model.4/m.0/cv1/conv/Conv_output_0") == "model.4.m.0.cv1.conv"
    assert onnx_scope("/model.22/cv3.2/cv3.2.2/Conv_output_0") == "model.22.cv3.2.2"
    assert onnx_scope("/model.12/Concat_output_0") == "model.12"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random fused detector, its ONNX export (as the ultralytics exporter names nodes), a runtime runner
    and its MinMax-quantised int8 twin."""
    from ultralytics.nn.modules import Detect

    from export.onnx import quantize_int8, stage
    from wtivision.registry import ModelSpec

    td = tmp_path_factory.mktemp("int8")
    teacher = _wide_model().eval()
    for m in teacher.modules():
        if isinstance(m, Detect):  # class logits around -1 (scores near 0.27), as a trained model's candidates
            for branch in m.cv3:
                branch[-1].bias.data.fill_(-1.0)
    model = copy.deepcopy(teacher).fuse()
    export = copy.deepcopy(model).eval()
    for m in export.modules():
        if isinstance(m, Detect):
            m.export, m.format = True, "onnx"
    path = td / "tiny.onnx"
    torch.onnx.export(export, torch.zeros(1, 3, SIZE, SIZE), str(path), opset_version=17, input_names=["images"],
                      output_names=["output0"], dynamo=False)
    spec = ModelSpec(name="tiny", file=path.name, sha256="", task="detect", classes=["pistol", "rifle", "battery"],
                     input_size=[SIZE, SIZE], preprocessing={"letterbox": True, "pad_value": 114})
    runner = stage(spec, path, conf=0.01)
    calib = [(x.numpy().transpose(1, 2, 0)[:, :, ::-1] * 255).astype(np.uint8) for x in _images(8, SIZE, seed=5)]
    q = quantize_int8(path, runner, calib, td / "tiny-int8.onnx")
    return {"teacher": teacher, "model": model, "path": path, "runner": runner, "calib": calib, "q": q, "dir": td}


def _logits(session, x: np.ndarray) -> np.ndarray:
    """Class logits from the graph's sigmoid scores (a random detector scores near 0, so compare logits)."""
    p = np.concatenate([session.run(None, {"images": x[i:i + 1]})[0][:, 4:] for i in range(len(x))]).astype(float)
    p = np.clip(p, 1e-12, 1 - 1e-7)
    return np.log(p / (1 - p))


def _track(tiny, model, sim, q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class logits of fp32 (onnxruntime), of the int8 graph ``q`` and of the simulation ``sim`` (calibrated
    here as the export calibrates) on photo-like images."""
    import onnxruntime as ort

    from training.distill import head_outputs
    from training.int8_tune import calibration_batches

    x = torch.round(_images(6, SIZE, seed=40) * 255) / 255  # as photos: uint8 / 255, which int8 keeps exactly
    sim.calibrate(calibration_batches(tiny["calib"], tiny["runner"]))
    sim.enabled = True
    with torch.no_grad():
        simulated = head_outputs(model.train(), x)[1].numpy()
    fp32 = _logits(ort.InferenceSession(str(tiny["path"]), providers=["CPUExecutionProvider"]), x.numpy())
    int8 = _logits(ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]), x.numpy())
    return fp32, int8, simulated


def _assert_tracks(fp32: np.ndarray, int8: np.ndarray, simulated: np.ndarray) -> None:
    real_err, sim_err = (int8 - fp32).ravel(), (simulated - fp32).ravel()
    assert np.abs(real_err).mean() > 1e-4  # int8 does change the logits of this model
    # the simulation reproduces onnxruntime's int8 error, not just some noise of the same size
    assert np.corrcoef(real_err, sim_err)[0, 1] > 0.6
    assert np.abs(simulated - int8).mean() < 0.6 * np.abs(real_err).mean()


def test_simulation_tracks_onnxruntime_int8_and_maps_every_tensor(tiny):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from training.distill import head_outputs
    from training.int8_tune import FakeQuant, calibration_batches, map_points, ort_ranges

    model = tiny["model"]
    x = _images(6, SIZE, seed=41)
    with torch.no_grad():
        before = [t.clone() for t in head_outputs(model.train(), x)]
    sim = FakeQuant(model)
    batches = calibration_batches(tiny["calib"], tiny["runner"])
    sim.calibrate(batches)
    pre = tiny["dir"] / "pre.onnx"
    quant_pre_process(str(tiny["path"]), str(pre), skip_symbolic_shape=True)
    ranges = ort_ranges(pre, [b[i:i + 1].numpy() for b in batches for i in range(len(b))], tiny["dir"])
    names = map_points(sim, ranges)
    assert len(names) == len(sim.points) > 50 and len(set(names.values())) == len(names)
    missing = dict(ranges)
    del missing[names[sim.points[3].name]]
    with pytest.raises(ValueError, match="not found in the ONNX graph"):
        map_points(sim, missing)

    _assert_tracks(*_track(tiny, model, sim, tiny["q"]))

    sim.remove()
    with torch.no_grad():
        after = head_outputs(model.train(), x)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not any(hasattr(m, "forward") and "forward" in m.__dict__ for m in model.modules()
                   if isinstance(m, torch.nn.Conv2d))


def test_fp32_head_outputs_stay_fp32_in_the_simulation_as_in_the_twin(tiny):
    from export.onnx import head_output_nodes, quantize_int8
    from training.int8_tune import FakeQuant, head_output_convs, onnx_scope

    model = copy.deepcopy(tiny["model"])
    convs = head_output_convs(model)
    # the same convolutions as the export keeps fp32 (3 scales x box and class branch)
    assert len(convs) == 6 and sorted(convs) == sorted(onnx_scope(n + "_output_0")
                                                       for n in head_output_nodes(tiny["path"]))
    with pytest.raises(ValueError, match="not quantised convolutions"):
        FakeQuant(copy.deepcopy(model), fp32=["model.0.nope"])
    sim = FakeQuant(model, fp32=convs)
    assert sorted(p.scope for p in sim.points if not p.on) == sorted(convs)
    q = quantize_int8(tiny["path"], tiny["runner"], tiny["calib"], tiny["dir"] / "tiny-int8-head.onnx",
                      fp32_head_outputs=True)
    fp32, int8, simulated = _track(tiny, model, sim, q)
    _assert_tracks(fp32, int8, simulated)
    # logits no longer land on the 256 levels of one uint8 range: far more distinct values than 256 per scale
    assert len(np.unique(np.round(simulated, 6))) > 1000


def test_fp32_modules_match_the_twin_which_still_quantises_their_outputs_where_int8_reads_them(tiny):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.onnx import quantised_activations, quantize_int8
    from training.int8_tune import FakeQuant, calibration_batches, fp32_scopes, map_points, ort_ranges

    model = copy.deepcopy(tiny["model"])
    batches = calibration_batches(tiny["calib"], tiny["runner"])
    pre = tiny["dir"] / "pre-stem.onnx"
    quant_pre_process(str(tiny["path"]), str(pre), skip_symbolic_shape=True)
    ranges = ort_ranges(pre, [b[i:i + 1].numpy() for b in batches for i in range(len(b))], tiny["dir"])

    # the plain twin quantises exactly the simulated activations
    plain = FakeQuant(copy.deepcopy(model))
    plain.calibrate(batches)
    assert plain.match_twin(map_points(plain, ranges), quantised_activations(tiny["q"])) == []

    assert fp32_scopes(model, modules=(0, 2)) == ["model.0", "model.1", "model.2"]
    with pytest.raises(ValueError, match="not quantised convolutions or modules"):
        FakeQuant(copy.deepcopy(model), fp32=["model.99"])
    sim = FakeQuant(model, fp32=fp32_scopes(model, modules=(0, 2)))
    sim.calibrate(batches)
    names = map_points(sim, ranges)
    off = {p.name for p in sim.points if not p.on}
    assert off and all(p.scope.split(".")[1] in "012" for p in sim.points if p.name in off)
    q = quantize_int8(tiny["path"], tiny["runner"], tiny["calib"], tiny["dir"] / "tiny-int8-stem.onnx",
                      fp32_modules=(0, 2))
    changed = sim.match_twin(names, quantised_activations(q))
    # model.2's output feeds model.3's int8 convolution: onnxruntime rounds it, so the simulation must too;
    # everything else inside the stem stays fp32
    assert changed == ["model.2.cv2.mul"] and sim.points[[p.name for p in sim.points].index(changed[0])].on
    assert sum(not p.on for p in sim.points) == len(off) - 1
    assert not any(t.startswith(("/model.0/", "/model.1/")) for t in quantised_activations(q))
    _assert_tracks(*_track(tiny, model, sim, q))


def test_learned_ranges_bring_int8_closer_to_fp32_on_unseen_images(tiny):
    from training.distill import head_outputs
    from training.int8_tune import FakeQuant, calibration_batches, logit_loss, tune_ranges

    teacher, model = tiny["teacher"], copy.deepcopy(tiny["model"])
    sim = FakeQuant(model)
    sim.calibrate(calibration_batches(tiny["calib"], tiny["runner"]))
    for p in sim.points:  # as on real photos, where rare extremes set MinMax ranges far wider than typical values
        p.lo, p.hi = 16 * p.lo, 16 * p.hi
    sim.enabled = True
    held = _images(8, SIZE, seed=77)

    def loss() -> float:
        with torch.no_grad():
            tb, tc = head_outputs(teacher.eval(), held)
            sb, sc = head_outputs(model.train(), held)
            return logit_loss(sb, sc, tb, tc)[0].item()

    start = loss()
    start_ranges = [p.range() for p in sim.points]
    log, snaps = tune_ranges(teacher, model, sim, [_images(4, SIZE, seed=s) for s in range(100, 110)], steps=20,
                             lr=0.05, every=10)
    assert len(log) == 20 and all(np.isfinite(r["cls"]) for r in log)
    assert [s for s, _ in snaps] == [10, 20] and snaps[-1][1] == {p.name: p.range() for p in sim.points}
    assert loss() < 0.8 * start
    assert [p.range() for p in sim.points] != start_ranges
    assert all(lo <= 0 <= hi for lo, hi in (p.range() for p in sim.points))
    # the weights are not touched: only ranges are learned
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny["model"].state_dict().values(),
                                                  strict=True))


def test_twin_section_replaces_an_older_one():
    from training.int8_tune import with_twin_section

    rep = {"model": "d", "tensors": 3, "steps": 5, "batch": 2, "chosen_step": 5,
           "int8": {"images": 10, "agreement": {"conf_0.25": 0.99, "fp32_detections_conf_0.25": 100, "conf_0.1": 0.98,
                                                "fp32_detections_conf_0.1": 150},
                    "latency_ms": 20.0, "fp32_latency_ms": 50.0, "latency_vs_fp32": 0.4, "also": {}}}
    once = with_twin_section("# card\n\ntext\n", rep)
    twice = with_twin_section(once, {**rep, "steps": 7, "chosen_step": 6})
    assert once.count("## int8 twin") == twice.count("## int8 twin") == 1
    assert "after 6 of 7 batches" in twice and "of 5 batches" not in twice and twice.startswith("# card\n\ntext")
    assert "does not meet the agreement rule" in once
    # how near the rule is: 1 of 100 missed at 0.25 (2 allowed), 3 of 150 at 0.1 (3 allowed)
    assert "1 of 100 missed at 0.25, 2 allowed; 3 of 150 missed at 0.1, 3 allowed" in once
    rep["int8"]["meets_rule"] = True
    assert "It meets the agreement rule" in with_twin_section(once, rep)


def test_focus_weighs_scores_near_the_judged_thresholds():
    import math

    from training.int8_tune import logit_loss

    t_cls = torch.tensor([[[math.log(0.1 / 0.9), 2.0]]])  # one anchor at conf 0.1, one at 0.88
    box = torch.zeros(1, 64, 2)
    near, far = t_cls.clone(), t_cls.clone()
    near[0, 0, 0] += 0.3
    far[0, 0, 1] += 0.3
    def loss(s, **kw) -> float:
        return logit_loss(box, s, box, t_cls, **kw)[0].item()

    assert loss(near) == pytest.approx(loss(far))
    assert loss(near, focus=9) > 5 * loss(far, focus=9)


def test_the_snapshot_agreeing_best_on_val_is_kept_and_can_be_chosen_again(tiny, tmp_path):
    import json

    import cv2

    from training.int8_tune import (
        FakeQuant,
        calibration_batches,
        choose_and_measure,
        map_points,
        ort_ranges,
        rechoose,
    )
    from wtivision.registry import Registry

    data = tmp_path / "data"
    for split, seed in (("val", 60), ("test", 61)):
        (data / "images" / split).mkdir(parents=True)
        for i, x in enumerate(_images(6, SIZE, seed=seed)):
            cv2.imwrite(str(data / "images" / split / f"{i}.png"),
                        (x.numpy().transpose(1, 2, 0)[:, :, ::-1] * 255).astype(np.uint8))
    sim = FakeQuant(copy.deepcopy(tiny["model"]))
    batches = calibration_batches(tiny["calib"], tiny["runner"])
    sim.calibrate(batches)
    names = map_points(sim, ort_ranges(tiny["path"], [b[i:i + 1].numpy() for b in batches for i in range(len(b))],
                                       tmp_path))
    good = {names[p.name]: p.range() for p in sim.points}
    bad = {t: (64 * lo, 64 * hi) for t, (lo, hi) in good.items()}  # 64x too wide: a few levels for most values
    spec = Registry(tiny["dir"]).get("tiny")
    out, work = tmp_path / "run", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    # the good ranges come first: on a tie the later snapshot would win, so only a real difference keeps them
    best, rep, cands = choose_and_measure(spec, tiny["path"], tiny["runner"], tiny["calib"], [(0, good), (10, bad)],
                                          data, out, work, n_val=6, n_check=6)
    assert [c["step"] for c in cands] == [0, 10] and cands[0]["score"] > cands[1]["score"]
    assert best["step"] == 0 and rep["images"] == 6 and "meets_rule" in rep
    assert json.loads((out / "ranges.json").read_text()) == {t: list(r) for t, r in good.items()}
    assert set(json.loads((out / "snapshots.json").read_text())) == {"0", "10"}
    assert (out / "tiny-int8.onnx").is_file()

    (out / "int8_tune.json").write_text(json.dumps({
        "model": "tiny", "model_sha256": spec.sha256, "data": str(data), "int8": rep, "chosen_step": 10,
        "installed": {"name": "tiny-int8"}, "ship_check": ["stale"]}))
    again = rechoose(out, 6, val_seed=5, models_dir=tiny["dir"])
    assert again["chosen_step"] == 0 and again["val"] == {"images": 6, "seed": 5}
    assert "installed" not in again and "ship_check" not in again
    assert json.loads((out / "int8_tune.json").read_text())["chosen_step"] == 0


def test_int8_report_reads_each_inference_at_every_threshold_as_detect_does(tiny):
    from export.common import box_agreement
    from export.onnx import int8_report, stage
    from wtivision.registry import ModelSpec

    f = tiny["runner"]
    spec = ModelSpec(**{**f.spec.to_dict(), "name": "tiny-q", "file": tiny["q"].name, "precision": "int8"})
    q = stage(spec, tiny["q"])
    ims = [(x.numpy().transpose(1, 2, 0)[:, :, ::-1] * 255).astype(np.uint8) for x in _images(6, SIZE, seed=90)]
    rep = int8_report(f, q, ims)["agreement"]
    assert rep == int8_report(f, q, ims, fp32_raw=[f.raw(im) for im in ims])["agreement"]
    for conf in (0.25, 0.1):
        f.conf_threshold = q.conf_threshold = conf
        ref, other = [f.detect(im) for im in ims], [q.detect(im) for im in ims]
        assert rep[f"fp32_detections_conf_{conf}"] == sum(map(len, ref)) > 0
        assert rep[f"conf_{conf}"] == round(box_agreement(ref, other), 4)
    f.conf_threshold = 0.01


def test_install_twin_moves_the_default_only_with_a_passing_ship_check_and_keeps_it_on_reinstall(
        tiny_models_dir, tmp_path):
    import json
    import shutil

    from training.int8_tune import install_twin
    from wtivision.registry import Registry, write_manifest_entry

    reg = Registry(tiny_models_dir)
    spec = reg.get("tiny-detector")
    spec.card = "cards/tiny.md"
    write_manifest_entry(tiny_models_dir, spec)
    (tiny_models_dir / "cards").mkdir()
    (tiny_models_dir / "cards" / "tiny.md").write_text("# tiny\n")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(tiny_models_dir / spec.file, run / "tiny-detector-int8.onnx")
    agreement = {"conf_0.25": 0.99, "fp32_detections_conf_0.25": 100, "conf_0.1": 0.98,
                 "fp32_detections_conf_0.1": 150}
    (run / "int8_tune.json").write_text(json.dumps({
        "model": "tiny-detector", "model_sha256": spec.sha256, "tensors": 3, "steps": 5, "batch": 2,
        "chosen_step": 5, "int8": {"agreement": agreement, "images": 10, "latency_ms": 20.0, "fp32_latency_ms": 50.0,
                                   "latency_vs_fp32": 0.4, "meets_rule": True, "also": {}}}))
    row = {"check": "set", "images": 9, "class": "pistol", "boxes": 12, "baseline": 0.7, "candidate": 0.6,
           "diff": -0.1, "low": -0.2, "high": -0.01, "verdict": "worse"}

    def ship(passes: bool, candidate: str = "tiny-detector-int8") -> Path:
        p = tmp_path / f"ship-{passes}-{candidate}.json"
        p.write_text(json.dumps({"baseline": "tiny-detector", "candidate": candidate, "passes": passes,
                                 "rows": [row if not passes else {**row, "verdict": "no clear difference"}]}))
        return p

    def defaults() -> dict[str, bool]:
        return {s.name: s.default for s in Registry(tiny_models_dir).specs()}

    with pytest.raises(ValueError, match="not tiny-detector-int8"):
        install_twin(run, tiny_models_dir, ship_check_json=ship(True, candidate="other"))
    install_twin(run, tiny_models_dir, ship_check_json=ship(True))
    assert defaults() == {"tiny-detector": False, "tiny-detector-int8": True}
    card = (tiny_models_dir / "cards" / "tiny.md").read_text()
    assert "- set              pistol" in card and "PASSES" in card
    install_twin(run, tiny_models_dir)  # installing again keeps the twin the default
    assert defaults() == {"tiny-detector": False, "tiny-detector-int8": True}
    install_twin(run, tiny_models_dir, ship_check_json=ship(False))  # a failing check gives fp32 the default back
    assert defaults() == {"tiny-detector": True, "tiny-detector-int8": False}
    assert "FAILS: clearly worse: pistol on set" in (tiny_models_dir / "cards" / "tiny.md").read_text()
