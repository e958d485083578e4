"""An ONNX graph replayed as a torch module, op by op, so Core ML can convert ONNX-only models.

Every ONNX tensor keeps its name inside the module, so the W8A8 fake quantizers land on exactly the
tensors the QuantSpec names (and the weights it names), and the module is checked against ONNX Runtime
on the same input before anything is converted. Integer tensors (shapes, indices, slice bounds) are
computed once by ONNX Runtime for the fixed input shape and become constants, which is what a Core ML
program with fixed shapes wants anyway.

Each op is a function registered in `_REPLAY` (an `OpTable`, as in the TFLite translator); SUPPORTED_OPS is
what is registered. torch is imported on first use: the module class is built then (`_replay_class`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.onnx_toolbox import OpTable, constant_value
from edgekit.onnx_toolbox import attrs as node_attrs
from edgekit.targets.base import BuildError

_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL}


@dataclass(frozen=True)
class ActivationQuant:
    """One fake quantizer on an activation: q = clamp(round(x / scale) + zero_point), then back to float."""

    scale: float
    zero_point: int
    dtype: str  # "int8" | "uint8"


@dataclass(frozen=True)
class WeightQuant:
    scale: list[float] | float
    zero_point: list[int] | int
    axis: int | None


def _integer_tensors(proto: onnx.ModelProto, probe: np.ndarray) -> dict[str, np.ndarray]:
    """Values of every integer tensor for this input shape (shapes, indices): constants of the replay."""
    from edgekit.calibration.graph import session_with_outputs

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    wanted = [out for node in proto.graph.node for out in node.output if types.get(out) in _INT_TYPES]
    if not wanted:
        return {}
    session = session_with_outputs(proto, wanted, optimization="none")
    values = session.run(wanted, {session.get_inputs()[0].name: probe})
    return dict(zip(wanted, values, strict=True))


def build_module(
    proto: onnx.ModelProto,
    input_shape: tuple[int, ...],
    *,
    activation_quant: dict[str, ActivationQuant] | None = None,
    weight_quant: dict[str, WeightQuant] | None = None,
) -> Any:
    """A torch module that computes `proto` for inputs of `input_shape`, with optional fake quantizers."""
    missing = _REPLAY.unsupported(proto.graph)
    if missing:
        raise BuildError(
            f"the ONNX-to-torch route of ios-coreml does not implement ops {', '.join(missing)}; build from the "
            "torch module instead (Model.from_torch) or replace those ops"
        )
    probe = np.random.default_rng(0).random(input_shape, dtype=np.float32)
    integers = _integer_tensors(proto, probe)
    return _replay_class()(proto, integers, activation_quant or {}, weight_quant or {})


@cache
def _replay_class() -> type:
    """The torch.nn.Module subclass, defined on first use (torch is an optional dependency)."""
    import torch

    class OnnxReplay(_ReplayBody, torch.nn.Module):
        """Runs the ONNX nodes in order; float initializers are buffers, integer tensors are constants."""

    return OnnxReplay


class _ReplayBody:
    """The replay's state and walk; `_replay_class` mixes it into torch.nn.Module (so torch loads on first use)."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        integers: dict[str, np.ndarray],
        activation_quant: dict[str, ActivationQuant],
        weight_quant: dict[str, WeightQuant],
    ) -> None:
        import torch

        super().__init__()
        graph = proto.graph
        self.nodes = [(n.op_type, list(n.input), list(n.output), node_attrs(n)) for n in graph.node]
        inits = _initializer_values(graph)
        self.consts: dict[str, Any] = dict(integers)
        self.slots: dict[str, str] = {}
        for index, (name, value) in enumerate(sorted(inits.items())):
            if value.dtype.kind in "iub":
                self.consts[name] = value
            else:
                slot = f"t{index}"
                self.register_buffer(slot, torch.from_numpy(np.array(value, dtype=np.float32)))
                self.slots[name] = slot
        self.weight_quant: dict[str, tuple[int | None, Any, Any]] = {}
        for name, wq in weight_quant.items():
            if name in self.slots:
                self._add_weight_quant(name, wq)
        self.activation_quant = dict(activation_quant)
        self.input_name = next(v.name for v in graph.input if v.name not in inits)
        self.output_names = [o.name for o in graph.output]
        self.quantized: list[str] = []  # the activations that got a fake quantizer, in graph order

    def _add_weight_quant(self, name: str, wq: WeightQuant) -> None:
        """Per-tensor: (None, scale, zero point); per-channel: (axis, buffer of scales, buffer of zero points)."""
        import torch

        index = len(self.weight_quant)
        if wq.axis is None:
            self.weight_quant[name] = (None, float(wq.scale), int(wq.zero_point))  # type: ignore[arg-type]
        else:
            self.register_buffer(f"ws{index}", torch.tensor(wq.scale, dtype=torch.float32))
            self.register_buffer(f"wz{index}", torch.tensor(wq.zero_point, dtype=torch.int64))
            self.weight_quant[name] = (wq.axis, f"ws{index}", f"wz{index}")

    # -- values --------------------------------------------------------------------------------------

    def _value(self, env: dict[str, Any], name: str) -> Any:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self.consts:
            return self.consts[name]
        value = getattr(self, self.slots[name])
        return self._weight_quantized(name, value) if name in self.weight_quant else value

    def _weight_quantized(self, name: str, value: Any) -> Any:
        import torch

        axis, scale, zero_point = self.weight_quant[name]
        if axis is None:
            q = torch.quantize_per_tensor(value, scale, zero_point, torch.qint8)
        else:
            scales, zero_points = getattr(self, scale), getattr(self, zero_point)
            q = torch.quantize_per_channel(value, scales, zero_points, axis, torch.qint8)
        return torch.dequantize(q)

    def _fake_quant(self, name: str, value: Any) -> Any:
        quant = self.activation_quant.get(name)
        if quant is None:  # most tensors: no torch call on this path
            return value
        import torch

        if not torch.is_tensor(value) or not value.is_floating_point():
            return value
        dtype = torch.quint8 if quant.dtype == "uint8" else torch.qint8
        return torch.dequantize(torch.quantize_per_tensor(value, quant.scale, quant.zero_point, dtype))

    def _store(self, env: dict[str, Any], name: str, value: Any) -> None:
        if name in self.activation_quant:
            import torch

            if torch.is_tensor(value) and value.is_floating_point():
                self.quantized.append(name)
        env[name] = self._fake_quant(name, value)

    def forward(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        self.quantized = []
        env: dict[str, Any] = {self.input_name: self._fake_quant(self.input_name, x)}
        if self.input_name in self.activation_quant:
            self.quantized.append(self.input_name)
        for op, inputs, outputs, attrs in self.nodes:
            if all(o in self.consts for o in outputs if o) or op == "Constant":
                continue
            args = [self._value(env, name) for name in inputs]
            result = _REPLAY.functions[op](_Call(torch, F, outputs), args, attrs)
            results = result if isinstance(result, (list, tuple)) else [result]
            for name, value in zip(outputs, results, strict=False):
                if name:
                    self._store(env, name, value)
        found = [env[name] if name in env else torch.as_tensor(self.consts[name]) for name in self.output_names]
        return found[0] if len(found) == 1 else tuple(found)


def _initializer_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every initializer and Constant node output, by name."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            inits[node.output[0]] = _constant_of(node)
    return inits


# -- ops -------------------------------------------------------------------------------------------------


class _Call(NamedTuple):
    """What a replay op gets besides its input values and attributes (torch comes here: it loads lazily)."""

    torch: Any
    F: Any  # torch.nn.functional
    outputs: list[str]  # the node's output names


def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _scalar(ctx: _Call, value: Any) -> float:
    value = value.detach().numpy() if ctx.torch.is_tensor(value) else value
    return float(np.asarray(value).reshape(-1)[0])


def _tensor(ctx: _Call, value: Any) -> Any:
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
    ctx: _Call, x: Any, attrs: dict, kernel: list[int], spatial: int, fill: float = 0.0
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
_REPLAY = OpTable("the ONNX-to-torch route of ios-coreml", walk_ops=("Constant", "Shape"))

# elementwise ops that are one torch function (dotted paths on _Call: torch loads lazily)
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

    def run(ctx: _Call, args: list[Any], attrs: dict) -> Any:
        return function(ctx)(args[0])

    return run


def _binary(path: str) -> Callable[..., Any]:
    function = attrgetter(path)

    def run(ctx: _Call, args: list[Any], attrs: dict) -> Any:
        return function(ctx)(_tensor(ctx, args[0]), _tensor(ctx, args[1]))

    return run


def _variadic(path: str) -> Callable[..., Any]:
    function = attrgetter(path)

    def run(ctx: _Call, args: list[Any], attrs: dict) -> Any:
        y = _tensor(ctx, args[0])
        for other in args[1:]:
            y = function(ctx)(y, _tensor(ctx, other))
        return y

    return run


for _kind, _paths in ((_unary, _UNARY), (_binary, _BINARY), (_variadic, _VARIADIC)):
    for _op, _path in _paths.items():
        _REPLAY.register(_op)(_kind(_path))


@_REPLAY.register("Identity", "Dropout")  # Dropout at inference: identity
def _identity(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return args[0]


@_REPLAY.register("Cast")  # integer casts are constants; a float one keeps float32
def _cast(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return args[0].float() if ctx.torch.is_tensor(args[0]) else args[0]


@_REPLAY.register("Conv")
def _conv(ctx: _Call, args: list[Any], attrs: dict) -> Any:
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


@_REPLAY.register("ConvTranspose")
def _conv_transpose(ctx: _Call, args: list[Any], attrs: dict) -> Any:
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


@_REPLAY.register("Gemm")
def _gemm(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    a, b = args[0], args[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = ctx.torch.matmul(a, b) * attrs.get("alpha", 1.0)
    if _given(args, 2):
        y = y + _tensor(ctx, args[2]) * attrs.get("beta", 1.0)
    return y


@_REPLAY.register("MaxPool")
def _max_pool(ctx: _Call, args: list[Any], attrs: dict) -> Any:
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


@_REPLAY.register("AveragePool")
def _average_pool(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    F = ctx.F
    kernel = list(attrs["kernel_shape"])
    spatial = len(kernel)
    include = bool(attrs.get("count_include_pad", 0))
    x, padding = _pads_for(ctx, args[0], attrs, kernel, spatial)
    if x is not args[0] and not include:
        raise BuildError("AveragePool with asymmetric pads and count_include_pad=0 is not supported")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
    return fn(x, kernel, list(attrs.get("strides", [1] * spatial)), padding, bool(attrs.get("ceil_mode", 0)), include)


@_REPLAY.register("GlobalAveragePool")
def _global_average_pool(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.mean(args[0], dim=list(range(2, args[0].dim())), keepdim=True)


@_REPLAY.register("GlobalMaxPool")
def _global_max_pool(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.amax(args[0], dim=list(range(2, args[0].dim())), keepdim=True)


def _reduce_dims(args: list[Any], attrs: dict) -> list[int]:
    """The axes a Reduce* node reduces (attribute or input), all of them when none are given."""
    x = args[0]
    axes = attrs.get("axes")
    if axes is None and _given(args, 1):
        axes = _ints(args[1])
    return [a % x.dim() for a in axes] if axes else list(range(x.dim()))


@_REPLAY.register("ReduceMax")
def _reduce_max(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    keep = bool(attrs.get("keepdims", 1))
    y = args[0]
    for d in sorted(_reduce_dims(args, attrs), reverse=True):
        y = ctx.torch.amax(y, dim=d, keepdim=keep)
    return y


@_REPLAY.register("ReduceMean")
def _reduce_mean(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.mean(args[0], dim=_reduce_dims(args, attrs), keepdim=bool(attrs.get("keepdims", 1)))


@_REPLAY.register("ReduceSum")
def _reduce_sum(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.sum(args[0], dim=_reduce_dims(args, attrs), keepdim=bool(attrs.get("keepdims", 1)))


@_REPLAY.register("Reshape")
def _reshape(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    x, shape = args[0], _ints(args[1])
    shape = [x.shape[i] if s == 0 and not attrs.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return ctx.torch.reshape(x, shape)


@_REPLAY.register("Flatten")
def _flatten(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axis = attrs.get("axis", 1) % max(x.dim(), 1)
    return ctx.torch.reshape(x, (int(np.prod(x.shape[:axis])), -1))


@_REPLAY.register("Squeeze")
def _squeeze(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axes = attrs.get("axes") or (_ints(args[1]) if _given(args, 1) else None)
    if axes is None:
        return ctx.torch.squeeze(x)
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = ctx.torch.squeeze(x, axis)
    return x


@_REPLAY.register("Unsqueeze")
def _unsqueeze(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axes = attrs.get("axes") or _ints(args[1])
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = ctx.torch.unsqueeze(x, axis)
    return x


@_REPLAY.register("Transpose")
def _transpose(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    return x.permute(*attrs["perm"]) if "perm" in attrs else x.permute(*reversed(range(x.dim())))


@_REPLAY.register("Concat")
def _concat(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.cat([_tensor(ctx, v) for v in args], dim=attrs["axis"])


@_REPLAY.register("Slice")
def _slice(ctx: _Call, args: list[Any], attrs: dict) -> Any:
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


@_REPLAY.register("Split")
def _split(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axis = attrs.get("axis", 0)
    sizes = attrs.get("split") or (_ints(args[1]) if _given(args, 1) else None)
    if sizes is None:
        count = attrs.get("num_outputs") or len(ctx.outputs)
        sizes = [math.ceil(x.shape[axis] / count)] * count
    return ctx.torch.split(x, sizes, dim=axis)


@_REPLAY.register("Gather")
def _gather(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    torch = ctx.torch
    data, indices = args[0], np.asarray(args[1])
    axis = attrs.get("axis", 0) % data.dim()
    picked = torch.index_select(data, axis, torch.as_tensor(indices.reshape(-1) % data.shape[axis]))
    return torch.reshape(picked, (*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]))


@_REPLAY.register("Pad")
def _pad(ctx: _Call, args: list[Any], attrs: dict) -> Any:
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


@_REPLAY.register("Clip")
def _clip(ctx: _Call, args: list[Any], attrs: dict) -> Any:
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


@_REPLAY.register("Resize")
def _resize(ctx: _Call, args: list[Any], attrs: dict) -> Any:
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


@_REPLAY.register("BatchNormalization")
def _batch_norm(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.F.batch_norm(args[0], args[3], args[4], args[1], args[2], False, 0.0, attrs.get("epsilon", 1e-5))


@_REPLAY.register("LayerNormalization")
def _layer_norm(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axis = attrs.get("axis", -1) % x.dim()
    return ctx.F.layer_norm(
        x, list(x.shape[axis:]), args[1], args[2] if len(args) > 2 else None, attrs.get("epsilon", 1e-5)
    )


@_REPLAY.register("Softmax")
def _softmax(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.softmax(args[0], dim=attrs.get("axis", -1))


@_REPLAY.register("Elu")
def _elu(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.F.elu(args[0], attrs.get("alpha", 1.0))


@_REPLAY.register("LeakyRelu")
def _leaky_relu(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.F.leaky_relu(args[0], attrs.get("alpha", 0.01))


@_REPLAY.register("PRelu")
def _prelu(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.where(args[0] >= 0, args[0], args[0] * args[1])


@_REPLAY.register("Gelu")
def _gelu(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.F.gelu(args[0], approximate="tanh" if attrs.get("approximate") in ("tanh", b"tanh") else "none")


@_REPLAY.register("HardSigmoid")
def _hard_sigmoid(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.clamp(args[0] * attrs.get("alpha", 0.2) + attrs.get("beta", 0.5), 0.0, 1.0)


@_REPLAY.register("Pow")
def _pow(ctx: _Call, args: list[Any], attrs: dict) -> Any:
    exponent = args[1]
    if not ctx.torch.is_tensor(exponent) or exponent.numel() == 1:
        value = _scalar(ctx, exponent)
        return args[0] * args[0] if value == 2.0 else ctx.torch.pow(args[0], value)
    return ctx.torch.pow(args[0], exponent)


# Ops the replay implements (ai.onnx domain). Anything else is refused before a build starts.
SUPPORTED_OPS = _REPLAY.ops


def _constant_of(node: onnx.NodeProto) -> np.ndarray:
    value = constant_value(node)
    if value is None:
        raise BuildError(f"Constant node {node.name or node.output[0]} has no value the replay can read")
    return value


def verify_against_ort(proto: onnx.ModelProto, module: Any, input_shape: tuple[int, ...]) -> float:
    """Max abs difference between the replay and ONNX Runtime on one seeded input (all outputs)."""
    return replay_error(proto, module, input_shape)[0]


def replay_error(proto: onnx.ModelProto, module: Any, input_shape: tuple[int, ...]) -> tuple[float, float]:
    """(max abs difference between the replay and ONNX Runtime, largest abs value ONNX Runtime gave) on one seeded
    input, over all outputs: the error and the scale to judge it against, from one run of each."""
    import onnxruntime as ort
    import torch

    probe = np.random.default_rng(1).random(input_shape, dtype=np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = [np.asarray(e, np.float32) for e in session.run(None, {session.get_inputs()[0].name: probe})]
    with torch.no_grad():
        got = module(torch.from_numpy(probe))
    got = got if isinstance(got, tuple) else (got,)
    error = max(float(np.max(np.abs(e - g.numpy()))) for e, g in zip(expected, got, strict=True))
    return error, max(float(np.max(np.abs(e))) for e in expected)
