"""The vision task postprocessors the agent runs per frame: decode the outputs, map them from model-input
pixels to frame pixels (Geometry of runtime/preprocess.py), keep per-frame outputs for the result's
`task_output` block and the counts (or, for segmentation against label masks, the confusion matrix) for its
`accuracy` block. Python 3.8-compatible; numpy and OpenCV only."""

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ..postprocess import FrameSize, PostprocessError, Postprocessor
from . import check_outputs
from .detect import Detections, decode
from .segment import IGNORE, class_count, confusion, decode_mask, iou_summary
from .text import db_boxes

MAX_TASK_OUTPUTS = 200000  # detections (polygons, frames for segment) in one result's task_output
NOT_SEEN = -1  # class map value of frame pixels outside what the model saw (a centre crop's borders)

GeometryFactory = Callable[[int, int], Any]  # (frame_h, frame_w) -> Geometry (to_frame, to_frame_boxes)
LabelMaskSource = Union[str, Sequence[Optional[str]]]


def _cv2() -> Any:
    import cv2  # lazily, as the rest of runtime/

    return cv2


class KeptOutputs(object):
    """Per-frame outputs for task_output: each source position once (a looping source repeats them),
    whole frames only, until MAX_TASK_OUTPUTS items; after that `truncated`."""

    def __init__(self, kind: str, enabled: bool, limit: int = MAX_TASK_OUTPUTS) -> None:
        self.kind = kind
        self.enabled = enabled
        self.limit = limit
        self.frames: List[Dict[str, Any]] = []
        self.count = 0
        self.truncated = False
        self._seen: Set[int] = set()

    def wants(self, position: int, items: int) -> bool:
        """Whether a frame at `position` with `items` outputs is to be kept (marks truncation)."""
        if not self.enabled or self.truncated or position in self._seen:
            return False
        if self.count + items > self.limit:
            self.truncated = True
            return False
        return True

    def add(self, position: int, frame_size: Optional[FrameSize], key: str, value: Any, items: int) -> None:
        """`frame_size`: the frame the value's pixels belong to; None for model-input pixels."""
        self._seen.add(position)
        size = [int(frame_size[0]), int(frame_size[1])] if frame_size is not None else None
        self.frames.append({"frame": int(position), "size": size, key: value})
        self.count += items

    def block(self) -> Optional[Dict[str, Any]]:
        if not self.enabled:
            return None
        return {"kind": self.kind, "frames": self.frames, "count": self.count, "truncated": self.truncated}


class TaskPostprocessor(Postprocessor):
    """Common to the vision tasks: the config, the geometry of the current frame size, kept outputs."""

    def __init__(self, config: Dict[str, Any], geometry: Optional[GeometryFactory] = None, keep_outputs: bool = True):
        self.config = config
        self.kind = config["task"]
        self.frames = 0
        self.kept = KeptOutputs(self.kind, keep_outputs)
        self._geometry_factory = geometry
        self._geometry_key: Optional[Tuple[int, int]] = None
        self._geometry: Any = None

    def check_outputs(self, output_shapes: Sequence[Sequence[Any]]) -> None:
        check_outputs(self.config, output_shapes)

    def geometry(self, frame_size: Optional[FrameSize]) -> Any:
        """The Geometry for this frame size (made once per size), or None without a size or a factory."""
        if frame_size is None or self._geometry_factory is None:
            return None
        key = (int(frame_size[0]), int(frame_size[1]))
        if key != self._geometry_key:
            self._geometry = self._geometry_factory(key[0], key[1])
            self._geometry_key = key
        return self._geometry

    def task_output(self) -> Optional[Dict[str, Any]]:
        return self.kept.block()


def _input_size(geometry: Any) -> Optional[Tuple[int, int]]:
    size = getattr(geometry, "input_size", None) if geometry is not None else None
    return (int(size[0]), int(size[1])) if size is not None else None


def _box_rows(found: Detections) -> List[List[Any]]:
    """[[x1, y1, x2, y2, score, class], ...]: coordinates rounded to 0.01 px, scores to 1e-5."""
    coords = np.round(found.boxes.astype(np.float64), 2).tolist()
    scores = np.round(found.scores.astype(np.float64), 5).tolist()
    classes = found.classes.tolist()
    return [coords[i] + [scores[i], classes[i]] for i in range(len(coords))]


class Detector(TaskPostprocessor):
    """task detect: boxes in frame pixels (model-input pixels without a frame size or geometry)."""

    def __init__(self, config: Dict[str, Any], geometry: Optional[GeometryFactory] = None, keep_outputs: bool = True):
        TaskPostprocessor.__init__(self, config, geometry, keep_outputs)
        self.detections = 0

    def process(
        self,
        outputs: List[np.ndarray],
        label: Optional[int],
        position: int,
        record: bool = True,
        frame_size: Optional[FrameSize] = None,
    ) -> Detections:
        geometry = self.geometry(frame_size)
        found = decode(outputs, self.config, _input_size(geometry))
        if geometry is not None and len(found.boxes):
            found = found._replace(boxes=np.asarray(geometry.to_frame_boxes(found.boxes), np.float32))
        if record:
            self.frames += 1
            self.detections += len(found.scores)
            if self.kept.wants(position, len(found.scores)):
                mapped_to = frame_size if geometry is not None else None
                self.kept.add(position, mapped_to, "boxes", _box_rows(found), len(found.scores))
        return found

    def summary(self) -> Optional[Dict[str, Any]]:
        if self.frames == 0:
            return None
        return {
            "kind": self.kind,
            "count": self.frames,
            "detections": self.detections,
            "per_frame_mean": self.detections / float(self.frames),
        }


class TextDetector(Detector):
    """task text-detect: DB polygons (4 points each) in frame pixels."""

    def process(
        self,
        outputs: List[np.ndarray],
        label: Optional[int],
        position: int,
        record: bool = True,
        frame_size: Optional[FrameSize] = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        prob_map = outputs[0][0]
        if prob_map.ndim == 3:
            prob_map = prob_map[0]
        polygons, scores = db_boxes(prob_map, self.config)
        geometry = self.geometry(frame_size)
        if geometry is not None and len(polygons):
            input_size = _input_size(geometry)
            if input_size is not None and input_size != prob_map.shape:  # a map smaller than the input
                polygons = polygons * np.array(
                    [input_size[1] / prob_map.shape[1], input_size[0] / prob_map.shape[0]], np.float32
                )
            polygons = np.asarray(geometry.to_frame(polygons), np.float32)
        if record:
            self.frames += 1
            self.detections += len(scores)
            if self.kept.wants(position, len(scores)):
                points = np.round(polygons.astype(np.float64), 2).tolist()
                rounded = np.round(scores.astype(np.float64), 5).tolist()
                rows = [[points[i], rounded[i]] for i in range(len(points))]
                self.kept.add(position, frame_size if geometry is not None else None, "polygons", rows, len(rows))
        return polygons, scores


def class_map_to_frame(class_map: np.ndarray, geometry: Any, frame_size: FrameSize) -> np.ndarray:
    """The class map in frame pixels (int32 [frame_h, frame_w]; NOT_SEEN where the model saw nothing).

    Every resize mode (stretch, shorter side + crop, letterbox) maps input pixels to frame pixels by an
    axis-aligned scale and offset; it is read off Geometry.to_frame at the input's centre (a point every
    mode keeps inside the frame) and applied to pixel centres with a nearest-neighbour warp."""
    cv2 = _cv2()
    map_h, map_w = class_map.shape
    in_h, in_w = _input_size(geometry) or (map_h, map_w)
    centre = np.array([[in_w / 2.0, in_h / 2.0], [in_w / 2.0 + 1.0, in_h / 2.0 + 1.0]], np.float64)
    mapped = np.asarray(geometry.to_frame(centre), np.float64)
    scale = mapped[1] - mapped[0]  # frame pixels per input pixel, x and y
    offset = mapped[0] - scale * centre[0]
    sx, sy = scale[0] * in_w / map_w, scale[1] * in_h / map_h  # per class-map pixel
    # pixel centres: frame index + 0.5 = s * (map index + 0.5) + offset
    warp = np.array([[sx, 0.0, 0.5 * sx + offset[0] - 0.5], [0.0, sy, 0.5 * sy + offset[1] - 0.5]], np.float64)
    outside = np.iinfo(np.uint16).max
    warped = cv2.warpAffine(
        class_map.astype(np.uint16),
        warp,
        (int(frame_size[1]), int(frame_size[0])),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=outside,
    ).astype(np.int32)
    warped[warped == outside] = NOT_SEEN
    return warped


class LabelMasks(object):
    """Label masks by source position: a folder of PNGs (sorted by name, as the image source sorts the
    images they are named like) or one path (or None: no mask) per position."""

    def __init__(self, source: LabelMaskSource) -> None:
        if isinstance(source, str):
            if not os.path.isdir(source):
                raise PostprocessError(
                    "label_masks folder %s does not exist: push it with the plan or fix label_masks" % source
                )
            names = sorted(n for n in os.listdir(source) if n.lower().endswith(".png"))
            if not names:
                raise PostprocessError("label_masks folder %s holds no PNG masks" % source)
            self.paths: List[Optional[str]] = [os.path.join(source, n) for n in names]
            self.where = "label_masks folder %s" % source
        else:
            self.paths = list(source)
            self.where = "label_masks"

    def load(self, position: int, size: Tuple[int, int]) -> Optional[np.ndarray]:
        """The mask of the frame at `position` (uint [h, w]), None when that frame has none."""
        if position >= len(self.paths):
            raise PostprocessError(
                "%s has %d masks but frame %d came: give one mask per image, named like the images"
                % (self.where, len(self.paths), position + 1)
            )
        path = self.paths[position]
        if path is None:
            return None
        mask = _cv2().imread(path, -1)  # IMREAD_UNCHANGED: class indices, not colours
        if mask is None:
            raise PostprocessError("cannot read label mask %s as an image" % path)
        if mask.ndim != 2:
            raise PostprocessError(
                "label mask %s has %d channels: save one channel, pixel = class index, 255 = ignore (a palette "
                "PNG reads as colours here)" % (path, mask.shape[2])
            )
        if mask.shape != tuple(size):
            raise PostprocessError(
                "label mask %s is %dx%d (w x h) but its frame is %dx%d"
                % (path, mask.shape[1], mask.shape[0], size[1], size[0])
            )
        return mask


class Segmenter(TaskPostprocessor):
    """task segment: class maps; per-frame class histograms; mIoU against label masks when given."""

    def __init__(
        self,
        config: Dict[str, Any],
        geometry: Optional[GeometryFactory] = None,
        keep_outputs: bool = True,
        label_masks: Optional[LabelMaskSource] = None,
    ) -> None:
        TaskPostprocessor.__init__(self, config, geometry, keep_outputs)
        self.masks = LabelMasks(label_masks) if label_masks is not None else None
        self.matrix: Optional[np.ndarray] = None
        self.limit: Optional[int] = None  # classes the model can give (None: learnt from the masks)
        self.scored = 0

    def process(
        self,
        outputs: List[np.ndarray],
        label: Optional[int],
        position: int,
        record: bool = True,
        frame_size: Optional[FrameSize] = None,
    ) -> np.ndarray:
        class_map = decode_mask(outputs, self.config)
        if not record:
            return class_map
        self.frames += 1
        keep = self.kept.wants(position, 1)
        if self.masks is None and not keep:
            return class_map
        geometry = self.geometry(frame_size)
        mapped = geometry is not None and frame_size is not None
        in_frame = class_map_to_frame(class_map, geometry, frame_size) if mapped else class_map
        if self.masks is not None:
            self._score(position, in_frame, outputs[0])
        if keep:
            counts = np.bincount(in_frame[in_frame >= 0].reshape(-1))
            pixels = {str(c): int(counts[c]) for c in np.flatnonzero(counts)}
            self.kept.add(position, frame_size if mapped else None, "pixels", pixels, 1)
        return class_map

    def _score(self, position: int, predicted: np.ndarray, output: np.ndarray) -> None:
        labels = self.masks.load(position, predicted.shape) if self.masks is not None else None
        if labels is None:
            return
        if self.matrix is None:
            self.limit = class_count(self.config, output)
        found = labels[labels != IGNORE]
        highest = int(found.max()) if found.size else -1
        if self.limit is not None and highest >= self.limit:
            raise PostprocessError(
                "label mask of frame %d has class %d but the model gives %d classes (0..%d; 255 = ignore): "
                "check the masks or num_classes" % (position + 1, highest, self.limit, self.limit - 1)
            )
        size = self.limit or max(highest + 1, int(predicted.max()) + 1, 0 if self.matrix is None else len(self.matrix))
        if self.matrix is None or len(self.matrix) < size:
            grown = np.zeros((size, size), np.int64)
            if self.matrix is not None:
                grown[: len(self.matrix), : len(self.matrix)] = self.matrix
            self.matrix = grown
        self.matrix += confusion(labels, predicted, size)
        self.scored += 1

    def summary(self) -> Optional[Dict[str, Any]]:
        if self.frames == 0:
            return None
        if self.masks is None:
            return {"kind": self.kind, "count": self.frames}
        if self.matrix is None:
            return None
        result = {"kind": self.kind, "count": self.scored}
        result.update(iou_summary(self.matrix))
        return result


def make_task_postprocessor(
    config: Dict[str, Any],
    geometry: Optional[GeometryFactory],
    keep_outputs: bool,
    label_masks: Optional[LabelMaskSource] = None,
) -> TaskPostprocessor:
    """The postprocessor of a filled detect, segment or text-detect config."""
    task = config["task"]
    if task == "segment":
        return Segmenter(config, geometry, keep_outputs, label_masks)
    if task == "text-detect":
        return TextDetector(config, geometry, keep_outputs)
    if task == "detect":
        return Detector(config, geometry, keep_outputs)
    raise PostprocessError("no vision task postprocessor for task %r" % task)
