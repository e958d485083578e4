"""DB text detection on the real PaddleOCR text detector that ships in the rapidocr wheel: words rendered on
a photograph must come back as boxes around them, in frame pixels, as PaddleOCR's own DBPostProcess finds."""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tasks_testkit import StretchGeometry

from edgekit.runtime.postprocess import make_postprocessor
from edgekit.runtime.tasks import task_config
from edgekit.runtime.tasks.postprocessors import TextDetector
from edgekit.runtime.tasks.text import _unclip, db_boxes

INPUT = (640, 640)
# (text, bottom-left corner, on a white plate?): two signs and a word written straight onto the sky
WORDS = [("EDGE", (40, 90), True), ("camera 42", (60, 380), True), ("KIT", (420, 80), False)]


def _detector_path() -> Path:
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or spec.origin is None:
        pytest.skip("rapidocr is not installed (pip install rapidocr): it ships PaddleOCR's det model")
    found = sorted((Path(spec.origin).parent / "models").glob("*det*.onnx"))
    if not found:
        pytest.skip("this rapidocr wheel has no det model under models/")
    return found[0]


@pytest.fixture(scope="module")
def scene():
    """(frame, word boxes x1 y1 x2 y2 in frame pixels, the det model's probability map of the frame)."""
    ort = pytest.importorskip("onnxruntime")
    datasets = pytest.importorskip("sklearn.datasets")
    model = _detector_path()
    frame = cv2.cvtColor(datasets.load_sample_image("china.jpg"), cv2.COLOR_RGB2BGR)  # 427 x 640
    boxes = []
    for text, (x, y), plate in WORDS:
        (w, h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 2.0, 5)
        if plate:
            cv2.rectangle(frame, (x - 10, y - h - 12), (x + w + 10, y + baseline + 6), (255, 255, 255), -1)
        cv2.putText(frame, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (0, 0, 0), 5, cv2.LINE_AA)
        ink = np.zeros(frame.shape[:2], np.uint8)  # the word's own pixels: getTextSize's box is taller
        cv2.putText(ink, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 2.0, 255, 5, cv2.LINE_AA)
        left, top, width, height = cv2.boundingRect(ink)
        boxes.append((left, top, left + width, top + height))
    # PaddleOCR det preprocessing (rapidocr's config): RGB order as read by OpenCV (BGR), (x / 255 - 0.5) / 0.5
    resized = cv2.resize(frame, (INPUT[1], INPUT[0]), interpolation=cv2.INTER_LINEAR)
    feed = ((resized.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    prob_map = session.run(None, {session.get_inputs()[0].name: feed})[0]
    return frame, np.array(boxes, np.float32), prob_map


def test_words_rendered_on_a_photo_come_back_in_frame_pixels(scene):
    frame, words, prob_map = scene
    assert prob_map.shape == (1, 1) + INPUT
    post = make_postprocessor({"kind": "text-detect"}, ["out"], geometry=lambda h, w: StretchGeometry(h, w, INPUT))
    assert isinstance(post, TextDetector)
    post.check_outputs([[1, 1, "h", "w"]])
    polygons, scores = post.process([prob_map], None, 0, True, frame.shape[:2])
    assert polygons.shape == (len(WORDS), 4, 2) and scores.dtype == np.float32
    assert (scores >= 0.6).all()
    for x1, y1, x2, y2 in words:
        # the polygon around this word: its bounding box holds the word and is not much larger
        centres = polygons.mean(axis=1)
        match = polygons[np.argmin(np.hypot(centres[:, 0] - (x1 + x2) / 2, centres[:, 1] - (y1 + y2) / 2))]
        low, high = match.min(axis=0), match.max(axis=0)
        assert low[0] <= x1 + 2 and low[1] <= y1 + 2 and high[0] >= x2 - 2 and high[1] >= y2 - 2
        assert (high - low).prod() < 2.5 * (x2 - x1) * (y2 - y1)
    block = json.loads(json.dumps(post.task_output()))
    assert block["kind"] == "text-detect" and block["count"] == len(WORDS)
    first = block["frames"][0]
    assert first["size"] == [427, 640] and len(first["polygons"]) == len(WORDS)
    points, score = first["polygons"][0]
    assert len(points) == 4 and all(len(p) == 2 for p in points) and 0.6 <= score <= 1
    assert post.summary() == {"kind": "text-detect", "count": 1, "detections": 3, "per_frame_mean": 3.0}


def test_db_boxes_match_paddleocr_dbpostprocess(scene):
    """PaddleOCR's DBPostProcess (as rapidocr ships it, pyclipper and shapely) on the same map: the same
    boxes within 2 pixels (it rounds to integers and offsets on an integer grid) and the same scores."""
    utils = pytest.importorskip("rapidocr.ch_ppocr_det.utils")
    _, _, prob_map = scene
    config = task_config({"task": "text-detect"})
    polygons, scores = db_boxes(prob_map[0, 0], config)
    reference = utils.DBPostProcess(thresh=0.3, box_thresh=0.6, max_candidates=1000, unclip_ratio=1.5)
    expected, expected_scores = reference(prob_map, INPUT)
    assert len(expected) == len(polygons) == len(WORDS)
    order = np.lexsort((polygons[:, 0, 0], polygons[:, 0, 1]))
    expected_order = np.lexsort((expected[:, 0, 0], expected[:, 0, 1]))
    np.testing.assert_allclose(polygons[order], expected[expected_order], atol=2.0)
    np.testing.assert_allclose(scores[order], np.array(expected_scores)[expected_order], rtol=1e-6)


def test_db_thresholds_and_sizes():
    prob_map = np.zeros((100, 200), np.float32)
    prob_map[20:40, 30:130] = 0.9  # a 100 x 20 word
    prob_map[60:63, 150:153] = 0.9  # a 3 x 3 speck: its rectangle (through pixel centres) is 2 x 2 < min_size
    prob_map[70:90, 20:60] = 0.4  # faint: over threshold, under box_threshold
    config = task_config({"task": "text-detect"})
    polygons, scores = db_boxes(prob_map, config)
    assert len(polygons) == 1 and scores[0] == pytest.approx(0.9)
    # the contour runs through pixel centres, x 30..129 and y 20..39: a 99 x 19 rectangle, grown by
    # area * ratio / perimeter on every side
    grow = 99 * 19 * 1.5 / (2 * (99 + 19))
    expected = [[30 - grow, 20 - grow], [129 + grow, 20 - grow], [129 + grow, 39 + grow], [30 - grow, 39 + grow]]
    np.testing.assert_allclose(polygons[0], expected, atol=1e-3)
    assert len(db_boxes(prob_map, task_config({"task": "text-detect", "box_threshold": 0.3}))[0]) == 2
    assert len(db_boxes(prob_map, task_config({"task": "text-detect", "min_size": 1}))[0]) == 2
    assert len(db_boxes(prob_map, task_config({"task": "text-detect", "max_candidates": 1}))[0]) <= 1
    empty, no_scores = db_boxes(np.zeros((32, 32), np.float32), config)
    assert empty.shape == (0, 4, 2) and no_scores.shape == (0,)


def test_unclip_is_the_round_offset_of_a_rectangle():
    """The rectangle grown by d on each side is the minimum-area rectangle of pyclipper's round offset
    (PaddleOCR's unclip), for any angle."""
    pyclipper = pytest.importorskip("pyclipper")
    for angle in (0.0, 17.0, 45.0, 80.0):
        rect = ((200.0, 150.0), (120.0, 30.0), angle)
        distance = 120 * 30 * 2.0 / (2 * 150)
        grown = _unclip(rect, 2.0)
        assert grown[1] == pytest.approx((120 + 2 * distance, 30 + 2 * distance))
        offset = pyclipper.PyclipperOffset()
        scale = 1000  # pyclipper works on integers: scale up so rounding does not blur the comparison
        offset.AddPath(
            (cv2.boxPoints(rect) * scale).astype(np.int64).tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON
        )
        expanded = np.array(offset.Execute(distance * scale)[0], np.float32) / scale
        reference = cv2.minAreaRect(expanded)
        assert sorted(reference[1]) == pytest.approx(sorted(grown[1]), abs=0.05)
        assert reference[0] == pytest.approx(grown[0], abs=0.05)
