"""`edgekit run --task segment --label-masks`: a real ONNX segmenter through the agent, mIoU scored on the device."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekit.cli import main


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
