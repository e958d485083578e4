"""Host-side scoring of detections: COCO annotations checked and scored by pycocotools, detections against
an FP32 reference run, the empty-detections warning. The agent's task_output is made by hand here."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgekit.errors import EvaluationError
from edgekit.evaluate.coco import ModelClasses, SourceIndex, load_annotations
from edgekit.evaluate.detections import FrameDetections
from edgekit.evaluate.host import empty_detections_warning
from edgekit.evaluate.reference import compare_to_reference, matched_ious

# COCO boxes [x, y, w, h] per image file; image ids and category ids deliberately not 0-based
BOXES = {
    "b.png": [(1, [4, 6, 20, 12]), (7, [30, 10, 14, 24])],
    "a.png": [(7, [2, 2, 10, 10])],
    "c.png": [],  # an annotated image without objects: any detection there is a false positive
}
CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 1, "name": "dog"}]


def write_coco(path: Path, boxes: dict = BOXES, categories: list = CATEGORIES, **extra) -> Path:
    images = [{"id": 100 + i, "file_name": name, "height": 48, "width": 64} for i, name in enumerate(boxes)]
    annotations = [
        {
            "id": i * 10 + k + 1,
            "image_id": 100 + i,
            "category_id": cat,
            "bbox": box,
            "area": np.prod(box[2:]).item(),
            "iscrowd": 0,
        }
        for i, name in enumerate(boxes)
        for k, (cat, box) in enumerate(boxes[name])
    ]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories, **extra}))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three real PNG frames; the agent reads them sorted by name: a.png is frame 0, b.png 1, c.png 2."""
    images = tmp_path / "frames"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(images / name), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return images


def perfect_output() -> dict:
    """task_output for a detector (classes cat=0, dog=1 by name) that finds every box exactly."""
    return {
        "kind": "detect",
        "frames": [
            {"frame": 0, "size": [48, 64], "boxes": [[2, 2, 12, 12, 0.9, 0]]},
            {"frame": 1, "size": [48, 64], "boxes": [[4, 6, 24, 18, 0.8, 1], [30, 10, 44, 34, 0.7, 0]]},
            {"frame": 2, "size": [48, 64], "boxes": []},
        ],
        "count": 3,
        "truncated": False,
    }


def shifted_output() -> dict:
    output = perfect_output()
    output["frames"][1]["boxes"][0][:4] = [7, 8, 27, 20]  # IoU about 0.6 with its box
    output["frames"][2]["boxes"] = [[40, 30, 50, 40, 0.95, 1]]  # a confident false positive
    return output


def labels_for(folder: Path, path: Path, classes: ModelClasses | None = None):
    return load_annotations(path, SourceIndex.of("images", str(folder)), classes or ModelClasses(["cat", "dog"], 2))


def test_perfect_detections_score_one(folder, tmp_path):
    labels = labels_for(folder, write_coco(tmp_path / "coco.json"))
    assert labels.mapped_by == "name" and labels.mapping == {7: 0, 1: 1} and labels.positions == (0, 1, 2)
    scores = labels.score(perfect_output())
    assert scores["map"] == 1.0 and scores["map50"] == 1.0 and scores["ar100"] == 1.0
    assert scores["images"] == 3 and scores["boxes"] == 3 and scores["computed_on"] == "host"
    assert scores["detections_per_frame"] == 1.0


def test_shifted_detections_score_what_pycocotools_scores(folder, tmp_path):
    """The same figures as pycocotools called directly on the original file, with COCO's own ids."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = write_coco(tmp_path / "coco.json")
    scores = labels_for(folder, path).score(shifted_output())
    assert scores["map"] < 1.0 and scores["map50"] < 1.0

    image_ids = {0: 101, 1: 100, 2: 102}  # frame position -> the COCO id of a.png, b.png, c.png
    category_ids = {0: 7, 1: 1}
    direct = [
        {
            "image_id": image_ids[f["frame"]],
            "category_id": category_ids[int(b[5])],
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": b[4],
        }
        for f in shifted_output()["frames"]
        for b in f["boxes"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(path))
        evaluation = COCOeval(truth, truth.loadRes(direct), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert scores["map"] == pytest.approx(evaluation.stats[0], abs=1e-6)
    assert scores["map50"] == pytest.approx(evaluation.stats[1], abs=1e-6)
    assert scores["ar100"] == pytest.approx(evaluation.stats[8], abs=1e-6)


def test_no_detections_at_all_score_zero(folder, tmp_path):
    output = perfect_output()
    for frame in output["frames"]:
        frame["boxes"] = []
    scores = labels_for(folder, write_coco(tmp_path / "coco.json")).score(output)
    assert scores["map"] == 0.0 and scores["ar100"] == 0.0


def test_only_the_frames_the_run_reached_are_scored(folder, tmp_path):
    output = perfect_output()
    output["frames"] = output["frames"][:2]  # --frames 2
    scores = labels_for(folder, write_coco(tmp_path / "coco.json")).score(output)
    assert scores["images"] == 2 and scores["map"] == 1.0
    output["frames"] = []
    with pytest.raises(EvaluationError, match="none of the 3 frames annotated"):
        labels_for(folder, write_coco(tmp_path / "coco.json")).score(output)


def test_categories_map_by_order_unless_the_names_match(folder, tmp_path):
    # the model has no names: categories in file order are classes 0 and 1, so cat (id 7) is class 0
    labels = labels_for(folder, write_coco(tmp_path / "coco.json"), ModelClasses([], 2))
    assert labels.mapped_by == "order" and labels.mapping == {7: 0, 1: 1}
    # names that match in another order win over the order
    labels = labels_for(folder, write_coco(tmp_path / "coco.json"), ModelClasses(["dog", "cat", "bird"], 3))
    assert labels.mapped_by == "name" and labels.mapping == {7: 1, 1: 0}


def test_bad_annotations_are_refused_naming_the_entry(folder, tmp_path):
    cases = [
        ({"boxes": {**BOXES, "missing.png": []}}, "'missing.png' is not in the source folder"),
        ({"boxes": {"a.png": [(7, [2, 2, 0, 10])]}}, "bbox [2, 2, 0, 10] is malformed"),
        ({"boxes": {"a.png": [(7, [2, 2, 5])]}}, "bbox [2, 2, 5] is malformed"),
        ({"boxes": {"a.png": [(9, [2, 2, 5, 5])]}}, "category_id 9 is not in 'categories'"),
        (
            {"categories": [*CATEGORIES, {"id": 3, "name": "bird"}], "boxes": {"a.png": [(3, [2, 2, 5, 5])]}},
            "category 'bird' (id 3, 1 boxes) is class 2 by its order, beyond the model's 2 classes",
        ),
        (
            {
                "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "fox"}],
                "boxes": {"a.png": [(1, [2, 2, 5, 5])]},
            },
            "category 'dog' (id 1) is class 0 by its order but class 1 by the model's class_names",
        ),
    ]
    for i, (change, message) in enumerate(cases):
        path = write_coco(tmp_path / f"bad{i}.json", change.get("boxes", BOXES), change.get("categories", CATEGORIES))
        with pytest.raises(EvaluationError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            labels_for(folder, path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(EvaluationError, match="not valid JSON"):
        labels_for(folder, broken)
    broken.write_text(json.dumps({"images": []}))
    with pytest.raises(EvaluationError, match="no 'annotations' list"):
        labels_for(folder, broken)


def test_an_unused_category_beyond_the_classes_is_harmless(folder, tmp_path):
    path = write_coco(tmp_path / "coco.json", categories=[*CATEGORIES, {"id": 3, "name": "bird"}])
    labels = labels_for(folder, path, ModelClasses([], 2))
    assert labels.mapping == {7: 0, 1: 1}


def test_video_frames_come_from_frame_or_id(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(5):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    index = SourceIndex.of("video", str(video))
    assert index.frame_count == 5
    data = {
        "images": [{"id": 1}, {"id": 9, "frame": 3}],
        "annotations": [{"id": 1, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "digit"}],
    }
    path = tmp_path / "video.json"
    path.write_text(json.dumps(data))
    assert load_annotations(path, index, ModelClasses()).positions == (0, 3)
    data["images"].append({"id": 6})  # frame 5 of a 5-frame video
    path.write_text(json.dumps(data))
    with pytest.raises(EvaluationError, match="frame 5 is beyond the video"):
        load_annotations(path, index, ModelClasses())
    with pytest.raises(EvaluationError, match="a camera source has no fixed frames"):
        SourceIndex.of("camera", 0)
    with pytest.raises(EvaluationError, match="need the folder on this host"):
        SourceIndex.of("images", "/on/the/device/", on_host=False)


def test_classes_come_from_names_the_task_or_the_decoder_outputs():
    manifest = {"class_names": None, "outputs": [{"name": "out", "shape": [1, 84, 2100]}]}
    assert ModelClasses.of(manifest, {"kind": "detect", "decoder": "yolo-anchor-free"}).count == 80
    assert ModelClasses.of(manifest, {"kind": "detect", "num_classes": 3}).count == 3
    manifest["outputs"] = [{"name": "out", "shape": [1, 25200, 85]}]
    assert ModelClasses.of(manifest, {"kind": "detect", "decoder": "yolo-anchor-based"}).count == 80
    assert ModelClasses.of({"class_names": ["a", "b"]}, {"kind": "detect"}).count == 2
    assert ModelClasses.of({}, {"kind": "text-detect"}).single


def test_reference_metrics():
    reference = perfect_output()
    same = compare_to_reference(perfect_output(), reference)
    assert same["map"] == 1.0 and same["map50"] == 1.0 and same["miou"] == 1.0
    assert same["matched"] == 3 and same["frames"] == 3
    assert same["detections_per_frame"] == same["reference_detections_per_frame"] == 1.0

    shifted = compare_to_reference(shifted_output(), reference)
    assert shifted["map50"] < 1.0 and shifted["map"] < same["map"]
    assert 0.5 <= shifted["miou"] < 1.0 and shifted["matched"] == 3
    assert shifted["detections_per_frame"] == pytest.approx(4 / 3)

    lost = copy.deepcopy(reference)
    lost["frames"][1]["boxes"] = []
    fewer = compare_to_reference(lost, reference)
    assert fewer["map50"] < 1.0 and fewer["matched"] == 1 and fewer["detections_per_frame"] == pytest.approx(1 / 3)

    with pytest.raises(EvaluationError, match="share no frame"):
        compare_to_reference({"kind": "detect", "frames": [{"frame": 7, "boxes": []}]}, reference)
    with pytest.raises(EvaluationError, match="no per-frame detections"):
        compare_to_reference(None, reference)


def test_reference_for_text_detection_uses_the_polygons_bounding_boxes():
    def polygons(dx: float) -> dict:
        square = [[10 + dx, 10], [30 + dx, 10], [30 + dx, 20], [10 + dx, 20]]
        return {"kind": "text-detect", "frames": [{"frame": 0, "size": [48, 64], "polygons": [[square, 0.9]]}]}

    assert compare_to_reference(polygons(0), polygons(0))["map"] == 1.0
    moved = compare_to_reference(polygons(4), polygons(0))
    assert moved["miou"] == pytest.approx(16 * 10 / (24 * 10)) and moved["map"] < 1.0


def test_matching_is_greedy_one_to_one_within_a_class():
    def frame(rows: list) -> FrameDetections:
        table = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        return FrameDetections(table[:, :4], table[:, 4], table[:, 5].astype(np.int64))

    reference = frame([[0, 0, 10, 10, 1, 0], [0, 0, 10, 10, 1, 1]])
    # two candidates for the class-0 box: the better one is kept; the class-1 box has no partner of its class
    ours = frame([[0, 0, 10, 9, 0.5, 0], [0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.9, 1]])
    assert matched_ious(ours, reference) == [1.0]
    assert matched_ious(frame([[0, 0, 10, 4, 0.9, 0]]), reference) == []  # IoU 0.4 < 0.5


def test_empty_detections_warning_names_the_likely_causes():
    output = perfect_output()
    assert empty_detections_warning({"task_output": output}, {"conf": 0.25}) is None
    for frame in output["frames"]:
        frame["boxes"] = []
    warning = empty_detections_warning({"task_output": output}, {"kind": "detect", "conf": 0.5})
    assert "no detections on any of the 3 frames" in warning
    assert all(word in warning for word in ("conf 0.5", "preprocessing", "colour order"))
    summary_only = {"task_output": {"kind": "detect", "count": 0}, "frames": {"timed": 40}}
    assert "any of the 40 frames" in empty_detections_warning(summary_only, {})
    assert empty_detections_warning({"task_output": None}, {}) is None
