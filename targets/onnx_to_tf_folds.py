"""Constant folding for the TFLite translator: (input values, attributes) -> value, in numpy.

The walk evaluates a node here when all its inputs are constant (shape arithmetic: Shape -> Gather -> Concat ->
Reshape, anchor grids built from Range/Expand), before its TF function is tried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.op_support import OpTable

FOLDS = OpTable("the TFLite converter's constant folding")


@FOLDS.register("Cast")
def _fold_cast(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return values[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))


@FOLDS.register("Identity")
def _fold_identity(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return values[0]


@FOLDS.register("Concat")
def _fold_concat(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return np.concatenate(values, axis=attrs.get("axis", 0))


@FOLDS.register("Gather")
def _fold_gather(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return np.take(values[0], values[1], axis=attrs.get("axis", 0))


@FOLDS.register("Unsqueeze")
def _fold_unsqueeze(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    axes = attrs.get("axes", values[1] if len(values) > 1 else None)
    return np.expand_dims(values[0], tuple(int(a) for a in axes))


@FOLDS.register("Squeeze")
def _fold_squeeze(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    axes = attrs.get("axes", values[1] if len(values) > 1 else None)
    return np.squeeze(values[0], None if axes is None else tuple(int(a) for a in axes))


def _fold_elementwise(fn: Callable[[Any, Any], np.ndarray]) -> Callable[..., np.ndarray]:
    def fold(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
        return fn(values[0], values[1])

    return fold


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Div: integer division truncates (shape arithmetic), float division is true division."""
    if np.asarray(a).dtype.kind in "iu" and np.asarray(b).dtype.kind in "iu":
        return np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))
    return np.divide(a, b)


for _op, _fn in {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _divide, "Pow": np.power}.items():
    FOLDS.register(_op)(_fold_elementwise(_fn))


@FOLDS.register("Reshape")
def _fold_reshape(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    first = values[0]
    return first.reshape([first.shape[i] if v == 0 else int(v) for i, v in enumerate(values[1])])


@FOLDS.register("Slice")
def _fold_slice(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    first, starts, ends = values[0], values[1], values[2]
    axes = values[3] if len(values) > 3 and values[3] is not None else range(len(starts))
    steps = values[4] if len(values) > 4 and values[4] is not None else [1] * len(starts)
    index = [slice(None)] * first.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        index[int(axis)] = slice(int(start), int(min(end, 2**62)), int(step))
    return first[tuple(index)]


@FOLDS.register("Shape")
def _fold_shape(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return np.array(values[0].shape, np.int64)[attrs.get("start", 0) : attrs.get("end")]


@FOLDS.register("ConstantOfShape")
def _fold_constant_of_shape(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    fill = attrs.get("value")
    fill = numpy_helper.to_array(fill) if fill is not None else np.zeros(1, np.float32)
    return np.full([int(d) for d in values[0]], fill.reshape(-1)[0], fill.dtype)


@FOLDS.register("Expand")
def _fold_expand(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    # ONNX Expand broadcasts both ways (a 1 in the shape keeps the input's size)
    return values[0] * np.ones([int(d) for d in values[1]], values[0].dtype)


@FOLDS.register("Range")
def _fold_range(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    start, limit, delta = values
    return np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))


@FOLDS.register("Equal")
def _fold_equal(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return np.equal(values[0], values[1])


@FOLDS.register("Where")
def _fold_where(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return np.where(*values)


@FOLDS.register("Transpose")
def _fold_transpose(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return np.transpose(values[0], attrs.get("perm"))


@FOLDS.register("Sqrt")
def _fold_sqrt(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return np.sqrt(values[0])
