"""Preprocessing that turns a captured BGR frame into a model input, exactly as the artifact says.

The same code runs on the device (inside the agent) and on the host (calibration, reference outputs),
so the tensors the model sees are byte-for-byte the same on both sides. `PreprocessSpec.geometry` maps
model-input pixels back to frame pixels (boxes, polygons and masks come back in frame coordinates).
Python 3.8-compatible.
"""

import json
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

COLOR_ORDERS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "uint8", "int8")
RESIZE_MODES = ("stretch", "shorter_side", "letterbox")
PAD_VALUE = 114  # Ultralytics' letterbox grey

Size = Tuple[int, int]  # (height, width)


class PreprocessError(ValueError):
    """A preprocessing spec or a frame that cannot be turned into a model input."""


class PreprocessSpec(object):
    """What to do to a frame before inference.

    Order: colour conversion -> resize (and letterbox padding) -> centre crop -> scale -> (x - mean) / std
    -> layout -> dtype. `resize` is (height, width); with `resize_mode="shorter_side"` only `resize[0]` is
    used as the length of the shorter side (the usual ImageNet "resize 256, crop 224"). `"letterbox"` keeps
    the aspect ratio: the frame is scaled to fit `resize` and padded, centred, with `pad_value` (one value
    for every channel, or one per channel in the spec's colour order) as Ultralytics' `LetterBox(auto=False,
    center=True)` does; with `stride` set the padding only reaches the next multiple of `stride` (Ultralytics'
    `auto=True`: the input size then depends on the frame's aspect ratio, for models with a dynamic input).
    """

    def __init__(
        self,
        resize: Optional[Sequence[int]] = None,
        resize_mode: str = "stretch",
        crop: Optional[Sequence[int]] = None,
        color: str = "RGB",
        scale: float = 1.0 / 255.0,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        layout: str = "NCHW",
        dtype: str = "float32",
        interpolation: str = "linear",
        pad_value: Union[float, Sequence[float]] = PAD_VALUE,
        stride: Optional[int] = None,
    ) -> None:
        self.resize = [int(v) for v in resize] if resize is not None else None
        self.resize_mode = resize_mode
        self.crop = [int(v) for v in crop] if crop is not None else None
        self.color = color.upper()
        self.scale = float(scale)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.layout = layout.upper()
        self.dtype = dtype
        self.interpolation = interpolation
        if pad_value is None:  # null in a hand-written spec: the default grey
            pad_value = PAD_VALUE
        self.pad_value = list(pad_value) if isinstance(pad_value, (list, tuple)) else pad_value
        self.stride = stride
        self.validate()

    def validate(self) -> None:
        if self.color not in COLOR_ORDERS:
            raise PreprocessError("preprocess color %r: use one of %s" % (self.color, ", ".join(COLOR_ORDERS)))
        if self.layout not in LAYOUTS:
            raise PreprocessError("preprocess layout %r: use NCHW or NHWC" % self.layout)
        if self.dtype not in DTYPES:
            raise PreprocessError("preprocess dtype %r: use one of %s" % (self.dtype, ", ".join(DTYPES)))
        if self.resize_mode not in RESIZE_MODES:
            raise PreprocessError(
                "preprocess resize_mode %r: use one of %s" % (self.resize_mode, ", ".join(RESIZE_MODES))
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise PreprocessError(
                "preprocess interpolation %r: use one of %s" % (self.interpolation, ", ".join(_INTERPOLATIONS))
            )
        channels = 1 if self.color == "GRAY" else 3
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise PreprocessError(
                    "preprocess %s has %d values; a %s image needs 1 or %d" % (name, len(values), self.color, channels)
                )
        if any(v == 0 for v in self.std):
            raise PreprocessError("preprocess std contains 0; every std value must be non-zero")
        for name, size in (("resize", self.resize), ("crop", self.crop)):
            if size is not None and (len(size) != 2 or min(size) <= 0):
                raise PreprocessError(
                    "preprocess %s must be [height, width] with positive values, got %r" % (name, size)
                )
        self._validate_letterbox()

    def _validate_letterbox(self) -> None:
        values = self.pad_value if isinstance(self.pad_value, list) else [self.pad_value]
        if len(values) not in (1, self.channels) or not all(_is_pixel(v) for v in values):
            raise PreprocessError(
                "preprocess pad_value must be a number from 0 to 255, or a list of 1 or %d of them, got %r"
                % (self.channels, self.pad_value)
            )
        stride = self.stride
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
            raise PreprocessError("preprocess stride must be an integer >= 1 or null, got %r" % (stride,))
        if self.resize_mode != "letterbox":
            for name, given in (("stride", stride is not None), ("pad_value", self.pad_value != PAD_VALUE)):
                if given:
                    raise PreprocessError(
                        "preprocess %s is for resize_mode letterbox; remove it or set the mode" % name
                    )
            return
        if self.resize is None:
            raise PreprocessError("preprocess resize_mode letterbox needs resize [height, width] to fit the frame in")
        if self.crop is not None:
            raise PreprocessError(
                "preprocess crop does not go with resize_mode letterbox (the padded frame is the input); remove crop"
            )

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3

    @property
    def fixed_input_size(self) -> Optional[Size]:
        """The (height, width) of every model input this spec makes, or None when it follows the frame."""
        if self.crop is not None:
            return (self.crop[0], self.crop[1])
        if self.resize is not None and (
            self.resize_mode == "stretch" or (self.resize_mode == "letterbox" and self.stride is None)
        ):
            return (self.resize[0], self.resize[1])
        return None

    def geometry(self, frame_h: int, frame_w: int) -> "Geometry":
        """Where a frame of this size lands in the model input, and the way back to frame pixels."""
        steps = _steps(self, int(frame_h), int(frame_w))
        (resized_h, resized_w), (top, _bottom, left, _right), crop = steps.resized, steps.pad, steps.crop_at
        scale = (resized_w / float(frame_w), resized_h / float(frame_h))
        offset = (float(left - crop[1]), float(top - crop[0]))
        return Geometry((int(frame_h), int(frame_w)), steps.input_size, scale, offset)

    def to_dict(self) -> Dict[str, Any]:
        """The spec as JSON; `pad_value` and `stride` only for letterbox, so every other spec (and its
        artifact id) reads as it did before letterbox existed."""
        data: Dict[str, Any] = {
            "resize": self.resize,
            "resize_mode": self.resize_mode,
            "crop": self.crop,
            "color": self.color,
            "scale": self.scale,
            "mean": self.mean,
            "std": self.std,
            "layout": self.layout,
            "dtype": self.dtype,
            "interpolation": self.interpolation,
        }
        if self.resize_mode == "letterbox":
            data["pad_value"] = list(self.pad_value) if isinstance(self.pad_value, list) else self.pad_value
            data["stride"] = self.stride
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PreprocessSpec":
        if not isinstance(data, dict):
            raise PreprocessError("preprocess spec must be a JSON object, got %s" % type(data).__name__)
        known = set(cls().to_dict()) | set(_LETTERBOX_KEYS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise PreprocessError("preprocess spec has unknown keys %s; known: %s" % (unknown, sorted(known)))
        try:
            return cls(**data)
        except PreprocessError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            # e.g. "mean": null or "color": 3 in a hand-written manifest
            raise PreprocessError(
                "preprocess spec %s is malformed (%s); see PreprocessSpec for the types" % (data, exc)
            ) from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PreprocessSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "PreprocessSpec(%s)" % ", ".join("%s=%r" % kv for kv in self.to_dict().items())


INTERPOLATIONS = ("nearest", "linear", "area", "cubic")
_INTERPOLATIONS = INTERPOLATIONS
_LETTERBOX_KEYS = ("pad_value", "stride")
_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


def _cv2():
    import cv2  # imported lazily: the host may only need the spec

    return cv2


def _interpolation_flag(name: str) -> int:
    cv2 = _cv2()
    return {
        "nearest": cv2.INTER_NEAREST,
        "linear": cv2.INTER_LINEAR,
        "area": cv2.INTER_AREA,
        "cubic": cv2.INTER_CUBIC,
    }[name]


def _convert_color(frame: np.ndarray, color: str) -> np.ndarray:
    cv2 = _cv2()
    gray_in = frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1)
    if gray_in:
        frame = frame.reshape(frame.shape[:2])
        return (
            frame
            if color == "GRAY"
            else cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB if color == "RGB" else cv2.COLOR_GRAY2BGR)
        )
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise PreprocessError("frame has shape %s; expected HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA)" % (frame.shape,))
    if color == "GRAY":
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)  # also accepts BGRA
    if color == "RGB":
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)  # drops alpha from BGRA
    # BGRA frames (PNGs with alpha, some camera drivers): the alpha channel is not image content
    return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR) if frame.shape[2] == 4 else frame


class Geometry(object):
    """Where a frame's pixels land in the model input, per axis: input = frame * scale + offset.

    Coordinates are continuous pixel coordinates (x, y), with (0, 0) the top-left corner of the first pixel,
    the convention of OpenCV's resize and of box corners; `input_size` and `frame_size` are (height, width).
    """

    def __init__(self, frame_size: Size, input_size: Size, scale: Tuple[float, float], offset: Tuple[float, float]):
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.scale = (float(scale[0]), float(scale[1]))  # (x, y)
        self.offset = (float(offset[0]), float(offset[1]))  # (x, y), in model-input pixels

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """Frame (x, y) points [..., 2] to model-input pixels (not clipped)."""
        points = _float_points(points)
        return points * np.asarray(self.scale, points.dtype) + np.asarray(self.offset, points.dtype)

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """Model-input (x, y) points [..., 2] to frame pixels, clipped to the frame (padding maps to its edge)."""
        points = _float_points(points)
        mapped = (points - np.asarray(self.offset, points.dtype)) / np.asarray(self.scale, points.dtype)
        height, width = self.frame_size
        return np.clip(mapped, 0, np.asarray([width, height], points.dtype))

    def to_frame_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Model-input boxes [K, 4] (x1, y1, x2, y2) to frame pixels, clipped to the frame."""
        boxes = np.asarray(boxes)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise PreprocessError("boxes must be [K, 4] (x1, y1, x2, y2), got shape %s" % (boxes.shape,))
        return self.to_frame(boxes.reshape(-1, 2, 2)).reshape(-1, 4)

    def __repr__(self) -> str:
        return "Geometry(frame_size=%r, input_size=%r, scale=%r, offset=%r)" % (
            self.frame_size,
            self.input_size,
            self.scale,
            self.offset,
        )


def _float_points(points: Any) -> np.ndarray:
    points = np.asarray(points)
    if points.dtype != np.float32:
        points = points.astype(np.float64)  # float32 stays float32, anything else is computed in float64
    if points.ndim == 0 or points.shape[-1] != 2:
        raise PreprocessError("points must be [..., 2] (x, y), got shape %s" % (points.shape,))
    return points


def _is_pixel(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 255


class _Steps(NamedTuple):
    """The sizes one frame goes through: resized (h, w), padding (top, bottom, left, right), the crop's
    top-left corner in the padded image (top, left), and the model-input size (h, w)."""

    resized: Size
    pad: Tuple[int, int, int, int]
    crop_at: Tuple[int, int]
    input_size: Size


def _resized_size(spec: PreprocessSpec, height: int, width: int) -> Size:
    if spec.resize is None:
        return (height, width)
    if spec.resize_mode == "stretch":
        return (spec.resize[0], spec.resize[1])
    if spec.resize_mode == "shorter_side":
        ratio = float(spec.resize[0]) / min(height, width)
    else:  # letterbox: fit inside resize, keep the aspect ratio
        ratio = min(float(spec.resize[0]) / height, float(spec.resize[1]) / width)
    return (max(1, int(round(height * ratio))), max(1, int(round(width * ratio))))


def _letterbox_pad(spec: PreprocessSpec, resized: Size) -> Tuple[int, int, int, int]:
    """Ultralytics' LetterBox(center=True): the padding split in two, the odd pixel on the bottom/right side
    (round(d - 0.1), round(d + 0.1)); with a stride only up to its next multiple (auto=True)."""
    assert spec.resize is not None
    pad_h = spec.resize[0] - resized[0]
    pad_w = spec.resize[1] - resized[1]
    if spec.stride is not None:
        pad_h, pad_w = pad_h % spec.stride, pad_w % spec.stride
    half_h, half_w = pad_h / 2.0, pad_w / 2.0
    return (
        int(round(half_h - 0.1)),
        int(round(half_h + 0.1)),
        int(round(half_w - 0.1)),
        int(round(half_w + 0.1)),
    )


def _steps(spec: PreprocessSpec, height: int, width: int) -> _Steps:
    """What preprocessing does to a frame of this size; `preprocess` and `geometry` both follow it."""
    if height <= 0 or width <= 0:
        raise PreprocessError("frame size must be positive, got %dx%d" % (height, width))
    resized = _resized_size(spec, height, width)
    pad = _letterbox_pad(spec, resized) if spec.resize_mode == "letterbox" and spec.resize else (0, 0, 0, 0)
    padded = (resized[0] + pad[0] + pad[1], resized[1] + pad[2] + pad[3])
    if spec.crop is None:
        return _Steps(resized, pad, (0, 0), padded)
    crop_h, crop_w = spec.crop
    if crop_h > padded[0] or crop_w > padded[1]:
        raise PreprocessError(
            "crop %dx%d is larger than the resized frame %dx%d" % (crop_h, crop_w, padded[0], padded[1])
        )
    return _Steps(resized, pad, ((padded[0] - crop_h) // 2, (padded[1] - crop_w) // 2), (crop_h, crop_w))


def _pad_colour(spec: PreprocessSpec) -> Tuple[float, ...]:
    values = spec.pad_value if isinstance(spec.pad_value, list) else [spec.pad_value]
    values = [float(v) for v in values]
    return tuple(values * spec.channels if len(values) == 1 else values) + (0.0,) * (4 - spec.channels)


def _resize_and_pad(image: np.ndarray, spec: PreprocessSpec, steps: _Steps) -> np.ndarray:
    cv2 = _cv2()
    height, width = image.shape[:2]
    if steps.resized != (height, width):
        size = (steps.resized[1], steps.resized[0])
        image = cv2.resize(image, size, interpolation=_interpolation_flag(spec.interpolation))
    if any(steps.pad):
        top, bottom, left, right = steps.pad
        image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=_pad_colour(spec))
    return image


def _center_crop(image: np.ndarray, steps: _Steps) -> np.ndarray:
    top, left = steps.crop_at
    height, width = steps.input_size
    if image.shape[:2] == (height, width):
        return image
    return image[top : top + height, left : left + width]


def preprocess(frame: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Turn one BGR (or grayscale) uint8 frame into a batch of one, as the spec says."""
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        raise PreprocessError("frame must be a non-empty HxW or HxWxC image array")
    image = _convert_color(frame, spec.color)
    steps = _steps(spec, image.shape[0], image.shape[1])
    image = _center_crop(_resize_and_pad(image, spec, steps), steps)
    if image.ndim == 2:
        image = image[:, :, None]
    if spec.dtype in ("uint8", "int8") and spec.scale == 1.0 and spec.mean == [0.0] and spec.std == [1.0]:
        tensor = image.astype(np.int16) - 128 if spec.dtype == "int8" else image
    else:
        tensor = image.astype(np.float32) * np.float32(spec.scale)
        tensor = (tensor - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        if spec.dtype in _INT_RANGES:
            # a plain cast would truncate and wrap around (300 -> 44); round and saturate like a quantizer
            low, high = _INT_RANGES[spec.dtype]
            tensor = np.clip(np.rint(tensor), low, high)
    if spec.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[None].astype(spec.dtype, copy=False))
