"""Non-maximum suppression with torchvision's semantics: highest score first, a box is dropped when its IoU
with a kept box of its class (of any class when class_agnostic) is above `iou`.

OpenCV's `cv2.dnn.NMSBoxes` does exactly this greedy pass in C++ (stable sort by score, suppress on
IoU > threshold); a numpy NMS needs one Python iteration per kept box, and OpenCV is the agent's dependency
already. Classes are kept apart as torchvision's `batched_nms` and OpenCV's own `NMSBoxesBatched` do it,
by moving each class's boxes beyond every other's; doing that here, not through NMSBoxesBatched, keeps one
path that also runs on OpenCV before 4.7 (JetPack 5 ships 4.5). Python 3.8-compatible.
"""

from typing import Any

import numpy as np

# as Ultralytics' max_nms: a flat score map (an untrained or mis-preprocessed model) cannot stall a frame
MAX_NMS = 30000


def _cv2() -> Any:
    import cv2  # lazily: the host imports this package to validate task configs

    return cv2


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou: float,
    max_det: int,
    class_agnostic: bool = False,
) -> np.ndarray:
    """Indices (int64, by descending score) of the boxes kept, at most `max_det`.

    boxes [K, 4] x1, y1, x2, y2; scores [K] above 0 (OpenCV drops a score of 0 or less); classes [K]."""
    if len(scores) == 0 or max_det < 1:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")[:MAX_NMS]  # stable: ties keep their order, as OpenCV's sort
    boxes, scores, classes = boxes[order], scores[order], classes[order]
    # Greedy NMS keeps a box or not by the higher-scoring boxes alone, so NMS over the best `size` boxes
    # keeps exactly the first of the full pass's kept boxes: once it keeps max_det, the rest cannot matter.
    # OpenCV's pass costs candidates x kept; this bounds a flat score map (every anchor over conf), while a
    # trained detector's few hundred candidates still take one call.
    size = min(len(order), max(4 * max_det, 1024))
    while True:
        kept = _opencv_nms(boxes[:size], scores[:size], classes[:size], iou, class_agnostic)
        if len(kept) >= max_det or size == len(order):
            return order[kept[:max_det]].astype(np.int64)
        size = min(len(order), 4 * size)


def _opencv_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, agnostic: bool) -> np.ndarray:
    """The kept indices (by descending score) of one OpenCV NMS call over all the boxes given."""
    xywh = np.empty((len(boxes), 4), np.float64)
    # from 0 up (YOLO boxes may start left of the image), then class c moved by c * (largest coordinate + 1)
    xywh[:, :2] = boxes[:, :2] - min(float(boxes[:, :2].min()), 0.0)
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    if not agnostic:
        xywh[:, :2] += classes[:, None].astype(np.float64) * (float((xywh[:, :2] + xywh[:, 2:]).max()) + 1.0)
    # a list of rows: OpenCV's bindings read it into Rect2d about twice as fast as an array
    kept = _cv2().dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float32, copy=False), 0.0, float(iou))
    return np.asarray(kept, np.int64).reshape(-1)
