"""Detection decoders on hand-made outputs with known boxes, NMS against a brute-force reference, the
detect postprocessor's frame mapping and task_output block."""

import json

import cv2
import numpy as np
import pytest
from tasks_testkit import LetterboxGeometry, StretchGeometry, brute_force_nms, yolo_anchor_free

from edgekit.runtime.postprocess import PostprocessError, make_postprocessor
from edgekit.runtime.tasks import nms as nms_module
from edgekit.runtime.tasks import task_config
from edgekit.runtime.tasks.detect import decode
from edgekit.runtime.tasks.nms import nms
from edgekit.runtime.tasks.postprocessors import Detector

BOXES = [[10, 20, 110, 220], [300, 300, 400, 380], [500, 40, 630, 200], [50, 400, 250, 600]]
CLASSES = [0, 17, 79, 17]
SCORES = [0.9, 0.8, 0.6, 0.4]


def detect(**settings):
    return task_config(dict(task="detect", **settings))


def test_yolo_anchor_free_round_trip():
    """Known boxes encoded as YOLOv8 writes them ([1, 84, 8400], cx cy w h) come back as x1 y1 x2 y2."""
    out, _ = yolo_anchor_free(BOXES, CLASSES, SCORES)
    found = decode([out], detect())
    assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32 and found.classes.dtype == np.int64
    np.testing.assert_allclose(found.boxes, BOXES, atol=1e-3)
    np.testing.assert_allclose(found.scores, SCORES, rtol=1e-6)
    assert found.classes.tolist() == CLASSES
    # the transposed layout [1, 8400, 84] (some exports) decodes to the same
    again = decode([out.transpose(0, 2, 1).copy()], detect())
    np.testing.assert_array_equal(again.boxes, found.boxes)
    assert again.classes.tolist() == CLASSES
    # conf drops the 0.4 box; max_det keeps the best two
    assert decode([out], detect(conf=0.5)).classes.tolist() == [0, 17, 79]
    assert decode([out], detect(max_det=2)).scores.tolist() == pytest.approx([0.9, 0.8])


def test_yolo_anchor_free_suppresses_duplicates_per_class():
    box = [100, 100, 200, 200]
    shifted = [105, 102, 205, 203]  # IoU ~ 0.89 with box
    out, _ = yolo_anchor_free([box, shifted, shifted], [3, 3, 4], [0.9, 0.7, 0.6])
    found = decode([out], detect())
    assert found.classes.tolist() == [3, 4]  # the class-3 duplicate goes, the class-4 box stays
    np.testing.assert_allclose(found.scores, [0.9, 0.6], rtol=1e-6)
    agnostic = decode([out], detect(class_agnostic=True))
    assert agnostic.classes.tolist() == [3]
    assert decode([out], detect(iou=0.95)).classes.tolist() == [3, 3, 4]


def test_yolo_anchor_based_multiplies_objectness():
    rows = np.zeros((1, 200, 5 + 3), np.float32)
    rows[0, :, :4] = [320, 320, 10, 10]
    rows[0, :, 4] = 0.01
    rows[0, 0] = [60, 80, 40, 60, 0.9, 0.1, 0.8, 0.2]  # score 0.72, class 1
    rows[0, 1] = [300, 300, 100, 50, 0.5, 0.9, 0.0, 0.0]  # score 0.45, class 0
    rows[0, 2] = [500, 500, 20, 20, 0.2, 0.0, 0.0, 1.0]  # objectness under conf: dropped
    rows[0, 3] = [400, 100, 20, 20, 0.9, 0.1, 0.2, 0.25]  # best class score 0.225 < conf: dropped
    found = decode([rows], detect(decoder="yolo-anchor-based"))
    np.testing.assert_allclose(found.boxes, [[40, 50, 80, 110], [250, 275, 350, 325]])
    np.testing.assert_allclose(found.scores, [0.72, 0.45], rtol=1e-6)
    assert found.classes.tolist() == [1, 0]


def test_end_to_end_keeps_overlaps_and_sorts():
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = [10, 10, 50, 50, 0.5, 2]
    rows[0, 1] = [12, 11, 50, 52, 0.7, 2]  # overlaps the first: end-to-end models need no NMS
    rows[0, 2] = [100, 100, 150, 170, 0.9, 7]
    rows[0, 3] = [0, 0, 5, 5, 0.1, 1]
    found = decode([rows], detect(decoder="end-to-end"))
    assert found.classes.tolist() == [7, 2, 2]
    np.testing.assert_allclose(found.scores, [0.9, 0.7, 0.5], rtol=1e-6)
    np.testing.assert_allclose(found.boxes[1], [12, 11, 50, 52])
    assert len(decode([rows], detect(decoder="end-to-end", max_det=1)).scores) == 1


def test_ssd_boxes_and_scores_pair():
    boxes = np.zeros((1, 50, 4), np.float32)
    scores = np.zeros((1, 50, 5), np.float32)
    scores[0, :, 0] = 0.99  # background everywhere
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.6]
    scores[0, 0, 2] = 0.8
    boxes[0, 1] = [0.6, 0.6, 0.9, 1.0]
    scores[0, 1, 3] = 0.6
    config = detect(decoder="ssd", background=True)
    # the scores first: the decoder finds the boxes by their last axis of 4 and the shared N
    found = decode([scores, boxes], config, input_size=(300, 400))
    np.testing.assert_allclose(found.boxes, [[40, 60, 200, 180], [240, 180, 360, 300]], rtol=1e-6)
    assert found.classes.tolist() == [2, 3]  # class ids as the model numbers them, background = 0
    # without the input size, normalized boxes stay normalized
    np.testing.assert_allclose(decode([boxes, scores], config).boxes[0], [0.1, 0.2, 0.5, 0.6], rtol=1e-6)
    # without background, column 0 is a class like any other
    assert decode([boxes, scores], detect(decoder="ssd")).classes.tolist()[:1] == [0]
    # with 4 score columns too, the first [B, N, 4] output is taken for the boxes
    assert decode([boxes, scores[..., :4]], config, input_size=(300, 400)).classes.tolist() == [2, 3]
    # pixel boxes are left as they are
    pixels = boxes * 100
    np.testing.assert_allclose(decode([pixels, scores], config, input_size=(300, 400)).boxes[0], [10, 20, 50, 60])


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(iou, agnostic):
    rng = np.random.default_rng(int(iou * 10) + agnostic)
    count = 400
    corner = rng.uniform(-20, 300, (count, 2))  # some boxes start left of / above the image
    boxes = np.concatenate([corner, corner + rng.uniform(5, 80, (count, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0.05, 1.0, count).astype(np.float32)
    classes = rng.integers(0, 4, count)
    expected = brute_force_nms(boxes, scores, classes, iou, 1000, agnostic)
    kept = nms(boxes, scores, classes, iou, 1000, agnostic)
    assert kept.dtype == np.int64
    assert kept.tolist() == expected
    assert nms(boxes, scores, classes, iou, 10, agnostic).tolist() == expected[:10]


def test_nms_keeps_sub_pixel_precision_and_agrees_with_opencv_batched():
    # IoU 0.923: suppressed at 0.9, kept at 0.95 (boxes rounded to integers would be one box, IoU 1)
    boxes = np.array([[0, 0, 10, 10], [0.4, 0, 10.4, 10]], np.float32)
    scores, classes = np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64)
    assert nms(boxes, scores, classes, 0.9, 10).tolist() == [0]
    assert nms(boxes, scores, classes, 0.95, 10).tolist() == [0, 1]
    batched = getattr(cv2.dnn, "NMSBoxesBatched", None)
    if batched is None:
        pytest.skip("this OpenCV has no NMSBoxesBatched (before 4.7)")
    rng = np.random.default_rng(3)
    corner = rng.uniform(0, 300, (500, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 80, (500, 2))], axis=1)
    scores = rng.uniform(0.05, 1.0, 500).astype(np.float32)
    classes = rng.integers(0, 5, 500)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    expected = np.asarray(batched(xywh, scores, classes.astype(np.int32), 0.0, 0.5)).reshape(-1)
    assert nms(boxes, scores, classes, 0.5, 1000).tolist() == expected.tolist()


def test_nms_with_more_candidates_than_one_pass(monkeypatch):
    """Thousands of candidates: NMS runs over the best 1024 first, and again over all of them when that
    keeps fewer than max_det; the result is the full pass's either way."""
    rng = np.random.default_rng(7)
    count = 2000
    corner = rng.uniform(0, 600, (count, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(100, 300, (count, 2))], axis=1)
    scores = rng.uniform(0.3, 1.0, count)
    classes = rng.integers(0, 3, count)
    expected = brute_force_nms(boxes, scores, classes, 0.3, count, False)
    rank = np.argsort(np.argsort(-scores))
    assert 4 * len(expected) < 1024 and rank[expected].max() >= 1024  # so the first pass keeps too few
    passes = []
    one_pass = nms_module._opencv_nms
    monkeypatch.setattr(
        nms_module, "_opencv_nms", lambda boxes, *rest: passes.append(len(boxes)) or one_pass(boxes, *rest)
    )
    assert nms(boxes, scores, classes, 0.3, len(expected)).tolist() == expected
    assert passes == [1024, count]
    assert nms(boxes, scores, classes, 0.3, 50).tolist() == expected[:50]
    assert passes == [1024, count, 1024]  # the best 1024 give the first 50
    assert nms(boxes[:0], scores[:0], classes[:0], 0.45, 100).tolist() == []


def test_detector_maps_boxes_to_frame_and_keeps_task_output():
    out, _ = yolo_anchor_free(BOXES, CLASSES, SCORES)
    post = make_postprocessor({"kind": "detect", "keep_outputs": True}, ["output0"], geometry=LetterboxGeometry)
    assert isinstance(post, Detector)
    post.check_outputs([[1, 84, 8400]])
    # a 480x640 frame letterboxed into 640x640: scale 1, 80 rows of padding above
    found = post.process([out], None, 3, True, (480, 640))
    np.testing.assert_allclose(found.boxes[0], [10, 0, 110, 140], atol=1e-3)  # clipped at the frame's top
    np.testing.assert_allclose(found.boxes[1], [300, 220, 400, 300], atol=1e-3)
    post.process([out], None, 3, True, (480, 640))  # a looping source repeats frame 3: kept once
    post.process([out], None, 4, False, (480, 640))  # warm-up: not recorded
    post.process([out], None, 5, True, (240, 320))  # another frame size: another geometry (scale 0.5)
    block = json.loads(json.dumps(post.task_output()))
    assert block["kind"] == "detect" and block["count"] == 8 and block["truncated"] is False
    assert [f["frame"] for f in block["frames"]] == [3, 5]
    assert block["frames"][0]["size"] == [480, 640]
    assert block["frames"][0]["boxes"][1] == [300.0, 220.0, 400.0, 300.0, 0.8, 17]
    assert block["frames"][1]["boxes"][1] == [150.0, 110.0, 200.0, 150.0, 0.8, 17]
    assert post.summary() == {"kind": "detect", "count": 3, "detections": 12, "per_frame_mean": 4.0}


def test_detector_without_geometry_and_truncation():
    out, _ = yolo_anchor_free(BOXES, CLASSES, SCORES)
    post = Detector(detect(), geometry=StretchGeometry)
    post.kept.limit = 6
    found = post.process([out], None, 0)  # no frame size: model-input pixels
    np.testing.assert_allclose(found.boxes, BOXES, atol=1e-3)
    post.process([out], None, 1, True, (320, 320))
    block = post.task_output()
    assert block["frames"][0]["size"] is None and len(block["frames"]) == 1
    assert block["truncated"] is True and block["count"] == 4
    unmapped = Detector(detect())  # a frame size but no geometry: model-input pixels, so no size
    unmapped.process([out], None, 0, True, (480, 640))
    assert unmapped.task_output()["frames"][0]["size"] is None
    assert Detector(detect(), keep_outputs=False).task_output() is None
    assert Detector(detect()).summary() is None


def test_make_postprocessor_refuses_bad_plan_settings():
    with pytest.raises(PostprocessError, match="keep_outputs must be true or false"):
        make_postprocessor({"kind": "detect", "keep_outputs": "yes"}, ["a"])
    with pytest.raises(PostprocessError, match="label_masks are for task segment, not detect"):
        make_postprocessor({"kind": "detect"}, ["a"], label_masks="masks")
    with pytest.raises(PostprocessError, match="task detect: iou must be a number from 0 to 1, got 1.5"):
        make_postprocessor({"kind": "detect", "iou": 1.5}, ["a"])
    with pytest.raises(PostprocessError, match="decoder yolo-anchor-free reads .* outputs are \\[1, 1000\\]"):
        make_postprocessor({"kind": "detect"}, ["a"]).check_outputs([[1, 1000]])
