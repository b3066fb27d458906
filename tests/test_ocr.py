import numpy as np
import pytest

from wtivision.ocr.engine import ctc_decode, db_boxes, order_quad
from wtivision.ocr.headstamp import code_table, parse_headstamp, unwrap_annulus
from wtivision.ocr.normalize import candidates, needs_review, normalise
from wtivision.registry import Registry

CHARSET = ["<blank>", "A", "B", "1", "0", " "]


def _probs(seq, n_classes=len(CHARSET), p=0.9):
    m = np.full((len(seq), n_classes), (1 - p) / (n_classes - 1), np.float32)
    for t, k in enumerate(seq):
        m[t, k] = p
    return m


def test_ctc_decode_collapses_repeats_and_keeps_blank_separated_doubles():
    # A A _ A 1 1 _ _ 0 -> "AA10"
    r = ctc_decode(_probs([1, 1, 0, 1, 3, 3, 0, 0, 4]), CHARSET)
    assert r.text == "AA10" and len(r.char_confidences) == 4
    assert r.confidence == pytest.approx(0.9)
    assert ctc_decode(_probs([0, 0, 0]), CHARSET).text == ""


def test_db_boxes_finds_two_text_blobs():
    prob = np.zeros((64, 128), np.float32)
    prob[10:20, 10:60] = 0.9
    prob[40:52, 70:120] = 0.8
    quads, scores = db_boxes(prob)
    assert len(quads) == 2 and all(s > 0.5 for s in scores)
    centres = sorted((float(q[:, 0].mean()), float(q[:, 1].mean())) for q in quads)
    assert centres[0] == pytest.approx((34.5, 14.5), abs=1.5)
    q = order_quad(np.array([[5, 5], [0, 0], [5, 0], [0, 5]]))
    assert q.tolist() == [[0, 0], [5, 0], [5, 5], [0, 5]]


def test_normalise_and_candidates():
    text, confs = normalise("ab-12 3.o", [0.9, 0.9, 1, 0.99, 0.5, 1, 0.95, 1, 0.6])
    assert text == "AB123O" and confs == [0.9, 0.9, 0.99, 0.5, 0.95, 0.6]
    # 2 (0.5) and O (0.6) are doubtful confusables; B (0.9) and 1 (0.99) are not doubted
    assert candidates(text, confs) == ["AB1Z3O", "AB1230", "AB1Z30"]
    assert candidates("AB123", [0.99] * 5) == []
    assert needs_review(0.5, [0.5]) and not needs_review(0.95, [0.9, 0.99])


@pytest.mark.parametrize(
    "tokens,code,year,calibre,nato,maker",
    [
        (["539", "78"], "539", "78", "", False, "Tula"),
        (["78", "539"], "539", "78", "", False, "Tula"),
        (["LC", "2019", "+"], "LC", "2019", "", True, "Lake City"),
        (["WCC", "06", "O"], "WCC", "06", "", True, "Western"),
        (["PPU", "7.62X39"], "PPU", "", "7.62X39", False, "Prvi Partizan"),
        (["ZZQ", "81"], "ZZQ", "81", "", False, ""),  # unknown code: reported, not guessed
    ],
)
def test_parse_headstamp(tokens, code, year, calibre, nato, maker):
    r = parse_headstamp(tokens)
    assert (r.factory_code, r.year, r.calibre, r.nato_mark) == (code, year, calibre, nato)
    assert maker in r.manufacturer if maker else r.manufacturer == "" and r.country == ""
    if maker:
        assert r.source


def test_code_table_has_required_codes():
    t = code_table()
    for c in ("539", "711", "3", "38", "LC", "945", "41"):
        assert c in t and t[c].country and t[c].source


def test_unwrap_annulus_puts_outer_edge_on_top():
    img = np.zeros((200, 200, 3), np.uint8)
    import cv2

    cv2.circle(img, (100, 100), 90, (255, 255, 255), 6)  # bright outer ring only
    strip = unwrap_annulus(img, (100.0, 100.0), 95.0, inner=0.3, outer=1.0)
    assert strip.shape[1] > 300
    rows = strip.mean(axis=(1, 2))
    assert rows[: len(rows) // 4].max() > 100 and rows[len(rows) // 2:].max() < 20


@pytest.fixture(scope="module")
def engine():
    from wtivision.ocr import OcrEngine

    return OcrEngine.from_registry(Registry())


def test_reads_generated_serials_end_to_end(engine):
    from datasets.synth.text import generate

    samples = generate("serials", 8, seed=77)
    exact = 0
    for s in samples:
        r = engine.read_serial(s.image, [0, 0, s.image.shape[1], s.image.shape[0]])
        exact += r is not None and r.text == normalise(s.text)[0]
    assert exact >= 6, exact


def test_reads_generated_headstamp_end_to_end(engine):
    from datasets.synth.text import generate

    hits = 0
    samples = generate("headstamps", 6, seed=78)
    for s in samples:
        r = engine.read_headstamp(s.image, [0, 0, s.image.shape[1], s.image.shape[0]])
        if r is not None and r.headstamp and r.headstamp.factory_code == s.tokens[0]:
            hits += 1
            assert r.kind == "headstamp" and r.headstamp.tokens
    assert hits >= 3, hits


def test_ocr_models_verified_by_registry():
    reg = Registry()
    for role in ("ocr_det", "ocr_rec"):
        spec = reg.default_for(role)
        assert spec is not None and reg.verify(spec).is_file()
