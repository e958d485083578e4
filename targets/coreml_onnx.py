"""An ONNX graph replayed as a torch module, op by op, so Core ML can convert ONNX-only models.

Every ONNX tensor keeps its name inside the module, so the W8A8 fake quantizers land on exactly the
tensors the QuantSpec names (and the weights it names), and the module is checked against ONNX Runtime
on the same input before anything is converted. Integer tensors (shapes, indices, slice bounds) are
computed once by ONNX Runtime for the fixed input shape and become constants, which is what a Core ML
program with fixed shapes wants anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.onnx_toolbox import attrs as node_attrs
from edgekit.onnx_toolbox import constant_value
from edgekit.targets.base import BuildError

# Ops the replay implements (ai.onnx domain). Anything else is refused before a build starts.
SUPPORTED_OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv",
    "ConvTranspose", "Div", "Dropout", "Elu", "Erf", "Exp", "Flatten", "Gather", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "HardSigmoid", "HardSwish", "Identity", "LayerNormalization",
    "LeakyRelu", "Log", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "Pad", "Pow", "PRelu", "Reciprocal",
    "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice",
    "Softmax", "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
})  # fmt: skip

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
    missing = sorted({n.op_type for n in proto.graph.node if n.op_type not in SUPPORTED_OPS or n.domain})
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
    import torch.nn.functional as F

    class OnnxReplay(torch.nn.Module):
        """Runs the ONNX nodes in order; float initializers are buffers, integer tensors are constants."""

        def __init__(self, proto, integers, activation_quant, weight_quant):  # type: ignore[no-untyped-def]
            super().__init__()
            graph = proto.graph
            self.nodes = [(n.op_type, list(n.input), list(n.output), node_attrs(n)) for n in graph.node]
            inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
            for node in graph.node:
                if node.op_type == "Constant":
                    inits[node.output[0]] = _constant_of(node)
            self.consts: dict[str, Any] = dict(integers)
            self.slots: dict[str, str] = {}
            for index, (name, value) in enumerate(sorted(inits.items())):
                if value.dtype.kind in "iub":
                    self.consts[name] = value
                else:
                    slot = f"t{index}"
                    self.register_buffer(slot, torch.from_numpy(np.array(value, dtype=np.float32)))
                    self.slots[name] = slot
            self.weight_quant = {}
            for name, wq in weight_quant.items():
                if name not in self.slots:
                    continue
                index = len(self.weight_quant)
                if wq.axis is None:
                    self.weight_quant[name] = (None, float(wq.scale), int(wq.zero_point))
                else:
                    self.register_buffer(f"ws{index}", torch.tensor(wq.scale, dtype=torch.float32))
                    self.register_buffer(f"wz{index}", torch.tensor(wq.zero_point, dtype=torch.int64))
                    self.weight_quant[name] = (wq.axis, f"ws{index}", f"wz{index}")
            self.activation_quant = dict(activation_quant)
            self.input_name = next(v.name for v in graph.input if v.name not in inits)
            self.output_names = [o.name for o in graph.output]
            self.quantized: list[str] = []  # the activations that got a fake quantizer, in graph order

        # -- values ----------------------------------------------------------------------------------

        def _value(self, env: dict[str, Any], name: str) -> Any:
            if not name:
                return None
            if name in env:
                return env[name]
            if name in self.consts:
                return self.consts[name]
            slot = self.slots[name]
            value = getattr(self, slot)
            if name in self.weight_quant:
                axis, scale, zero_point = self.weight_quant[name]
                if axis is None:
                    q = torch.quantize_per_tensor(value, scale, zero_point, torch.qint8)
                else:
                    scales, zero_points = getattr(self, scale), getattr(self, zero_point)
                    q = torch.quantize_per_channel(value, scales, zero_points, axis, torch.qint8)
                value = torch.dequantize(q)
            return value

        def _fake_quant(self, name: str, value: Any) -> Any:
            quant = self.activation_quant.get(name)
            if quant is None or not torch.is_tensor(value) or not value.is_floating_point():
                return value
            dtype = torch.quint8 if quant.dtype == "uint8" else torch.qint8
            return torch.dequantize(torch.quantize_per_tensor(value, quant.scale, quant.zero_point, dtype))

        def forward(self, x):  # type: ignore[no-untyped-def]
            self.quantized = []
            env: dict[str, Any] = {self.input_name: self._fake_quant(self.input_name, x)}
            if self.input_name in self.activation_quant:
                self.quantized.append(self.input_name)
            for op, inputs, outputs, attrs in self.nodes:
                if all(o in self.consts for o in outputs if o) or op == "Constant":
                    continue
                args = [self._value(env, name) for name in inputs]
                result = self.ops[op](args, attrs, outputs, self)
                results = result if isinstance(result, (list, tuple)) else [result]
                for name, value in zip(outputs, results, strict=False):
                    if name:
                        if name in self.activation_quant and torch.is_tensor(value) and value.is_floating_point():
                            self.quantized.append(name)
                        env[name] = self._fake_quant(name, value)
            found = [env[name] if name in env else torch.as_tensor(self.consts[name]) for name in self.output_names]
            return found[0] if len(found) == 1 else tuple(found)

    # -- ops ---------------------------------------------------------------------------------------------

    def ints(value: Any) -> list[int]:
        return [int(v) for v in np.asarray(value).reshape(-1)]

    def scalar(value: Any) -> float:
        value = value.detach().numpy() if torch.is_tensor(value) else value
        return float(np.asarray(value).reshape(-1)[0])

    def tensor(value: Any) -> Any:
        return value if torch.is_tensor(value) else torch.as_tensor(np.asarray(value, dtype=np.float32))

    def pads_for(x: Any, attrs: dict, kernel: list[int], spatial: int, fill: float = 0.0) -> tuple[Any, list[int]]:
        """(x padded where ONNX pads are asymmetric, symmetric padding left for the torch op)."""
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        strides = list(attrs.get("strides", [1] * spatial))
        dilations = list(attrs.get("dilations", [1] * spatial))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * spatial)
            for i in range(spatial):
                size = x.shape[2 + i]
                out = math.ceil(size / strides[i])
                total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
                small, big = total // 2, total - total // 2
                pads[i], pads[i + spatial] = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pads = [0] * (2 * spatial)
        else:
            pads = list(attrs.get("pads", [0] * (2 * spatial)))
        begin, end = pads[:spatial], pads[spatial:]
        if begin == end:
            return x, begin
        torch_pad: list[int] = []
        for i in reversed(range(spatial)):
            torch_pad += [begin[i], end[i]]
        return F.pad(x, torch_pad, value=fill), [0] * spatial

    def conv(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        spatial = w.dim() - 2
        x, padding = pads_for(x, attrs, list(w.shape[2:]), spatial)
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
        return fn(x, w, bias, list(attrs.get("strides", [1] * spatial)), padding,
                  list(attrs.get("dilations", [1] * spatial)), attrs.get("group", 1))  # fmt: skip

    def conv_transpose(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        spatial = w.dim() - 2
        pads = list(attrs.get("pads", [0] * (2 * spatial)))
        if pads[:spatial] != pads[spatial:] or "output_shape" in attrs:
            raise BuildError("ConvTranspose with asymmetric pads or output_shape is not supported by the replay")
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
        return fn(x, w, bias, list(attrs.get("strides", [1] * spatial)), pads[:spatial],
                  list(attrs.get("output_padding", [0] * spatial)), attrs.get("group", 1),
                  list(attrs.get("dilations", [1] * spatial)))  # fmt: skip

    def gemm(args, attrs, names, module):  # type: ignore[no-untyped-def]
        a, b = args[0], args[1]
        a = a.t() if attrs.get("transA", 0) else a
        b = b.t() if attrs.get("transB", 0) else b
        y = torch.matmul(a, b) * attrs.get("alpha", 1.0)
        if len(args) > 2 and args[2] is not None:
            y = y + tensor(args[2]) * attrs.get("beta", 1.0)
        return y

    def pool(kind):  # type: ignore[no-untyped-def]
        def run(args, attrs, names, module):  # type: ignore[no-untyped-def]
            x = args[0]
            kernel = list(attrs["kernel_shape"])
            spatial = len(kernel)
            strides = list(attrs.get("strides", [1] * spatial))
            if kind == "max":
                x, padding = pads_for(x, attrs, kernel, spatial, fill=-math.inf)
                fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
                return fn(x, kernel, strides, padding, list(attrs.get("dilations", [1] * spatial)),
                          bool(attrs.get("ceil_mode", 0)))  # fmt: skip
            include = bool(attrs.get("count_include_pad", 0))
            before = x
            x, padding = pads_for(x, attrs, kernel, spatial)
            if x is not before and not include:
                raise BuildError("AveragePool with asymmetric pads and count_include_pad=0 is not supported")
            fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
            return fn(x, kernel, strides, padding, bool(attrs.get("ceil_mode", 0)), include)

        return run

    def reduce(fn_name):  # type: ignore[no-untyped-def]
        def run(args, attrs, names, module):  # type: ignore[no-untyped-def]
            x = args[0]
            axes = attrs.get("axes")
            if axes is None and len(args) > 1 and args[1] is not None:
                axes = ints(args[1])
            keep = bool(attrs.get("keepdims", 1))
            dims = [a % x.dim() for a in axes] if axes else list(range(x.dim()))
            if fn_name == "max":
                y = x
                for d in sorted(dims, reverse=True):
                    y = torch.amax(y, dim=d, keepdim=keep)
                return y
            return (torch.mean if fn_name == "mean" else torch.sum)(x, dim=dims, keepdim=keep)

        return run

    def reshape(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x, shape = args[0], ints(args[1])
        shape = [x.shape[i] if s == 0 and not attrs.get("allowzero", 0) else s for i, s in enumerate(shape)]
        return torch.reshape(x, shape)

    def flatten(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x = args[0]
        axis = attrs.get("axis", 1) % max(x.dim(), 1)
        return torch.reshape(x, (int(np.prod(x.shape[:axis])), -1))

    def squeeze(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x = args[0]
        axes = attrs.get("axes") or (ints(args[1]) if len(args) > 1 and args[1] is not None else None)
        if axes is None:
            return torch.squeeze(x)
        for axis in sorted((a % x.dim() for a in axes), reverse=True):
            x = torch.squeeze(x, axis)
        return x

    def unsqueeze(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x = args[0]
        axes = attrs.get("axes") or ints(args[1])
        rank = x.dim() + len(axes)
        for axis in sorted(a % rank for a in axes):
            x = torch.unsqueeze(x, axis)
        return x

    def slice_(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x = args[0]
        starts, ends = ints(args[1]), ints(args[2])
        axes = ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
        steps = ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
        index: list[Any] = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            size = x.shape[axis]
            if step < 0:
                raise BuildError("Slice with negative steps is not supported by the replay")
            start = max(0, min(size, start + size if start < 0 else start))
            end = max(0, min(size, end + size if end < 0 else end))
            index[axis % x.dim()] = slice(start, end, step)
        return x[tuple(index)]

    def split(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x = args[0]
        axis = attrs.get("axis", 0)
        sizes = attrs.get("split") or (ints(args[1]) if len(args) > 1 and args[1] is not None else None)
        if sizes is None:
            count = attrs.get("num_outputs") or len(names)
            sizes = [math.ceil(x.shape[axis] / count)] * count
        return torch.split(x, sizes, dim=axis)

    def clip(args, attrs, names, module):  # type: ignore[no-untyped-def]
        low = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min")
        high = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max")
        low = None if low is None else scalar(low)
        high = None if high is None else scalar(high)
        if low == 0.0 and high == 6.0:
            return F.relu6(args[0])
        if low == 0.0 and high is None:
            return F.relu(args[0])
        return torch.clamp(args[0], low, high)

    def resize(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x = args[0]
        mode = attrs.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        transform = attrs.get("coordinate_transformation_mode", b"half_pixel")
        transform = transform.decode() if isinstance(transform, bytes) else transform
        scales = args[2] if len(args) > 2 and args[2] is not None and np.asarray(args[2]).size else None
        sizes = args[3] if len(args) > 3 and args[3] is not None and np.asarray(args[3]).size else None
        if sizes is not None:
            size = ints(sizes)[2:]
        else:
            factors = [float(v) for v in np.asarray(scales).reshape(-1)][2:]
            size = [int(math.floor(x.shape[2 + i] * f)) for i, f in enumerate(factors)]
        if mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        if mode == "linear":
            align = transform == "align_corners"
            if transform not in ("align_corners", "half_pixel", "pytorch_half_pixel"):
                raise BuildError(f"Resize coordinate_transformation_mode {transform} is not supported by the replay")
            return F.interpolate(x, size=size, mode="bilinear" if x.dim() == 4 else "linear", align_corners=align)
        raise BuildError(f"Resize mode {mode} is not supported by the replay")

    def gather(args, attrs, names, module):  # type: ignore[no-untyped-def]
        data, indices = args[0], np.asarray(args[1])
        axis = attrs.get("axis", 0) % data.dim()
        picked = torch.index_select(data, axis, torch.as_tensor(indices.reshape(-1) % data.shape[axis]))
        return torch.reshape(picked, (*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]))

    def pad(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x = args[0]
        pads = attrs.get("pads") or ints(args[1])
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        value = scalar(args[2]) if len(args) > 2 and args[2] is not None else attrs.get("value", 0.0)
        rank = x.dim()
        torch_pad: list[int] = []
        for i in reversed(range(rank)):
            torch_pad += [pads[i], pads[i + rank]]
        while len(torch_pad) > 2 and torch_pad[-2:] == [0, 0]:
            torch_pad = torch_pad[:-2]
        return F.pad(x, torch_pad, mode=mode, value=value) if mode == "constant" else F.pad(x, torch_pad, mode=mode)

    def layer_norm(args, attrs, names, module):  # type: ignore[no-untyped-def]
        x = args[0]
        axis = attrs.get("axis", -1) % x.dim()
        return F.layer_norm(x, list(x.shape[axis:]), args[1], args[2] if len(args) > 2 else None,
                            attrs.get("epsilon", 1e-5))  # fmt: skip

    def softmax(args, attrs, names, module):  # type: ignore[no-untyped-def]
        return torch.softmax(args[0], dim=attrs.get("axis", -1))

    def binary(fn):  # type: ignore[no-untyped-def]
        return lambda args, attrs, names, module: fn(tensor(args[0]), tensor(args[1]))

    def unary(fn):  # type: ignore[no-untyped-def]
        return lambda args, attrs, names, module: fn(args[0])

    def power(args, attrs, names, module):  # type: ignore[no-untyped-def]
        exponent = args[1]
        if not torch.is_tensor(exponent) or exponent.numel() == 1:
            value = scalar(exponent)
            return args[0] * args[0] if value == 2.0 else torch.pow(args[0], value)
        return torch.pow(args[0], exponent)

    def variadic(fn):  # type: ignore[no-untyped-def]
        def run(args, attrs, names, module):  # type: ignore[no-untyped-def]
            y = tensor(args[0])
            for other in args[1:]:
                y = fn(y, tensor(other))
            return y

        return run

    OnnxReplay.ops = {
        "Abs": unary(torch.abs), "Add": binary(torch.add), "AveragePool": pool("avg"),
        "BatchNormalization": lambda a, at, n, m: F.batch_norm(a[0], a[3], a[4], a[1], a[2], False, 0.0,
                                                               at.get("epsilon", 1e-5)),
        "Cast": lambda a, at, n, m: a[0].float() if torch.is_tensor(a[0]) else a[0],
        "Clip": clip, "Concat": lambda a, at, n, m: torch.cat([tensor(v) for v in a], dim=at["axis"]),
        "Conv": conv, "ConvTranspose": conv_transpose, "Div": binary(torch.div),
        "Dropout": lambda a, at, n, m: a[0], "Elu": lambda a, at, n, m: F.elu(a[0], at.get("alpha", 1.0)),
        "Erf": unary(torch.erf), "Exp": unary(torch.exp), "Flatten": flatten, "Gather": gather,
        "Gelu": lambda a, at, n, m: F.gelu(a[0], approximate="tanh" if at.get("approximate") in ("tanh", b"tanh")
                                           else "none"),
        "Gemm": gemm, "GlobalAveragePool": lambda a, at, n, m: torch.mean(a[0], dim=list(range(2, a[0].dim())),
                                                                          keepdim=True),
        "GlobalMaxPool": lambda a, at, n, m: torch.amax(a[0], dim=list(range(2, a[0].dim())), keepdim=True),
        "HardSigmoid": lambda a, at, n, m: torch.clamp(a[0] * at.get("alpha", 0.2) + at.get("beta", 0.5), 0.0, 1.0),
        "HardSwish": unary(F.hardswish), "Identity": lambda a, at, n, m: a[0],
        "LayerNormalization": layer_norm,
        "LeakyRelu": lambda a, at, n, m: F.leaky_relu(a[0], at.get("alpha", 0.01)), "Log": unary(torch.log),
        "MatMul": binary(torch.matmul), "Max": variadic(torch.maximum), "MaxPool": pool("max"),
        "Min": variadic(torch.minimum), "Mul": binary(torch.mul), "Neg": unary(torch.neg), "Pad": pad,
        "Pow": power, "PRelu": lambda a, at, n, m: torch.where(a[0] >= 0, a[0], a[0] * a[1]),
        "Reciprocal": unary(torch.reciprocal), "ReduceMax": reduce("max"), "ReduceMean": reduce("mean"),
        "ReduceSum": reduce("sum"), "Relu": unary(F.relu), "Reshape": reshape, "Resize": resize,
        "Sigmoid": unary(torch.sigmoid), "Slice": slice_, "Softmax": softmax, "Softplus": unary(F.softplus),
        "Split": split, "Sqrt": unary(torch.sqrt), "Squeeze": squeeze, "Sub": binary(torch.sub),
        "Tanh": unary(torch.tanh), "Transpose": lambda a, at, n, m: a[0].permute(*at["perm"]) if "perm" in at
        else a[0].permute(*reversed(range(a[0].dim()))),
        "Unsqueeze": unsqueeze,
    }  # fmt: skip
    return OnnxReplay


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
