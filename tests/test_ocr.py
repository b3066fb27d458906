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
        assert r is not None and r.kind == "headstamp" and r.headstamp is not None
        if r.headstamp.factory_code == s.tokens[0]:
            hits += 1
            assert r.headstamp.tokens
        if "+" not in s.tokens:  # no NATO mark invented where none is stamped
            assert not r.headstamp.nato_mark, (s.tokens, r.headstamp.tokens)
    assert hits >= 4, hits


def test_large_case_head_is_shrunk_before_reading(engine):
    import cv2

    from datasets.synth.text import generate
    from wtivision.ocr import HEADSTAMP_MAX_RADIUS, bounded_head

    # the patch holds the same circle, scaled to the bound
    img = np.zeros((2000, 3000, 3), np.uint8)
    cv2.circle(img, (1700, 900), 700, (255, 255, 255), -1)
    patch, (cx, cy, r) = bounded_head(img, (1700.0, 900.0, 700.0), 256)
    assert r == pytest.approx(256) and max(patch.shape[:2]) <= 2 * 256 + 4
    assert patch[int(cy), int(cx)].max() == 255 and patch[int(cy), int(cx + 0.9 * r)].max() == 255
    assert patch[2, 2].max() == 0  # a corner of the square lies outside the circle
    same = bounded_head(img, (1700.0, 900.0, 200.0), 256)
    assert same[0] is img and same[1] == (1700.0, 900.0, 200.0)
    # a 4x close-up reads as its original does (the original's case head is under the bound)
    hits = 0
    for s in generate("headstamps", 3, seed=78):
        h, w = s.image.shape[:2]
        assert min(h, w) / 2 < HEADSTAMP_MAX_RADIUS
        big = cv2.resize(s.image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
        small_r = engine.read_headstamp(s.image, [0, 0, w, h])
        big_r = engine.read_headstamp(big, [0, 0, 4 * w, 4 * h])
        assert big_r is not None and big_r.box == [0, 0, 4 * w, 4 * h]
        hits += small_r is not None and big_r.headstamp.factory_code == small_r.headstamp.factory_code
    assert hits >= 2, hits


def test_ctc_decode_restricted_to_symbols():
    # step 1: "B" 0.5 vs "A" 0.4; restricted to {A, 1} the decode picks A and keeps its raw probability
    probs = _probs([2, 0, 3], p=0.9)
    probs[0] = [0.02, 0.4, 0.5, 0.04, 0.02, 0.02]
    assert ctc_decode(probs, CHARSET).text == "B1"
    r = ctc_decode(probs, CHARSET, allowed=np.array([0, 1, 3]))
    assert r.text == "A1" and r.char_confidences[0] == pytest.approx(0.4)


def test_circular_words_keeps_one_copy_per_word():
    from wtivision.ocr import circular_words

    W = 600.0
    spans = [(50, 120, 0.8), (650, 720, 0.9),  # one word and its copy one turn later
             (580, 640, 0.7), (0, 40, 0.6),  # a word across the seam, seen whole and cut at the start
             (300, 340, 0.8)]
    kept = circular_words(spans, W)
    assert sorted(kept) == [1, 2, 4]  # equal widths: the higher score wins
    assert kept == [1, 4, 2]  # clockwise order from the strip start


def test_finds_drawn_nato_mark_and_not_digits():
    import cv2

    from datasets.synth.text import _nato_mark
    from wtivision.ocr.headstamp import find_nato_marks

    strip = np.full((80, 600, 3), 150, np.uint8)
    cv2.putText(strip, "08", (60, 60), cv2.FONT_HERSHEY_DUPLEX, 1.6, (60, 60, 60), 3)
    mark = _nato_mark(40)  # 80x80 tile, mark centred at (40, 34)
    strip[6:80, 380:460][mark[:74] > 127] = (60, 60, 60)
    hits = find_nato_marks(strip, (24.0, 32.0, 40.0), 0.5)
    assert hits and 370 <= (hits[0][0] + hits[0][1]) / 2 <= 470, hits
    # round digits correlate too (hence the OCR step ignores matches on words of 2+ characters), but less
    assert all(h[2] < hits[0][2] for h in hits[1:]), hits


def test_firearm_crop_serial_search(engine):
    from datasets.synth.text import generate
    from wtivision.ocr import OcrStep
    from wtivision.results import Detection, ImageFindings

    s = generate("serials", 1, seed=77)[0]
    h, w = s.image.shape[:2]
    photo = np.full((h + 200, w + 300, 3), 90, np.uint8)
    photo[120:120 + h, 200:200 + w] = s.image
    findings = ImageFindings(path="x.jpg", detections=[
        Detection(label="pistol", family="firearm", confidence=0.9, box=[150.0, 80.0, w + 260.0, h + 170.0])])
    OcrStep(engine, firearm_serials=True)(photo, findings)
    serials = [t for t in findings.texts if t.kind == "serial"]
    assert serials and serials[0].text == normalise(s.text)[0] and serials[0].detection_index == 0
    x0, y0, x1, y1 = serials[0].box
    assert 180 <= x0 and x1 <= w + 220 and 100 <= y0 and y1 <= h + 140


def test_ocr_models_verified_by_registry():
    reg = Registry()
    for role in ("ocr_det", "ocr_rec"):
        spec = reg.default_for(role)
        assert spec is not None and reg.verify(spec).is_file()


def test_code_table_single_source():
    from pathlib import Path

    link = Path(__file__).resolve().parents[1] / "datasets" / "headstamp_codes.csv"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.resolve() == (Path(__file__).resolve().parents[1] / "wtivision" / "ocr" / "headstamp_codes.csv")
    assert all(row.source for row in code_table().values())


def _canvas_with(head: np.ndarray | None, size: tuple[int, int] = (900, 1200), at: tuple[int, int] = (520, 250),
                 diameter: int = 300, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """A textured 'desk' photo with ``head`` (a case-head close-up) pasted small and off-centre."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    canvas = cv2.GaussianBlur(rng.integers(60, 200, (h // 8, w // 8, 3), dtype=np.uint8), (3, 3), 0)
    canvas = np.ascontiguousarray(cv2.resize(canvas, (w, h), interpolation=cv2.INTER_CUBIC))
    if head is None:
        return canvas, []
    small = cv2.resize(head, (diameter, diameter), interpolation=cv2.INTER_AREA)
    mask = np.zeros((diameter, diameter), np.uint8)
    cv2.circle(mask, (diameter // 2, diameter // 2), diameter // 2 - 1, 255, -1)
    x, y = at
    roi = canvas[y:y + diameter, x:x + diameter]
    roi[mask > 0] = small[mask > 0]
    return canvas, [x, y, x + diameter, y + diameter]


def test_case_heads_found_in_wider_photos_and_not_in_texture_or_plain_discs():
    import cv2

    from datasets.synth.text import generate
    from wtivision.ocr.headstamp import find_case_heads
    from wtivision.ops import box_iou

    found = 0
    samples = generate("headstamps", 6, seed=5)
    for k, s in enumerate(samples):
        photo, box = _canvas_with(s.image, at=(150 + 90 * k, 120 + 60 * k), diameter=260 + 20 * k, seed=k)
        heads = find_case_heads(photo)
        found += bool(heads) and box_iou([heads[0].box], [box])[0, 0] > 0.6
    assert found >= 5, found
    for k in range(4):  # texture only; a plain disc (a coin, a lid) has no primer ring
        photo, _ = _canvas_with(None, seed=10 + k)
        assert find_case_heads(photo) == []
        cv2.circle(photo, (600, 450), 150, (40, 120, 200), -1)
        assert find_case_heads(photo) == []


def test_case_head_found_on_dense_texture_at_a_reduced_working_size():
    """On gravel-like texture (more than max_edge_density of edge pixels) the finder works on a smaller copy,
    which bounds Hough's cost, and must still find a head of the usual size and place it in photo pixels."""
    import cv2

    from datasets.synth.text import generate
    from wtivision.ocr.headstamp import find_case_heads
    from wtivision.ops import box_iou

    rng = np.random.default_rng(3)
    h, w = 1200, 1600
    texture = cv2.resize(rng.integers(40, 220, (h // 3, w // 3, 3), dtype=np.uint8), (w, h),
                         interpolation=cv2.INTER_CUBIC)
    head = cv2.resize(generate("headstamps", 1, seed=7)[0].image, (420, 420), interpolation=cv2.INTER_AREA)
    mask = np.zeros((420, 420), np.uint8)
    cv2.circle(mask, (210, 210), 209, 255, -1)
    x, y = 700, 400
    roi = texture[y:y + 420, x:x + 420]
    roi[mask > 0] = head[mask > 0]
    small = cv2.medianBlur(cv2.cvtColor(cv2.resize(texture, (640, 480), interpolation=cv2.INTER_AREA),
                                        cv2.COLOR_BGR2GRAY), 5)
    assert np.count_nonzero(cv2.Canny(small, 60, 120)) / small.size > 0.05  # the reduced path is taken
    heads = find_case_heads(texture)
    assert heads and box_iou([heads[0].box], [[x, y, x + 420, y + 420]])[0, 0] > 0.6


def test_headstamp_read_on_a_case_head_in_a_wider_photo(engine):
    from datasets.synth.text import generate
    from wtivision.ocr import OcrStep
    from wtivision.ops import box_iou
    from wtivision.results import ImageFindings

    step = OcrStep(engine, whole_image=True)
    hits = 0
    for k, s in enumerate(generate("headstamps", 4, seed=78)):
        photo, box = _canvas_with(s.image, diameter=420, seed=k)
        findings = ImageFindings(path=f"p{k}.jpg")
        step(photo, findings)
        heads = [t for t in findings.texts if t.kind == "headstamp"]
        assert heads and box_iou([heads[0].box], [box])[0, 0] > 0.6, findings.texts
        hits += heads[0].headstamp.factory_code == s.tokens[0]
    assert hits >= 2, hits


def test_edge_consistency_tells_a_concentric_ring_from_texture():
    import cv2

    from wtivision.ocr.headstamp import _edge_consistency

    photo, _ = _canvas_with(None, seed=3)
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    _, texture = _edge_consistency(gray, (600.0, 450.0), 150.0, 0.15, 0.6)
    cv2.circle(gray, (600, 450), 150, 180, -1)
    cv2.circle(gray, (600, 450), 60, 90, -1)  # a primer: a concentric edge at 0.4 of the radius
    pos, ring = _edge_consistency(gray, (600.0, 450.0), 150.0, 0.15, 0.6)
    rim_pos, rim = _edge_consistency(gray, (600.0, 450.0), 150.0, 0.75, 1.2)
    assert ring > 0.9 and abs(pos - 0.4) < 0.03
    assert rim > 0.9 and abs(rim_pos - 1.0) < 0.03
    assert texture < 0.35


def test_case_head_edge_test_ignores_pixels_outside_the_photo():
    """A head near the photo's edge: the polar samples that fall outside the photo must not be whatever memory
    held (they were, and one photo gave a different number of case heads from run to run)."""
    import cv2

    from wtivision.ocr.headstamp import _edge_consistency

    gray = np.full((200, 200), 128, np.uint8)
    cv2.circle(gray, (100, 185), 60, 30, 3)  # a rim crossing the bottom edge
    ref = _edge_consistency(gray, (100.0, 185.0), 60.0, 0.75, 1.2)
    for fill in (0, 255, 7, 200):
        junk = [np.full((120, 72), fill, np.uint8) for _ in range(64)]  # freed blocks the size of the polar image
        del junk
        assert _edge_consistency(gray, (100.0, 185.0), 60.0, 0.75, 1.2) == ref


def test_close_up_headstamp_without_a_known_maker_yields_to_a_serial(engine, monkeypatch):
    """A round plate with a stamped serial looks like a case head to the close-up check; when the ring reads
    as a headstamp of unknown tokens, the confident serial reading of the photo is kept instead. A headstamp
    with a known factory code stays a headstamp."""
    import cv2

    from datasets.synth.text import generate
    from wtivision.ocr import OcrStep
    from wtivision.results import HeadstampRecord, ImageFindings, TextReading

    step = OcrStep(engine, whole_image=True)
    s = generate("serials", 1, seed=78)[0]
    img = np.full((900, 900, 3), 150, np.uint8)
    cv2.circle(img, (450, 450), 400, (90, 90, 90), -1)
    cv2.circle(img, (450, 450), 400, (30, 30, 30), 6)
    plate = cv2.resize(s.image, None, fx=500 / s.image.shape[1], fy=500 / s.image.shape[1])
    y0 = 450 - plate.shape[0] // 2
    img[y0:y0 + plate.shape[0], 200:200 + plate.shape[1]] = plate
    assert step.case_head_close_up(img) is not None
    box = [0.0, 0.0, 900.0, 900.0]
    for tokens, want in ((["1960"], "serial"), (["PMP", "05"], "headstamp")):
        rec = parse_headstamp(tokens)
        fake = TextReading(kind="headstamp", text=" ".join(tokens), confidence=0.7, box=box, headstamp=rec)
        monkeypatch.setattr(engine, "read_headstamp", lambda *a, _f=fake, **k: _f)
        findings = ImageFindings(path="plate.jpg")
        step(img, findings)
        assert [t.kind for t in findings.texts] == [want], findings.texts
        if want == "serial":
            assert findings.texts[0].text == normalise(s.text)[0]
    assert isinstance(rec, HeadstampRecord) and rec.manufacturer
