"""An ONNX graph replayed as a torch module, op by op, so Core ML can convert ONNX-only models.

Every ONNX tensor keeps its name inside the module, so the W8A8 fake quantizers land on exactly the
tensors the QuantSpec names (and the weights it names), and the module is checked against ONNX Runtime
on the same input before anything is converted. The replay runs the graph folded at its one input shape
(`edgekit.onnx_fold.fold_at_shape`): shapes, indices and slice bounds are initializers then, which is what a
Core ML program with fixed shapes wants anyway, and what the ops read as parameters (targets/coreml_ops.py
says the rule: parameters are numpy initializers, everything else a torch tensor).

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
from edgekit.onnx_toolbox import default_opset, node_label
from edgekit.op_support import refusal_message
from edgekit.targets.base import BuildError
from edgekit.targets.coreml_ops import LITERALS, PARAMETERS, REPLAY_OPS, ReplayCall, initializer_values

ROUTE_ADVICE = (
    "Build from the torch module instead (Model.from_torch), where coremltools converts the module itself, "
    "or replace those nodes in the export."
)


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


def build_module(
    proto: onnx.ModelProto,
    input_shape: tuple[int, ...],
    *,
    activation_quant: dict[str, ActivationQuant] | None = None,
    weight_quant: dict[str, WeightQuant] | None = None,
) -> Any:
    """A torch module that computes `proto` for inputs of `input_shape`, with optional fake quantizers; BuildError
    naming every node the replay cannot take (the same refusals `edgekit inspect -t ios-coreml` lists)."""
    from edgekit.onnx_fold import fold_at_shape

    try:
        folded = fold_at_shape(proto, input_shape)
    except ValueError as exc:
        raise BuildError(f"ios-coreml: {exc}") from exc
    refusals = REPLAY_OPS.refusals(folded)
    if refusals:
        raise BuildError(refusal_message(REPLAY_OPS.owner, refusals, ROUTE_ADVICE))
    return _replay_class()(folded, activation_quant or {}, weight_quant or {})


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
        activation_quant: dict[str, ActivationQuant],
        weight_quant: dict[str, WeightQuant],
    ) -> None:
        import torch

        super().__init__()
        graph = proto.graph
        self.opset = default_opset(proto, 17)
        self.nodes = [
            (n.op_type, list(n.input), list(n.output), node_attrs(n), node_label(n))
            for n in graph.node
            if n.op_type != "Constant"
        ]
        inits = initializer_values(graph)
        self.consts: dict[str, np.ndarray] = dict(inits)  # every initializer, as parameters read it
        self.slots: dict[str, str] = {}  # float initializers: buffers, as data inputs read them (weights)
        for index, (name, value) in enumerate(sorted(inits.items())):
            if value.dtype.kind == "f":
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

    def _value(self, env: dict[str, Any], name: str, *, numpy: bool) -> Any:
        """A node input: a numpy initializer where the op reads a parameter (`numpy`), else a torch tensor."""
        import torch

        if not name:
            return None
        if name in env:
            return env[name]
        if numpy:
            return self.consts[name]
        if name in self.slots:
            value = getattr(self, self.slots[name])
            return self._weight_quantized(name, value) if name in self.weight_quant else value
        return torch.as_tensor(self.consts[name])  # an integer or boolean initializer read as data

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

        self.quantized = []
        env: dict[str, Any] = {self.input_name: self._fake_quant(self.input_name, x)}
        if self.input_name in self.activation_quant:
            self.quantized.append(self.input_name)
        for node in self.nodes:
            self._run_node(env, *node)
        found = [env[name] if name in env else torch.as_tensor(self.consts[name]) for name in self.output_names]
        return found[0] if len(found) == 1 else tuple(found)

    def _run_node(self, env: dict[str, Any], op: str, inputs: list[str], outputs: list[str], attrs: dict, label: str):
        import torch
        import torch.nn.functional as F

        constant_inputs = PARAMETERS.get(op, frozenset()) | LITERALS.get(op, frozenset())
        args = [self._value(env, name, numpy=k in constant_inputs) for k, name in enumerate(inputs)]
        try:
            result = REPLAY_OPS.functions[op](ReplayCall(torch, F, outputs, self.opset), args, attrs)
        except BuildError:
            raise
        except Exception as exc:  # an input this op's function does not expect: name the node
            raise BuildError(
                f"the ONNX-to-torch replay of ios-coreml failed on {op} node {label!r}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. {ROUTE_ADVICE}"
            ) from exc
        results = result if isinstance(result, (list, tuple)) else [result]
        for name, value in zip(outputs, results, strict=False):
            if name:
                self._store(env, name, value)


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
