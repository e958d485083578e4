"""Detections out of an agent's `task_output`, and the pycocotools call both evaluators share.

`task_output` (docs/contracts.md): `{"kind": "detect", "frames": [{"frame": 0, "size": [h, w], "boxes":
[[x1, y1, x2, y2, score, class], ...]}, ...]}` in frame pixels; text detection gives `"polygons": [[[x, y]
* 4, score], ...]` instead, scored here by each polygon's bounding box as class 0.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from typing import Any, NamedTuple

import numpy as np

from edgekit.errors import EvaluationError

BOX_TASKS = ("detect", "text-detect")
# redirect_stdout swaps the process-wide sys.stdout: fleet threads scoring at once must take turns, or one
# of them restores another's buffer and the CLI's output disappears
_QUIET = threading.Lock()


class FrameDetections(NamedTuple):
    """One frame's detections: boxes [K, 4] x1, y1, x2, y2 (frame pixels), scores [K], classes [K]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:  # the number of detections, not of fields
        return int(self.scores.shape[0])


def _boxes_of(entry: dict[str, Any], kind: str, where: str) -> FrameDetections:
    rows: list[list[float]] = []
    if kind == "text-detect":
        for polygon in entry.get("polygons") or []:
            points = np.asarray(polygon[0], dtype=np.float64).reshape(-1, 2)
            x1, y1 = points.min(axis=0)
            x2, y2 = points.max(axis=0)
            rows.append([x1, y1, x2, y2, float(polygon[1]), 0])
    else:
        rows = [list(map(float, box)) for box in entry.get("boxes") or []]
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 6) if rows else np.zeros((0, 6))
    if not np.isfinite(table).all():
        raise EvaluationError(f"task_output {where} holds a box that is not finite numbers")
    return FrameDetections(table[:, :4], table[:, 4], table[:, 5].astype(np.int64))


def detections_by_frame(task_output: dict[str, Any] | None) -> dict[int, FrameDetections]:
    """{source position: detections} for every frame the agent reported (a looped source repeats positions:
    the first pass counts). EvaluationError when there is nothing to score."""
    if not task_output:
        raise EvaluationError(
            "the agent returned no per-frame detections (task_output): the run needs a detect or text-detect "
            "task, and an agent of this edgekit version"
        )
    kind = task_output.get("kind")
    if kind not in BOX_TASKS:
        raise EvaluationError(f"task_output is of kind {kind!r}; boxes are scored for {' and '.join(BOX_TASKS)}")
    frames: dict[int, FrameDetections] = {}
    for i, entry in enumerate(task_output.get("frames") or []):
        where = f"frames[{i}]"
        try:
            position = int(entry["frame"])
            if position not in frames:
                frames[position] = _boxes_of(entry, kind, where)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise EvaluationError(f"task_output {where} is malformed ({type(exc).__name__}: {exc})") from exc
    return frames


def detections_per_frame(frames: dict[int, FrameDetections]) -> float | None:
    return sum(len(d) for d in frames.values()) / len(frames) if frames else None


def coco_detections(frames: dict[int, FrameDetections], positions: list[int]) -> list[dict[str, Any]]:
    """pycocotools result entries for `positions` (image id = position + 1, category id = class + 1)."""
    entries = []
    for position in positions:
        found = frames[position]
        for (x1, y1, x2, y2), score, cls in zip(found.boxes, found.scores, found.classes, strict=True):
            entries.append(
                {
                    "image_id": position + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(score),
                }
            )
    return entries


def coco_stats(ground_truth: dict[str, Any], detections: list[dict[str, Any]], image_ids: list[int]) -> list[float]:
    """COCOeval's twelve bbox figures over `image_ids` (-1 where undefined: no ground truth box).

    The detections become a COCO dataset here instead of through `loadRes`, which fails on an empty list;
    each entry gets what `loadRes` would give it (id from 1, area w*h, iscrowd 0)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise EvaluationError(
            "scoring detections needs pycocotools (an edgekit dependency): pip install pycocotools"
        ) from exc
    results = [{**d, "id": i + 1, "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0} for i, d in enumerate(detections)]
    with _QUIET, contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        truth = _coco(COCO, ground_truth)
        found = _coco(COCO, {**ground_truth, "annotations": results})
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.params.imgIds = sorted(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [float(v) for v in evaluation.stats]


def _coco(coco_class: Any, dataset: dict[str, Any]) -> Any:
    coco = coco_class()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def defined(value: float) -> float | None:
    """A COCOeval figure rounded for storage, or None where COCOeval says -1 (nothing to measure)."""
    return None if value < 0 or not math.isfinite(value) else round(value, 6)
