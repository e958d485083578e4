"""An ONNX graph replayed as a torch module, op by op, so Core ML can convert ONNX-only models.

Every ONNX tensor keeps its name inside the module, so the W8A8 fake quantizers land on exactly the
tensors the QuantSpec names (and the weights it names), and the module is checked against ONNX Runtime
on the same input before anything is converted. Integer tensors (shapes, indices, slice bounds) are
computed once by ONNX Runtime for the fixed input shape and become constants, which is what a Core ML
program with fixed shapes wants anyway.

Each op is a function registered in `REPLAY_OPS` (targets/coreml_ops.py). torch is imported on first use:
the module class is built then (`_replay_class`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import onnx

from edgekit.onnx_toolbox import attrs as node_attrs
from edgekit.targets.base import BuildError
from edgekit.targets.coreml_ops import REPLAY_OPS, ReplayCall, initializer_values

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
    missing = REPLAY_OPS.unsupported(proto.graph)
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
        inits = initializer_values(graph)
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
            result = REPLAY_OPS.functions[op](ReplayCall(torch, F, outputs), args, attrs)
            results = result if isinstance(result, (list, tuple)) else [result]
            for name, value in zip(outputs, results, strict=False):
                if name:
                    self._store(env, name, value)
        found = [env[name] if name in env else torch.as_tensor(self.consts[name]) for name in self.output_names]
        return found[0] if len(found) == 1 else tuple(found)


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
