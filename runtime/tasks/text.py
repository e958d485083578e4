"""DB text detection (Differentiable Binarization, PaddleOCR's det models): probability map -> 4-point boxes.

The steps and their order are PaddleOCR's `DBPostProcess` (score_mode "fast", box_type "quad"): binarize at
`threshold`, take the outer contours, a minimum-area rectangle per contour (dropped when its short side is
under `min_size`), score = mean probability inside that rectangle (dropped under `box_threshold`), unclip
(grow by distance area * unclip_ratio / perimeter), the rectangle of the grown shape again (dropped under
min_size + 2). PaddleOCR grows with pyclipper; see `_unclip` for why OpenCV alone gives the same box.
Python 3.8-compatible.
"""

from typing import Any, Dict, Tuple

import numpy as np

Rect = Tuple[Tuple[float, float], Tuple[float, float], float]  # cv2.minAreaRect: centre, (w, h), angle


def _cv2() -> Any:
    import cv2  # lazily: the host imports this package to validate task configs

    return cv2


def db_boxes(prob_map: np.ndarray, config: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """(polygons float32 [K, 4, 2] clockwise from the top-left, in the map's pixels, scores float32 [K])."""
    cv2 = _cv2()
    prob_map = np.asarray(prob_map, np.float32)
    height, width = prob_map.shape
    bitmap = (prob_map > config["threshold"]).astype(np.uint8)
    # [-2] keeps this working with OpenCV 3's (image, contours, hierarchy) as well as 4's pair
    contours = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)[-2]
    min_size = config["min_size"]
    polygons, scores = [], []
    for contour in contours[: config["max_candidates"]]:
        rect = cv2.minAreaRect(contour)
        if min(rect[1]) < min_size:
            continue
        score = _mean_inside(prob_map, _corners(rect))
        if score < config["box_threshold"]:
            continue
        grown = _unclip(rect, config["unclip_ratio"])
        if min(grown[1]) < min_size + 2:
            continue
        box = _corners(grown)
        box[:, 0] = np.clip(box[:, 0], 0, width)
        box[:, 1] = np.clip(box[:, 1], 0, height)
        polygons.append(box)
        scores.append(score)
    if not polygons:
        return np.zeros((0, 4, 2), np.float32), np.zeros(0, np.float32)
    return np.stack(polygons).astype(np.float32), np.array(scores, np.float32)


def _corners(rect: Rect) -> np.ndarray:
    """The rectangle's corners as PaddleOCR's get_mini_boxes orders them: top-left, top-right,
    bottom-right, bottom-left (left pair and right pair by x, then each pair by y)."""
    points = sorted(_cv2().boxPoints(rect).tolist(), key=lambda p: p[0])
    left = points[:2] if points[0][1] <= points[1][1] else points[1::-1]
    right = points[2:] if points[2][1] <= points[3][1] else points[:1:-1]
    return np.array([left[0], right[0], right[1], left[1]], np.float32)


def _mean_inside(prob_map: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the box: PaddleOCR's box_score_fast (the box filled on its bounding crop)."""
    cv2 = _cv2()
    height, width = prob_map.shape
    x0 = int(np.clip(np.floor(box[:, 0].min()), 0, width - 1))
    x1 = int(np.clip(np.ceil(box[:, 0].max()), 0, width - 1))
    y0 = int(np.clip(np.floor(box[:, 1].min()), 0, height - 1))
    y1 = int(np.clip(np.ceil(box[:, 1].max()), 0, height - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    shifted = (box - np.array([x0, y0], np.float32)).astype(np.int32)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2), 1)
    return float(cv2.mean(prob_map[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def _unclip(rect: Rect, ratio: float) -> Rect:
    """The rectangle grown by d = area * ratio / perimeter on every side.

    PaddleOCR offsets the 4-point box by d with round joins (pyclipper) and takes the grown shape's
    minimum-area rectangle. The round-joined offset of a rectangle is the rectangle plus a disc of radius
    d; its minimum-area rectangle is the original one grown by d on each side (any other angle is at
    least as wide both ways), so this gives the same box without a polygon clipper on the device."""
    centre, (w, h), angle = rect
    perimeter = 2.0 * (w + h)
    distance = w * h * ratio / perimeter if perimeter > 0 else 0.0
    return centre, (w + 2 * distance, h + 2 * distance), angle
