"""Rewrites of ONNX sub-graphs that TFLite computes as one builtin, before the TFLite translator walks the graph.

GELU: exporters that predate ONNX's Gelu op (opset 20) write x * 0.5 * (1 + erf(x / sqrt(2))); TFLite has no
ERF builtin but has GELU, which its quantizer also takes. Each such chain becomes one `Gelu` node whose output
is the chain's last tensor, so the INT8 build still finds every TFLite activation among the ONNX tensors of the
original model (targets/tflite_quant.py). The chain's inner tensors must have no other readers.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from edgekit.onnx_toolbox import constant_value, consumers

_SQRT_HALF = 1.0 / math.sqrt(2.0)


class _Graph:
    """Producers, readers and constant values of a graph's tensors."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {out: node for node in graph.node for out in node.output}
        self.readers = consumers(graph)
        self.outputs = {o.name for o in graph.output}
        self.consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and (value := constant_value(node)) is not None:
                self.consts[node.output[0]] = value

    def scalar(self, name: str) -> float | None:
        value = self.consts.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def sole_reader(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The one node reading `name`, when it is an `op_type` and `name` is not also a graph output."""
        readers = self.readers.get(name, [])
        if len(readers) == 1 and readers[0].op_type == op_type and name not in self.outputs:
            return readers[0]
        return None

    def other(self, node: onnx.NodeProto, name: str) -> str:
        """The input of a binary `node` that is not `name`."""
        return node.input[1] if node.input[0] == name else node.input[0]


def _erf_argument(g: _Graph, erf: onnx.NodeProto) -> str | None:
    """x when the Erf reads x / sqrt(2) or x * (1 / sqrt(2))."""
    scaled = g.producer.get(erf.input[0])
    if scaled is None or g.sole_reader(erf.input[0], "Erf") is None:
        return None
    if scaled.op_type == "Div" and np.isclose(g.scalar(scaled.input[1]) or 0.0, math.sqrt(2.0), rtol=1e-5):
        return scaled.input[0]
    if scaled.op_type == "Mul":
        for a, b in (scaled.input, reversed(scaled.input)):
            if np.isclose(g.scalar(b) or 0.0, _SQRT_HALF, rtol=1e-5):
                return a
    return None


def _gelu_chain(g: _Graph, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """(x, the chain's nodes from the scaling to the last Mul) when `erf` is the core of an exact GELU."""
    x = _erf_argument(g, erf)
    add = g.sole_reader(erf.output[0], "Add")
    if x is None or add is None or g.scalar(g.other(add, erf.output[0])) != 1.0:
        return None
    first = g.sole_reader(add.output[0], "Mul")
    if first is None:
        return None
    partner = g.other(first, add.output[0])
    second = g.sole_reader(first.output[0], "Mul")
    if partner == x and second is not None and g.scalar(g.other(second, first.output[0])) == 0.5:
        nodes = [first, second]  # (x * (1 + erf)) * 0.5
    elif g.scalar(partner) == 0.5 and second is not None and g.other(second, first.output[0]) == x:
        nodes = [first, second]  # ((1 + erf) * 0.5) * x
    else:
        half = g.producer.get(partner)  # (x * 0.5) * (1 + erf)
        if half is None or half.op_type != "Mul" or g.sole_reader(partner, "Mul") is None:
            return None
        if not (x in half.input and g.scalar(g.other(half, x)) == 0.5):
            return None
        nodes = [half, first]
    return x, [g.producer[erf.input[0]], erf, add, *nodes]


def fuse_gelu(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with each exact-GELU chain replaced by one Gelu node (the proto itself when none)."""
    g = _Graph(proto.graph)
    chains = [c for node in proto.graph.node if node.op_type == "Erf" and (c := _gelu_chain(g, node)) is not None]
    if not chains:
        return proto
    last = {nodes[-1].output[0]: (x, nodes[1].name) for x, nodes in chains}  # nodes by their first output
    inner = {n.output[0] for _, nodes in chains for n in nodes[:-1]}
    fused = onnx.ModelProto()
    fused.CopyFrom(proto)
    del fused.graph.node[:]
    for node in proto.graph.node:
        name = node.output[0] if node.output else ""
        if name in last:
            x, erf_name = last[name]
            fused.graph.node.append(helper.make_node("Gelu", [x], [name], name=f"{erf_name or name}_gelu"))
        elif name not in inner:
            fused.graph.node.append(node)
    return fused
