"""The TFLite translator's math ops beyond the CNN set: unary functions, n-ary Min/Max, comparisons and Where,
the ReLU family's other members, reductions over any axes, LayerNormalization and Einsum (registered into
onnx_to_tf_ops.OPS).

Ops without an int8 TFLite kernel of their own, computed from several builtins (LayerNormalization's mean and
variance, Erf's polynomial, Mish), run inside FLOAT_SCOPE: an INT8 build keeps them float between a DEQUANTIZE
and a QUANTIZE on the QuantSpec's grid of the op's output (targets/tflite_quant.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.op_support import GraphFacts
from edgekit.targets.onnx_to_tf_ops import FLOAT_SCOPE, NCHW_TO_NHWC, OPS, Value, laid_out

if TYPE_CHECKING:
    from edgekit.targets.onnx_to_tf import Translator


def _unary(fn: Callable[[Any, Any], Any]) -> Callable[..., Value]:
    """An op function applying `fn(tf, tensor)` elementwise (the layout stays)."""

    def convert(ctx: Translator, ins: list[str], attrs: dict) -> Value:
        x = ctx.values[ins[0]]
        return Value(fn(ctx.tf, x.tensor), x.nhwc)

    return convert


_UNARY = {
    "Neg": lambda tf, x: tf.negative(x),
    "Abs": lambda tf, x: tf.abs(x),
    "Exp": lambda tf, x: tf.exp(x),
    "Log": lambda tf, x: tf.math.log(x),
    "Tanh": lambda tf, x: tf.tanh(x),
    "Reciprocal": lambda tf, x: 1.0 / x,
    "Floor": lambda tf, x: tf.floor(x),
    "Ceil": lambda tf, x: tf.math.ceil(x),
    "Round": lambda tf, x: tf.round(x),  # both round half to even
    "Sin": lambda tf, x: tf.sin(x),
    "Cos": lambda tf, x: tf.cos(x),
    "Not": lambda tf, x: tf.logical_not(x),
    "Sign": lambda tf, x: tf.sign(x),
}
for _op, _fn in _UNARY.items():
    OPS.register(_op)(_unary(_fn))


@OPS.register("LeakyRelu")
def _leaky_relu(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    return Value(ctx.tf.nn.leaky_relu(x.tensor, alpha=attrs.get("alpha", 0.01)), x.nhwc)


@OPS.register("Elu")
def _elu(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    alpha = attrs.get("alpha", 1.0)
    y = ctx.tf.nn.elu(x.tensor)
    if alpha != 1.0:  # ELU has no alpha: alpha * elu(x) where x < 0
        y = ctx.tf.where(x.tensor > 0, x.tensor, y * alpha)
    return Value(y, x.nhwc)


@OPS.register("PRelu")
def _prelu(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """relu(x) - slope * relu(-x): TensorFlow's converter makes it one PRELU."""
    x = ctx.values[ins[0]]
    slope = ctx.operand(ins[1], x)
    tf = ctx.tf
    return Value(tf.nn.relu(x.tensor) - slope * tf.nn.relu(-x.tensor), x.nhwc)


@OPS.register("Mish")
def _mish(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    tf = ctx.tf
    with tf.name_scope(FLOAT_SCOPE + "mish"):
        softplus = tf.nn.relu(x.tensor) + tf.math.log(1.0 + tf.exp(-tf.abs(x.tensor)))
        return Value(x.tensor * tf.tanh(softplus), x.nhwc)


# Abramowitz & Stegun 7.1.26: |error| < 1.5e-7 (float32's own rounding near 1)
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@OPS.register("Erf")  # inside GELU's exact formula it is fused into one GELU first (onnx_to_tf_fusions)
def _erf(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """erf from ABS, EXP, DIV, MUL, ADD and SIGN (TFLite has no ERF builtin), float in INT8 builds."""
    x = ctx.values[ins[0]]
    tf = ctx.tf
    with tf.name_scope(FLOAT_SCOPE + "erf"):
        magnitude = tf.abs(x.tensor)
        t = 1.0 / (1.0 + _ERF_P * magnitude)
        poly = _ERF_A[4]
        for a in reversed(_ERF_A[:4]):
            poly = poly * t + a
        return Value(tf.sign(x.tensor) * (1.0 - poly * t * tf.exp(-magnitude * magnitude)), x.nhwc)


def _nary(ctx: Translator, ins: list[str], fn: Callable[[Any, Any], Any]) -> Value:
    """`fn` folded over every operand, in the layout of an NHWC operand if any (constants follow it)."""
    operands = [ctx.values.get(i) for i in ins if i]
    like = next((v for v in operands if v is not None and v.nhwc), None)
    like = like or next(v for v in operands if v is not None)
    tensors = [ctx.operand(i, like) for i in ins if i]
    result = tensors[0]
    for tensor in tensors[1:]:
        result = fn(result, tensor)
    return Value(result, like.nhwc)


@OPS.register("Min")
def _min(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _nary(ctx, ins, ctx.tf.minimum)


@OPS.register("Max")
def _max(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _nary(ctx, ins, ctx.tf.maximum)


_COMPARISONS = {
    "Less": "less",
    "LessOrEqual": "less_equal",
    "Greater": "greater",
    "GreaterOrEqual": "greater_equal",
    "And": "logical_and",
    "Or": "logical_or",
}


def _comparison(name: str) -> Callable[..., Value]:
    def convert(ctx: Translator, ins: list[str], attrs: dict) -> Value:
        return _nary(ctx, ins, getattr(ctx.tf.math, name))

    return convert


for _op, _name in _COMPARISONS.items():
    OPS.register(_op)(_comparison(_name))


@OPS.register("Where")
def _where(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """SELECT_V2 (constant operands are folded before this when all three are)."""
    operands = [ctx.values.get(i) for i in ins]
    like = next((v for v in operands if v is not None and v.nhwc), None) or next(v for v in operands if v)
    condition, a, b = (ctx.operand(i, like) for i in ins)
    return Value(ctx.tf.where(ctx.tf.cast(condition, ctx.tf.bool), a, b), like.nhwc)


@OPS.register("Equal")
def _equal(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _nary(ctx, ins, ctx.tf.equal)


# -- reductions ------------------------------------------------------------------------------------------------

_REDUCTIONS = {
    "ReduceMean": "reduce_mean",
    "ReduceMax": "reduce_max",
    "ReduceMin": "reduce_min",
    "ReduceSum": "reduce_sum",
    "ReduceProd": "reduce_prod",
}


def reduce_axes(ins: list[str], attrs: dict, const: Callable[[str], Any], rank: int) -> list[int] | None:
    """The ONNX axes reduced (sorted, non-negative); None when they are computed. Axes are an attribute before
    opset 18 (13 for ReduceSum), an input after; none given reduces every axis unless noop_with_empty_axes."""
    axes = attrs.get("axes")
    if axes is None and len(ins) > 1 and ins[1]:
        axes = const(ins[1])
        if axes is None:
            return None
    if axes is None or len(axes) == 0:
        return [] if attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in axes)


def _reduce_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    if len(node.input) > 1 and node.input[1] and facts.const(node.input[1]) is None:
        return "the axes are computed, not constant"
    return None


def _reduction(name: str) -> Callable[..., Value]:
    def convert(ctx: Translator, ins: list[str], attrs: dict) -> Value:
        x = ctx.values[ins[0]]
        rank = len(x.tensor.shape)
        axes = reduce_axes(ins, attrs, ctx.const, rank)
        if not axes:
            return Value(x.tensor, x.nhwc)
        keep = bool(attrs.get("keepdims", 1))
        fn = getattr(ctx.tf, name)
        if x.nhwc:
            remaining = [a for a in NCHW_TO_NHWC if a not in axes]  # the kept ONNX axes in NHWC order
            if keep or remaining == sorted(remaining):
                return Value(fn(x.tensor, axis=[NCHW_TO_NHWC.index(a) for a in axes], keepdims=keep), keep)
        return laid_out(ctx, fn(ctx.nchw(x), axis=axes, keepdims=keep))

    return convert


for _op, _name in _REDUCTIONS.items():
    OPS.register(_op, check=_reduce_check)(_reduction(_name))


# -- LayerNormalization ----------------------------------------------------------------------------------------


def _layer_norm_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    for name in node.input[1:3]:
        if name and facts.const(name) is None:
            return "the scale or bias is computed, not constant"
    if len(node.output) > 1 and any(node.output[1:]):
        return "the mean and inverse standard deviation outputs (training only)"
    return None


@OPS.register("LayerNormalization", check=_layer_norm_check)
def _layer_norm(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """(x - mean) / sqrt(var + eps) * scale + bias over the axes from `axis` on (TFLite has no LAYER_NORM):
    MEAN, SUB, MUL, RSQRT, ADD, kept float in INT8 builds (its statistics have no ONNX tensor to take a
    range from)."""
    x = ctx.values[ins[0]]
    tf = ctx.tf
    rank = len(x.tensor.shape)
    axis = attrs.get("axis", -1) % rank
    data = x.tensor if not x.nhwc or axis == 1 else ctx.nchw(x)  # over C, H and W: NHWC is as good
    stored = x.nhwc and axis == 1
    tf_axes = [1, 2, 3] if stored else list(range(axis, rank))
    with tf.name_scope(FLOAT_SCOPE + "layernorm"):
        mean = tf.reduce_mean(data, axis=tf_axes, keepdims=True)
        centred = data - mean
        variance = tf.reduce_mean(centred * centred, axis=tf_axes, keepdims=True)
        y = centred * tf.math.rsqrt(variance + attrs.get("epsilon", 1e-5))
        for name, combine in ((ins[1], tf.multiply), (ins[2] if len(ins) > 2 else "", tf.add)):
            if not name:
                continue
            weight = ctx.const(name)
            if weight is None:
                raise NotImplementedError("computed scale or bias")
            weight = np.asarray(weight, np.float32).reshape((1,) * axis + weight.shape[-(rank - axis) :])
            y = combine(y, tf.constant(weight.transpose(NCHW_TO_NHWC) if stored else weight))
    return Value(y, True) if stored else (laid_out(ctx, y) if x.nhwc else Value(y, False))


# -- Einsum ----------------------------------------------------------------------------------------------------


def _einsum_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    equation = attrs.get("equation", b"")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    if "..." in equation:
        return f"equation {equation!r} with an ellipsis"
    if len(node.input) != 2:
        return f"{len(node.input)} operands (TFLite's BATCH_MATMUL takes two)"
    return None


@OPS.register("Einsum", check=_einsum_check)
def _einsum(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """Two-operand contractions (attention's 'bhid,bhjd->bhij'): TensorFlow lowers them to BATCH_MATMUL and
    TRANSPOSE/RESHAPE ops."""
    equation = attrs["equation"]
    equation = equation.decode() if isinstance(equation, bytes) else equation
    operands = []
    for name in ins:
        const = ctx.const(name)
        operands.append(ctx.tf.constant(const.astype(np.float32)) if const is not None else ctx.nchw(ctx.values[name]))
    return laid_out(ctx, ctx.tf.einsum(equation.replace(" ", ""), *operands))
