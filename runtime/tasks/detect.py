"""Object detection decoders: a model's raw outputs -> boxes (x1, y1, x2, y2 in model-input pixels), scores
and classes, after the confidence threshold and NMS. Vectorised numpy; NMS through OpenCV (nms.py).

Layouts (ISSUE 14's contract, the exports of the common detector families):
- yolo-anchor-free  [B, 4+nc, N] or its transpose [B, N, 4+nc] (YOLOv8/11): cx, cy, w, h, class scores
- yolo-anchor-based [B, N, 5+nc] (YOLOv5/7): cx, cy, w, h, objectness, class scores
- end-to-end        [B, N, 6] (YOLOv10, DETR-style): x1, y1, x2, y2, score, class; no NMS
- ssd               boxes [B, N, 4] (x1, y1, x2, y2, normalized when all |v| <= 1.5) + scores [B, N, nc]

As Ultralytics' `non_max_suppression` (multi_label=False), each box keeps its best class, boxes scoring
<= conf are dropped, at most MAX_NMS boxes enter NMS and at most max_det leave it. Python 3.8-compatible.
"""

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..postprocess import PostprocessError
from . import describe_shapes, known
from .nms import nms

NORMALIZED_LIMIT = 1.5  # ssd boxes whose coordinates all lie within this are taken as fractions of the input


class Detections(NamedTuple):
    """boxes float32 [K, 4] x1, y1, x2, y2; scores float32 [K]; classes int64 [K]; sorted by score."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def empty_detections() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


_LAYOUTS = {
    "yolo-anchor-free": "outputs[0] as [B, 4+nc, N] or [B, N, 4+nc]",
    "yolo-anchor-based": "outputs[0] as [B, N, 5+nc]",
    "end-to-end": "outputs[0] as [B, N, 6] (x1, y1, x2, y2, score, class)",
    "ssd": "two outputs, boxes [B, N, 4] and scores [B, N, nc]",
}


def _refuse(config: Dict[str, Any], shapes: Sequence[Sequence[Any]], why: str = "") -> PostprocessError:
    others = ", ".join(d for d in _LAYOUTS if d != config["decoder"])
    return PostprocessError(
        "decoder %s reads %s; the model's outputs are %s%s: choose another decoder (%s) or task"
        % (config["decoder"], _LAYOUTS[config["decoder"]], describe_shapes(shapes), why, others)
    )


def anchor_free_channel_axis(shape: Sequence[Any], num_classes: Optional[int]) -> Optional[int]:
    """1 for [B, 4+nc, N], 2 for [B, N, 4+nc], None when neither fits. Without num_classes the shorter
    axis holds the channels (N, the anchor count, is the longer in every YOLO export: 8400 vs 84)."""
    if len(shape) != 3:
        return None
    d1, d2 = known(shape[1]), known(shape[2])
    if num_classes is not None:
        want = 4 + num_classes
        if d1 == want or (d1 is None and d2 is None):
            return 1
        return 2 if d2 == want else None
    if d1 is None and d2 is not None:
        axis = 2  # [B, ?, 4+nc]: the anchor count is the dynamic axis
    elif d2 is None or d1 <= d2:
        axis = 1
    else:
        axis = 2
    channels = known(shape[axis])
    return axis if channels is None or channels >= 5 else None


def ssd_output_indices(shapes: Sequence[Sequence[Any]]) -> Optional[Tuple[int, int]]:
    """(boxes index, scores index): the first [B, N, 4] output and another [B, N, nc] with the same N."""
    for b, box_shape in enumerate(shapes):
        if len(box_shape) != 3 or known(box_shape[2]) not in (None, 4):
            continue
        for s, score_shape in enumerate(shapes):
            if s == b or len(score_shape) != 3:
                continue
            n_box, n_score = known(box_shape[1]), known(score_shape[1])
            if n_box is None or n_score is None or n_box == n_score:
                return b, s
    return None


def _class_count(config: Dict[str, Any], shapes: List[List[Any]]) -> Optional[int]:
    """nc as the layout gives it (None when dynamic); raises when no layout fits."""
    decoder, first = config["decoder"], shapes[0]
    if decoder == "yolo-anchor-free":
        axis = anchor_free_channel_axis(first, config["num_classes"])
        if axis is None:
            raise _refuse(config, shapes)
        channels = known(first[axis])
        return None if channels is None else channels - 4
    if decoder == "ssd":
        pair = ssd_output_indices(shapes)
        if pair is None:
            raise _refuse(config, shapes)
        return known(shapes[pair[1]][2])
    if len(first) != 3:
        raise _refuse(config, shapes)
    last = known(first[2])
    if decoder == "end-to-end":
        if last not in (None, 6):
            raise _refuse(config, shapes)
        return None
    if last is not None and last < 6:  # anchor-based: at least one class after objectness
        raise _refuse(config, shapes)
    return None if last is None else last - 5


def check_shapes(config: Dict[str, Any], shapes: List[List[Any]]) -> None:
    """Raise PostprocessError, naming the shapes and the decoder, when the outputs do not fit."""
    classes = _class_count(config, shapes)
    wanted = config["num_classes"]
    if wanted is not None and classes is not None and classes != wanted:
        raise _refuse(config, shapes, " (num_classes %d, the outputs give %d)" % (wanted, classes))


def decode(
    outputs: List[np.ndarray], config: Dict[str, Any], input_size: Optional[Tuple[int, int]] = None
) -> Detections:
    """Detections of the first batch item. `config` is a filled task config (task_config); `input_size`
    (h, w) scales normalized ssd boxes to input pixels (without it they stay normalized)."""
    check_shapes(config, [list(o.shape) for o in outputs])
    decoder = config["decoder"]
    if decoder == "end-to-end":
        return _end_to_end(outputs[0][0], config)
    if decoder == "yolo-anchor-free":
        boxes, scores, classes = _anchor_free(outputs[0], config)
    elif decoder == "yolo-anchor-based":
        boxes, scores, classes = _anchor_based(outputs[0][0], config)
    else:
        boxes, scores, classes = _ssd(outputs, config, input_size)
    keep = nms(boxes, scores, classes, config["iou"], config["max_det"], config["class_agnostic"])
    return Detections(
        boxes[keep].astype(np.float32, copy=False),
        scores[keep].astype(np.float32, copy=False),
        classes[keep].astype(np.int64, copy=False),
    )


Candidates = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _xywh_to_xyxy(center: np.ndarray) -> np.ndarray:
    """[4, K] rows cx, cy, w, h -> [K, 4] x1, y1, x2, y2."""
    half_w, half_h = center[2] / 2, center[3] / 2
    return np.stack([center[0] - half_w, center[1] - half_h, center[0] + half_w, center[1] + half_h], axis=1)


def _anchor_free(output: np.ndarray, config: Dict[str, Any]) -> Candidates:
    # the max over classes first: it reads every score once; the rest only touches the anchors that pass.
    # Each layout is reduced along its own rows: a transposed view would make numpy stride through memory.
    if anchor_free_channel_axis(output.shape, config["num_classes"]) == 1:
        channels = output[0]  # [4+nc, N]
        best = channels[4:].max(axis=0)
        keep = np.flatnonzero(best > config["conf"])
        chosen = channels[:, keep]
        return _xywh_to_xyxy(chosen[:4]), best[keep], chosen[4:].argmax(axis=0)
    anchors = output[0]  # [N, 4+nc]
    best = anchors[:, 4:].max(axis=1)
    keep = np.flatnonzero(best > config["conf"])
    chosen = anchors[keep]
    return _xywh_to_xyxy(chosen[:, :4].T), best[keep], chosen[:, 4:].argmax(axis=1)


def _anchor_based(rows: np.ndarray, config: Dict[str, Any]) -> Candidates:
    conf = config["conf"]
    rows = rows[rows[:, 4] > conf]  # objectness first, as YOLOv5's NMS: cheap and removes most rows
    scores = rows[:, 5:] * rows[:, 4:5]
    classes = scores.argmax(axis=1)
    best = scores[np.arange(len(classes)), classes]
    keep = best > conf
    return _xywh_to_xyxy(rows[keep, :4].T), best[keep], classes[keep]


def _end_to_end(rows: np.ndarray, config: Dict[str, Any]) -> Detections:
    rows = rows[rows[:, 4] > config["conf"]]
    order = np.argsort(-rows[:, 4], kind="stable")[: config["max_det"]]
    rows = rows[order]
    return Detections(
        rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32), np.rint(rows[:, 5]).astype(np.int64)
    )


def _ssd(outputs: List[np.ndarray], config: Dict[str, Any], input_size: Optional[Tuple[int, int]]) -> Candidates:
    pair = ssd_output_indices([list(o.shape) for o in outputs])
    assert pair is not None  # check_shapes refused the outputs otherwise
    boxes, scores = outputs[pair[0]][0], outputs[pair[1]][0]
    first = 1 if config["background"] else 0
    classes = scores[:, first:].argmax(axis=1)
    best = scores[np.arange(len(classes)), classes + first]
    keep = np.flatnonzero(best > config["conf"])
    chosen = boxes[keep].astype(np.float32)
    if input_size is not None and boxes.size and np.abs(boxes).max() <= NORMALIZED_LIMIT:
        chosen *= np.array([input_size[1], input_size[0], input_size[1], input_size[0]], np.float32)
    return chosen, best[keep], classes[keep] + first
