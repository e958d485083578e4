"""Segmentation through the real agent, mIoU scored on the device against label masks (PNG, pixel = class,
255 = ignore): a brightness segmenter from the CLI on rectangles, and from `edgekit.run` on the detection demo's
frames of real handwritten digits, letterboxed, against the exact numbers computed here from the pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit.api import build
from edgekit.cli import main
from edgekit.demo_data import detection_frames, render_detection_frames
from edgekit.model import Model
from edgekit.store import ResultsStore


def _brightness_segmenter(path: Path) -> None:
    """Two classes from one 1x1 conv: class 1 where the mean channel value is above 0.5."""
    weights = np.array([[[[-1 / 3]], [[-1 / 3]], [[-1 / 3]]], [[[1 / 3]], [[1 / 3]], [[1 / 3]]]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"])],
        "segmenter",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 64, 64])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([0.25, -0.25], np.float32), "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _scenes(images: Path, masks: Path) -> None:
    """Bright rectangles on black frames (96x128, not the model's 64x64) and their exact label masks."""
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        frame, mask = np.zeros((96, 128, 3), np.uint8), np.zeros((96, 128), np.uint8)
        x, y = int(rng.integers(10, 60)), int(rng.integers(10, 40))
        frame[y : y + 40, x : x + 50] = 230
        mask[y : y + 40, x : x + 50] = 1
        cv2.imwrite(str(images / f"{index}.png"), frame)
        cv2.imwrite(str(masks / f"{index}.png"), mask)


def test_segment_run_scores_miou_against_label_masks(tmp_path, isolated_store):
    _brightness_segmenter(tmp_path / "seg.onnx")
    _scenes(tmp_path / "images", tmp_path / "masks")
    runner = CliRunner()
    built = runner.invoke(
        main,
        [
            "build",
            str(tmp_path / "seg.onnx"),
            "--task",
            "segment",
            "--preprocess",
            '{"resize": [64, 64]}',
            "-o",
            str(tmp_path / "art"),
        ],
    )
    assert built.exit_code == 0, built.output
    ran = runner.invoke(
        main,
        ["run", str(tmp_path / "art"), "--source", str(tmp_path / "images"), "--label-masks", str(tmp_path / "masks")],
    )
    assert ran.exit_code == 0, ran.output
    miou = float(ran.output.split("mIoU ")[1].split()[0])
    assert miou > 0.9  # only the rectangles' edges blur through the 64x64 resize


def _ink_segmenter(path: Path, size: tuple[int, int]) -> None:
    """A GRAY [1, 1, h, w] model whose two channels are 0.5 - x and x - 0.5: argmax = class 1 ("ink") exactly
    where a pixel is above 127.5 of 255, class 0 elsewhere."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"])],
        "ink",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, *size])],
        [
            numpy_helper.from_array(np.array([-1, 1], np.float32).reshape(2, 1, 1, 1), "w"),
            numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "b"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _box_mask(frame, folder: Path, name: str) -> np.ndarray:
    """The label mask of a detection frame: class 1 inside each digit's exact box, 0 outside, and the box's
    outermost rows and columns 255 (ignored, as the uncertain edges of real label masks often are)."""
    mask = np.zeros(frame.image.shape, np.uint8)
    for x1, y1, x2, y2 in frame.boxes.astype(int):
        mask[y1:y2, x1:x2] = 255
        mask[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] = 1
    cv2.imwrite(str(folder / name), mask)
    return mask


def _expected_scores(labels: np.ndarray, predicted: np.ndarray) -> dict:
    """IoU per class, mIoU and pixel accuracy over the pixels not ignored, written out plainly."""
    valid = labels != 255
    ious = {}
    for cls in (0, 1):
        truth, guess = (labels == cls) & valid, (predicted == cls) & valid
        ious[str(cls)] = (truth & guess).sum() / (truth | guess).sum()
    correct = ((labels == predicted) & valid).sum() / valid.sum()
    return {"miou": np.mean(list(ious.values())), "pixel_accuracy": correct, "per_class_iou": ious}


def test_segment_run_on_digit_frames_scores_exactly_through_the_letterbox(tmp_path):
    """160x160 frames letterboxed into a 160x224 input (32 px of padding each side, no scaling): the class map
    comes back to the frame one pixel for one, so the device's mIoU is exactly the one computed here."""
    count = 8
    _ink_segmenter(tmp_path / "ink.onnx", (160, 224))
    folder, _ = render_detection_frames(tmp_path / "frames", count)
    masks = tmp_path / "masks"
    masks.mkdir()
    labels, predicted = [], []
    for position, frame in enumerate(detection_frames(count)):
        labels.append(_box_mask(frame, masks, f"frame_{position:05d}.png"))
        predicted.append((frame.image > 127).astype(np.uint8))
    spec = {"resize": [160, 224], "resize_mode": "letterbox", "color": "GRAY"}
    model = Model.load(tmp_path / "ink.onnx", preprocess=spec, task="segment")
    artifact = build(model, "x86-ort", tmp_path / "art")
    record = edgekit.run(artifact, folder, label_masks=masks, warmup=0)

    assert record.result["status"] == "ok", record.result["errors"]
    accuracy = record.result["accuracy"]
    expected = _expected_scores(np.stack(labels), np.stack(predicted))
    assert accuracy["kind"] == "segment" and accuracy["count"] == count
    assert accuracy["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert accuracy["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    assert accuracy["per_class_iou"] == pytest.approx(expected["per_class_iou"], abs=1e-12)
    assert 0.3 < accuracy["miou"] < 0.9  # thin strokes fill a part of their boxes: a real, unsaturated score
    for frame, mine in zip(record.result["task_output"]["frames"], predicted, strict=True):
        assert frame["size"] == [160, 160]
        assert frame["pixels"] == {str(c): int(n) for c, n in enumerate(np.bincount(mine.reshape(-1))) if n}
    assert ResultsStore().get([record.run_id])[0].result["accuracy"] == accuracy
