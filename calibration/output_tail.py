"""The output tail: the cheap ops between a model's last learned layers and its outputs, kept float.

A detector's head ends in decoding written into the graph: YOLOv8's distribution focal loss (a softmax over
16 distance bins and their expectation, a 1x1 conv with the fixed weights 0..15), the anchor arithmetic that
turns distances into box corners, the sigmoid on class logits and the concats and reshapes that lay it all
out. On one 8-bit grid each, softmax probabilities lose most of their bins and box coordinates their
sub-pixel offsets: on YOLOv8n DocLayNet (benchmarks/detection.py) the INT8 model kept 0.86 of the FP32
model's detections (reference mAP@0.5, x86-ort) with this tail quantized and 1.00 with it float (android-tflite
0.71 and 0.95), with the same latency. These ops hold a negligible share of the MACs, so int8 buys nothing
there. Classifiers have at most a softmax here.

The tail is found from the graph alone: walk back from the outputs through nodes whose every reader is in
the tail (or that produce an output), stopping at learned layers (Conv, Gemm, MatMul, ...) and at
activations that targets fuse into the layer before them (Relu, Clip). A conv whose few constant weights are
all whole numbers (DFL's expectation over bins 0..15) is arithmetic written as a conv, not a learned layer.
Integer-typed nodes (shape arithmetic) take part in the walk but are not listed: nothing quantizes them.

Policies: "float" (default): the tail runs in float on every target, the learned layers before it keep
their int8 inputs and weights, and the tensors the tail reads keep their whole observed range whatever the
observer (calibrate.py): there the rare large values are the confident detections, not outliers to clip
(this matters on full-integer targets, which dequantize at the tail). "int8": the tail is quantized like
the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from edgekit.calibration.graph import FLOAT_TYPES, tensor_types
from edgekit.calibration.quant_spec import QuantSpec
from edgekit.errors import CalibrationError
from edgekit.onnx_toolbox import consumers

POLICIES = ("float", "int8")
DEFAULT_POLICY = "float"
LEARNED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN"}
FUSED_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "PRelu"}  # run inside the layer before them on every target
BIAS_OPS = {"Add", "Sub", "Mul", "Div"}  # with a constant operand right after a learned layer: part of it
FIXED_WEIGHTS_MAX = 256  # whole-number weights this few (DFL's 16 bins) are arithmetic, not learned


@dataclass
class OutputTail:
    """The tail found in a model and what the policy did with it."""

    nodes: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # computed tensors the tail reads from outside it
    op_counts: dict[str, int] = field(default_factory=dict)
    macs_share: float | None = None  # of the model's MACs (None when they cannot be counted)
    action: str = ""

    def describe(self) -> str:
        """One line for the quantize report and the build manifest."""
        ops = ", ".join(f"{op} x{count}" for op, count in sorted(self.op_counts.items(), key=lambda kv: -kv[1]))
        share = f"; {100 * self.macs_share:.2g} % of the MACs" if self.macs_share is not None else ""
        return f"output tail: {len(self.nodes)} ops after the last learned layers ({ops}{share}); {self.action}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "inputs": self.inputs,
            "op_counts": self.op_counts,
            "macs_share": self.macs_share,
            "action": self.action,
        }


def _macs_share(model: onnx.ModelProto, nodes: set[str]) -> float | None:
    """The share of the model's MACs that `nodes` do; None when shapes leave some MACs uncounted."""
    from edgekit.inspect.macs import node_macs
    from edgekit.inspect.shapes import resolve_shapes

    shapes, _ = resolve_shapes(model, {})
    counts = {node.name: node_macs(node, shapes)[0] for node in model.graph.node}
    total = sum(c or 0 for c in counts.values())
    if not total or any(c is None for c in counts.values()):
        return None
    return sum(counts[n] or 0 for n in nodes) / total


class _Graph:
    """What the walk asks of the graph: constant weights, producers, and which tensors depend on the input."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.initializers = {init.name: init for init in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.dynamic = {i.name for i in graph.input} - set(self.initializers)
        for node in graph.node:  # graph order is topological
            if any(name in self.dynamic for name in node.input):
                self.dynamic.update(node.output)

    def source(self, name: str) -> onnx.NodeProto | None:
        """The node that computes `name`, looking through Identity."""
        node = self.producers.get(name)
        while node is not None and node.op_type == "Identity":
            node = self.producers.get(node.input[0])
        return node

    def is_layer_part(self, node: onnx.NodeProto) -> bool:
        """A bias or scale applied right after a learned layer (Paddle exports a conv's bias as an Add)."""
        if node.op_type not in BIAS_OPS:
            return False
        dynamic = [name for name in node.input if name in self.dynamic]
        source = self.source(dynamic[0]) if len(dynamic) == 1 else None
        return source is not None and self.is_learned(source)

    def is_learned(self, node: onnx.NodeProto) -> bool:
        """A learned layer: Conv, Gemm, MatMul, ... unless its constant weight is a few whole numbers."""
        if node.op_type not in LEARNED_OPS:
            return False
        if len(node.input) < 2 or node.input[1] not in self.initializers:
            return True
        weight = self.initializers[node.input[1]]
        if int(np.prod(weight.dims, dtype=np.int64)) > FIXED_WEIGHTS_MAX:
            return True
        values = onnx.numpy_helper.to_array(weight)
        return not bool(np.all(values == np.round(values)))


def _is_arithmetic(node: onnx.NodeProto, graph: _Graph) -> bool:
    """Whether `node` computes rather than applies learned weights: not a learned layer, nor a fused
    activation or bias of one."""
    if node.op_type in FUSED_ACTIVATIONS or graph.is_layer_part(node):
        return False
    return not graph.is_learned(node)


def find_output_tail(model: onnx.ModelProto) -> OutputTail:
    """The output tail of `model` (see the module docstring); empty when the outputs come straight from
    learned layers."""
    graph = model.graph
    walk = _Graph(graph)
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    tail: set[str] = set()
    for node in reversed(graph.node):  # graph order is topological: a node's readers are decided before it
        if node.op_type == "Constant" or not node.output:
            continue
        read_by = [r for out in node.output for r in readers.get(out, [])]
        feeds_output = any(out in outputs for out in node.output)
        if (feeds_output or read_by) and all(r.name in tail for r in read_by) and _is_arithmetic(node, walk):
            tail.add(node.name)
    types = tensor_types(model)
    ordered = [
        node
        for node in graph.node
        if node.name in tail and any(types.get(out, onnx.TensorProto.FLOAT) in FLOAT_TYPES for out in node.output)
    ]
    counts: dict[str, int] = {}
    for node in ordered:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    names = [n.name for n in ordered]
    produced_inside = {out for node in ordered for out in node.output}
    inputs = [
        name
        for name in dict.fromkeys(i for node in ordered for i in node.input)
        if name in walk.dynamic
        and name not in produced_inside
        and types.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES
    ]
    return OutputTail(names, inputs, counts, _macs_share(model, set(names)) if names else None)


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise CalibrationError(f"unknown output-tail policy {policy!r}; choose one of {', '.join(POLICIES)}")


def apply_policy(spec: QuantSpec, tail: OutputTail, policy: str = DEFAULT_POLICY) -> None:
    """Record the tail in `spec.calibration["output_tail"]` and, with policy "float", keep its nodes float."""
    check_policy(policy)
    if not tail.nodes:
        return
    if policy == "float":
        already = spec.float_nodes  # a mixed-range concat keeps its own reason
        for name in tail.nodes:
            if name not in already:
                spec.keep_float(name, "output tail (decoding after the last learned layers)")
        tail.action = "kept float"
    else:
        tail.action = "quantized (policy 'int8')"
    spec.calibration["output_tail"] = {"policy": policy, **tail.to_dict()}


def report_lines(record: dict[str, Any] | None) -> list[str]:
    """The report line of the output tail from the record `apply_policy` keeps (none when there is none)."""
    if not record:
        return []
    tail = OutputTail(
        record["nodes"], record.get("inputs", []), record["op_counts"], record.get("macs_share"), record["action"]
    )
    return [tail.describe()]


def spec_lines(spec: QuantSpec) -> list[str]:
    """The report line of the output tail a QuantSpec's calibration found."""
    return report_lines(spec.calibration.get("output_tail"))
