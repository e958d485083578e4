"""The TFLite translator's NHWC spatial ops: convolutions, transposed convolutions, pooling and resizing
(registered into onnx_to_tf_ops.OPS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.op_support import GraphFacts
from edgekit.targets.onnx_to_tf_ops import OPS, Value, decoded

if TYPE_CHECKING:
    from edgekit.targets.onnx_to_tf import Translator


def explicit_pads(
    attrs: dict, size: list[int], kernel: list[int], strides: list[int], dilations: list[int]
) -> list[int]:
    """ONNX pads [top, left, bottom, right], computed from auto_pad (SAME_UPPER, SAME_LOWER, VALID) when set."""
    auto = decoded(attrs.get("auto_pad", "NOTSET"))
    if auto == "NOTSET":
        return list(attrs.get("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations, strict=True):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)  # output ceil(n / s)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin + end


def padded(
    ctx: Translator,
    x: Any,
    pads: list[int],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    fill: float = 0.0,
    same: bool = True,
) -> tuple[Any, str]:
    """Apply ONNX pads [top, left, bottom, right]; SAME when TF's padding is the same thing (no PAD op) and
    `same` allows it (TF's SAME average pooling leaves the pads out of the count)."""
    top, left, bottom, right = pads
    if top == left == bottom == right == 0:
        return x, "VALID"
    size = [int(d) for d in x.shape[1:3]]
    if same and pads == explicit_pads({"auto_pad": "SAME_UPPER"}, size, kernel, strides, dilations):
        return x, "SAME"
    return ctx.tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=fill), "VALID"


def _conv_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    weight = facts.const(node.input[1])
    if weight is None:
        return "the weights are computed, not constant (TFLite's CONV_2D takes constant filters)"
    if weight.ndim != 4:
        return f"a {weight.ndim - 2}-D convolution (TFLite's CONV_2D is 2-D)"
    return None


@OPS.register("Conv", check=_conv_check)
def _conv(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """CONV_2D; DEPTHWISE_CONV_2D where each group is one input channel; other groups (RegNet's, ResNeXt's):
    a SPLIT of the input, one CONV_2D per group and a CONCATENATION (TFLite's CONV_2D takes no groups)."""
    tf = ctx.tf
    weight = ctx.const(ins[1]).astype(np.float32)
    bias = ctx.const(ins[2]) if len(ins) > 2 and ins[2] else None
    group = attrs.get("group", 1)
    kernel = list(weight.shape[2:])
    strides, dilations = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1]))
    data = ctx.nhwc(ctx.values[ins[0]])
    pads = explicit_pads(attrs, [int(d) for d in data.shape[1:3]], kernel, strides, dilations)
    data, padding = padded(ctx, data, pads, kernel, strides, dilations)
    channels = int(data.shape[-1])
    options = {"strides": [1, *strides, 1], "padding": padding, "dilations": dilations}
    if group == channels and weight.shape[1] == 1:
        multiplier = weight.shape[0] // group
        kernel_hwcm = weight.reshape(group, multiplier, *kernel).transpose(2, 3, 0, 1)
        y = tf.nn.depthwise_conv2d(data, kernel_hwcm, **options)
        return Value(y if bias is None else tf.nn.bias_add(y, bias.astype(np.float32)), True)
    parts = tf.split(data, group, axis=3) if group > 1 else [data]
    filters = np.split(weight, group, axis=0)
    biases = np.split(bias.astype(np.float32), group) if bias is not None else [None] * group
    outs = []
    for part, kernel_oihw, part_bias in zip(parts, filters, biases, strict=True):
        y = tf.nn.conv2d(part, kernel_oihw.transpose(2, 3, 1, 0), **options)
        outs.append(y if part_bias is None else tf.nn.bias_add(y, part_bias))
    return Value(outs[0] if group == 1 else tf.concat(outs, axis=3), True)


def _pool_problem(attrs: dict, size: list[int] | None, kind: str) -> str | None:
    """Why a pooling node with these attributes over an input of spatial `size` cannot be taken, or None."""
    if len(attrs.get("kernel_shape", [])) != 2:
        return "only 2-D pooling"
    if attrs.get("ceil_mode", 0):
        return "ceil_mode=1 pooling (re-export with ceil_mode=0)"
    if kind != "AVG" or attrs.get("count_include_pad", 0) or size is None:
        return None
    kernel, strides = list(attrs["kernel_shape"]), list(attrs.get("strides", [1, 1]))
    pads = explicit_pads(attrs, size, kernel, strides, [1, 1])
    if any(pads) and pads != explicit_pads({"auto_pad": "SAME_UPPER"}, size, kernel, strides, [1, 1]):
        return "padded average pooling that excludes the pads, other than TF's SAME padding"
    return None


def _pool_check(kind: str) -> Any:
    def check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
        shape = facts.shape(node.input[0])
        size = [int(d) for d in shape[2:]] if shape and len(shape) == 4 and None not in shape[2:] else None
        return _pool_problem(attrs, size, kind)

    return check


def _pool(ctx: Translator, ins: list[str], attrs: dict, kind: str) -> Value:
    data = ctx.nhwc(ctx.values[ins[0]])
    size = [int(d) for d in data.shape[1:3]]
    if reason := _pool_problem(attrs, size, kind):
        raise NotImplementedError(reason)
    kernel, strides = list(attrs["kernel_shape"]), list(attrs.get("strides", [1, 1]))
    pads = explicit_pads(attrs, size, kernel, strides, [1, 1])
    include_pads = kind == "AVG" and bool(attrs.get("count_include_pad", 0))
    fill = -3.0e38 if kind == "MAX" else 0.0
    data, padding = padded(ctx, data, pads, kernel, strides, [1, 1], fill, same=not include_pads)
    return Value(ctx.tf.nn.pool(data, kernel, kind, strides=strides, padding=padding), True)


@OPS.register("MaxPool", check=_pool_check("MAX"))
def _max_pool(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _pool(ctx, ins, attrs, "MAX")


@OPS.register("AveragePool", check=_pool_check("AVG"))
def _average_pool(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _pool(ctx, ins, attrs, "AVG")


@OPS.register("GlobalAveragePool")
def _global_average_pool(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    return Value(ctx.tf.reduce_mean(ctx.nhwc(x), axis=[1, 2], keepdims=True), True)


def _conv_transpose_problem(weight: np.ndarray | None, attrs: dict) -> str | None:
    if weight is None or weight.ndim != 4:
        return "only 2-D transposed convolutions with constant weights"
    if attrs.get("group", 1) != 1 or list(attrs.get("dilations", [1, 1])) != [1, 1]:
        return "groups or dilations (TFLite's TRANSPOSE_CONV has neither)"
    if decoded(attrs.get("auto_pad", "NOTSET")) != "NOTSET" or "output_shape" in attrs:
        return "auto_pad or output_shape (re-export with explicit pads)"
    extra, strides = list(attrs.get("output_padding", [0, 0])), list(attrs.get("strides", [1, 1]))
    if any(e >= s for e, s in zip(extra, strides, strict=True)):
        return f"output_padding {extra} not below the strides {strides}"
    return None


def _conv_transpose_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    return _conv_transpose_problem(facts.const(node.input[1]), attrs)


@OPS.register("ConvTranspose", check=_conv_transpose_check)
def _conv_transpose(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """One TRANSPOSE_CONV over the full (VALID) output, output_padding included; ONNX pads crop it after."""
    weight = ctx.const(ins[1])
    if reason := _conv_transpose_problem(weight, attrs):
        raise NotImplementedError(reason)
    x = ctx.nhwc(ctx.values[ins[0]])
    kernel, strides = list(weight.shape[2:]), list(attrs.get("strides", [1, 1]))
    extra = list(attrs.get("output_padding", [0, 0]))
    n, h, w = (int(d) for d in x.shape[:3])
    full = [(size - 1) * s + k + e for size, s, k, e in zip((h, w), strides, kernel, extra, strict=True)]
    y = ctx.tf.nn.conv2d_transpose(
        x,
        weight.astype(np.float32).transpose(2, 3, 1, 0),  # (in, out, kh, kw) -> (kh, kw, out, in)
        output_shape=[n, *full, int(weight.shape[1])],
        strides=[1, *strides, 1],
        padding="VALID",
    )
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    if top or left or bottom or right:
        y = y[:, top : full[0] - bottom, left : full[1] - right, :]
    bias = ctx.const(ins[2]) if len(ins) > 2 and ins[2] else None
    if bias is not None:
        y = ctx.tf.nn.bias_add(y, bias.astype(np.float32))
    return Value(y, True)


# -- Resize: ONNX's sampling positions against the three TFLite kernels' ------------------------------------
# ONNX describes a resize by a coordinate transformation and (nearest) a rounding rule; TFLite's
# RESIZE_NEAREST_NEIGHBOR and RESIZE_BILINEAR by align_corners and half_pixel_centers. Rather than a table of
# which combinations agree (they differ on ties, on downscaling, on scales that are not out/in), each axis's
# ONNX source positions are computed as the spec defines them and compared with what each TFLite variant
# samples; the first variant that samples the same pixels (nearest) or positions (linear) is emitted.

_TF_VARIANTS = ((False, False), (False, True), (True, False))  # (align_corners, half_pixel_centers)


def _onnx_positions(size: int, out: int, scale: float, mode: str) -> np.ndarray:
    """The source coordinate of each output index along one axis (the ONNX Resize spec's formulas)."""
    o = np.arange(out, dtype=np.float64)
    if mode == "asymmetric":
        return o / scale
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and out > 1):
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return np.zeros(out)
    if mode == "tf_half_pixel_for_nn":
        return (o + 0.5) / scale
    if mode == "align_corners":
        return o * (size - 1) / (out - 1) if out > 1 else np.zeros(out)
    if mode == "half_pixel_symmetric":
        adjustment = out / (scale * size)
        return size / 2 * (1 - adjustment) + (o + 0.5) / scale - 0.5
    raise NotImplementedError(f"coordinate_transformation_mode {mode!r}")


def _onnx_nearest(positions: np.ndarray, size: int, rule: str) -> np.ndarray:
    fraction = positions - np.floor(positions)
    if rule == "floor":
        index = np.floor(positions)
    elif rule == "ceil":
        index = np.ceil(positions)
    elif rule == "round_prefer_floor":
        index = np.where(fraction == 0.5, np.floor(positions), np.round(positions))
    elif rule == "round_prefer_ceil":
        index = np.where(fraction == 0.5, np.ceil(positions), np.round(positions))
    else:
        raise NotImplementedError(f"nearest_mode {rule!r}")
    return np.clip(index, 0, size - 1).astype(np.int64)


def _tflite_positions(size: int, out: int, align_corners: bool, half_pixel: bool, nearest: bool) -> np.ndarray:
    """Where TFLite's kernel samples (reference_ops ResizeNearestNeighbor / ResizeBilinear), float32 as there."""
    scale = np.float32((size - 1) / (out - 1) if align_corners and out > 1 else size / out)
    o = np.arange(out, dtype=np.float32)
    if nearest:
        raw = (o + np.float32(0.5 if half_pixel else 0.0)) * scale
        index = np.round(raw) if align_corners else np.floor(raw)  # roundf: ties away from zero, all >= 0 here
        index = np.where(raw - np.floor(raw) == 0.5, np.ceil(raw), index) if align_corners else index
        return np.clip(index, 0, size - 1).astype(np.int64)
    positions = (o + 0.5) * scale - 0.5 if half_pixel else o * scale
    return np.clip(positions, 0, size - 1).astype(np.float64)


def _resize_variant(sizes: list[tuple[int, int, float]], attrs: dict, opset: int) -> tuple[bool, bool]:
    """(align_corners, half_pixel_centers) of the TFLite resize that computes this ONNX Resize exactly."""
    mode = decoded(attrs.get("mode", "nearest"))
    default_coordinates = "asymmetric" if opset < 11 else "half_pixel"  # opset 10: Upsample's o / scale, floor
    coordinates = decoded(attrs.get("coordinate_transformation_mode", default_coordinates))
    rule = decoded(attrs.get("nearest_mode", "floor" if opset < 11 else "round_prefer_floor"))
    if mode not in ("nearest", "linear"):
        raise NotImplementedError(f"mode {mode!r} (TFLite resizes nearest or bilinear)")
    for variant in _TF_VARIANTS:
        same = True
        for size, out, scale in sizes:
            positions = _onnx_positions(size, out, scale, coordinates)
            if mode == "nearest":
                ours = _onnx_nearest(positions, size, rule)
                same &= bool(np.array_equal(ours, _tflite_positions(size, out, *variant, nearest=True)))
            else:
                ours = np.clip(positions, 0, size - 1)
                same &= bool(np.allclose(ours, _tflite_positions(size, out, *variant, nearest=False), atol=1e-5))
        if same:
            return variant
    detail = f"coordinate_transformation_mode {coordinates!r}"
    detail += f", nearest_mode {rule!r}" if mode == "nearest" else ""
    shapes = ", ".join(f"{size}->{out}" for size, out, _ in sizes)
    raise NotImplementedError(f"no TFLite resize samples like {mode} with {detail} ({shapes})")


def _resize_sizes(
    const: Callable[[str], np.ndarray | None], ins: list[str], attrs: dict, shape: list[int], opset: int
) -> list[tuple[int, int, float]]:
    """(input size, output size, scale) for H and W from the scales or sizes input (NCHW `shape`)."""
    scales = const(ins[1] if opset < 11 else (ins[2] if len(ins) > 2 else ""))  # opset 10: (X, scales)
    sizes = const(ins[3]) if opset >= 11 and len(ins) > 3 else None
    by_size = sizes is not None and sizes.size > 0
    if not by_size and (scales is None or scales.size == 0):
        raise NotImplementedError("scales or sizes must be constants")
    if by_size and decoded(attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise NotImplementedError("keep_aspect_ratio_policy other than 'stretch'")
    axes = [int(a) % 4 for a in attrs.get("axes", range(4))]
    given = dict(zip(axes, (sizes if by_size else scales).tolist(), strict=True))
    result = []
    for axis, size in enumerate(shape):
        out = int(given.get(axis, size)) if by_size else int(np.floor(size * given.get(axis, 1.0)))
        if axis < 2 and out != size:
            raise NotImplementedError("resizing the batch or channel axis")
        result.append((size, out, out / size if by_size else float(given.get(axis, 1.0))))
    return result[2:]


def _resize_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    """The translator's own reasons, from the static NCHW shape (opset 10's Resize has two inputs: X, scales)."""
    shape = facts.shape(node.input[0])
    if shape is not None and len(shape) != 4:
        return "only 4-D image tensors"
    if attrs.get("antialias", 0):
        return "antialias=1"
    if shape is None or None in shape:
        return None
    opset = 10 if len(node.input) == 2 else 11
    try:
        _resize_variant(_resize_sizes(facts.const, list(node.input), attrs, list(shape), opset), attrs, opset)
    except NotImplementedError as exc:
        return str(exc)
    return None


@OPS.register("Resize", check=_resize_check)
def _resize(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """RESIZE_NEAREST_NEIGHBOR or RESIZE_BILINEAR on NHWC, the variant found by _resize_variant."""
    x = ctx.values[ins[0]]
    if len(x.tensor.shape) != 4:
        raise NotImplementedError("only 4-D image tensors")
    if attrs.get("antialias", 0):
        raise NotImplementedError("antialias=1")
    data = ctx.nhwc(x)
    n, h, w, c = (int(d) for d in data.shape)
    sizes = _resize_sizes(ctx.const, ins, attrs, [n, c, h, w], ctx.opset)
    align_corners, half_pixel = _resize_variant(sizes, attrs, ctx.opset)
    options = {"size": [sizes[0][1], sizes[1][1]], "align_corners": align_corners, "half_pixel_centers": half_pixel}
    if decoded(attrs.get("mode", "nearest")) == "nearest":
        return Value(ctx.tf.raw_ops.ResizeNearestNeighbor(images=data, **options), True)
    return Value(ctx.tf.raw_ops.ResizeBilinear(images=data, **options), True)
