"""The ops of the ONNX-to-torch replay (ios-coreml): one function per ONNX op, registered in `REPLAY_OPS`
(an `OpTable`, as in the TFLite translator); SUPPORTED_OPS is what is registered. Each function gets a
`ReplayCall` (torch, torch.nn.functional and the node's output names), the evaluated inputs and the node's
attributes; torch is only touched when the replay module runs (built in coreml_onnx.py on first use).
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
from edgekit.op_support import OpTable
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


# -- ops -------------------------------------------------------------------------------------------------


class ReplayCall(NamedTuple):
    """What a replay op gets besides its input values and attributes (torch comes here: it loads lazily)."""

    torch: Any
    F: Any  # torch.nn.functional
    outputs: list[str]  # the node's output names


def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _scalar(ctx: ReplayCall, value: Any) -> float:
    value = value.detach().numpy() if ctx.torch.is_tensor(value) else value
    return float(np.asarray(value).reshape(-1)[0])


def _tensor(ctx: ReplayCall, value: Any) -> Any:
    return value if ctx.torch.is_tensor(value) else ctx.torch.as_tensor(np.asarray(value, dtype=np.float32))


def _given(args: list[Any], index: int) -> bool:
    """Whether the optional input `index` is there."""
    return len(args) > index and args[index] is not None


def _decoded(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _onnx_pads(shape: Any, attrs: dict, kernel: list[int], spatial: int) -> list[int]:
    """ONNX pads [begin..., end...] with auto_pad resolved for this input shape."""
    auto = _decoded(attrs.get("auto_pad", b"NOTSET"))
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


def _pads_for(
    ctx: ReplayCall, x: Any, attrs: dict, kernel: list[int], spatial: int, fill: float = 0.0
) -> tuple[Any, list[int]]:
    """(x padded where ONNX pads are asymmetric, symmetric padding left for the torch op)."""
    pads = _onnx_pads(x.shape, attrs, kernel, spatial)
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return x, begin
    torch_pad: list[int] = []
    for i in reversed(range(spatial)):
        torch_pad += [begin[i], end[i]]
    return ctx.F.pad(x, torch_pad, value=fill), [0] * spatial


# Constant outputs are read once at build (buffers or constants); Shape gives an integer tensor, which ONNX
# Runtime computes once for the fixed input shape (`_integer_tensors`): neither runs in forward.
REPLAY_OPS = OpTable("the ONNX-to-torch route of ios-coreml", walk_ops=("Constant", "Shape"))

# elementwise ops that are one torch function (dotted paths on ReplayCall: torch loads lazily)
_UNARY = {
    "Abs": "torch.abs",
    "Erf": "torch.erf",
    "Exp": "torch.exp",
    "HardSwish": "F.hardswish",
    "Log": "torch.log",
    "Neg": "torch.neg",
    "Reciprocal": "torch.reciprocal",
    "Relu": "F.relu",
    "Sigmoid": "torch.sigmoid",
    "Softplus": "F.softplus",
    "Sqrt": "torch.sqrt",
    "Tanh": "torch.tanh",
}
_BINARY = {"Add": "torch.add", "Div": "torch.div", "MatMul": "torch.matmul", "Mul": "torch.mul", "Sub": "torch.sub"}
_VARIADIC = {"Max": "torch.maximum", "Min": "torch.minimum"}


def _unary(path: str) -> Callable[..., Any]:
    function = attrgetter(path)

    def run(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
        return function(ctx)(args[0])

    return run


def _binary(path: str) -> Callable[..., Any]:
    function = attrgetter(path)

    def run(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
        return function(ctx)(_tensor(ctx, args[0]), _tensor(ctx, args[1]))

    return run


def _variadic(path: str) -> Callable[..., Any]:
    function = attrgetter(path)

    def run(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
        y = _tensor(ctx, args[0])
        for other in args[1:]:
            y = function(ctx)(y, _tensor(ctx, other))
        return y

    return run


for _kind, _paths in ((_unary, _UNARY), (_binary, _BINARY), (_variadic, _VARIADIC)):
    for _op, _path in _paths.items():
        REPLAY_OPS.register(_op)(_kind(_path))


@REPLAY_OPS.register("Identity", "Dropout")  # Dropout at inference: identity
def _identity(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return args[0]


@REPLAY_OPS.register("Cast")  # integer casts are constants; a float one keeps float32
def _cast(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return args[0].float() if ctx.torch.is_tensor(args[0]) else args[0]


@REPLAY_OPS.register("Conv")
def _conv(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    F = ctx.F
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    spatial = w.dim() - 2
    x, padding = _pads_for(ctx, x, attrs, list(w.shape[2:]), spatial)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(
        x,
        w,
        bias,
        list(attrs.get("strides", [1] * spatial)),
        padding,
        list(attrs.get("dilations", [1] * spatial)),
        attrs.get("group", 1),
    )


@REPLAY_OPS.register("ConvTranspose")
def _conv_transpose(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    F = ctx.F
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    spatial = w.dim() - 2
    pads = list(attrs.get("pads", [0] * (2 * spatial)))
    if pads[:spatial] != pads[spatial:] or "output_shape" in attrs:
        raise BuildError("ConvTranspose with asymmetric pads or output_shape is not supported by the replay")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    return fn(
        x,
        w,
        bias,
        list(attrs.get("strides", [1] * spatial)),
        pads[:spatial],
        list(attrs.get("output_padding", [0] * spatial)),
        attrs.get("group", 1),
        list(attrs.get("dilations", [1] * spatial)),
    )


@REPLAY_OPS.register("Gemm")
def _gemm(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    a, b = args[0], args[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = ctx.torch.matmul(a, b) * attrs.get("alpha", 1.0)
    if _given(args, 2):
        y = y + _tensor(ctx, args[2]) * attrs.get("beta", 1.0)
    return y


@REPLAY_OPS.register("MaxPool")
def _max_pool(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    F = ctx.F
    kernel = list(attrs["kernel_shape"])
    spatial = len(kernel)
    x, padding = _pads_for(ctx, args[0], attrs, kernel, spatial, fill=-math.inf)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
    return fn(
        x,
        kernel,
        list(attrs.get("strides", [1] * spatial)),
        padding,
        list(attrs.get("dilations", [1] * spatial)),
        bool(attrs.get("ceil_mode", 0)),
    )


@REPLAY_OPS.register("AveragePool")
def _average_pool(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    F = ctx.F
    kernel = list(attrs["kernel_shape"])
    spatial = len(kernel)
    include = bool(attrs.get("count_include_pad", 0))
    x, padding = _pads_for(ctx, args[0], attrs, kernel, spatial)
    if x is not args[0] and not include:
        raise BuildError("AveragePool with asymmetric pads and count_include_pad=0 is not supported")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
    return fn(x, kernel, list(attrs.get("strides", [1] * spatial)), padding, bool(attrs.get("ceil_mode", 0)), include)


@REPLAY_OPS.register("GlobalAveragePool")
def _global_average_pool(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.mean(args[0], dim=list(range(2, args[0].dim())), keepdim=True)


@REPLAY_OPS.register("GlobalMaxPool")
def _global_max_pool(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.amax(args[0], dim=list(range(2, args[0].dim())), keepdim=True)


def _reduce_dims(args: list[Any], attrs: dict) -> list[int]:
    """The axes a Reduce* node reduces (attribute or input), all of them when none are given."""
    x = args[0]
    axes = attrs.get("axes")
    if axes is None and _given(args, 1):
        axes = _ints(args[1])
    return [a % x.dim() for a in axes] if axes else list(range(x.dim()))


@REPLAY_OPS.register("ReduceMax")
def _reduce_max(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    keep = bool(attrs.get("keepdims", 1))
    y = args[0]
    for d in sorted(_reduce_dims(args, attrs), reverse=True):
        y = ctx.torch.amax(y, dim=d, keepdim=keep)
    return y


@REPLAY_OPS.register("ReduceMean")
def _reduce_mean(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.mean(args[0], dim=_reduce_dims(args, attrs), keepdim=bool(attrs.get("keepdims", 1)))


@REPLAY_OPS.register("ReduceSum")
def _reduce_sum(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.sum(args[0], dim=_reduce_dims(args, attrs), keepdim=bool(attrs.get("keepdims", 1)))


@REPLAY_OPS.register("Reshape")
def _reshape(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x, shape = args[0], _ints(args[1])
    shape = [x.shape[i] if s == 0 and not attrs.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return ctx.torch.reshape(x, shape)


@REPLAY_OPS.register("Flatten")
def _flatten(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axis = attrs.get("axis", 1) % max(x.dim(), 1)
    return ctx.torch.reshape(x, (int(np.prod(x.shape[:axis])), -1))


@REPLAY_OPS.register("Squeeze")
def _squeeze(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axes = attrs.get("axes") or (_ints(args[1]) if _given(args, 1) else None)
    if axes is None:
        return ctx.torch.squeeze(x)
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = ctx.torch.squeeze(x, axis)
    return x


@REPLAY_OPS.register("Unsqueeze")
def _unsqueeze(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axes = attrs.get("axes") or _ints(args[1])
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = ctx.torch.unsqueeze(x, axis)
    return x


@REPLAY_OPS.register("Transpose")
def _transpose(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    return x.permute(*attrs["perm"]) if "perm" in attrs else x.permute(*reversed(range(x.dim())))


@REPLAY_OPS.register("Concat")
def _concat(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.cat([_tensor(ctx, v) for v in args], dim=attrs["axis"])


@REPLAY_OPS.register("Slice")
def _slice(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if _given(args, 3) else list(range(len(starts)))
    steps = _ints(args[4]) if _given(args, 4) else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        size = x.shape[axis]
        if step < 0:
            raise BuildError("Slice with negative steps is not supported by the replay")
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis % x.dim()] = slice(start, end, step)
    return x[tuple(index)]


@REPLAY_OPS.register("Split")
def _split(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axis = attrs.get("axis", 0)
    sizes = attrs.get("split") or (_ints(args[1]) if _given(args, 1) else None)
    if sizes is None:
        count = attrs.get("num_outputs") or len(ctx.outputs)
        sizes = [math.ceil(x.shape[axis] / count)] * count
    return ctx.torch.split(x, sizes, dim=axis)


@REPLAY_OPS.register("Gather")
def _gather(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    torch = ctx.torch
    data, indices = args[0], np.asarray(args[1])
    axis = attrs.get("axis", 0) % data.dim()
    picked = torch.index_select(data, axis, torch.as_tensor(indices.reshape(-1) % data.shape[axis]))
    return torch.reshape(picked, (*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]))


@REPLAY_OPS.register("Pad")
def _pad(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    pads = attrs.get("pads") or _ints(args[1])
    mode = _decoded(attrs.get("mode", b"constant"))
    value = _scalar(ctx, args[2]) if _given(args, 2) else attrs.get("value", 0.0)
    rank = x.dim()
    torch_pad: list[int] = []
    for i in reversed(range(rank)):
        torch_pad += [pads[i], pads[i + rank]]
    while len(torch_pad) > 2 and torch_pad[-2:] == [0, 0]:
        torch_pad = torch_pad[:-2]
    if mode == "constant":
        return ctx.F.pad(x, torch_pad, mode=mode, value=value)
    return ctx.F.pad(x, torch_pad, mode=mode)


@REPLAY_OPS.register("Clip")
def _clip(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    low = args[1] if _given(args, 1) else attrs.get("min")
    high = args[2] if _given(args, 2) else attrs.get("max")
    low = None if low is None else _scalar(ctx, low)
    high = None if high is None else _scalar(ctx, high)
    if low == 0.0 and high == 6.0:
        return ctx.F.relu6(args[0])
    if low == 0.0 and high is None:
        return ctx.F.relu(args[0])
    return ctx.torch.clamp(args[0], low, high)


def _resize_size(args: list[Any], x: Any) -> list[int]:
    """Resize's output spatial size, from its `sizes` input or else its `scales`."""
    scales = args[2] if _given(args, 2) and np.asarray(args[2]).size else None
    sizes = args[3] if _given(args, 3) and np.asarray(args[3]).size else None
    if sizes is not None:
        return _ints(sizes)[2:]
    factors = [float(v) for v in np.asarray(scales).reshape(-1)][2:]
    return [int(math.floor(x.shape[2 + i] * f)) for i, f in enumerate(factors)]


@REPLAY_OPS.register("Resize")
def _resize(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    mode = _decoded(attrs.get("mode", b"nearest"))
    transform = _decoded(attrs.get("coordinate_transformation_mode", b"half_pixel"))
    size = _resize_size(args, x)
    if mode == "nearest":
        return ctx.F.interpolate(x, size=size, mode="nearest")
    if mode == "linear":
        align = transform == "align_corners"
        if transform not in ("align_corners", "half_pixel", "pytorch_half_pixel"):
            raise BuildError(f"Resize coordinate_transformation_mode {transform} is not supported by the replay")
        return ctx.F.interpolate(x, size=size, mode="bilinear" if x.dim() == 4 else "linear", align_corners=align)
    raise BuildError(f"Resize mode {mode} is not supported by the replay")


@REPLAY_OPS.register("BatchNormalization")
def _batch_norm(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.batch_norm(args[0], args[3], args[4], args[1], args[2], False, 0.0, attrs.get("epsilon", 1e-5))


@REPLAY_OPS.register("LayerNormalization")
def _layer_norm(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axis = attrs.get("axis", -1) % x.dim()
    return ctx.F.layer_norm(
        x, list(x.shape[axis:]), args[1], args[2] if len(args) > 2 else None, attrs.get("epsilon", 1e-5)
    )


@REPLAY_OPS.register("Softmax")
def _softmax(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.softmax(args[0], dim=attrs.get("axis", -1))


@REPLAY_OPS.register("Elu")
def _elu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.elu(args[0], attrs.get("alpha", 1.0))


@REPLAY_OPS.register("LeakyRelu")
def _leaky_relu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.leaky_relu(args[0], attrs.get("alpha", 0.01))


@REPLAY_OPS.register("PRelu")
def _prelu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.where(args[0] >= 0, args[0], args[0] * args[1])


@REPLAY_OPS.register("Gelu")
def _gelu(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.F.gelu(args[0], approximate="tanh" if attrs.get("approximate") in ("tanh", b"tanh") else "none")


@REPLAY_OPS.register("HardSigmoid")
def _hard_sigmoid(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.clamp(args[0] * attrs.get("alpha", 0.2) + attrs.get("beta", 0.5), 0.0, 1.0)


@REPLAY_OPS.register("Pow")
def _pow(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    exponent = args[1]
    if not ctx.torch.is_tensor(exponent) or exponent.numel() == 1:
        value = _scalar(ctx, exponent)
        return args[0] * args[0] if value == 2.0 else ctx.torch.pow(args[0], value)
    return ctx.torch.pow(args[0], exponent)


# Ops the replay implements (ai.onnx domain). Anything else is refused before a build starts.
SUPPORTED_OPS = REPLAY_OPS.ops
