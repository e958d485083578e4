"""Semantic segmentation: scores -> a class map, and the confusion matrix that gives mIoU against label
masks (pixel = class index, 255 = ignore, as Pascal VOC and Cityscapes' train ids). Python 3.8-compatible."""

from typing import Any, Dict, List, Optional

import numpy as np

IGNORE = 255  # label pixels never counted


def decode_mask(outputs: List[np.ndarray], config: Dict[str, Any]) -> np.ndarray:
    """[H, W] int32 class map (at the output's resolution: the model input's for most segmenters).

    [B, C, H, W]: argmax over C; with C == 1, class 1 where the score is above `threshold`; in mode
    "threshold" with C > 1, the argmax where its score is above `threshold`, else class 0 (background).
    [B, H, W]: integer outputs are the class map already (argmax inside the model), float ones one
    probability map."""
    output = outputs[0]
    if output.ndim == 3:
        if np.issubdtype(output.dtype, np.integer):
            return output[0].astype(np.int32)
        scores = output[0][None]
    else:
        scores = output[0]
    threshold = config["threshold"]
    if scores.shape[0] == 1:
        return (scores[0] > threshold).astype(np.int32)
    classes = scores.argmax(axis=0).astype(np.int32)
    if config["mode"] == "threshold":
        classes[scores.max(axis=0) <= threshold] = 0
    return classes


def class_count(config: Dict[str, Any], output: np.ndarray) -> Optional[int]:
    """How many classes the masks can hold: num_classes, else the output's channels (2 for one probability
    map); None for a class map made inside the model (the count is then learnt from the masks)."""
    if config["num_classes"] is not None:
        return int(config["num_classes"])
    if output.ndim == 4:
        return max(int(output.shape[1]), 2)
    return None if np.issubdtype(output.dtype, np.integer) else 2


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """[classes, classes] int64 counts, rows = label, columns = prediction; label IGNORE pixels and
    predictions outside 0..classes-1 (e.g. frame pixels the model never saw) are left out."""
    labels = labels.reshape(-1).astype(np.int64)
    predicted = predicted.reshape(-1).astype(np.int64)
    valid = (labels != IGNORE) & (predicted >= 0) & (predicted < classes)
    index = labels[valid] * classes + predicted[valid]
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def iou_summary(matrix: np.ndarray) -> Dict[str, Any]:
    """miou (mean over classes present in labels or predictions), pixel_accuracy and per_class_iou."""
    true_positive = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    present = np.flatnonzero(union > 0)
    ious = true_positive[present] / union[present]
    total = matrix.sum()
    return {
        "miou": float(ious.mean()) if len(ious) else None,
        "pixel_accuracy": float(true_positive.sum() / total) if total else None,
        "per_class_iou": {str(int(c)): float(true_positive[c] / union[c]) for c in present},
    }
