"""Stand-ins and tensor builders for the task decoder tests.

The Geometry of runtime/preprocess.py maps model-input pixels to frame pixels; these stand-ins have its
interface (input_size, to_frame, to_frame_boxes) for the two kinds of mapping every resize mode reduces to:
a stretch (pure scale) and a letterbox (scale plus padding offset)."""

from collections.abc import Sequence

import numpy as np


class LetterboxGeometry:
    """Frame (h, w) letterboxed into input (h, w): one scale, centred padding; to_frame clips to the frame."""

    def __init__(self, frame_h: int, frame_w: int, input_size: tuple[int, int] = (640, 640)) -> None:
        self.input_size = input_size
        self.frame = (frame_h, frame_w)
        self.scale = min(input_size[0] / frame_h, input_size[1] / frame_w)
        self.pad = ((input_size[1] - frame_w * self.scale) / 2, (input_size[0] - frame_h * self.scale) / 2)

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64)
        frame = (points - np.array(self.pad)) / self.scale
        frame[..., 0] = np.clip(frame[..., 0], 0, self.frame[1])
        frame[..., 1] = np.clip(frame[..., 1], 0, self.frame[0])
        return frame

    def to_frame_boxes(self, boxes: np.ndarray) -> np.ndarray:
        return self.to_frame(np.asarray(boxes).reshape(-1, 2, 2)).reshape(-1, 4)


class StretchGeometry(LetterboxGeometry):
    """Frame stretched to the input: a scale per axis, no offset."""

    def __init__(self, frame_h: int, frame_w: int, input_size: tuple[int, int] = (640, 640)) -> None:
        LetterboxGeometry.__init__(self, frame_h, frame_w, input_size)
        self.pad = (0.0, 0.0)
        self.scale = np.array([input_size[1] / frame_w, input_size[0] / frame_h])


def yolo_anchor_free(
    boxes: Sequence[Sequence[float]],
    classes: Sequence[int],
    scores: Sequence[float],
    num_classes: int = 80,
    anchors: int = 8400,
    seed: int = 0,
) -> tuple[np.ndarray, list[int]]:
    """A [1, 4+nc, N] YOLOv8 output holding the x1, y1, x2, y2 boxes (as cx, cy, w, h) with their class
    scores at random anchors, every other anchor a random low-scoring box; and the anchors used."""
    rng = np.random.default_rng(seed)
    out = np.zeros((1, 4 + num_classes, anchors), np.float32)
    out[0, :2] = rng.uniform(0, 640, (2, anchors))
    out[0, 2:4] = rng.uniform(5, 100, (2, anchors))
    out[0, 4:] = rng.uniform(0, 0.05, (num_classes, anchors))
    used = rng.choice(anchors, len(boxes), replace=False).tolist()
    for anchor, box, cls, score in zip(used, boxes, classes, scores, strict=True):
        x1, y1, x2, y2 = box
        out[0, :4, anchor] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        out[0, 4 + cls, anchor] = score
    return out, used


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """[K, K] IoU of every pair of x1, y1, x2, y2 boxes, in float64."""
    b = np.asarray(boxes, np.float64)
    width = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area[:, None] + area[None, :] - inter)


def brute_force_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_det: int, agnostic: bool
) -> list[int]:
    """torchvision's nms / batched_nms spelt out: by descending score, keep a box unless a kept box of
    its class (any class when agnostic) overlaps it with IoU above `iou`."""
    overlaps = pairwise_iou(boxes)
    classes = np.asarray(classes)
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    is_kept = np.zeros(len(scores), bool)
    kept: list[int] = []
    for i in order:
        rivals = is_kept if agnostic else is_kept & (classes == classes[i])
        if not rivals.any() or overlaps[i, rivals].max() <= iou:
            kept.append(i)
            is_kept[i] = True
    return kept[:max_det]
