"""The TFLite translator's per-op functions for elementwise, activation, shape and matrix ops, and what every
op function shares: `Value` (a TF tensor and its layout), the NCHW<->NHWC permutations and the `OPS` table.

Each op is a function (translator, input names, attributes) -> a Value (TF tensor) or a numpy array (a
constant); a node with several outputs returns a list of them. Constant nodes are read by the walk itself.
Convolutions, pooling and resizing (the NHWC spatial ops) register into the same table from
targets/onnx_to_tf_spatial.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from edgekit.op_support import OpTable

if TYPE_CHECKING:
    from edgekit.targets.onnx_to_tf import Translator

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)

OPS = OpTable("the TFLite converter", walk_ops=("Constant",))

# TF name scope of ops that have no int8 kernel path of their own (Softplus's EXP/LOG decomposition): the INT8
# build keeps the ops inside it float (targets/tflite_quant.py); the converter keeps the scope in tensor names
FLOAT_SCOPE = "edgekit_float_"


def decoded(value: Any) -> Any:
    """A string attribute as str (onnx gives bytes)."""
    return value.decode() if isinstance(value, bytes) else value


class Value:
    """A TF tensor and whether it is stored NHWC (only rank-4 activations are)."""

    __slots__ = ("tensor", "nhwc")

    def __init__(self, tensor: Any, nhwc: bool) -> None:
        self.tensor, self.nhwc = tensor, nhwc


@OPS.register("Identity", "Dropout")  # Dropout at inference: identity
def _identity(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    value = ctx.values[ins[0]]
    return Value(value.tensor, value.nhwc)


@OPS.register("Shape")
def _shape(ctx: Translator, ins: list[str], attrs: dict) -> np.ndarray:
    value = ctx.values[ins[0]]
    shape = [int(d) for d in value.tensor.shape]
    return np.array([shape[i] for i in NHWC_TO_NCHW] if value.nhwc else shape, np.int64)


def _constant_inputs_check(node: Any, attrs: dict, facts: Any) -> str | None:
    if any(name and facts.const(name) is None for name in node.input):
        return f"its inputs are computed; {node.op_type} is taken on constants only (shape arithmetic, folded)"
    return None


@OPS.register("ConstantOfShape", "Range", check=_constant_inputs_check)
def _constant_only(ctx: Translator, ins: list[str], attrs: dict) -> NoReturn:
    raise NotImplementedError("only on constant inputs (shape arithmetic), which are folded")


def tf_axis(value: Value, axis: int) -> int:
    """The TF axis of ONNX axis `axis` (negative counts from the end) of `value`."""
    axis %= len(value.tensor.shape)
    return NCHW_TO_NHWC.index(axis) if value.nhwc else axis


def _slice_along(ctx: Translator, value: Value, axis: int, start: int, stop: int, step: int = 1) -> Any:
    """value[start:stop:step] along TF axis `axis` (one STRIDED_SLICE, a SLICE once the converter is done)."""
    shape = [int(d) for d in value.tensor.shape]
    begin, end, strides = [0] * len(shape), shape, [1] * len(shape)
    begin[axis], end[axis], strides[axis] = start, stop, step
    return ctx.tf.strided_slice(value.tensor, begin, end, strides)


def _slice_inputs(ctx: Translator, ins: list[str], attrs: dict) -> list[np.ndarray]:
    """starts, ends, axes, steps: inputs since opset 10, attributes before."""
    if "starts" in attrs:
        starts, ends = attrs["starts"], attrs["ends"]
        return [np.asarray(v) for v in (starts, ends, attrs.get("axes", range(len(starts))), [1] * len(starts))]
    values = [ctx.const(i) if i else None for i in ins[1:5]] + [None] * (5 - len(ins))
    if any(v is None for v, name in zip(values, ins[1:5], strict=False) if name):
        raise NotImplementedError("starts, ends, axes and steps must be constants")
    starts, ends, axes, steps = values[:4]
    axes = range(len(starts)) if axes is None else axes
    return [starts, ends, np.asarray(axes), np.ones(len(starts), np.int64) if steps is None else steps]


def computed_input(node: Any, facts: Any, positions: range, what: str) -> str | None:
    """Why the node cannot be taken when an input at `positions` that must be constant is computed."""
    for position in positions:
        if position < len(node.input) and node.input[position] and facts.const(node.input[position]) is None:
            return f"the {what} are computed, not constant"
    return None


def _slice_check(node: Any, attrs: dict, facts: Any) -> str | None:
    if reason := computed_input(node, facts, range(1, 5), "starts, ends, axes or steps"):
        return reason
    steps = facts.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if steps is not None and (np.asarray(steps) <= 0).any() and facts.const(node.input[0]) is None:
        return "a negative step on an activation (a flip)"
    return None


def _split_check(node: Any, attrs: dict, facts: Any) -> str | None:
    return computed_input(node, facts, range(1, 2), "split sizes")


def _gelu_check(node: Any, attrs: dict, facts: Any) -> str | None:
    approximate = decoded(attrs.get("approximate", "none"))
    return None if approximate in ("none", "tanh") else f"approximate={approximate!r}"


def _reshape_check(node: Any, attrs: dict, facts: Any) -> str | None:
    return computed_input(node, facts, range(1, 2), "target shape")


def _gemm_check(node: Any, attrs: dict, facts: Any) -> str | None:
    return computed_input(node, facts, range(1, 3), "B and C inputs")


@OPS.register("Slice", check=_slice_check)
def _slice(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    shape = [int(d) for d in x.tensor.shape]
    begin, end, strides = [0] * len(shape), list(shape), [1] * len(shape)
    for start, stop, axis, step in zip(*_slice_inputs(ctx, ins, attrs), strict=True):
        if step <= 0:
            raise NotImplementedError("a negative step on an activation (a flip)")
        axis = tf_axis(x, int(axis))
        begin[axis], end[axis], strides[axis] = slice(int(start), int(stop), int(step)).indices(shape[axis])
    return Value(ctx.tf.strided_slice(x.tensor, begin, end, strides), x.nhwc)


@OPS.register("Split", check=_split_check)
def _split(ctx: Translator, ins: list[str], attrs: dict) -> list[Value]:
    """Equal parts: one SPLIT; unequal parts: a slice each (SPLIT_V has no int8 path in the quantizer)."""
    x = ctx.values[ins[0]]
    axis = tf_axis(x, attrs.get("axis", 0))
    dim, count = int(x.tensor.shape[axis]), len(ctx.node.output)
    sizes = attrs.get("split")  # before opset 13 an attribute, then an input
    if len(ins) > 1 and ins[1]:
        sizes = ctx.const(ins[1])
        if sizes is None:
            raise NotImplementedError("split sizes must be a constant")
    if sizes is None:  # equal parts (opset 18 num_outputs: the last one may be smaller)
        part = -(-dim // count)
        sizes = [part] * (count - 1) + [dim - part * (count - 1)]
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) == 1:
        return [Value(t, x.nhwc) for t in ctx.tf.split(x.tensor, len(sizes), axis=axis)]
    offsets = np.cumsum([0, *sizes]).tolist()
    return [Value(_slice_along(ctx, x, axis, a, b), x.nhwc) for a, b in zip(offsets, offsets[1:], strict=False)]


@OPS.register("BatchNormalization")
def _batch_norm(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    scale, bias, mean, var = (ctx.const(i).astype(np.float32) for i in ins[1:5])
    mul = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
    add = bias - mean * mul
    shape = (1, -1) + (1,) * (len(x.tensor.shape) - 2)
    return Value(
        x.tensor * ctx.broadcast_const(mul.reshape(shape), x) + ctx.broadcast_const(add.reshape(shape), x),
        x.nhwc,
    )


@OPS.register("Relu")
def _relu(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    return Value(ctx.tf.nn.relu(x.tensor), x.nhwc)


@OPS.register("Sigmoid")
def _sigmoid(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    return Value(ctx.tf.math.sigmoid(x.tensor), x.nhwc)


@OPS.register("Softplus")
def _softplus(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    # relu(x) + log(1 + exp(-|x|)): builtins only, and no overflow where TF's own log(1 + exp(x)) gives inf
    x = ctx.values[ins[0]]
    tf = ctx.tf
    with tf.name_scope(FLOAT_SCOPE + "softplus"):
        return Value(tf.nn.relu(x.tensor) + tf.math.log(1.0 + tf.exp(-tf.abs(x.tensor))), x.nhwc)


# opset 20, and what onnx_to_tf_fusions makes of x * 0.5 * (1 + erf(x / sqrt(2)))
@OPS.register("Gelu", check=_gelu_check)
def _gelu(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    approximate = decoded(attrs.get("approximate", "none"))
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"approximate={approximate!r}")
    return Value(ctx.tf.nn.gelu(x.tensor, approximate=approximate == "tanh"), x.nhwc)


@OPS.register("Sqrt")
def _sqrt(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    return Value(ctx.tf.sqrt(x.tensor), x.nhwc)


@OPS.register("Pow")
def _pow(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    exponent = ctx.const(ins[1])
    x = ctx.values[ins[0]]
    power = float(exponent.reshape(-1)[0]) if exponent is not None and exponent.size == 1 else None
    if power == 2.0:
        return Value(x.tensor * x.tensor, x.nhwc)  # one MUL (POW has no int8 kernel)
    if power == 0.5:
        return Value(ctx.tf.sqrt(x.tensor), x.nhwc)
    return _binary(ctx, ins, ctx.tf.pow)


@OPS.register("HardSwish")
def _hard_swish(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    return Value(x.tensor * ctx.tf.nn.relu6(x.tensor + 3.0) / 6.0, x.nhwc)


@OPS.register("HardSigmoid")
def _hard_sigmoid(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    # relu6(6(ax + b)) / 6 rather than a clip: TFLite's quantizer has no MINIMUM, and each tensor here is
    # an affine image of an ONNX tensor, so the QuantSpec's ranges carry over (targets/tflite_quant.py)
    x = ctx.values[ins[0]]
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    return Value(ctx.tf.nn.relu6(x.tensor * (6.0 * alpha) + 6.0 * beta) * (1.0 / 6.0), x.nhwc)


@OPS.register("Clip")
def _clip(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    low = attrs.get("min", ctx.const(ins[1]) if len(ins) > 1 and ins[1] else -np.inf)
    high = attrs.get("max", ctx.const(ins[2]) if len(ins) > 2 and ins[2] else np.inf)
    low, high = float(low), float(high)
    if low == 0.0 and high == 6.0:
        return Value(ctx.tf.nn.relu6(x.tensor), x.nhwc)
    if low == 0.0 and high == np.inf:
        return Value(ctx.tf.nn.relu(x.tensor), x.nhwc)
    return Value(ctx.tf.clip_by_value(x.tensor, low, high), x.nhwc)


def _binary(ctx: Translator, ins: list[str], fn: Callable[[Any, Any], Any]) -> Value:
    """`fn` on two operands, in the layout of the NHWC one if any (constants follow it)."""
    operands = [ctx.values.get(i) for i in ins]
    like = next(v for v in operands if v is not None)
    if all(v is not None for v in operands) and any(v.nhwc for v in operands):
        like = next(v for v in operands if v.nhwc)
    return Value(fn(ctx.operand(ins[0], like), ctx.operand(ins[1], like)), like.nhwc)


@OPS.register("Add")
def _add(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _binary(ctx, ins, ctx.tf.add)


@OPS.register("Sub")
def _sub(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _binary(ctx, ins, ctx.tf.subtract)


@OPS.register("Mul")
def _mul(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    return _binary(ctx, ins, ctx.tf.multiply)


@OPS.register("Div")
def _div(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    divisor = ctx.const(ins[1])
    if divisor is not None and divisor.dtype.kind == "f":  # x / c -> x * (1/c): one MUL the quantizer knows
        return _binary(ctx, [ins[0], ins[1]], lambda a, b: a * (1.0 / b))
    return _binary(ctx, ins, ctx.tf.divide)


@OPS.register("Flatten")
def _flatten(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.nchw(ctx.values[ins[0]])
    axis = attrs.get("axis", 1)
    return Value(ctx.tf.reshape(x, [int(np.prod(x.shape[:axis])), -1]), False)


def laid_out(ctx: Translator, y: Any) -> Value:
    """An NCHW-ordered result: back to NHWC when it is rank 4."""
    return Value(ctx.tf.transpose(y, NCHW_TO_NHWC), True) if len(y.shape) == 4 else Value(y, False)


@OPS.register("Reshape", check=_reshape_check)
def _reshape(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    shape_value = ctx.const(ins[1])
    if shape_value is None:
        raise NotImplementedError("Reshape to a computed (non-constant) shape")
    x = ctx.nchw(ctx.values[ins[0]])
    shape = [int(x.shape[i]) if v == 0 else int(v) for i, v in enumerate(shape_value)]
    return laid_out(ctx, ctx.tf.reshape(x, shape))


@OPS.register("Squeeze")
def _squeeze(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    axes = attrs.get("axes", ctx.const(ins[1]) if len(ins) > 1 else None)
    x = ctx.nchw(ctx.values[ins[0]])
    return laid_out(ctx, ctx.tf.squeeze(x, axis=None if axes is None else [int(a) for a in axes]))


@OPS.register("Unsqueeze")
def _unsqueeze(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    axes = attrs.get("axes", ctx.const(ins[1]) if len(ins) > 1 else None)
    y = ctx.nchw(ctx.values[ins[0]])
    rank = len(y.shape) + len(axes)
    for axis in sorted(int(a) % rank for a in axes):
        y = ctx.tf.expand_dims(y, axis)
    return laid_out(ctx, y)


@OPS.register("Transpose")
def _transpose(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    y = ctx.tf.transpose(ctx.nchw(ctx.values[ins[0]]), attrs.get("perm"))
    return Value(y, False)


@OPS.register("Concat")
def _concat(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    parts = [ctx.values.get(i) for i in ins]
    like = next(v for v in parts if v is not None)
    axis = attrs["axis"] % len(like.tensor.shape)
    tensors = [ctx.operand(i, like) for i in ins]
    return Value(ctx.tf.concat(tensors, NCHW_TO_NHWC.index(axis) if like.nhwc else axis), like.nhwc)


@OPS.register("Gemm", check=_gemm_check)
def _gemm(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.nchw(ctx.values[ins[0]])
    weight = ctx.const(ins[1])
    if weight is None:
        raise NotImplementedError("Gemm with a computed (non-constant) B")
    weight = weight.astype(np.float32)
    if attrs.get("transA", 0):
        x = ctx.tf.transpose(x)
    if attrs.get("transB", 0):
        weight = weight.T
    y = ctx.tf.matmul(x, weight * attrs.get("alpha", 1.0))
    bias = ctx.const(ins[2]) if len(ins) > 2 else None
    if bias is not None:
        y = y + bias.astype(np.float32) * attrs.get("beta", 1.0)
    return Value(y, False)


@OPS.register("MatMul")
def _matmul(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.nchw(ctx.values[ins[0]])
    other = ctx.const(ins[1])
    right = ctx.tf.constant(other.astype(np.float32)) if other is not None else ctx.nchw(ctx.values[ins[1]])
    return Value(ctx.tf.matmul(x, right), False)


@OPS.register("Softmax")
def _softmax(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    axis = attrs.get("axis", -1) % len(x.tensor.shape)
    if axis == 1 and len(x.tensor.shape) == 4 and not x.nhwc:  # over channels (YOLOv8's DFL): NHWC, last axis
        x = Value(ctx.nhwc(x), True)  # TFLite's SOFTMAX takes the last axis; the 1x1 conv after it wants NHWC
    return Value(ctx.tf.nn.softmax(x.tensor, axis=tf_axis(x, axis)), x.nhwc)
