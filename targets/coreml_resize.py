"""Resize (and the older Upsample) in the ONNX-to-torch replay of ios-coreml, every mode ONNX defines.

Where torch's own interpolation samples exactly where ONNX does (nearest by an integer factor with asymmetric
coordinates and floor rounding, as YOLO's upsample exports; linear with half_pixel / pytorch_half_pixel /
align_corners on both spatial axes of an NCHW tensor) the replay calls F.interpolate, which Core ML converts
to its own upsample layers. Every other variant (cubic, other coordinate transformations and roundings,
fractional scales, antialiasing, resizes of other axes) is separable, so the replay resamples one axis at a
time with a constant matrix: the weights of each output sample, computed once at build by ONNX Runtime's Resize
of an identity (so they are what the reference executor computes, by construction; ONNX's own reference
evaluator differs from ONNX Runtime on fractional scales). Nearest becomes a gather of the chosen rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from edgekit.op_support import GraphFacts
from edgekit.targets.coreml_ops import ReplayCall, decoded, dims, floats, given, ints, replay_op

_MODES = ("nearest", "linear", "cubic")
_SAMPLING_ATTRS = (
    "mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside", "antialias",
)  # fmt: skip


def _resize_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    mode = decoded(attrs.get("mode", "nearest"))
    if mode not in _MODES:
        return f"mode {mode!r}: ONNX defines nearest, linear and cubic"
    transform = decoded(attrs.get("coordinate_transformation_mode", "half_pixel"))
    if transform in ("tf_crop_and_resize", "tf_half_pixel_for_nn"):
        return f"coordinate_transformation_mode {transform!r} (TensorFlow's crop / legacy mode)"
    policy = decoded(attrs.get("keep_aspect_ratio_policy", "stretch"))
    if policy != "stretch":
        return f"keep_aspect_ratio_policy {policy!r}: the replay resizes to the given sizes (stretch)"
    return None


def _sampling(args: list[Any], attrs: dict, rank: int, opset: int) -> tuple[list[float | None], list[int] | None]:
    """(per-axis scale or None, per-axis output size or None) from the scales / sizes inputs (and `axes`)."""
    if opset < 11 or len(args) == 2:  # Resize-10 and Upsample: (X, scales)
        return floats(args[1]), None
    axes = [a % rank for a in attrs.get("axes", range(rank))]
    scales = floats(args[2]) if given(args, 2) and np.size(args[2]) else None
    sizes = ints(args[3]) if given(args, 3) and np.size(args[3]) else None
    per_scale: list[float | None] = [None] * rank
    per_size: list[int] | None = None
    if scales is not None:
        for axis, scale in zip(axes, scales, strict=True):
            per_scale[axis] = scale
    if sizes is not None:
        per_size = [-1] * rank
        for axis, size in zip(axes, sizes, strict=True):
            per_size[axis] = size
    return per_scale, per_size


def _attributes(attrs: dict, opset: int) -> dict[str, Any]:
    """The sampling attributes, with Resize-10 / Upsample's implicit ones (asymmetric coordinates, floor)."""
    chosen = {k: decoded(v) for k, v in attrs.items() if k in _SAMPLING_ATTRS}
    if opset < 11:
        chosen.setdefault("coordinate_transformation_mode", "asymmetric")
        chosen.setdefault("nearest_mode", "floor")
    return chosen


@replay_op("Resize", "Upsample", params=(1, 2, 3), check=_resize_check)
def _resize(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    rank = x.dim()
    opset = 10 if len(args) == 2 else ctx.opset
    scales, sizes = _sampling(args, attrs, rank, opset)
    chosen = _attributes(attrs, opset)
    shape = [int(d) for d in dims(x)]
    out = [
        sizes[i] if sizes is not None and sizes[i] >= 0 else int(np.floor(shape[i] * (scales[i] or 1.0) + 1e-9))
        for i in range(rank)
    ]
    changed = [i for i in range(rank) if out[i] != shape[i] or scales[i] not in (None, 1.0)]
    fast = _interpolate(ctx, x, chosen, shape, out, scales, changed)
    if fast is not None:
        return fast
    for axis in changed:
        x = _resample_axis(ctx, x, axis, shape[axis], out[axis], scales[axis], chosen)
    return x


def _integer_factors(shape: list[int], out: list[int], scales: list[float | None], axes: list[int]) -> bool:
    return all(out[i] % shape[i] == 0 and (scales[i] is None or scales[i] == out[i] // shape[i]) for i in axes)


def _interpolate(
    ctx: ReplayCall, x: Any, chosen: dict, shape: list[int], out: list[int], scales: list, changed: list[int]
) -> Any:
    """F.interpolate where it samples exactly as ONNX does, else None."""
    if not changed or x.dim() != 4 or any(i < 2 for i in changed) or int(chosen.get("antialias", 0)):
        return None
    mode = chosen.get("mode", "nearest")
    transform = chosen.get("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest" and transform == "asymmetric" and chosen.get("nearest_mode", "round_prefer_floor") == "floor":
        if _integer_factors(shape, out, scales, changed):
            return ctx.F.interpolate(
                x, scale_factor=[float(out[2] // shape[2]), float(out[3] // shape[3])], mode="nearest"
            )
        return None
    exact_scales = all(scales[i] is None or shape[i] * scales[i] == out[i] for i in (2, 3))
    if mode != "linear" or not exact_scales:
        return None
    if transform == "align_corners":
        return ctx.F.interpolate(x, size=out[2:], mode="bilinear", align_corners=True)
    if transform == "half_pixel" or (transform == "pytorch_half_pixel" and min(out[2:]) > 1):
        return ctx.F.interpolate(x, size=out[2:], mode="bilinear", align_corners=False)
    return None


def resize_matrix(size: int, out: int, scale: float | None, chosen: dict[str, Any]) -> np.ndarray:
    """The [out, size] weights of a 1-D ONNX Resize: ONNX Runtime's Resize of an identity."""
    import onnxruntime as ort

    inputs = ["x", "", "scales", ""] if scale is not None else ["x", "", "", "sizes"]
    node = helper.make_node("Resize", inputs, ["y"], **chosen)
    initializers = [
        helper.make_tensor("scales", onnx.TensorProto.FLOAT, [2], [1.0, scale])
        if scale is not None
        else helper.make_tensor("sizes", onnx.TensorProto.INT64, [2], [size, out])
    ]
    graph = helper.make_graph(
        [node],
        "resize_matrix",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"x": np.eye(size, dtype=np.float32)})
    return np.ascontiguousarray(np.asarray(result, np.float32).T)


def _resample_axis(ctx: ReplayCall, x: Any, axis: int, size: int, out: int, scale: float | None, chosen: dict) -> Any:
    """One axis resampled by its matrix: a gather for nearest, a matmul otherwise."""
    torch = ctx.torch
    matrix = resize_matrix(size, out, scale, chosen)
    if chosen.get("mode", "nearest") == "nearest":
        return torch.index_select(x, axis, torch.as_tensor(np.argmax(matrix, axis=1).astype(np.int64)))
    weights = torch.as_tensor(np.ascontiguousarray(matrix.T))
    last = x.dim() - 1
    if axis == last:
        return torch.matmul(x, weights)
    # transpose, not movedim: coremltools 9 converts the one, not the other
    return torch.matmul(x.transpose(axis, last), weights).transpose(axis, last)
