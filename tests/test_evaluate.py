"""Torch-free detector evaluation (wtivision.evaluate): AP maths, matching, and a whole run on a
labelled folder with the constant tiny detector, whose detections are known exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photo

from wtivision.evaluate import (
    DetectorEval,
    _names_without_yaml,
    average_precision,
    evaluate_detector,
    match_image,
    read_image_list,
    read_labels,
)


def test_average_precision_follows_coco_interpolation():
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert average_precision(np.array([]), np.array([])) == 0.0
    # recall stops at 0.5 with precision 1: the 51 recall levels 0.00..0.50 score 1, the rest 0
    assert average_precision(np.array([0.5, 0.5]), np.array([1.0, 0.5])) == pytest.approx(51 / 101)
    # a false positive ranked first lowers the envelope to the later precision
    assert average_precision(np.array([0.0, 0.5]), np.array([0.0, 0.5])) == pytest.approx(0.5 * 51 / 101)


def test_match_image_is_greedy_by_score_and_one_to_one():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 10], [20, 0, 30, 10]], float)
    scores = np.array([0.5, 0.9, 0.8, 0.3])
    tp = match_image(pred, scores, np.array([0, 0, 0, 1]), gt, np.array([0, 0]))
    # the higher-scored duplicate takes the first box; the class-1 prediction matches nothing
    assert tp[:, 0].tolist() == [False, True, True, False]
    assert tp.shape == (4, 10) and tp[1].all()


def test_labels_and_names_are_read_in_both_yolo_forms(tmp_path):
    lbl = tmp_path / "a.txt"
    lbl.write_text("1 0.5 0.5 0.5 0.25\n\n0 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n")
    boxes, cls = read_labels(lbl, 100, 200)
    assert cls.tolist() == [1, 0]
    np.testing.assert_allclose(boxes, [[25, 75, 75, 125], [10, 20, 30, 60]])
    lbl.write_text("0 0.5 0.5\n")
    with pytest.raises(ValueError, match="a.txt:1"):
        read_labels(lbl, 100, 100)
    assert _names_without_yaml("path: x\nnames:\n  0: pistol\n  1: 'rifle'\ntrain: a\n") == {0: "pistol", 1: "rifle"}
    assert _names_without_yaml("names: [pistol, rifle]\n") == ["pistol", "rifle"]
    assert _names_without_yaml("names:\n  - pistol\n  - rifle\n") == ["pistol", "rifle"]


def _yolo_line(c: int, box: list[float], w: int, h: int) -> str:
    x0, y0, x1, y1 = box
    return f"{c} {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}\n"


@pytest.fixture()
def labelled(tmp_path) -> Path:
    """Two photos labelled against what the tiny detector outputs (see conftest.TINY_RAW): pistol at
    [8,28,24,36] and cartridge at [44,28,52,36] in a 64 px photo, both doubled in a 128 px one."""
    root = tmp_path / "ds"
    (root / "labels" / "test").mkdir(parents=True)
    (root / "data.yaml").write_text("names:\n  0: pistol\n  1: cartridge\n  2: marking\n  3: landmine_uxo\n")
    write_photo(root / "images" / "test" / "a.png", 64, 64)
    write_photo(root / "images" / "test" / "b.png", 128, 128, seed=1)
    (root / "labels" / "test" / "a.txt").write_text(
        _yolo_line(0, [8, 28, 24, 36], 64, 64) + _yolo_line(1, [44, 28, 52, 36], 64, 64))
    # b: pistol exact; cartridge shifted by 4 px (IoU 0.6 with the prediction); a landmine nobody finds
    (root / "labels" / "test" / "b.txt").write_text(
        _yolo_line(0, [16, 56, 48, 72], 128, 128) + _yolo_line(1, [92, 56, 108, 72], 128, 128)
        + _yolo_line(3, [0, 0, 20, 20], 128, 128))
    (root / "images" / "test" / "c empty.jpg").write_bytes(b"")  # unreadable: an error row, not a crash
    return root


def test_evaluation_on_a_labelled_folder(labelled, tiny_models_dir):
    from wtivision.registry import Registry
    from wtivision.runtime import YoloDetector

    reg = Registry(tiny_models_dir)
    det = YoloDetector(reg.get("tiny-detector"), reg, conf_threshold=0.001)
    seen = []
    ev = evaluate_detector(det, labelled, "test", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (3, 3)
    assert ev.images == 2 and list(ev.errors) == ["images/test/c empty.jpg"]
    assert "empty" in ev.errors["images/test/c empty.jpg"]
    per = {c.name: c for c in ev.classes}
    assert per["pistol"].ap50 == pytest.approx(1.0) and per["pistol"].ap50_95 == pytest.approx(1.0)
    assert per["pistol"].precision == 1.0 and per["pistol"].recall == 1.0
    # cartridge: both found at IoU <= 0.6; above 0.6 only photo a's (ranked first of two equal scores)
    assert per["cartridge"].ap50 == pytest.approx(1.0)
    assert per["cartridge"].ap50_95 == pytest.approx((3 + 7 * 51 / 101) / 10, abs=1e-4)
    # marking: scored 0.2 in both photos, no ground truth: listed, not in the mean, none at conf 0.25
    assert per["marking"].ground_truth == 0 and per["marking"].predictions == 0
    # landmine_uxo is not an output of the model: every box counts as missed
    assert per["landmine_uxo"].ground_truth == 1 and per["landmine_uxo"].ap50 == 0.0
    assert ev.map50 == pytest.approx(2 / 3, abs=1e-4)
    assert ev.model == "tiny-detector" and ev.model_sha256 == reg.get("tiny-detector").sha256
    assert DetectorEval.from_dict(json.loads(json.dumps(ev.to_dict()))) == ev


def test_evaluate_cli_writes_json(labelled, tiny_models_dir, tmp_path, capsys):
    from wtivision.cli import main

    out = tmp_path / "eval.json"
    rc = main(["evaluate", str(labelled), "--models-dir", str(tiny_models_dir), "--json", str(out), "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mAP50 0.667" in text and "skipped images/test/c empty.jpg" in text
    assert json.loads(out.read_text())["classes"][0]["name"] == "pistol"
    assert main(["evaluate", str(labelled), "--split", "val", "--models-dir", str(tiny_models_dir)]) == 2


def test_excluded_images_are_left_out_and_listed(labelled, tiny_models_dir, tmp_path, capsys):
    """Leaving out photo b (its landmine is never found) lifts mAP50 from 2/3 to 1; the CLI reads the list
    from a leaks.csv as ``datasets.build --audit`` writes it, and from a plain list."""
    from wtivision.cli import main

    leaks = tmp_path / "leaks.csv"
    leaks.write_text("path,split,twin,twin_split,distance\nimages/test/b.png,test,images/train/x.jpg,train,0\n"
                     "images/test/b.png,test,images/train/y.jpg,train,4\n")
    plain = tmp_path / "list.txt"
    plain.write_text("# left out\nimages/test/b.png\n\n")
    assert read_image_list(leaks) == ["images/test/b.png", "images/test/b.png"]
    assert read_image_list(plain) == ["images/test/b.png"]
    for f in (leaks, plain):
        out = tmp_path / f"{f.stem}.json"
        assert main(["evaluate", str(labelled), "--models-dir", str(tiny_models_dir), "--exclude", str(f),
                     "--json", str(out), "-q"]) == 0
        text = capsys.readouterr().out
        assert "mAP50 1.000" in text and "(1 left out: --exclude)" in text
        ev = DetectorEval.from_dict(json.loads(out.read_text()))
        assert ev.images == 1 and ev.excluded == ["images/test/b.png"]
        per = {c.name: c for c in ev.classes}
        assert per["pistol"].ground_truth == 1 and "landmine_uxo" not in per  # only photo b had one


def test_case_head_localisation_counts_each_head_once():
    from benchmarks.headstamps_real import PHOTOS, case_head_boxes, localisation

    truth = {"a.jpg": [[0, 0, 100, 100], [200, 200, 300, 300]], "b.jpg": [[0, 0, 50, 50]]}
    found = {"a.jpg": [[5, 5, 100, 100], [0, 0, 95, 100], [400, 400, 500, 500]],  # two on one head, one stray
             "b.jpg": [[30, 30, 80, 80]]}  # IoU 0.22: a miss at 0.5
    res = localisation(found, truth)
    assert (res["heads"], res["found"], res["correct"], res["photos_with_a_correct_head"]) == (3, 4, 1, 1)
    assert res["recall"] == round(1 / 3, 3) and res["precision"] == 0.25
    labels = case_head_boxes()  # the shipped labels cover exactly the benchmark's photos, with sane boxes
    assert set(labels) == set(PHOTOS) and all(labels[p] for p in PHOTOS)
    assert all(x1 < x2 and y1 < y2 for boxes in labels.values() for x1, y1, x2, y2 in boxes)


def test_weighted_ap50_is_the_plain_ap50_and_a_weight_is_a_copy():
    """The bootstrap's image weights: all ones give ap_per_class's AP50; weight 2 on an image equals the image
    given twice; a uniform weight changes nothing."""
    from wtivision.evaluate import _ClassCurve, ap_per_class

    rng = np.random.default_rng(3)
    matches = []
    for _ in range(40):
        n_pred, n_gt = int(rng.integers(0, 5)), int(rng.integers(0, 3))
        tp = np.zeros((n_pred, 10), bool)
        tp[:, 0] = rng.random(n_pred) < 0.6
        matches.append((tp, rng.random(n_pred), rng.integers(0, 2, n_pred), rng.integers(0, 2, n_gt)))
    curve = _ClassCurve(matches, 1)
    ones = np.ones(len(matches))
    tp, scores, pcls, gcls = (np.concatenate(a) for a in zip(*matches))
    assert curve.ap50(ones) == pytest.approx(ap_per_class(tp, scores, pcls, gcls, 2)[1]["ap50"])
    assert curve.ap50(3 * ones) == pytest.approx(curve.ap50(ones))
    w = ones.copy()
    w[7] = 2
    assert curve.ap50(w) == pytest.approx(_ClassCurve(matches + [matches[7]], 1).ap50(np.ones(41)))


def _add_blind_detector(models_dir: Path) -> None:
    """Register "tiny-blind" beside the tiny detector: the same constant output without any cartridge score."""
    from conftest import TINY_CLASSES, TINY_RAW, build_constant_detector

    from wtivision.registry import ModelSpec, sha256_file, write_manifest_entry

    blind = TINY_RAW.copy()
    blind[0, 5] = 0.0  # no cartridge score anywhere
    build_constant_detector(models_dir / "blind.onnx", blind)
    write_manifest_entry(models_dir, ModelSpec(
        name="tiny-blind", file="blind.onnx", sha256=sha256_file(models_dir / "blind.onnx"), task="detect",
        classes=TINY_CLASSES, input_size=[64, 64], preprocessing={"letterbox": True, "pad_value": 114},
        licence="AGPL-3.0-or-later", source="tests/test_evaluate.py", role="detector"))


def test_compare_detectors_tells_a_real_loss_from_no_change(labelled, tiny_models_dir, tmp_path, capsys):
    """B is the tiny detector blind to cartridges: cartridge AP50 1 -> 0 in every draw ("worse"), pistol the
    same ("no clear difference", interval [0, 0]); the CLI prints both and writes the JSON."""
    from wtivision.cli import main
    from wtivision.evaluate import DetectorComparison, compare_detectors
    from wtivision.registry import Registry
    from wtivision.runtime import YoloDetector

    _add_blind_detector(tiny_models_dir)
    reg = Registry(tiny_models_dir)
    a, b = (YoloDetector(reg.get(n), reg, conf_threshold=0.001) for n in ("tiny-detector", "tiny-blind"))
    cmp = compare_detectors(a, b, labelled, resamples=200)
    per = {c.name: c for c in cmp.classes}
    assert cmp.images == 2 and "images/test/c empty.jpg" in cmp.errors
    assert (per["cartridge"].ap50_a, per["cartridge"].ap50_b) == (1.0, 0.0)
    assert (per["cartridge"].ci_low, per["cartridge"].ci_high, per["cartridge"].verdict) == (-1.0, -1.0, "worse")
    assert per["pistol"].diff == 0.0 and (per["pistol"].ci_low, per["pistol"].ci_high) == (0.0, 0.0)
    assert per["pistol"].verdict == "no clear difference"
    assert DetectorComparison.from_dict(json.loads(json.dumps(cmp.to_dict()))) == cmp
    out = tmp_path / "cmp.json"
    assert main(["evaluate", str(labelled), "--models-dir", str(tiny_models_dir), "--compare", "tiny-blind",
                 "--resamples", "50", "--json", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "tiny-blind (B) against tiny-detector (A)" in text and "worse" in text
    assert json.loads(out.read_text())["resamples"] == 50
    with pytest.raises(ValueError, match="resamples"):
        compare_detectors(a, b, labelled, resamples=0)


def test_false_alarm_counts_per_model_and_set(labelled, tiny_models_dir, capsys):
    """benchmarks.false_alarms: the tiny detector boxes a cartridge in every readable photo, its blind twin in
    none; the unreadable photo is skipped, not counted; the CLI refuses a set that matches nothing."""
    from benchmarks.false_alarms import main

    _add_blind_detector(tiny_models_dir)
    photos = f"{labelled}/images/test/*"
    assert main(["--models", "tiny-detector,tiny-blind", "--models-dir", str(tiny_models_dir),
                 "--labels", "cartridge", "--set", f"bench={photos}"]) == 0
    table = capsys.readouterr().out
    assert "| tiny-detector | bench | 2 | 2 | 2 | 0.7, 0.7 |" in table  # one cartridge box in each readable photo
    assert "| tiny-blind | bench | 2 | 0 | 0 | - |" in table
    with pytest.raises(SystemExit):
        main(["--models", "tiny-detector", "--models-dir", str(tiny_models_dir), "--set", "none=/nowhere/*"])


def test_postprocess_variants_aware_is_the_runtime_and_flip_mirrors_back(tiny_models_dir):
    """benchmarks.postprocess_variants: `aware` gives exactly the runtime's boxes; `flip` adds the mirror image's
    boxes mapped back into the photo (the constant detector sees the same thing in the mirror, so each box
    comes back with its reflection about the vertical midline)."""
    from benchmarks.postprocess_variants import variant_detector
    from wtivision.registry import Registry
    from wtivision.runtime import YoloDetector

    reg = Registry(tiny_models_dir)
    spec = reg.get("tiny-detector")
    image = np.full((64, 64, 3), 90, np.uint8)
    plain = YoloDetector(spec, reg, conf_threshold=0.5)
    aware, flip = variant_detector(spec, reg, "aware"), variant_detector(spec, reg, "flip")
    aware.conf_threshold = flip.conf_threshold = 0.5
    for x, y in zip(plain.boxes(image), aware.boxes(image)):
        np.testing.assert_array_equal(x, y)
    boxes, scores, cls = flip.boxes(image)
    got = sorted((int(c), *np.round(b).astype(int).tolist()) for b, c in zip(boxes, cls))
    assert got == [(0, 8, 28, 24, 36), (0, 40, 28, 56, 36), (1, 12, 28, 20, 36), (1, 44, 28, 52, 36)]
    with pytest.raises(ValueError, match="unknown variant"):
        variant_detector(spec, reg, "tta")


def test_ship_check_fails_a_candidate_clearly_worse_on_a_judged_class(labelled, tiny_models_dir, tmp_path, capsys):
    """training.ship_check: the blind candidate fails on cartridge (exit 1), the baseline against itself passes
    (exit 0); a missing test set or a judged class without ground truth is an error (exit 2), never a pass."""
    from training.ship_check import main

    _add_blind_detector(tiny_models_dir)
    checks = tmp_path / "checks.yaml"
    checks.write_text(f"checks:\n  - {{name: bench, dataset: {labelled}, classes: [pistol, cartridge]}}\n")
    args = ["--models-dir", str(tiny_models_dir), "--checks", str(checks), "--resamples", "50"]
    assert main(["--candidate", "tiny-blind", *args, "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "FAILS: clearly worse: cartridge on bench" in out and "no clear difference" in out  # pistol unchanged
    assert not json.loads((tmp_path / "r.json").read_text())["passes"]
    assert main(["--candidate", "tiny-detector", *args]) == 0
    assert "PASSES" in capsys.readouterr().out
    checks.write_text("checks:\n  - {name: gone, dataset: /nowhere, classes: [pistol], recipe: build-it}\n")
    assert main(["--candidate", "tiny-blind", *args]) == 2
    assert "no test set at /nowhere (build it: build-it)" in capsys.readouterr().out
    checks.write_text(f"checks:\n  - {{name: bench, dataset: {labelled}, classes: [marking]}}\n")
    assert main(["--candidate", "tiny-blind", *args]) == 2
    assert "no 'marking' box" in capsys.readouterr().out


def test_ship_check_exclude_takes_one_list_or_several(labelled, tiny_models_dir, tmp_path):
    """A check's ``exclude`` is one image list or a list of them; every listed photo is left out of both runs."""
    from training.ship_check import load_checks, ship_check
    from wtivision.registry import Registry
    from wtivision.runtime import YoloDetector

    (tmp_path / "one.txt").write_text("images/test/a.png\n")
    (tmp_path / "two.csv").write_text("# comment\ncheck,path\nx,images/test/c empty.jpg\nx,images/test/zz.png\n")
    checks = tmp_path / "checks.yaml"
    checks.write_text(f"checks:\n  - {{name: one, dataset: {labelled}, classes: [pistol], exclude: one.txt}}\n"
                      f"  - {{name: two, dataset: {labelled}, classes: [pistol], exclude: [one.txt, two.csv]}}\n"
                      f"  - {{name: none, dataset: {labelled}, classes: [pistol]}}\n")
    loaded = load_checks(checks, base=tmp_path)
    assert [len(c.exclude) for c in loaded] == [1, 2, 0]
    reg = Registry(tiny_models_dir)
    det = YoloDetector(reg.get("tiny-detector"), reg, conf_threshold=0.001)
    report = ship_check(det, det, loaded, resamples=20)
    # b.png alone is left where both lists apply (the unreadable photo and a name not in the set drop quietly)
    assert {k: v["images"] for k, v in report.comparisons.items()} == {"one": 1, "two": 1, "none": 2}
    assert report.comparisons["two"]["errors"] == {} and report.comparisons["one"]["errors"]
    assert report.passes


def test_scale_vs_detail_copy_keeps_size_and_boxes_and_drops_detail(labelled, tiny_models_dir, tmp_path, capsys):
    """benchmarks.scale_vs_detail: the shrunk copy has each photo's size and labels but only the detail of the
    input size (less high-frequency energy); a larger side copies the pixels; --sources keeps those photos only."""
    import cv2

    from benchmarks.scale_vs_detail import main, shrunk_copy

    assert shrunk_copy(labelled, "test", tmp_path / "s", side=32) == 2  # the unreadable photo is left out
    for name in ("a", "b"):
        orig = cv2.imread(str(labelled / "images" / "test" / f"{name}.png"))
        copy = cv2.imread(str(tmp_path / "s" / "images" / "test" / f"{name}.png"))
        assert copy.shape == orig.shape
        assert cv2.Laplacian(copy, cv2.CV_64F).var() < 0.5 * cv2.Laplacian(orig, cv2.CV_64F).var()
        assert ((tmp_path / "s" / "labels" / "test" / f"{name}.txt").read_text()
                == (labelled / "labels" / "test" / f"{name}.txt").read_text())
    assert shrunk_copy(labelled, "test", tmp_path / "same", side=10 ** 6) == 2
    assert np.array_equal(cv2.imread(str(tmp_path / "same" / "images" / "test" / "b.png")),
                          cv2.imread(str(labelled / "images" / "test" / "b.png")))
    (labelled / "manifest.csv").write_text("path,source\nimages/test/b.png,drone\nimages/test/a.png,desk\n")
    assert shrunk_copy(labelled, "test", tmp_path / "one", side=32, sources={"drone"}) == 1
    assert [p.name for p in (tmp_path / "one" / "images" / "test").iterdir()] == ["b.png"]

    # the whole comparison on the tiny detector (it boxes the same places whatever the pixels): four rows
    assert main([str(labelled), "--class", "pistol", "--model", "tiny-detector", "--models-dir",
                 str(tiny_models_dir), "--json", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["photos"].split()[0], r["tiles"]) for r in rows] == [("original", False), ("original", True),
                                                                    ("shrunk", False), ("shrunk", True)]
    assert rows[0]["boxes"] == 2 and rows[0]["ap50"] == rows[2]["ap50"] > 0.9
    assert "| original (2 photos, 2 boxes) |" in capsys.readouterr().out
