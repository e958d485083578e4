"""Preprocessing that turns a captured BGR frame into a model input, exactly as the artifact says.

The same code runs on the device (inside the agent) and on the host (calibration, reference outputs),
so the tensors the model sees are byte-for-byte the same on both sides. Python 3.8-compatible.
"""

import json
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

COLOR_ORDERS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "uint8", "int8")
RESIZE_MODES = ("stretch", "shorter_side")


class PreprocessError(ValueError):
    """A preprocessing spec or a frame that cannot be turned into a model input."""


class PreprocessSpec(object):
    """What to do to a frame before inference.

    Order: colour conversion -> resize -> centre crop -> scale -> (x - mean) / std -> layout -> dtype.
    `resize` is (height, width); with `resize_mode="shorter_side"` only `resize[0]` is used as the
    length of the shorter side (the usual ImageNet "resize 256, crop 224").
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
        self.validate()

    def validate(self) -> None:
        if self.color not in COLOR_ORDERS:
            raise PreprocessError("preprocess color %r: use one of %s" % (self.color, ", ".join(COLOR_ORDERS)))
        if self.layout not in LAYOUTS:
            raise PreprocessError("preprocess layout %r: use NCHW or NHWC" % self.layout)
        if self.dtype not in DTYPES:
            raise PreprocessError("preprocess dtype %r: use one of %s" % (self.dtype, ", ".join(DTYPES)))
        if self.resize_mode not in RESIZE_MODES:
            raise PreprocessError("preprocess resize_mode %r: use stretch or shorter_side" % self.resize_mode)
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

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3

    def to_dict(self) -> Dict[str, Any]:
        return {
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

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PreprocessSpec":
        if not isinstance(data, dict):
            raise PreprocessError("preprocess spec must be a JSON object, got %s" % type(data).__name__)
        known = set(cls().to_dict())
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


_INTERPOLATIONS = ("nearest", "linear", "area", "cubic")
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


def _resize(frame: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    if spec.resize is None:
        return frame
    height, width = frame.shape[:2]
    if spec.resize_mode == "shorter_side":
        short = spec.resize[0]
        ratio = float(short) / min(height, width)
        size = (max(1, int(round(width * ratio))), max(1, int(round(height * ratio))))
    else:
        size = (spec.resize[1], spec.resize[0])
    if size == (width, height):
        return frame
    return _cv2().resize(frame, size, interpolation=_interpolation_flag(spec.interpolation))


def _center_crop(frame: np.ndarray, crop: Optional[List[int]]) -> np.ndarray:
    if crop is None:
        return frame
    height, width = frame.shape[:2]
    ch, cw = crop
    if ch > height or cw > width:
        raise PreprocessError("crop %dx%d is larger than the resized frame %dx%d" % (ch, cw, height, width))
    top = (height - ch) // 2
    left = (width - cw) // 2
    return frame[top : top + ch, left : left + cw]


def preprocess(frame: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Turn one BGR (or grayscale) uint8 frame into a batch of one, as the spec says."""
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        raise PreprocessError("frame must be a non-empty HxW or HxWxC image array")
    image = _center_crop(_resize(_convert_color(frame, spec.color), spec), spec.crop)
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
