"""An artifact's detections against an FP32 reference run's detections on the same frames, and the
reference artifact itself (built once per model, kept in a content-addressed cache folder).

The reference's boxes are the ground truth (their scores dropped): mAP@0.5 and mAP@0.5:0.95 by pycocotools
say how much of the FP32 model's behaviour an INT8 or FP16 build keeps, with no labels at all. Beside it,
the mean IoU of matched pairs (greedy by IoU >= 0.5, same class, best pairs first) says how well the boxes
that survived still fit, and the detections per frame of both show boxes lost or gained.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError, EvaluationError
from edgekit.evaluate.detections import (
    FrameDetections,
    coco_detections,
    coco_stats,
    defined,
    detections_by_frame,
    detections_per_frame,
)

MATCH_IOU = 0.5
REFERENCE_TARGET = "x86-ort"


def compare_to_reference(task_output: dict[str, Any] | None, reference_output: dict[str, Any] | None) -> dict:
    """The reference block of a result: mAP with the reference as ground truth, matched IoU, detections."""
    ours = detections_by_frame(task_output)
    theirs = detections_by_frame(reference_output)
    frames = sorted(set(ours) & set(theirs))
    if not frames:
        raise EvaluationError(
            f"the run ({len(ours)} frames) and its reference ({len(theirs)} frames) share no frame position; "
            "run both on the same source"
        )
    ground_truth = _reference_ground_truth(theirs, frames, ours)
    stats = coco_stats(ground_truth, coco_detections(ours, frames), [p + 1 for p in frames])
    ious = [iou for p in frames for iou in matched_ious(ours[p], theirs[p])]
    return {
        "map": defined(stats[0]),
        "map50": defined(stats[1]),
        "miou": round(float(np.mean(ious)), 6) if ious else None,
        "matched": len(ious),
        "frames": len(frames),
        "detections_per_frame": detections_per_frame({p: ours[p] for p in frames}),
        "reference_detections_per_frame": detections_per_frame({p: theirs[p] for p in frames}),
        "computed_on": "host",
    }


def _reference_ground_truth(
    reference: dict[int, FrameDetections], frames: list[int], ours: dict[int, FrameDetections]
) -> dict[str, Any]:
    annotations = []
    for position in frames:
        found = reference[position]
        for (x1, y1, x2, y2), cls in zip(found.boxes, found.classes, strict=True):
            w, h = float(x2 - x1), float(y2 - y1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": position + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [float(x1), float(y1), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    classes = {int(c) for p in frames for found in (reference[p], ours[p]) for c in found.classes}
    return {
        "images": [{"id": p + 1} for p in frames],
        "categories": [{"id": c + 1, "name": str(c)} for c in sorted(classes)],
        "annotations": annotations,
    }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] with every box in b [M, 4] (x1, y1, x2, y2): [N, M]."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def matched_ious(ours: FrameDetections, reference: FrameDetections, threshold: float = MATCH_IOU) -> list[float]:
    """IoUs of the pairs a greedy one-to-one matching keeps: same class, IoU >= threshold, highest first."""
    ious: list[float] = []
    for cls in np.intersect1d(ours.classes, reference.classes):
        mine, theirs = ours.boxes[ours.classes == cls], reference.boxes[reference.classes == cls]
        table = box_iou(mine, theirs)
        rows, cols = np.nonzero(table >= threshold)
        used_rows: set[int] = set()
        used_cols: set[int] = set()
        for k in np.argsort(-table[rows, cols], kind="stable"):
            r, c = int(rows[k]), int(cols[k])
            if r not in used_rows and c not in used_cols:
                used_rows.add(r)
                used_cols.add(c)
                ious.append(float(table[r, c]))
    return ious


# -- the reference artifact -------------------------------------------------------------------------


def reference_cache_dir() -> Path:
    """Where reference artifacts are kept: $XDG_CACHE_HOME/edgekit/reference (~/.cache/...)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "reference"


def reference_artifact(reference: Any, like: Any, *, cache_dir: Path | None = None) -> Any:
    """The artifact a reference run uses: `reference` itself (an Artifact or an artifact folder), or an
    x86-ort FP32 build of `reference` (a Model or an .onnx file), made with the preprocessing and class
    names of the artifact under test (`like`) so both see the same pixels, and reused from `cache_dir`
    when a build of the same bytes is there."""
    from edgekit.artifact import Artifact
    from edgekit.model import Model

    if isinstance(reference, Artifact):
        return reference
    if not isinstance(reference, Model):
        path = Path(reference)
        if path.is_dir():
            return Artifact.load(path)
        if not path.is_file():
            raise EvaluationError(
                f"reference {path} is neither an artifact folder nor a model file; give the FP32 .onnx model "
                "or an artifact built from it"
            )
        reference = Model.load(path)
    model = Model(
        reference.proto,
        path=reference.path,
        preprocess=_same_pixels(like.manifest.get("preprocess"), reference.preprocess),
        class_names=like.manifest.get("class_names") or reference.class_names,
    )
    return _cached_build(model, cache_dir or reference_cache_dir())


def _same_pixels(data: dict[str, Any] | None, own: Any) -> Any:
    """The artifact's preprocessing (the same pixels reach both models) in the reference model's own tensor
    layout: an android-tflite artifact takes NHWC, the ONNX reference NCHW."""
    from edgekit.runtime.preprocess import PreprocessSpec

    if not data:
        return own
    return PreprocessSpec.from_dict({**data, "layout": own.layout})


def _cached_build(model: Any, cache_dir: Path) -> Any:
    from edgekit.artifact import Artifact
    from edgekit.hashing import sha256_bytes
    from edgekit.targets import get_target

    folder = cache_dir / f"{REFERENCE_TARGET}-fp32-{sha256_bytes(model.to_bytes())[:20]}"
    if (folder / "manifest.json").is_file():
        try:
            return Artifact.load(folder)
        except ArtifactError:
            pass  # a damaged cache entry is built again
    return get_target(REFERENCE_TARGET).build(model, folder, precision="fp32")
