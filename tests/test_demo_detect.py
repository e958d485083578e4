"""The detection demo: the shipped digit detector, its held-out frames and their exact COCO labels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekit.demo_data import (
    DETECT_FRAME_SIZE,
    annotations_path_for,
    compose_detection_frame,
    detection_frames,
    detector_model_path,
    render_detection_frames,
)
from edgekit.model import CLASS_NAMES_KEY, PREPROCESS_KEY, Model
from edgekit.runtime.preprocess import PreprocessSpec, preprocess

TASK_KEY = "edgekit.task"


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(detector_model_path()), providers=["CPUExecutionProvider"])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of [K, 4] and [M, 4] x1, y1, x2, y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter)


def decode(output: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """A plain YOLOv8-layout decode ([4 + nc, N]: cx, cy, w, h, scores), best class per cell, class-aware greedy
    NMS; written here independently of the product decoders."""
    scores, classes = output[4:].max(0), output[4:].argmax(0)
    keep = scores > conf
    cxcy, wh = output[:2, keep].T, output[2:4, keep].T
    boxes, scores, classes = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], 1), scores[keep], classes[keep]
    kept: list[int] = []
    for i in np.argsort(-scores):
        if all(classes[j] != classes[i] or box_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= iou for j in kept):
            kept.append(int(i))
    return boxes[kept], classes[kept]


# -- the model ------------------------------------------------------------------------------------


def test_detector_is_small_self_contained_with_its_task_in_the_metadata() -> None:
    path = detector_model_path()
    assert path.stat().st_size < 1_000_000
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = PreprocessSpec.from_dict(json.loads(meta[PREPROCESS_KEY]))
    assert (spec.resize, spec.color, spec.layout) == ([160, 160], "GRAY", "NCHW")
    assert json.loads(meta[TASK_KEY]) == {
        "task": "detect",
        "decoder": "yolo-anchor-free",
        "conf": 0.25,
        "iou": 0.45,
        "max_det": 100,
        "class_agnostic": False,
        "num_classes": 10,
    }
    assert json.loads(meta[CLASS_NAMES_KEY]) == [str(i) for i in range(10)]
    model = Model.load(path)
    assert model.class_names == [str(i) for i in range(10)] and model.preprocess.color == "GRAY"


def test_detector_runs_in_ort_with_the_yolov8_layout(session: ort.InferenceSession) -> None:
    (inp,) = session.get_inputs()
    assert inp.shape == [1, 1, DETECT_FRAME_SIZE, DETECT_FRAME_SIZE]
    frame = detection_frames(1)[0]
    output = session.run(None, {inp.name: frame.image[None, None].astype(np.float32) / 255})[0]
    assert output.shape == (1, 14, 400) and output.dtype == np.float32
    assert output[0, 4:].min() >= 0 and output[0, 4:].max() <= 1  # sigmoid scores
    assert (output[0, 2:4] > 0).all()  # widths and heights in input pixels


def test_detector_finds_the_held_out_digits(session: ort.InferenceSession) -> None:
    """On 30 held-out frames (digits it never saw), through the agent's own preprocessing of a BGR frame: most
    labelled digits found with the right class at IoU >= 0.5, and few false detections."""
    spec = Model.load(detector_model_path()).preprocess
    found = labelled = detected = 0
    for frame in detection_frames(30):
        x = preprocess(cv2.cvtColor(frame.image, cv2.COLOR_GRAY2BGR), spec)
        boxes, classes = decode(session.run(None, {"images": x})[0][0])
        overlap = box_iou(frame.boxes, boxes) if len(boxes) else np.zeros((len(frame.boxes), 0))
        same_class = frame.classes[:, None] == classes[None, :]
        found += int(((overlap >= 0.5) & same_class).any(1).sum())
        labelled += len(frame.boxes)
        detected += len(boxes)
    assert labelled > 50
    assert found / labelled >= 0.9, (found, labelled)
    assert found / detected >= 0.9, (found, detected)


# -- the frames and their labels ------------------------------------------------------------------


def test_frames_are_deterministic_and_their_labels_sane() -> None:
    first, again = detection_frames(40), detection_frames(40)
    counts = []
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
        assert np.array_equal(a.classes, b.classes)
        assert a.image.shape == (160, 160) and a.image.dtype == np.uint8
        assert a.classes.dtype == np.int64 and ((a.classes >= 0) & (a.classes <= 9)).all()
        x1, y1, x2, y2 = a.boxes.T
        assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 160).all() and (y2 <= 160).all()
        assert ((y2 - y1 >= 10) & (y2 - y1 <= 48) & (x2 - x1 >= 1)).all()
        iou = box_iou(a.boxes, a.boxes)
        assert np.allclose(iou, np.eye(len(a.boxes)))  # digits do not overlap
        counts.append(len(a.boxes))
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) >= 3
    assert not np.array_equal(detection_frames(1, seed=1)[0].image, first[0].image)


def test_boxes_are_the_tight_box_of_the_drawn_ink() -> None:
    """With solid digits (every crop pixel full ink) the ink is exactly the boxes: the pixels brighter than any
    background are the union of the labelled boxes, and each box's border rows and columns are ink."""
    digits = np.zeros((3, 28, 28), np.uint8)
    digits[0, 4:24, 10:18] = 255
    digits[1, 2:26, 6:22] = 255
    digits[2, 8:20, 4:24] = 255
    rng = np.random.default_rng(7)
    for _ in range(20):
        frame = compose_detection_frame(digits, np.array([1, 4, 7]), rng)
        mask = np.zeros(frame.image.shape, bool)
        for x1, y1, x2, y2 in frame.boxes.astype(int):
            mask[y1:y2, x1:x2] = True
        assert np.array_equal(frame.image >= 150, mask)
        assert set(frame.classes.tolist()) <= {1, 4, 7}


def test_image_folder_and_its_coco_annotations_match_the_frames(tmp_path) -> None:
    folder, annotations = render_detection_frames(tmp_path / "frames", 12)
    assert annotations == annotations_path_for(folder) == tmp_path / "frames.coco.json"
    coco = json.loads(annotations.read_text())
    frames = detection_frames(12)
    assert [c["name"] for c in coco["categories"]] == [str(i) for i in range(10)]
    assert [c["id"] for c in coco["categories"]] == list(range(10))
    assert [(im["id"], im["frame"], im["file_name"]) for im in coco["images"]] == [
        (i + 1, i, f"frame_{i:05d}.png") for i in range(12)
    ]
    for position, frame in enumerate(frames):
        on_disk = cv2.imread(str(folder / f"frame_{position:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(on_disk, cv2.cvtColor(frame.image, cv2.COLOR_GRAY2BGR))  # lossless
        labels = [a for a in coco["annotations"] if a["image_id"] == position + 1]
        assert [a["category_id"] for a in labels] == frame.classes.tolist()
        for label, (x1, y1, x2, y2) in zip(labels, frame.boxes.tolist(), strict=True):
            assert label["bbox"] == [x1, y1, x2 - x1, y2 - y1] and label["area"] == (x2 - x1) * (y2 - y1)
            assert label["iscrowd"] == 0
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    again, _ = render_detection_frames(tmp_path / "again", 12)
    assert json.loads((tmp_path / "again.coco.json").read_text()) == coco
    assert all((folder / n).read_bytes() == (again / n).read_bytes() for n in sorted(p.name for p in folder.iterdir()))


def test_video_has_one_frame_per_annotated_image(tmp_path) -> None:
    video, annotations = render_detection_frames(tmp_path / "clip.mp4", 15)
    coco = json.loads(annotations.read_text())
    assert annotations.name == "clip.mp4.coco.json"
    assert [im["frame"] for im in coco["images"]] == list(range(15))
    assert all("file_name" not in im for im in coco["images"])
    capture = cv2.VideoCapture(str(video))
    decoded = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(image)
    capture.release()
    assert len(decoded) == 15 and decoded[0].shape == (160, 160, 3)
    drawn = detection_frames(15)
    error = np.mean(
        [np.abs(d[..., 0].astype(int) - f.image.astype(int)).mean() for d, f in zip(decoded, drawn, strict=True)]
    )
    assert error < 6  # mp4v is lossy, but these are the same frames


def test_render_refuses_no_frames(tmp_path) -> None:
    with pytest.raises(ValueError, match="count"):
        render_detection_frames(tmp_path / "clip.mp4", 0)


# -- the whole demo ---------------------------------------------------------------------------------


def test_cli_demo_offers_the_detect_task() -> None:
    from click.testing import CliRunner

    from edgekit.cli import main

    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and "--task" in result.output and "detect" in result.output


def test_detect_demo_measures_map_through_the_agent(tmp_path, isolated_store) -> None:
    from edgekit.demo import run_detect_demo

    fp32, int8 = run_detect_demo(workdir=tmp_path / "demo", count=100, int8=True)
    for record in (fp32, int8):
        assert record.result["status"] == "ok", record.result.get("errors")
        assert record.result["task_output"]["kind"] == "detect"
        assert len(record.result["task_output"]["frames"]) == 100
        labels_map = record.result["accuracy"]["labels"]
        assert labels_map["computed_on"] == "host"
        assert labels_map["map50"] > 0.9  # the script measures about 0.97 on this video
