"""Segmentation: class maps from scores, class maps back in frame pixels, and mIoU against known masks."""

import json

import cv2
import numpy as np
import pytest
from tasks_testkit import LetterboxGeometry, StretchGeometry

from edgekit.runtime.postprocess import PostprocessError, make_postprocessor
from edgekit.runtime.tasks import task_config
from edgekit.runtime.tasks.postprocessors import NOT_SEEN, Segmenter, class_map_to_frame
from edgekit.runtime.tasks.segment import confusion, decode_mask, iou_summary

LABELS = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 2, 2]], np.uint8)
PREDICTED = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 2, 0], [2, 2, 2, 2]], np.int32)


def segment(**settings):
    return task_config(dict(task="segment", **settings))


def one_hot(class_map, classes):
    """[1, C, H, W] scores whose argmax is class_map."""
    return (np.arange(classes)[:, None, None] == class_map[None]).astype(np.float32)[None]


def test_decode_mask_argmax_and_thresholds():
    scores = one_hot(PREDICTED, 3) * 0.4
    assert decode_mask([scores], segment()).tolist() == PREDICTED.tolist()
    assert decode_mask([scores], segment()).dtype == np.int32
    # threshold mode: the argmax only where it scores above the threshold, else background 0
    scores[0, 2, 3, 3] = 0.9
    thresholded = decode_mask([scores], segment(mode="threshold", threshold=0.5))
    assert thresholded.sum() == 2 and thresholded[3, 3] == 2
    # one channel: a probability map; [B, H, W] floats are one too, [B, H, W] integers a class map
    probability = np.array([[[[0.2, 0.7], [0.5, 0.51]]]], np.float32)
    assert decode_mask([probability], segment()).tolist() == [[0, 1], [0, 1]]
    assert decode_mask([probability[:, 0]], segment(threshold=0.6)).tolist() == [[0, 1], [0, 0]]
    assert decode_mask([PREDICTED[None].astype(np.int64)], segment()).tolist() == PREDICTED.tolist()


def test_miou_on_known_masks():
    matrix = confusion(LABELS, PREDICTED, 3)
    assert matrix.tolist() == [[3, 1, 0], [0, 4, 0], [1, 0, 5]]  # the two 255 pixels are ignored
    summary = iou_summary(matrix)
    # class 0: 3 / (3 + 1 + 1); class 1: 4 / (4 + 1); class 2: 5 / (5 + 1)
    assert summary["per_class_iou"] == pytest.approx({"0": 0.6, "1": 0.8, "2": 5 / 6})
    assert summary["miou"] == pytest.approx((0.6 + 0.8 + 5 / 6) / 3)
    assert summary["pixel_accuracy"] == pytest.approx(12 / 14)
    # a class in neither labels nor predictions does not enter the mean
    assert iou_summary(confusion(LABELS, PREDICTED, 5))["miou"] == pytest.approx(summary["miou"])


def test_class_map_to_frame_stretch_and_letterbox():
    class_map = np.arange(16, dtype=np.int32).reshape(4, 4)
    # a 8x8 frame stretched to a 4x4 input: every class-map pixel covers 2x2 frame pixels
    up = class_map_to_frame(class_map, StretchGeometry(8, 8, (4, 4)), (8, 8))
    assert up.tolist() == np.repeat(np.repeat(class_map, 2, 0), 2, 1).tolist()
    # a 16x8 frame: 4 rows per input row, 2 columns per input column
    tall = class_map_to_frame(class_map, StretchGeometry(16, 8, (4, 4)), (16, 8))
    assert tall.tolist() == np.repeat(np.repeat(class_map, 4, 0), 2, 1).tolist()
    # a 32x64 frame letterboxed into 64x64: scale 1, rows 16..47 of the input are the frame
    big = np.repeat(np.arange(64, dtype=np.int32)[:, None], 64, axis=1)  # class = input row
    boxed = class_map_to_frame(big, LetterboxGeometry(32, 64, (64, 64)), (32, 64))
    assert boxed[:, 0].tolist() == list(range(16, 48))
    # a class map at half the input's resolution (a segmenter with a stride-2 head)
    half = class_map_to_frame(big[::2, ::2] // 2, LetterboxGeometry(32, 64, (64, 64)), (32, 64))
    assert half[:, 0].tolist() == [r // 2 for r in range(16, 48)]


class CropGeometry:
    """The input (h, w) shows the frame's centre: frame = input + offset (a centre crop at scale 1)."""

    def __init__(self, frame_h, frame_w, input_size=(4, 4)):
        self.input_size = input_size
        self.offset = np.array([(frame_w - input_size[1]) / 2, (frame_h - input_size[0]) / 2])

    def to_frame(self, points):
        return np.asarray(points, np.float64) + self.offset

    def to_frame_boxes(self, boxes):
        return self.to_frame(np.asarray(boxes).reshape(-1, 2, 2)).reshape(-1, 4)


def test_frame_pixels_the_model_never_saw_are_not_counted(tmp_path):
    crop = class_map_to_frame(np.ones((4, 4), np.int32), CropGeometry(6, 8), (6, 8))
    assert (crop[1:5, 2:6] == 1).all() and (crop == NOT_SEEN).sum() == 6 * 8 - 16
    cv2.imwrite(str(tmp_path / "a.png"), np.ones((6, 8), np.uint8))
    post = Segmenter(segment(), CropGeometry, keep_outputs=True, label_masks=str(tmp_path))
    post.process([one_hot(np.ones((4, 4), np.int32), 2)], None, 0, True, (6, 8))
    assert post.summary()["pixel_accuracy"] == 1.0 and post.summary()["miou"] == 1.0
    assert post.task_output()["frames"][0]["pixels"] == {"1": 16}


def test_segmenter_against_label_masks(tmp_path):
    """Two 32x64 frames letterboxed into 64x64; label masks in frame pixels; known confusion."""
    truth = np.zeros((32, 64), np.uint8)
    truth[:, 32:] = 1
    truth[20:, :16] = 2
    wrong = truth.copy()
    wrong[:, 32:40] = 0  # frame 1's prediction puts 8 columns of class 1 in class 0
    masks = tmp_path / "masks"
    masks.mkdir()
    second_label = truth.copy()
    second_label[0, :] = 255  # ignored row
    cv2.imwrite(str(masks / "frame_000.png"), truth)
    cv2.imwrite(str(masks / "frame_001.png"), second_label)

    def model_output(frame_classes):
        class_map = np.zeros((64, 64), np.int32)
        class_map[16:48] = frame_classes
        return [one_hot(class_map, 3) * 5.0 - 1.0]  # logits

    geometry = lambda h, w: LetterboxGeometry(h, w, (64, 64))  # noqa: E731
    post = make_postprocessor({"kind": "segment"}, ["out"], geometry=geometry, label_masks=str(masks))
    assert isinstance(post, Segmenter)
    post.check_outputs([[1, 3, 64, 64]])
    post.process(model_output(truth), None, 0, False, (32, 64))  # warm-up: not scored
    post.process(model_output(truth), None, 0, True, (32, 64))
    post.process(model_output(wrong), None, 1, True, (32, 64))
    summary = post.summary()
    assert summary["kind"] == "segment" and summary["count"] == 2
    # class 1 has 32 x 32 pixels per frame; frame 1 misses 8 columns of it (31 rows scored)
    missed = 8 * 31
    class1 = (1024 + 992 - missed) / (1024 + 992)
    class0 = (2 * 832 - 32) / (2 * 832 - 32 + missed)  # 832 = 32 x 32 less class 2; 32 ignored in row 0
    assert summary["per_class_iou"] == pytest.approx({"0": class0, "1": class1, "2": 1.0})
    assert summary["miou"] == pytest.approx((class0 + class1 + 1.0) / 3)
    assert summary["pixel_accuracy"] == pytest.approx(1 - missed / (2 * 2048 - 64))
    block = json.loads(json.dumps(post.task_output()))
    assert block["kind"] == "segment" and block["count"] == 2 and block["truncated"] is False
    assert block["frames"][0] == {"frame": 0, "size": [32, 64], "pixels": {"0": 832, "1": 1024, "2": 192}}


def test_segmenter_without_masks_counts_frames():
    post = make_postprocessor({"kind": "segment", "keep_outputs": False}, ["out"])
    assert post.summary() is None
    post.process([one_hot(PREDICTED, 3)], None, 0)
    assert post.summary() == {"kind": "segment", "count": 1} and post.task_output() is None


def test_label_mask_errors(tmp_path):
    with pytest.raises(PostprocessError, match="label_masks folder .* does not exist"):
        Segmenter(segment(), label_masks=str(tmp_path / "none"))
    with pytest.raises(PostprocessError, match="holds no PNG masks"):
        Segmenter(segment(), label_masks=str(tmp_path))
    scores = [one_hot(PREDICTED, 3)]
    cv2.imwrite(str(tmp_path / "beyond.png"), np.full((4, 4), 7, np.uint8))
    post = Segmenter(segment(), label_masks=[str(tmp_path / "beyond.png"), None])
    with pytest.raises(PostprocessError, match="label mask of frame 1 has class 7 but the model gives 3 classes"):
        post.process(scores, None, 0)
    post.process(scores, None, 1)  # no mask for frame 2: counted, not scored
    with pytest.raises(PostprocessError, match="label_masks has 2 masks but frame 3 came"):
        post.process(scores, None, 2)
    cv2.imwrite(str(tmp_path / "colour.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(PostprocessError, match="has 3 channels: save one channel"):
        Segmenter(segment(), label_masks=[str(tmp_path / "colour.png")]).process(scores, None, 0)
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((2, 4), np.uint8))
    with pytest.raises(PostprocessError, match="is 4x2 \\(w x h\\) but its frame is 4x4"):
        Segmenter(segment(), label_masks=[str(tmp_path / "small.png")]).process(scores, None, 0)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(PostprocessError, match="cannot read label mask"):
        Segmenter(segment(), label_masks=[str(tmp_path / "junk.png")]).process(scores, None, 0)


def test_class_count_learnt_from_masks_for_an_argmax_inside_the_model(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), LABELS)
    post = Segmenter(segment(), label_masks=str(tmp_path))
    post.process([PREDICTED[None].astype(np.int64)], None, 0)
    assert post.summary()["pixel_accuracy"] == pytest.approx(12 / 14)
