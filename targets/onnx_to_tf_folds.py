"""Constant folding for the TFLite translator: (input values, attributes) -> value, in numpy.

The walk evaluates a node here when all its inputs are constant (shape arithmetic: Shape -> Gather -> Concat ->
Reshape, anchor grids built from Range/Expand), before its TF function is tried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from edgekit.onnx_toolbox import OpTable

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


for _op, _fn in {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}.items():
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
