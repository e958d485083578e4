"""The TFLite translator's NHWC spatial ops: convolutions and pooling (registered into onnx_to_tf_ops.OPS)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.targets.onnx_to_tf_ops import OPS, Value, decoded

if TYPE_CHECKING:
    from edgekit.targets.onnx_to_tf import Translator


def padded(
    ctx: Translator,
    x: Any,
    pads: list[int],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    fill: float = 0.0,
) -> tuple[Any, str]:
    """Apply ONNX pads [top, left, bottom, right]; SAME when TF's padding is the same thing (no PAD op)."""
    top, left, bottom, right = pads
    if top == left == bottom == right == 0:
        return x, "VALID"
    same_h = top == bottom == dilations[0] * (kernel[0] - 1) // 2
    same_w = left == right == dilations[1] * (kernel[1] - 1) // 2
    if list(strides) == [1, 1] and same_h and same_w and kernel[0] % 2 and kernel[1] % 2:
        return x, "SAME"
    return ctx.tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=fill), "VALID"


@OPS.register("Conv")
def _conv(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    tf = ctx.tf
    x = ctx.values[ins[0]]
    weight = ctx.const(ins[1])
    if weight is None or weight.ndim != 4:
        raise NotImplementedError("only 2-D convolutions with constant weights")
    weight = weight.astype(np.float32)
    bias = ctx.const(ins[2]) if len(ins) > 2 else None
    if decoded(attrs.get("auto_pad", "NOTSET")) != "NOTSET":
        raise NotImplementedError("auto_pad (re-export with explicit pads)")
    group = attrs.get("group", 1)
    kernel = list(weight.shape[2:])
    strides, dilations = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1]))
    data, padding = padded(ctx, ctx.nhwc(x), list(attrs.get("pads", [0, 0, 0, 0])), kernel, strides, dilations)
    channels = int(data.shape[-1])
    if group == 1:
        y = tf.nn.conv2d(
            data, weight.transpose(2, 3, 1, 0), strides=[1, *strides, 1], padding=padding, dilations=dilations
        )
    elif group == channels and weight.shape[1] == 1:
        multiplier = weight.shape[0] // group
        kernel_hwcm = weight.reshape(group, multiplier, *kernel).transpose(2, 3, 0, 1)
        y = tf.nn.depthwise_conv2d(data, kernel_hwcm, strides=[1, *strides, 1], padding=padding, dilations=dilations)
    else:
        raise NotImplementedError(f"grouped convolution (group {group} of {channels} channels)")
    if bias is not None:
        y = tf.nn.bias_add(y, bias.astype(np.float32))
    return Value(y, True)


def _pool(ctx: Translator, ins: list[str], attrs: dict, kind: str) -> Value:
    x = ctx.values[ins[0]]
    if attrs.get("ceil_mode", 0):
        raise NotImplementedError("ceil_mode=1 pooling (re-export with ceil_mode=0)")
    kernel, strides = list(attrs["kernel_shape"]), list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if kind == "AVG" and any(pads) and not attrs.get("count_include_pad", 0):
        raise NotImplementedError("padded average pooling that excludes the pads")
    fill = -3.0e38 if kind == "MAX" else 0.0
    data, padding = padded(ctx, ctx.nhwc(x), pads, kernel, strides, [1, 1], fill)
    return Value(ctx.tf.nn.pool(data, kernel, kind, strides=strides, padding=padding), True)


@OPS.register("MaxPool")
def _max_pool(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _pool(ctx, ins, attrs, "MAX")


@OPS.register("AveragePool")
def _average_pool(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _pool(ctx, ins, attrs, "AVG")


@OPS.register("GlobalAveragePool")
def _global_average_pool(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    return Value(ctx.tf.reduce_mean(ctx.nhwc(x), axis=[1, 2], keepdims=True), True)
