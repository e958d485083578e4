"""ONNX -> TensorFlow -> .tflite for the CNN op set edge vision models use, with activations kept NHWC.

Why our own translator: onnx2tf pins TensorFlow, numpy, ONNX Runtime and protobuf versions that clash with
the base install (a pip extra cannot install it with --no-deps), and onnx2torch -> litert-torch pulls a
converter that downgrades typing_extensions. The op set here covers the demo CNN, MobileNet-style networks
and PaddleOCR's direction classifier; an op outside it is a ConversionError naming the op and node.

How: each ONNX node becomes TF ops inside one `tf.function`, by the function registered for its op in
`_OPS` (an `OpTable`, as in the Core ML replay; SUPPORTED_OPS is what is registered); rank-4 activations
stay NHWC (TFLite's layout, so no transposes around every conv) and are transposed back to NCHW only where
a value leaves the 4-D world (Flatten/Reshape) or the graph. Constant sub-graphs (Shape -> Gather -> Concat -> Reshape)
are folded in numpy. TensorFlow's converter then fuses bias, BatchNorm and activations into the convs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import EdgekitError, ModelError
from edgekit.onnx_toolbox import OpTable, constant_value, fixed_input_shape, graph_inputs, image_layout, node_label
from edgekit.onnx_toolbox import attrs as node_attrs

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)

# ONNX op -> the TFLite builtins it becomes (what `edgekit inspect` checks against NNAPI's list); its keys are
# the ops registered below (SUPPORTED_OPS)
TFLITE_OPS: dict[str, tuple[str, ...]] = {
    "Conv": ("CONV_2D", "DEPTHWISE_CONV_2D", "PAD"),
    "BatchNormalization": ("MUL", "ADD"),  # usually fused into the conv before it
    "Relu": ("RELU",),
    "Clip": ("RELU6", "RELU_0_TO_1", "MINIMUM", "MAXIMUM"),
    "HardSigmoid": ("RELU6", "MUL"),
    "HardSwish": ("HARD_SWISH",),
    "Sigmoid": ("LOGISTIC",),
    "Add": ("ADD",),
    "Sub": ("SUB",),
    "Mul": ("MUL",),
    "Div": ("DIV", "MUL"),
    "MaxPool": ("MAX_POOL_2D", "PAD"),
    "AveragePool": ("AVERAGE_POOL_2D", "PAD"),
    "GlobalAveragePool": ("MEAN",),
    "ReduceMean": ("MEAN",),
    "Flatten": ("TRANSPOSE", "RESHAPE"),
    "Reshape": ("TRANSPOSE", "RESHAPE"),
    "Transpose": ("TRANSPOSE",),
    "Concat": ("CONCATENATION",),
    "Gemm": ("FULLY_CONNECTED",),
    "MatMul": ("FULLY_CONNECTED", "BATCH_MATMUL"),
    "Softmax": ("SOFTMAX",),
    "Identity": (),
    "Dropout": (),
    "Constant": (),
    # folded in numpy when their inputs are constant (shape arithmetic)
    "Shape": (),
    "Gather": ("GATHER",),
    "Unsqueeze": ("RESHAPE",),
    "Squeeze": ("RESHAPE",),
    "Cast": ("CAST",),
    "Slice": ("STRIDED_SLICE",),
}


class ConversionError(EdgekitError):
    """An ONNX model this converter cannot translate; names the op and node and what to do."""


def _decoded(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class _Value:
    """A TF tensor and whether it is stored NHWC (only rank-4 activations are)."""

    __slots__ = ("tensor", "nhwc")

    def __init__(self, tensor: Any, nhwc: bool) -> None:
        self.tensor, self.nhwc = tensor, nhwc


# Each op is a function (translator, input names, attributes) -> a _Value (TF tensor) or a numpy array (a
# constant); Constant nodes are read by the walk itself. _FOLDS evaluates a node in numpy when all its inputs
# are constant (shape arithmetic), before its TF function is tried.
_OPS = OpTable("the TFLite converter", walk_ops=("Constant",))
_FOLDS = OpTable("the TFLite converter's constant folding")
_UNSUPPORTED_ADVICE = "Export the model without it, or use another target"


class _Translator:
    def __init__(self, proto: onnx.ModelProto, tf: Any) -> None:
        self.tf = tf
        self.graph = proto.graph
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        self.values: dict[str, _Value] = {}

    # -- helpers ---------------------------------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def broadcast_const(self, array: np.ndarray, like: _Value) -> Any:
        """A numpy constant in ONNX (NCHW) layout, laid out to broadcast against `like`."""
        array = np.asarray(array, np.float32) if array.dtype.kind == "f" else np.asarray(array)
        if like.nhwc and array.ndim >= 1:
            array = array.reshape((1,) * (4 - array.ndim) + array.shape).transpose(NCHW_TO_NHWC)
        return self.tf.constant(array)

    def operand(self, name: str, like: _Value) -> Any:
        if name in self.consts:
            return self.broadcast_const(self.consts[name], like)
        value = self.values[name]
        if value.nhwc != like.nhwc:
            return self.nhwc(value) if like.nhwc else self.nchw(value)
        return value.tensor

    def nchw(self, value: _Value) -> Any:
        return self.tf.transpose(value.tensor, NHWC_TO_NCHW) if value.nhwc else value.tensor

    def nhwc(self, value: _Value) -> Any:
        return value.tensor if value.nhwc else self.tf.transpose(value.tensor, NCHW_TO_NHWC)

    def padded(
        self, x: Any, pads: list[int], kernel: list[int], strides: list[int], dilations: list[int], fill: float = 0.0
    ) -> tuple[Any, str]:
        """Apply ONNX pads [top, left, bottom, right]; SAME when TF's padding is the same thing (no PAD op)."""
        top, left, bottom, right = pads
        if top == left == bottom == right == 0:
            return x, "VALID"
        same_h = top == bottom == dilations[0] * (kernel[0] - 1) // 2
        same_w = left == right == dilations[1] * (kernel[1] - 1) // 2
        if list(strides) == [1, 1] and same_h and same_w and kernel[0] % 2 and kernel[1] % 2:
            return x, "SAME"
        return self.tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=fill), "VALID"

    # -- the walk --------------------------------------------------------------------------------

    def run(self, x_nhwc: Any) -> list[Any]:
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        self.values[inputs[0].name] = _Value(x_nhwc, True)
        for node in self.graph.node:
            self.visit(node)
        outputs = []
        for output in self.graph.output:
            if output.name in self.values:
                outputs.append(self.nchw(self.values[output.name]))
            else:
                outputs.append(self.tf.constant(self.consts[output.name]))
        return outputs

    def visit(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Constant":
            self.consts[node.output[0]] = _constant_of(node)
            return
        attrs = node_attrs(node)
        folded = self.folded(node, attrs)
        if folded is not None:
            self.consts[node.output[0]] = folded
            return
        function = _OPS.lookup(node, ConversionError, _UNSUPPORTED_ADVICE)
        try:
            result = function(self, list(node.input), attrs)
        except ConversionError:
            raise
        except (NotImplementedError, ValueError) as exc:
            raise ConversionError(f"cannot convert {node.op_type} node {node_label(node)!r} to TFLite: {exc}") from exc
        if isinstance(result, np.ndarray):
            self.consts[node.output[0]] = result
        else:
            self.values[node.output[0]] = result

    def folded(self, node: onnx.NodeProto, attrs: dict[str, Any]) -> np.ndarray | None:
        """The node's value when all its inputs are constant and it folds in numpy; else None."""
        fold = _FOLDS.functions.get(node.op_type)
        names = [i for i in node.input if i]
        if fold is None or not names or not all(i in self.consts for i in names):
            return None
        return fold([self.consts.get(i) for i in node.input], attrs)


def _constant_of(node: onnx.NodeProto) -> np.ndarray:
    value = constant_value(node)
    if value is None:
        raise ConversionError(f"Constant node {node_label(node)!r} has no value the TFLite converter can read")
    return value


# -- ops -----------------------------------------------------------------------------------------------


@_OPS.register("Identity", "Dropout")  # Dropout at inference: identity
def _identity(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    value = ctx.values[ins[0]]
    return _Value(value.tensor, value.nhwc)


@_OPS.register("Shape")
def _shape(ctx: _Translator, ins: list[str], attrs: dict) -> np.ndarray:
    value = ctx.values[ins[0]]
    shape = [int(d) for d in value.tensor.shape]
    return np.array([shape[i] for i in NHWC_TO_NCHW] if value.nhwc else shape, np.int64)


@_OPS.register("Gather", "Cast", "Slice")
def _constant_only(ctx: _Translator, ins: list[str], attrs: dict) -> NoReturn:
    raise NotImplementedError("only on constant inputs (shape arithmetic), which are folded")


@_OPS.register("Conv")
def _conv(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    tf = ctx.tf
    x = ctx.values[ins[0]]
    weight = ctx.const(ins[1])
    if weight is None or weight.ndim != 4:
        raise NotImplementedError("only 2-D convolutions with constant weights")
    weight = weight.astype(np.float32)
    bias = ctx.const(ins[2]) if len(ins) > 2 else None
    if _decoded(attrs.get("auto_pad", "NOTSET")) != "NOTSET":
        raise NotImplementedError("auto_pad (re-export with explicit pads)")
    group = attrs.get("group", 1)
    kernel = list(weight.shape[2:])
    strides, dilations = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1]))
    data, padding = ctx.padded(ctx.nhwc(x), list(attrs.get("pads", [0, 0, 0, 0])), kernel, strides, dilations)
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
    return _Value(y, True)


@_OPS.register("BatchNormalization")
def _batch_norm(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.values[ins[0]]
    scale, bias, mean, var = (ctx.const(i).astype(np.float32) for i in ins[1:5])
    mul = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
    add = bias - mean * mul
    shape = (1, -1) + (1,) * (len(x.tensor.shape) - 2)
    return _Value(
        x.tensor * ctx.broadcast_const(mul.reshape(shape), x) + ctx.broadcast_const(add.reshape(shape), x),
        x.nhwc,
    )


@_OPS.register("Relu")
def _relu(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.values[ins[0]]
    return _Value(ctx.tf.nn.relu(x.tensor), x.nhwc)


@_OPS.register("Sigmoid")
def _sigmoid(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.values[ins[0]]
    return _Value(ctx.tf.math.sigmoid(x.tensor), x.nhwc)


@_OPS.register("HardSwish")
def _hard_swish(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.values[ins[0]]
    return _Value(x.tensor * ctx.tf.nn.relu6(x.tensor + 3.0) / 6.0, x.nhwc)


@_OPS.register("HardSigmoid")
def _hard_sigmoid(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    # relu6(6(ax + b)) / 6 rather than a clip: TFLite's quantizer has no MINIMUM, and each tensor here is
    # an affine image of an ONNX tensor, so the QuantSpec's ranges carry over (targets/tflite_quant.py)
    x = ctx.values[ins[0]]
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    return _Value(ctx.tf.nn.relu6(x.tensor * (6.0 * alpha) + 6.0 * beta) * (1.0 / 6.0), x.nhwc)


@_OPS.register("Clip")
def _clip(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.values[ins[0]]
    low = attrs.get("min", ctx.const(ins[1]) if len(ins) > 1 and ins[1] else -np.inf)
    high = attrs.get("max", ctx.const(ins[2]) if len(ins) > 2 and ins[2] else np.inf)
    low, high = float(low), float(high)
    if low == 0.0 and high == 6.0:
        return _Value(ctx.tf.nn.relu6(x.tensor), x.nhwc)
    if low == 0.0 and high == np.inf:
        return _Value(ctx.tf.nn.relu(x.tensor), x.nhwc)
    return _Value(ctx.tf.clip_by_value(x.tensor, low, high), x.nhwc)


def _binary(ctx: _Translator, ins: list[str], fn: Callable[[Any, Any], Any]) -> _Value:
    """`fn` on two operands, in the layout of the NHWC one if any (constants follow it)."""
    operands = [ctx.values.get(i) for i in ins]
    like = next(v for v in operands if v is not None)
    if all(v is not None for v in operands) and any(v.nhwc for v in operands):
        like = next(v for v in operands if v.nhwc)
    return _Value(fn(ctx.operand(ins[0], like), ctx.operand(ins[1], like)), like.nhwc)


@_OPS.register("Add")
def _add(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    return _binary(ctx, ins, ctx.tf.add)


@_OPS.register("Sub")
def _sub(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    return _binary(ctx, ins, ctx.tf.subtract)


@_OPS.register("Mul")
def _mul(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    return _binary(ctx, ins, ctx.tf.multiply)


@_OPS.register("Div")
def _div(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    divisor = ctx.const(ins[1])
    if divisor is not None and divisor.dtype.kind == "f":  # x / c -> x * (1/c): one MUL the quantizer knows
        return _binary(ctx, [ins[0], ins[1]], lambda a, b: a * (1.0 / b))
    return _binary(ctx, ins, ctx.tf.divide)


def _pool(ctx: _Translator, ins: list[str], attrs: dict, kind: str) -> _Value:
    x = ctx.values[ins[0]]
    if attrs.get("ceil_mode", 0):
        raise NotImplementedError("ceil_mode=1 pooling (re-export with ceil_mode=0)")
    kernel, strides = list(attrs["kernel_shape"]), list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if kind == "AVG" and any(pads) and not attrs.get("count_include_pad", 0):
        raise NotImplementedError("padded average pooling that excludes the pads")
    fill = -3.0e38 if kind == "MAX" else 0.0
    data, padding = ctx.padded(ctx.nhwc(x), pads, kernel, strides, [1, 1], fill)
    return _Value(ctx.tf.nn.pool(data, kernel, kind, strides=strides, padding=padding), True)


@_OPS.register("MaxPool")
def _max_pool(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    return _pool(ctx, ins, attrs, "MAX")


@_OPS.register("AveragePool")
def _average_pool(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    return _pool(ctx, ins, attrs, "AVG")


@_OPS.register("GlobalAveragePool")
def _global_average_pool(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.values[ins[0]]
    return _Value(ctx.tf.reduce_mean(ctx.nhwc(x), axis=[1, 2], keepdims=True), True)


@_OPS.register("ReduceMean")
def _reduce_mean(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.values[ins[0]]
    axes = attrs.get("axes", ctx.const(ins[1]) if len(ins) > 1 else None)
    if axes is None:
        raise NotImplementedError("ReduceMean over all axes")
    rank = len(x.tensor.shape)
    axes = sorted(int(a) % rank for a in axes)
    keep = bool(attrs.get("keepdims", 1))
    if x.nhwc:
        tf_axes = [NCHW_TO_NHWC.index(a) for a in axes]
        out = ctx.tf.reduce_mean(x.tensor, axis=tf_axes, keepdims=keep)
        return _Value(out, keep)
    return _Value(ctx.tf.reduce_mean(x.tensor, axis=axes, keepdims=keep), False)


@_OPS.register("Flatten")
def _flatten(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.nchw(ctx.values[ins[0]])
    axis = attrs.get("axis", 1)
    return _Value(ctx.tf.reshape(x, [int(np.prod(x.shape[:axis])), -1]), False)


def _laid_out(ctx: _Translator, y: Any) -> _Value:
    """An NCHW-ordered result: back to NHWC when it is rank 4."""
    return _Value(ctx.tf.transpose(y, NCHW_TO_NHWC), True) if len(y.shape) == 4 else _Value(y, False)


@_OPS.register("Reshape")
def _reshape(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    shape_value = ctx.const(ins[1])
    if shape_value is None:
        raise NotImplementedError("Reshape to a computed (non-constant) shape")
    x = ctx.nchw(ctx.values[ins[0]])
    shape = [int(x.shape[i]) if v == 0 else int(v) for i, v in enumerate(shape_value)]
    return _laid_out(ctx, ctx.tf.reshape(x, shape))


@_OPS.register("Squeeze")
def _squeeze(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    axes = attrs.get("axes", ctx.const(ins[1]) if len(ins) > 1 else None)
    x = ctx.nchw(ctx.values[ins[0]])
    return _laid_out(ctx, ctx.tf.squeeze(x, axis=None if axes is None else [int(a) for a in axes]))


@_OPS.register("Unsqueeze")
def _unsqueeze(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    axes = attrs.get("axes", ctx.const(ins[1]) if len(ins) > 1 else None)
    y = ctx.nchw(ctx.values[ins[0]])
    rank = len(y.shape) + len(axes)
    for axis in sorted(int(a) % rank for a in axes):
        y = ctx.tf.expand_dims(y, axis)
    return _laid_out(ctx, y)


@_OPS.register("Transpose")
def _transpose(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    y = ctx.tf.transpose(ctx.nchw(ctx.values[ins[0]]), attrs.get("perm"))
    return _Value(y, False)


@_OPS.register("Concat")
def _concat(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    parts = [ctx.values.get(i) for i in ins]
    like = next(v for v in parts if v is not None)
    axis = attrs["axis"] % len(like.tensor.shape)
    tensors = [ctx.operand(i, like) for i in ins]
    return _Value(ctx.tf.concat(tensors, NCHW_TO_NHWC.index(axis) if like.nhwc else axis), like.nhwc)


@_OPS.register("Gemm")
def _gemm(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
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
    return _Value(y, False)


@_OPS.register("MatMul")
def _matmul(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.nchw(ctx.values[ins[0]])
    other = ctx.const(ins[1])
    right = ctx.tf.constant(other.astype(np.float32)) if other is not None else ctx.nchw(ctx.values[ins[1]])
    return _Value(ctx.tf.matmul(x, right), False)


@_OPS.register("Softmax")
def _softmax(ctx: _Translator, ins: list[str], attrs: dict) -> _Value:
    x = ctx.values[ins[0]]
    axis = attrs.get("axis", -1) % len(x.tensor.shape)
    return _Value(ctx.tf.nn.softmax(x.tensor, axis=NCHW_TO_NHWC.index(axis) if x.nhwc else axis), x.nhwc)


# -- constant folding (shape arithmetic): (input values, attributes) -> value --------------------------


@_FOLDS.register("Cast")
def _fold_cast(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return values[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))


@_FOLDS.register("Identity")
def _fold_identity(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return values[0]


@_FOLDS.register("Concat")
def _fold_concat(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return np.concatenate(values, axis=attrs.get("axis", 0))


@_FOLDS.register("Gather")
def _fold_gather(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    return np.take(values[0], values[1], axis=attrs.get("axis", 0))


@_FOLDS.register("Unsqueeze")
def _fold_unsqueeze(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    axes = attrs.get("axes", values[1] if len(values) > 1 else None)
    return np.expand_dims(values[0], tuple(int(a) for a in axes))


@_FOLDS.register("Squeeze")
def _fold_squeeze(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    axes = attrs.get("axes", values[1] if len(values) > 1 else None)
    return np.squeeze(values[0], None if axes is None else tuple(int(a) for a in axes))


def _fold_elementwise(fn: Callable[[Any, Any], np.ndarray]) -> Callable[..., np.ndarray]:
    def fold(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
        return fn(values[0], values[1])

    return fold


for _op, _fn in {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}.items():
    _FOLDS.register(_op)(_fold_elementwise(_fn))


@_FOLDS.register("Reshape")
def _fold_reshape(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    first = values[0]
    return first.reshape([first.shape[i] if v == 0 else int(v) for i, v in enumerate(values[1])])


@_FOLDS.register("Slice")
def _fold_slice(values: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    first, starts, ends = values[0], values[1], values[2]
    axes = values[3] if len(values) > 3 and values[3] is not None else range(len(starts))
    steps = values[4] if len(values) > 4 and values[4] is not None else [1] * len(starts)
    index = [slice(None)] * first.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        index[int(axis)] = slice(int(start), int(min(end, 2**62)), int(step))
    return first[tuple(index)]


SUPPORTED_OPS = _OPS.ops  # every key of TFLITE_OPS (tests/test_target_tflite.py holds them equal)


def static_input_shape(proto: onnx.ModelProto, size: tuple[int, int] | None = None) -> tuple[int, ...]:
    """The single input's NCHW shape: a dynamic batch becomes 1, dynamic height/width come from `size` (the
    preprocess resize); any other dynamic axis, or an input that is not an NCHW image, is a ConversionError."""
    try:
        shape = fixed_input_shape(proto, size, layout="NCHW")
    except ModelError as exc:
        raise ConversionError(f"the TFLite target: {exc}") from exc
    name = graph_inputs(proto)[0].name
    if len(shape) != 4:
        raise ConversionError(f"the TFLite target takes one NCHW image input; input {name!r} is {list(shape)}")
    if image_layout(shape) == "NHWC":
        raise ConversionError(
            f"input {name!r} is channel-last {list(shape)}; the TFLite translator takes NCHW (channel-first) inputs "
            "and makes the .tflite input NHWC itself: export the model channel-first"
        )
    return shape


def to_tflite(
    proto: onnx.ModelProto,
    *,
    fp16: bool = False,
    nchw_input: bool = False,
    size: tuple[int, int] | None = None,
    converter_int8_data: Any = None,
) -> bytes:
    """Convert a float ONNX model to a float32 (or float16-weight) .tflite model.

    The .tflite input is NHWC (what Android camera frames are) unless `nchw_input`; outputs keep ONNX's
    layout, so they compare one to one with ONNX Runtime's. `converter_int8_data` (NCHW float arrays, one
    per sample) makes TensorFlow's own full-integer model with its own min-max calibration instead: the
    anchor the benchmarks compare the QuantSpec route against.
    """
    import tensorflow as tf

    n, c, h, w = static_input_shape(proto, size)
    translator = _Translator(proto, tf)
    spec = tf.TensorSpec([n, c, h, w] if nchw_input else [n, h, w, c], tf.float32, name="input")

    @tf.function(input_signature=[spec], autograph=False)
    def graph(x: Any) -> list[Any]:
        return translator.run(tf.transpose(x, NCHW_TO_NHWC) if nchw_input else x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    if fp16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    if converter_int8_data is not None:
        samples = [np.asarray(x, np.float32).reshape(n, c, h, w) for x in converter_int8_data]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: ([x if nchw_input else x.transpose(0, 2, 3, 1)] for x in samples)
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ... with long MLIR dumps
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"TensorFlow's TFLite converter failed: {first}") from exc
