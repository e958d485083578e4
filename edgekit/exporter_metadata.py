"""What other exporters leave in an ONNX file's metadata, read as edgekit's task, class names and preprocessing.

Read here (metadata values are the exporter's `str(value)`: Python literals, parsed with
`ast.literal_eval`, never `eval`):

* **Ultralytics** (`ultralytics` package: YOLOv8, YOLO11, YOLOv10, RT-DETR exports): `task` (detect,
  segment, classify, pose, obb), `imgsz` ("[640, 640]"), `names` ("{0: 'person', ...}"), `stride`, `args`
  ("{'nms': True, ...}") and `end2end`. detect becomes the task detect, its decoder taken from the output
  shape (`[B, 4+nc, N]` anchor-free; `[B, N, 6]` end-to-end for NMS-inside exports); classify becomes
  classify. Preprocessing: detect as Ultralytics predicts, a letterbox at `imgsz` (RGB, /255, pad 114);
  classify as its `classify_transforms` (shorter side to `imgsz`, centre crop, RGB, /255, no mean/std).
  segment, pose and obb carry instance masks, keypoints or rotated boxes that no edgekit decoder reads:
  no task, a note says so (class names and preprocessing are still read).
* **YOLOv5-style** (ultralytics/yolov5 and the repositories built on its export: YOLOv9's writes the same):
  `stride` and `names` only. The task follows from the output shape and the class count: `[B, N, 5+nc]`
  anchor-based, `[B, 4+nc, N]` anchor-free, `[B, nc]` classify; anything else gives no task.

Looked at and found nothing to read: PaddleOCR / RapidOCR detection and direction-classifier models
(Paddle2ONNX writes no metadata; the recognizer keeps its alphabet under `character`, which is no task of
ours), torchvision and timm models (torch.onnx.export writes none), YOLOv7 (its export writes none).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit.runtime.preprocess import RESIZE_MODES, PreprocessError, PreprocessSpec
from edgekit.tasks import classification_shaped, task_config

ULTRALYTICS = "ultralytics metadata"
YOLOV5 = "yolov5 metadata"

LETTERBOX_PAD = 114  # Ultralytics' LetterBox grey


@dataclass
class Found:
    """What one exporter's metadata says; None where it says nothing. `notes` explain what was left out."""

    source: str | None = None
    task: dict | None = None
    class_names: list[str] | None = None
    preprocess: PreprocessSpec | None = None
    notes: list[str] = field(default_factory=list)


def read_exporter_metadata(
    metadata: Mapping[str, str],
    input_shape: Sequence[Any] | None,
    output_shapes: Sequence[Sequence[Any] | None],
    base: PreprocessSpec | None,
) -> Found:
    """Task, class names and preprocessing from an exporter's metadata (see the module docstring).
    `base` is the preprocessing guessed from the input (its layout and dtype are kept)."""
    if "names" not in metadata or "stride" not in metadata:
        return Found()
    found = Found(source=ULTRALYTICS if "task" in metadata else YOLOV5)
    found.class_names = _names(metadata["names"], found.notes)
    classes = len(found.class_names) if found.class_names else None
    stride = _literal(metadata["stride"])
    first = output_shapes[0] if output_shapes else None
    if "task" in metadata:
        found.task = _ultralytics_task(metadata, first, classes, found.notes)
    else:
        found.task = _yolov5_task(first, classes, found.notes)
    imgsz = _imgsz(metadata.get("imgsz"), input_shape)
    if found.task is not None and imgsz is not None and base is not None:
        found.preprocess = _preprocess(metadata, found.task, imgsz, stride, input_shape, base, found.notes)
    return found


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _names(text: str, notes: list[str]) -> list[str] | None:
    """`{0: 'person', 1: 'bicycle'}` (or a list) as a list of names indexed by class."""
    value = _literal(text)
    if isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value):
        return list(value)
    if (
        isinstance(value, dict)
        and set(value) == set(range(len(value)))
        and all(isinstance(n, str) for n in value.values())
    ):
        return [value[i] for i in range(len(value))]
    notes.append(
        f"metadata 'names' is not a list or a {{0: name, 1: name, ...}} dict; class names not read: {text[:80]!r}"
    )
    return None


def _imgsz(text: str | None, input_shape: Sequence[Any] | None) -> list[int] | None:
    """Ultralytics' `imgsz` ("[640, 640]" or "640"), else the input's fixed spatial size (NCHW or NHWC)."""
    value = _literal(text) if text else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return list(value)
    spatial = _spatial(input_shape)
    return list(spatial) if spatial and _fixed(spatial) else None


def _spatial(input_shape: Sequence[Any] | None) -> Sequence[Any] | None:
    """(height, width) of an image input, NCHW or NHWC."""
    if not input_shape or len(input_shape) != 4:
        return None
    return input_shape[2:] if input_shape[1] in (1, 3) else input_shape[1:3]


def _fixed(dims: Sequence[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims)


def _ultralytics_task(
    metadata: Mapping[str, str], shape: Sequence[Any] | None, classes: int | None, notes: list[str]
) -> dict | None:
    exported = metadata["task"]
    if exported == "classify":
        return task_config("classify", where="ultralytics task")
    if exported != "detect":
        notes.append(
            f"Ultralytics task {exported!r} has no edgekit decoder (its outputs carry instance masks, keypoints "
            "or rotated boxes); give a task with --task and --postprocess"
        )
        return None
    args = _literal(metadata.get("args", "")) or {}
    end_to_end = _literal(metadata.get("end2end", "")) is True or (isinstance(args, dict) and args.get("nms") is True)
    # the ultralytics package writes anchor-free heads (YOLOv5u too) or end-to-end ones, never YOLOv5's
    decoder = _yolo_decoder(shape, classes, end_to_end=end_to_end, anchor_based=False) or "yolo-anchor-free"
    return task_config({"task": "detect", "decoder": decoder, "num_classes": classes}, where="ultralytics task")


def _yolov5_task(shape: Sequence[Any] | None, classes: int | None, notes: list[str]) -> dict | None:
    if classes is not None and classification_shaped(shape) and shape[1] == classes:
        return task_config("classify", where="yolov5 task")
    decoder = _yolo_decoder(shape, classes, end_to_end=False, anchor_based=True)
    if decoder is None:
        notes.append(
            f"metadata has YOLO 'stride' and 'names' ({classes} classes) but the output shape {list(shape or [])} "
            "fits no YOLO layout; give a task with --task"
        )
        return None
    return task_config({"task": "detect", "decoder": decoder, "num_classes": classes}, where="yolov5 task")


def _yolo_decoder(
    shape: Sequence[Any] | None, classes: int | None, *, end_to_end: bool, anchor_based: bool
) -> str | None:
    """The YOLO decoder whose layout `shape` has for `classes` classes, or None when none fits.
    `end_to_end`: the exporter says NMS is inside; `anchor_based`: the exporter may write YOLOv5 heads."""
    if shape is None or len(shape) != 3:
        return None
    rows, columns = shape[1], shape[2]
    if end_to_end and columns == 6:
        return "end-to-end"  # [B, N, 6]: x1, y1, x2, y2, score, class (NMS inside the model)
    if classes is not None and (rows == 4 + classes or columns == 4 + classes):
        return "yolo-anchor-free"  # [B, 4+nc, N] (YOLOv8/11, YOLOv9) or transposed
    if anchor_based and classes is not None and columns == 5 + classes:
        return "yolo-anchor-based"  # [B, N, 5+nc] (YOLOv5/7)
    return "end-to-end" if classes is not None and columns == 6 else None  # YOLOv10 writes no NMS flag


# the preprocessing keys _preprocess sets from what the exporter says (layout and dtype are the input's)
PREPROCESS_KEYS = ("color", "scale", "mean", "std", "resize", "resize_mode", "crop", "pad_value", "stride")


def _preprocess(
    metadata: Mapping[str, str],
    task: dict,
    imgsz: list[int],
    stride: Any,
    input_shape: Sequence[Any] | None,
    base: PreprocessSpec,
    notes: list[str],
) -> PreprocessSpec | None:
    """Ultralytics' own preprocessing for the task: RGB, pixels / 255, no mean or std; a letterbox for
    detection, shorter side + centre crop for classification."""
    common = {"color": "RGB", "scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0], "layout": base.layout}
    common["dtype"] = base.dtype
    if task["task"] == "classify":
        if "task" not in metadata:
            return None  # YOLOv5 classifiers normalise with ImageNet mean/std: not ours to guess
        return PreprocessSpec(resize=imgsz, resize_mode="shorter_side", crop=imgsz, **common)
    # MERGE: the letterbox resize mode lands in runtime/preprocess.py with the preprocessing helper's branch;
    # until then (this branch alone) the stretch the input suggests stays and a note says so.
    if "letterbox" not in RESIZE_MODES:
        notes.append("letterbox preprocessing is not available in this build; the default stretch resize is used")
        return None
    spatial = _spatial(input_shape)
    fixed = spatial is not None and _fixed(spatial)
    letterbox = {"resize": imgsz, "resize_mode": "letterbox", "pad_value": LETTERBOX_PAD}
    # a fixed input is padded to exactly imgsz (Ultralytics' auto=False); a dynamic one only to the stride
    letterbox["stride"] = stride if not fixed and isinstance(stride, int) and stride > 0 else None
    try:
        return PreprocessSpec.from_dict({**common, **letterbox})
    except PreprocessError as exc:
        notes.append(f"letterbox preprocessing from the metadata was refused ({exc}); the default is used")
        return None
