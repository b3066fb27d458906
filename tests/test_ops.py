import numpy as np
import pytest

from wtivision.ops import (
    box_ios,
    box_iou,
    inner_edge_mask,
    letterbox,
    merge_tile_boxes,
    nms,
    scale_boxes,
    tile_windows,
    yolo_postprocess,
)


def test_letterbox_wide_image_hand_computed():
    img = np.full((100, 200, 3), 7, np.uint8)
    out, r, (left, top) = letterbox(img, (640, 640))
    assert out.shape == (640, 640, 3)
    assert r == 3.2 and left == 0.0 and top == 160.0
    assert (out[:160] == 114).all() and (out[480:] == 114).all()
    assert (out[160:480] == 7).all()


def test_letterbox_odd_padding_split_like_ultralytics():
    img = np.zeros((10, 21, 3), np.uint8)
    out, r, (left, top) = letterbox(img, (32, 32))
    # 21 -> 32, 10 -> round(15.238) = 15; 17 rows of padding: 8 on top, 9 below
    assert out.shape == (32, 32, 3) and top == 8.0 and left == 0.0
    assert (out[:8] == 114).all() and (out[8:23] == 0).all() and (out[23:] == 114).all()


def test_letterbox_rect_pads_only_to_the_stride():
    # 100x200 at 640: 320 x 640 of photo, already a multiple of 32: no padding at all (the square adds 320 rows)
    out, r, (left, top) = letterbox(np.full((100, 200, 3), 7, np.uint8), (640, 640), stride=32)
    assert out.shape == (320, 640, 3) and r == 3.2 and (left, top) == (0.0, 0.0) and (out == 7).all()
    # 3000x4000 (4:3) at 640: 480 x 640; 1080x1920 (16:9): 360 -> 384 rows, 12 above and 12 below
    assert letterbox(np.zeros((3000, 4000, 3), np.uint8), (640, 640), stride=32)[0].shape == (480, 640, 3)
    out, r, (left, top) = letterbox(np.zeros((1080, 1920, 3), np.uint8), (640, 640), stride=32)
    assert out.shape == (384, 640, 3) and top == 12.0 and (out[:12] == 114).all() and (out[372:] == 114).all()
    # portrait, odd remainder like ultralytics: 21x10 -> 32x15 in a 32 box, stride 8: 15 -> 16 columns, 0 + 1
    out, r, (left, top) = letterbox(np.zeros((21, 10, 3), np.uint8), (32, 32), stride=8)
    assert out.shape == (32, 16, 3) and left == 0.0 and (out[:, 15] == 114).all()


def test_letterbox_extreme_strips_keep_one_pixel():
    for shape, stride, out_shape in (((3, 4000, 3), 32, (32, 416, 3)), ((4000, 3, 3), None, (416, 416, 3)),
                                     ((5, 10000, 3), 32, (32, 416, 3))):
        out, r, (left, top) = letterbox(np.full(shape, 9, np.uint8), (416, 416), stride=stride)
        assert out.shape == out_shape and (out == 9).any()


def test_nms_hand_case():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    keep = nms(boxes, scores, 0.5)
    # box 3 (0.95) suppresses box 0 (IoU 0.9) and box 1 (IoU 0.62); box 2 is apart
    assert keep.tolist() == [3, 2]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]


def test_box_iou_values():
    iou = box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 21, 21]])
    np.testing.assert_allclose(iou[0], [50 / 150, 1.0, 0.0])


def test_scale_boxes_inverts_letterbox_and_clips():
    # 100x200 (h, w) letterboxed to 640: r=3.2, pad top 160
    boxes = np.array([[32.0, 192.0, 320.0, 320.0], [-10.0, 100.0, 700.0, 600.0]])
    out = scale_boxes(boxes, 3.2, (0.0, 160.0), (100, 200))
    np.testing.assert_allclose(out[0], [10, 10, 100, 50])
    np.testing.assert_allclose(out[1], [0, 0, 200, 100])


def test_yolo_postprocess_classwise_nms_and_threshold():
    # two overlapping boxes of different classes survive; same-class duplicate is suppressed
    raw = np.array([[
        [50, 52, 50, 200],
        [50, 50, 50, 200],
        [20, 20, 20, 10],
        [20, 20, 20, 10],
        [0.9, 0.8, 0.1, 0.3],   # class 0
        [0.1, 0.1, 0.6, 0.1],   # class 1
    ]], np.float32)
    boxes, scores, cls = yolo_postprocess(raw, conf_threshold=0.25, iou_threshold=0.5)
    assert cls.tolist() == [0, 1, 0]
    np.testing.assert_allclose(scores, [0.9, 0.6, 0.3], rtol=1e-6)
    np.testing.assert_allclose(boxes[0], [40, 40, 60, 60])
    np.testing.assert_allclose(boxes[2], [195, 195, 205, 205])
    b, s, c = yolo_postprocess(raw, conf_threshold=0.95)
    assert b.shape == (0, 4) and s.shape == (0,) and c.shape == (0,)
    # a class filter (the detector's trained classes) drops the others before NMS
    boxes, scores, cls = yolo_postprocess(raw, conf_threshold=0.25, iou_threshold=0.5, classes=[1])
    assert cls.tolist() == [1] and scores.tolist() == pytest.approx([0.6])
    boxes, scores, cls = yolo_postprocess(raw, conf_threshold=0.25, iou_threshold=0.5, classes=[0])
    assert cls.tolist() == [0, 0] and scores.tolist() == pytest.approx([0.9, 0.3])


def test_tile_windows_cover_the_photo_at_twice_the_scale():
    # 640x360 at zoom 2: side 320; across 640 three starts (overlap >= 20 %), down 360 two
    wins = tile_windows(360, 640, zoom=2.0, overlap=0.2)
    assert wins == [(x, y, 320, 320) for y in (0, 40) for x in (0, 160, 320)]
    cover = np.zeros((360, 640), bool)
    for x, y, w, h in wins:
        cover[y:y + h, x:x + w] = True
    assert cover.all()
    # a portrait photo: side = 400 / 2 = 200, at most the shorter side
    assert {w for _, _, w, _ in tile_windows(400, 300, zoom=2.0)} == {200}
    # no tiles for a photo the input already shows whole, nor at zoom 1
    assert tile_windows(300, 320, min_size=320) == [] and tile_windows(720, 1280, zoom=1.0) == []


def test_inner_edge_mask_drops_only_boxes_cut_by_a_tile_edge_inside_the_photo():
    boxes = np.array([[0, 40, 20, 60],      # on the tile's left edge, which is inside the photo: cut
                      [30, 0, 50, 10],      # on the top edge, which is the photo's top: whole
                      [80, 30, 100, 50],    # on the right edge (tile ends at 100 < 300): cut
                      [30, 30, 60, 60]],    # inside
                     dtype=float)
    cut = inner_edge_mask(boxes, (50, 0, 100, 100), (200, 300))
    assert cut.tolist() == [True, False, True, False]
    # the same boxes in a tile at the photo's top-left corner: the left edge is the photo's edge
    assert inner_edge_mask(boxes, (0, 0, 100, 100), (200, 300)).tolist() == [False, False, True, False]


def test_box_ios_is_the_share_of_the_first_box_covered():
    small, big = np.array([[10, 10, 20, 20]]), np.array([[0, 0, 15, 100], [100, 100, 110, 110]])
    assert box_ios(small, big).tolist() == [[0.5, 0.0]]
    assert box_ios(big[:1], small)[0, 0] == pytest.approx(50 / 1500)


def test_merge_tile_boxes_keeps_a_confident_tile_box_inside_a_weak_whole_box():
    """A small mine the whole pass only guesses at (a weak box around it) and a tile sees clearly: the tile's box
    stays. A part of a large object that a tile scores lower than the whole pass's box of it goes. Boxes of one
    object in both passes keep the higher score; another class's box never removes one."""
    whole = (np.array([[100, 100, 180, 180], [300, 0, 600, 200], [0, 300, 40, 340]]), np.array([0.05, 0.9, 0.3]),
             np.array([1, 0, 1]))
    tiles = (np.array([[110, 110, 150, 150],    # inside the weak class-1 box, scored 0.8: kept
                       [320, 20, 400, 100],     # inside the confident class-0 box, scored 0.4: a part, dropped
                       [320, 20, 400, 100],     # the same place as class 1: kept
                       [1, 301, 41, 341]]),     # the class-1 object at 0.3 whole, 0.6 here: one box, 0.6
             np.array([0.8, 0.4, 0.5, 0.6]), np.array([1, 0, 1, 1]))
    b, s, c = merge_tile_boxes(whole, tiles)
    got = sorted((int(k), round(float(v), 2), tuple(int(x) for x in bb)) for bb, v, k in zip(b, s, c))
    assert got == [(0, 0.9, (300, 0, 600, 200)), (1, 0.05, (100, 100, 180, 180)), (1, 0.5, (320, 20, 400, 100)),
                   (1, 0.6, (1, 301, 41, 341)), (1, 0.8, (110, 110, 150, 150))]
    assert list(s) == sorted(s, reverse=True)
    # a tile box under a whole-pass box of its class scoring at least as high is a part of it
    b, s, c = merge_tile_boxes(whole, (tiles[0][:1], np.array([0.05]), np.array([1])))
    assert len(b) == 3
    # no tile boxes: the whole pass as it is
    b, s, c = merge_tile_boxes(whole, (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)))
    assert np.array_equal(b, whole[0]) and np.array_equal(c, whole[2])
