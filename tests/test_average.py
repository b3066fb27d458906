"""training.average: the weighted mean of detectors of one lineage, written as a checkpoint export.onnx loads."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from tests.test_prune import _images, _wide_model  # noqa: E402
from training.average import even_weights, main, parse_input  # noqa: E402


def test_weights_fill_in_and_are_checked():
    assert even_weights([0.5, float("nan"), float("nan")]) == [0.5, 0.25, 0.25]
    assert even_weights([float("nan")] * 4) == [0.25] * 4
    for bad in ([0.7, 0.7], [1.5, -0.5], [0.2, 0.2]):
        with pytest.raises(SystemExit, match="sum to 1"):
            even_weights(bad)
    path, w = parse_input("runs/x/weights/best.pt:0.3")
    assert str(path) == "runs/x/weights/best.pt" and w == 0.3
    assert math.isnan(parse_input("plain.pt")[1])
    with pytest.raises(SystemExit, match="must be a number"):
        parse_input("a.pt:half")


def _save(model, path):
    from training.common import save_checkpoint

    save_checkpoint(model, path, {"imgsz": 64, "task": "detect"}, {})
    (path.parent.parent / "run.json").write_text(json.dumps({"dataset_manifest": "", "seed": 0}))
    return path


def test_average_is_the_weighted_mean_and_loads(tmp_path):
    from ultralytics import YOLO

    a, b = _wide_model(0), _wide_model(1)
    pa, pb = _save(a, tmp_path / "a" / "weights" / "best.pt"), _save(b, tmp_path / "b" / "weights" / "best.pt")
    assert main([f"{pa}:0.25", str(pb), "--out", str(tmp_path / "mix")]) == 0
    out = tmp_path / "mix" / "weights" / "best.pt"
    mixed = YOLO(str(out)).model.float()
    sa, sb, sm = (m.float().state_dict() for m in (torch.load(pa, weights_only=False)["model"],
                                                   torch.load(pb, weights_only=False)["model"], mixed))
    floats = [k for k in sm if torch.is_floating_point(sm[k])]
    assert floats and any("running_var" in k for k in floats)  # BatchNorm statistics are averaged too
    for k in floats:
        want = 0.25 * sa[k] + 0.75 * sb[k]
        assert torch.allclose(sm[k], want, rtol=2e-3, atol=2e-3), k  # saved in half precision
    # the mean is not either input
    k = floats[0]
    assert not torch.allclose(sm[k], sa[k]) and not torch.allclose(sm[k], sb[k])
    rec = json.loads((tmp_path / "mix" / "run.json").read_text())
    assert [r["weight"] for r in rec["averaged"]] == [0.25, 0.75]
    assert all(len(r["sha256"]) == 64 for r in rec["averaged"])


def test_weight_one_reproduces_the_input(tmp_path):
    a, b = _wide_model(0), _wide_model(1)
    pa, pb = _save(a, tmp_path / "a" / "weights" / "best.pt"), _save(b, tmp_path / "b" / "weights" / "best.pt")
    main([f"{pa}:1", f"{pb}:0", "--out", str(tmp_path / "same")])
    x = _images(2)
    ref = torch.load(pa, weights_only=False)["model"].float().eval()
    got = torch.load(tmp_path / "same" / "weights" / "best.pt", weights_only=False)["model"].float().eval()
    with torch.no_grad():
        assert torch.equal(ref(x)[0], got(x)[0])


def test_other_lineages_are_refused(tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    from tests.test_prune import _yaml

    a = _wide_model(0)
    narrow = DetectionModel(_yaml(0.125), nc=3, verbose=False)
    narrow.names = dict(a.names)
    renamed = _wide_model(1)
    renamed.names = {0: "pistol", 1: "rifle", 2: "battery"}
    pa = _save(a, tmp_path / "a" / "weights" / "best.pt")
    pn = _save(narrow, tmp_path / "n" / "weights" / "best.pt")
    pr = _save(renamed, tmp_path / "r" / "weights" / "best.pt")
    with pytest.raises(SystemExit, match="differs in shape|other layers"):
        main([str(pa), str(pn), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="class names"):
        main([str(pa), str(pr), "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit, match="at least two"):
        main([str(pa), "--out", str(tmp_path / "z")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
