"""The ops of the ONNX-to-torch replay (ios-coreml): one function per ONNX op, registered in `REPLAY_OPS`
(an `OpTable`, as in the TFLite translator) with `replay_op`; SUPPORTED_OPS is what is registered.

One rule for constants and tensors: the replay runs the graph folded at its build shape
(`edgekit.onnx_fold.fold_at_shape`), so what is known before any pixel arrives is an initializer. An op
declares which of its inputs are *parameters* (a Reshape's shape, Slice bounds, Resize scales, TopK's k): those
must be initializers and arrive as numpy arrays, read when the module is traced. Every other input is data and
arrives as a torch tensor (an integer initializer read as data becomes a constant tensor), and every op returns
torch tensors. A parameter computed from the image is refused by the op's check, before anything is built.

Each function gets a `ReplayCall` (torch, torch.nn.functional, the node's output names, the opset), the
inputs and the node's attributes; torch is only touched when the replay module runs (coreml_onnx.py). Each
variant a function cannot compute has a `check` registered with it, so `edgekit inspect -t ios-coreml` predicts
the build. The ops live in three modules: this one (elementwise, conv, pooling, normalization), coreml_ops_tensor
(shape, indexing, reductions, attention) and coreml_resize (Resize).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.onnx_toolbox import constant_value
from edgekit.op_support import Check, GraphFacts, OpTable
from edgekit.targets.base import BuildError


def _constant_of(node: onnx.NodeProto) -> np.ndarray:
    value = constant_value(node)
    if value is None:
        raise BuildError(f"Constant node {node.name or node.output[0]} has no value the replay can read")
    return value


def initializer_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every initializer and Constant node output, by name."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            inits[node.output[0]] = _constant_of(node)
    return inits


# -- the registry --------------------------------------------------------------------------------------


class ReplayCall(NamedTuple):
    """What a replay op gets besides its input values and attributes (torch comes here: it loads lazily)."""

    torch: Any
    F: Any  # torch.nn.functional
    outputs: list[str]  # the node's output names
    opset: int = 17


# Constant nodes are read once at build (buffers or constants): the walk skips them.
REPLAY_OPS = OpTable("the ONNX-to-torch route of ios-coreml", walk_ops=("Constant",))
# op -> positions of its parameter inputs (read at build time as numpy; they must be initializers)
PARAMETERS: dict[str, frozenset[int]] = {}
# op -> positions read as numpy when they are initializers and as tensors otherwise (Pow's exponent, Clip's bounds)
LITERALS: dict[str, frozenset[int]] = {}


def _parameters_known(params: tuple[int, ...], node: onnx.NodeProto, facts: GraphFacts) -> str | None:
    for index in params:
        if index < len(node.input) and node.input[index] and facts.const(node.input[index]) is None:
            return (
                f"input {index} ({node.input[index]!r}) is computed from the image; the replay needs it constant "
                "at the build shape"
            )
    return None


def replay_op(
    *op_types: str, params: tuple[int, ...] = (), literals: tuple[int, ...] = (), check: Check | None = None
) -> Callable:
    """Register a replay function for `op_types`; `params` are its inputs read at build time (they must be
    initializers), `literals` those read at build time when they are initializers, `check` says which other
    variants it cannot take."""

    def combined(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
        return _parameters_known(params, node, facts) or (check(node, attrs, facts) if check else None)

    for op_type in op_types:
        PARAMETERS[op_type] = frozenset(params)
        LITERALS[op_type] = frozenset(literals)
    return REPLAY_OPS.register(*op_types, check=combined if params or check else None)


# -- helpers ---------------------------------------------------------------------------------------------


def dims(x: Any) -> list[int]:
    """A tensor's shape as ints: while tracing, torch hands sizes out as tensors; the replay's shapes are static."""
    return [int(d) for d in x.shape]


def ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def floats(value: Any) -> list[float]:
    return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


def scalar(ctx: ReplayCall, value: Any) -> float:
    value = value.detach().numpy() if ctx.torch.is_tensor(value) else value
    return float(np.asarray(value).reshape(-1)[0])


def given(args: list[Any], index: int) -> bool:
    """Whether the optional input `index` is there."""
    return len(args) > index and args[index] is not None


def decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def is_constant(facts: GraphFacts, node: onnx.NodeProto, index: int) -> bool:
    return index < len(node.input) and bool(node.input[index]) and facts.const(node.input[index]) is not None


def _onnx_pads(shape: Any, attrs: dict, kernel: list[int], spatial: int) -> list[int]:
    """ONNX pads [begin..., end...] with auto_pad resolved for this input shape."""
    auto = decoded(attrs.get("auto_pad", b"NOTSET"))
    if auto == "VALID":
        return [0] * (2 * spatial)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return list(attrs.get("pads", [0] * (2 * spatial)))
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    pads = [0] * (2 * spatial)
    for i in range(spatial):
        size = shape[2 + i]
        out = math.ceil(size / strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        pads[i], pads[i + spatial] = (small, big) if auto == "SAME_UPPER" else (big, small)
    return pads


def _torch_pad(begin: list[int], end: list[int]) -> list[int]:
    """F.pad's order (last axis first) of per-axis begin/end pads."""
    pad: list[int] = []
    for i in reversed(range(len(begin))):
        pad += [begin[i], end[i]]
    return pad


def _pads_for(
    ctx: ReplayCall, x: Any, attrs: dict, kernel: list[int], spatial: int, fill: float = 0.0
) -> tuple[Any, list[int]]:
    """(x padded where ONNX pads are asymmetric, symmetric padding left for the torch op)."""
    pads = _onnx_pads(dims(x), attrs, kernel, spatial)
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return x, begin
    return ctx.F.pad(x, _torch_pad(begin, end), value=fill), [0] * spatial


def padded_or_cropped(ctx: ReplayCall, x: Any, begin: list[int], end: list[int], value: float = 0.0) -> Any:
    """x with `begin`/`end` elements added (constant `value`) or, where negative, removed on each axis: crops
    are slices, as coremltools 9 takes no negative pad."""
    index = tuple(slice(max(0, -b), size - max(0, -e)) for b, e, size in zip(begin, end, dims(x), strict=True))
    x = x[index]
    grow_begin, grow_end = [max(0, b) for b in begin], [max(0, e) for e in end]
    if not any(grow_begin) and not any(grow_end):
        return x
    pad = _torch_pad(grow_begin, grow_end)
    while len(pad) > 2 and pad[-2:] == [0, 0]:
        pad = pad[:-2]
    return ctx.F.pad(x, pad, value=value)


def _spatial_rank(facts: GraphFacts, node: onnx.NodeProto, low: int = 1) -> str | None:
    rank = facts.rank(node.input[0])
    if rank is not None and not low + 2 <= rank <= 5:
        return f"a {rank}-D input: the replay takes 1-D to 3-D spatial data (N, C, ...)"
    return None


# -- elementwise -------------------------------------------------------------------------------------------

# ops that are one torch function of their (data) inputs (dotted paths on ReplayCall: torch loads lazily)
_UNARY = {
    "Abs": "torch.abs", "Ceil": "torch.ceil", "Cos": "torch.cos", "Erf": "torch.erf", "Exp": "torch.exp",
    "Floor": "torch.floor", "HardSwish": "F.hardswish", "IsNaN": "torch.isnan", "Log": "torch.log",
    "Mish": "F.mish", "Neg": "torch.neg", "Not": "torch.logical_not", "Reciprocal": "torch.reciprocal",
    "Relu": "F.relu", "Round": "torch.round", "Sigmoid": "torch.sigmoid", "Sign": "torch.sign", "Sin": "torch.sin",
    "Softplus": "F.softplus", "Softsign": "F.softsign", "Sqrt": "torch.sqrt", "Tanh": "torch.tanh",
}  # fmt: skip
_BINARY = {
    "Add": "torch.add", "And": "torch.logical_and", "Div": "torch.div", "Equal": "torch.eq", "Greater": "torch.gt",
    "GreaterOrEqual": "torch.ge", "Less": "torch.lt", "LessOrEqual": "torch.le", "MatMul": "torch.matmul",
    "Mul": "torch.mul", "Or": "torch.logical_or", "Sub": "torch.sub", "Xor": "torch.logical_xor",
}  # fmt: skip
_VARIADIC = {"Max": "torch.maximum", "Min": "torch.minimum", "Sum": "torch.add"}


def _unary(path: str) -> Callable[..., Any]:
    function = attrgetter(path)

    def run(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
        return function(ctx)(args[0])

    return run


def _binary(path: str) -> Callable[..., Any]:
    function = attrgetter(path)

    def run(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
        return function(ctx)(args[0], args[1])

    return run


def _variadic(path: str) -> Callable[..., Any]:
    function = attrgetter(path)

    def run(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
        y = args[0]
        for other in args[1:]:
            y = function(ctx)(y, other)
        return y

    return run


for _kind, _paths in ((_unary, _UNARY), (_binary, _BINARY), (_variadic, _VARIADIC)):
    for _op, _path in _paths.items():
        replay_op(_op)(_kind(_path))


@replay_op("Mean")
def _mean(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return _variadic("torch.add")(ctx, args, attrs) / len(args)


@replay_op("Mod")
def _mod(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """fmod spelled out as x - trunc(x / y) * y (coremltools 9 has no fmod); Python's remainder otherwise."""
    x, y = args[0], args[1]
    if not attrs.get("fmod", 0):
        return ctx.torch.remainder(x, y)
    if not x.is_floating_point():
        return x - ctx.torch.div(x, y, rounding_mode="trunc") * y
    quotient = x / y
    return x - ctx.torch.where(quotient >= 0, ctx.torch.floor(quotient), ctx.torch.ceil(quotient)) * y


def _dropout_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    if len(node.output) > 1 and node.output[1]:
        return "its mask output is used: the replay runs inference, without a mask"
    return None


@replay_op("Identity", "Dropout", check=_dropout_check)  # Dropout at inference: identity
def _identity(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return args[0]


def _torch_dtype(ctx: ReplayCall, onnx_type: int) -> Any:
    """The torch dtype the replay computes an ONNX type in: every float in float32 (Core ML picks the precision)."""
    torch = ctx.torch
    if onnx_type == onnx.TensorProto.BOOL:
        return torch.bool
    if onnx_type in (onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.INT16, onnx.TensorProto.INT8):
        return torch.int64 if onnx_type == onnx.TensorProto.INT64 else torch.int32
    if onnx_type in (onnx.TensorProto.UINT8,):
        return torch.uint8
    return torch.float32


_CASTABLE = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.BOOL, onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
}  # fmt: skip


def _cast_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    if node.op_type == "Cast" and attrs.get("to") not in _CASTABLE:
        return f"a cast to {onnx.TensorProto.DataType.Name(attrs.get('to', 0))}: the replay computes floats and ints"
    return None


@replay_op("Cast", "CastLike", check=_cast_check)
def _cast(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    dtype = args[1].dtype if len(args) > 1 else _torch_dtype(ctx, attrs["to"])
    return args[0].to(dtype)


@replay_op("Clip", literals=(1, 2))
def _clip(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """relu6 / relu where the bounds say so (what Core ML fuses), clamp otherwise (tensor bounds too)."""
    low = args[1] if given(args, 1) else attrs.get("min")
    high = args[2] if given(args, 2) else attrs.get("max")
    if ctx.torch.is_tensor(low) or ctx.torch.is_tensor(high):
        return ctx.torch.clamp(args[0], low, high)
    low = None if low is None else scalar(ctx, low)
    high = None if high is None else scalar(ctx, high)
    if low == 0.0 and high == 6.0:
        return ctx.F.relu6(args[0])
    if low == 0.0 and high is None:
        return ctx.F.relu(args[0])
    return ctx.torch.clamp(args[0], low, high)


@replay_op("Elu")
def _elu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.elu(args[0], attrs.get("alpha", 1.0))


@replay_op("Selu")
def _selu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    alpha, gamma = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.05070102214813232421875)
    return gamma * ctx.torch.where(args[0] > 0, args[0], alpha * (ctx.torch.exp(args[0]) - 1))


@replay_op("Celu")
def _celu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """Spelled out: coremltools 9 has no celu."""
    alpha = attrs.get("alpha", 1.0)
    x = args[0]
    return ctx.F.relu(x) + ctx.torch.clamp(alpha * (ctx.torch.exp(x / alpha) - 1), max=0.0)


@replay_op("ThresholdedRelu")
def _thresholded_relu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.where(args[0] > attrs.get("alpha", 1.0), args[0], ctx.torch.zeros_like(args[0]))


@replay_op("LeakyRelu")
def _leaky_relu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.leaky_relu(args[0], attrs.get("alpha", 0.01))


@replay_op("PRelu")
def _prelu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.where(args[0] >= 0, args[0], args[0] * args[1])


@replay_op("Gelu")
def _gelu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.gelu(args[0], approximate="tanh" if decoded(attrs.get("approximate", "none")) == "tanh" else "none")


@replay_op("HardSigmoid")
def _hard_sigmoid(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.clamp(args[0] * attrs.get("alpha", 0.2) + attrs.get("beta", 0.5), 0.0, 1.0)


@replay_op("Pow", literals=(1,))
def _pow(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """x * x for a constant 2 (what Core ML computes exactly and fast); torch.pow otherwise."""
    exponent = args[1]
    if ctx.torch.is_tensor(exponent):
        return ctx.torch.pow(args[0], exponent)
    if exponent.size == 1:
        value = scalar(ctx, exponent)
        return args[0] * args[0] if value == 2.0 else ctx.torch.pow(args[0], value)
    return ctx.torch.pow(args[0], ctx.torch.as_tensor(exponent, dtype=args[0].dtype))


@replay_op("Where")
def _where(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.where(args[0].bool(), args[1], args[2])


# -- convolution and pooling -------------------------------------------------------------------------------


def _conv_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    if not is_constant(facts, node, 1):
        return "its weight is computed from the image: the replay takes convolutions with constant weights"
    return _spatial_rank(facts, node)


@replay_op("Conv", check=_conv_check)
def _conv(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """Any group count (depthwise and grouped convs included), dilation, asymmetric or auto pads."""
    F = ctx.F
    x, w = args[0], args[1]
    bias = args[2] if given(args, 2) else None
    spatial = w.dim() - 2
    x, padding = _pads_for(ctx, x, attrs, list(dims(w)[2:]), spatial)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    strides, dilations = attrs.get("strides", [1] * spatial), attrs.get("dilations", [1] * spatial)
    return fn(x, w, bias, list(strides), padding, list(dilations), attrs.get("group", 1))


def _conv_transpose_pads(attrs: dict, in_shape: list[int], kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(begin pads, end pads, output padding) of a ConvTranspose, output_shape and auto_pad resolved (ONNX spec)."""
    spatial = len(kernel)
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    extra = list(attrs.get("output_padding", [0] * spatial))
    auto = decoded(attrs.get("auto_pad", "NOTSET"))
    if "output_shape" not in attrs and auto not in ("SAME_UPPER", "SAME_LOWER"):
        pads = list(attrs.get("pads", [0] * (2 * spatial)))
        return pads[:spatial], pads[spatial:], extra
    if "output_shape" in attrs:
        wanted = list(attrs["output_shape"])[-spatial:]
    else:
        wanted = [s * n for s, n in zip(strides, in_shape, strict=True)]
    begin, end = [], []
    for i in range(spatial):
        full = strides[i] * (in_shape[i] - 1) + extra[i] + (kernel[i] - 1) * dilations[i] + 1
        total = full - wanted[i]
        small, big = total // 2, total - total // 2
        first, last = (small, big) if auto == "SAME_UPPER" else (big, small)  # as ONNX Runtime places them
        begin.append(first)
        end.append(last)
    return begin, end, extra


@replay_op("ConvTranspose", check=_conv_check)
def _conv_transpose(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """torch's transposed conv without padding, then ONNX's pads cropped (asymmetric too) and the bias added."""
    F, torch = ctx.F, ctx.torch
    x, w = args[0], args[1]
    spatial = w.dim() - 2
    kernel = list(dims(w)[2:])
    begin, end, extra = _conv_transpose_pads(attrs, list(dims(x)[2:]), kernel)
    groups = attrs.get("group", 1)
    strides, dilations = list(attrs.get("strides", [1] * spatial)), list(attrs.get("dilations", [1] * spatial))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    torch_takes = all(e < max(s, d) for e, s, d in zip(extra, strides, dilations, strict=True))
    if begin == end and all(p >= 0 for p in begin) and torch_takes:
        bias = args[2] if given(args, 2) else None
        return fn(x, w, bias, strides, begin, extra, groups, dilations)
    y = fn(x, w, None, strides, [0] * spatial, [0] * spatial, groups, dilations)
    grow = [e - p for e, p in zip(extra, end, strict=True)]
    y = padded_or_cropped(ctx, y, [0, 0, *(-b for b in begin)], [0, 0, *grow])
    if given(args, 2):
        y = y + torch.reshape(args[2], (1, -1, *([1] * spatial)))
    return y


def _matrix_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    for index in (0, 1):
        rank = facts.rank(node.input[index])
        if rank is not None and rank != 2:
            return f"input {index} is {rank}-D: Gemm takes matrices"
    return None


@replay_op("Gemm", check=_matrix_check)
def _gemm(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    a, b = args[0], args[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = ctx.torch.matmul(a, b) * attrs.get("alpha", 1.0)
    if given(args, 2):
        y = y + args[2] * attrs.get("beta", 1.0)
    return y


def _max_pool_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    if len(node.output) > 1 and node.output[1]:
        return "its Indices output is used: the replay gives the pooled values only"
    return _spatial_rank(facts, node)


@replay_op("MaxPool", check=_max_pool_check)
def _max_pool(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    F = ctx.F
    kernel = list(attrs["kernel_shape"])
    spatial = len(kernel)
    x, padding = _pads_for(ctx, args[0], attrs, kernel, spatial, fill=-math.inf)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
    strides, dilations = attrs.get("strides", [1] * spatial), attrs.get("dilations", [1] * spatial)
    return fn(x, kernel, list(strides), padding, list(dilations), bool(attrs.get("ceil_mode", 0)))


def _average_pool_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    if any(d != 1 for d in attrs.get("dilations", [])):
        return "dilated average pooling: torch's avg_pool has no dilation"
    shape = facts.shape(node.input[0])
    if attrs.get("count_include_pad", 0) or shape is None or None in shape:
        return _spatial_rank(facts, node)
    kernel = list(attrs["kernel_shape"])
    pads = _onnx_pads(shape, attrs, kernel, len(kernel))
    if pads[: len(kernel)] != pads[len(kernel) :]:
        return "asymmetric pads with count_include_pad=0: torch's avg_pool pads symmetrically"
    return _spatial_rank(facts, node)


@replay_op("AveragePool", check=_average_pool_check)
def _average_pool(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    F = ctx.F
    kernel = list(attrs["kernel_shape"])
    spatial = len(kernel)
    include = bool(attrs.get("count_include_pad", 0))
    x, padding = _pads_for(ctx, args[0], attrs, kernel, spatial)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
    return fn(x, kernel, list(attrs.get("strides", [1] * spatial)), padding, bool(attrs.get("ceil_mode", 0)), include)


@replay_op("GlobalAveragePool")
def _global_average_pool(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.mean(args[0], dim=list(range(2, args[0].dim())), keepdim=True)


@replay_op("GlobalMaxPool")
def _global_max_pool(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.amax(args[0], dim=list(range(2, args[0].dim())), keepdim=True)


# -- normalization -----------------------------------------------------------------------------------------


def _batch_norm_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    if attrs.get("training_mode", 0) or sum(1 for o in node.output if o) > 1:
        return "training mode (running statistics as outputs): the replay runs inference"
    return None


@replay_op("BatchNormalization", check=_batch_norm_check)
def _batch_norm(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.batch_norm(args[0], args[3], args[4], args[1], args[2], False, 0.0, attrs.get("epsilon", 1e-5))


@replay_op("InstanceNormalization")
def _instance_norm(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.instance_norm(args[0], weight=args[1], bias=args[2], eps=attrs.get("epsilon", 1e-5))


def _layer_norm_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    if sum(1 for o in node.output if o) > 1:
        return "its Mean / InvStdDev outputs are used: the replay gives the normalized tensor only"
    return None


@replay_op("LayerNormalization", check=_layer_norm_check)
def _layer_norm(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """F.layer_norm over the axes from `axis` on; a scale or bias that only broadcasts is expanded first."""
    x = args[0]
    axis = attrs.get("axis", -1) % x.dim()
    shape = list(dims(x)[axis:])
    weight = args[1].expand(shape) if tuple(dims(args[1])) != tuple(shape) else args[1]
    bias = args[2] if given(args, 2) else None
    bias = bias.expand(shape) if bias is not None and tuple(dims(bias)) != tuple(shape) else bias
    return ctx.F.layer_norm(x, shape, weight, bias, attrs.get("epsilon", 1e-5))


@replay_op("LpNormalization")
def _lp_normalization(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.normalize(args[0], p=float(attrs.get("p", 2)), dim=attrs.get("axis", -1), eps=0.0)


def _softmax_like(name: str) -> Callable[..., Any]:
    def run(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
        """Any axis; before opset 13 the axes from `axis` on are flattened into one (the old semantics)."""
        x = args[0]
        function = getattr(ctx.torch, name)
        axis = attrs.get("axis", -1 if ctx.opset >= 13 else 1) % x.dim()
        if ctx.opset >= 13 or axis == x.dim() - 1:
            return function(x, dim=axis)
        flat = ctx.torch.reshape(x, (int(np.prod(dims(x)[:axis])), -1))
        return ctx.torch.reshape(function(flat, dim=1), dims(x))

    return run


replay_op("Softmax")(_softmax_like("softmax"))
replay_op("LogSoftmax")(_softmax_like("log_softmax"))


# the other families register themselves on import (they import this module's registry and helpers)
from edgekit.targets import coreml_ops_tensor, coreml_resize  # noqa: E402, F401

# Ops the replay implements (ai.onnx domain). Anything else is refused before a build starts.
SUPPORTED_OPS = REPLAY_OPS.ops
