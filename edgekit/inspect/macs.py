"""Parameters and MACs (multiply-accumulates) of one node; see the `edgekit.inspect` docstring for what is
counted and why."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import onnx
from onnx import helper

from edgekit.inspect.report import UNKNOWN_DYNAMIC, Shape
from edgekit.onnx_toolbox import DEFAULT_DOMAINS, attrs

MacCount = tuple[int | None, str | None]  # (MACs, None) or (None, why they cannot be counted)

# com.microsoft ops that do no multiply-accumulate work in the sense counted here.
_ZERO_MAC_CUSTOM_OPS = (
    "Gelu FastGelu BiasGelu QuickGelu BiasAdd BiasSoftmax SkipLayerNormalization SimplifiedLayerNormalization "
    "SkipSimplifiedLayerNormalization LayerNormalization QuantizeLinear DequantizeLinear NhwcMaxPool QLinearAdd "
    "QLinearMul QLinearSigmoid QLinearLeakyRelu QLinearAveragePool QLinearGlobalAveragePool QLinearConcat "
    "QLinearSoftmax Rfft Irfft"
)
_ZERO_MAC_CUSTOM = frozenset(_ZERO_MAC_CUSTOM_OPS.split())
# com.microsoft ops counted like the standard op they fuse (FusedMatMul keeps its own rule: it can transpose).
_MICROSOFT_ALIASES = {"FusedConv": "Conv", "FusedGemm": "Gemm"}
_MICROSOFT_COUNTED = frozenset({"Conv", "Gemm", "FusedMatMul", "QLinearConv", "MatMulInteger"})


# -- parameters ----------------------------------------------------------------------------------

_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}


def _tensor_size(dims: Any, data_type: int) -> tuple[int, int]:
    """(elements, bytes) of a tensor of `dims` and ONNX `data_type`."""
    elements = int(math.prod(int(d) for d in dims))
    if data_type in _BITS:
        return elements, (elements * _BITS[data_type] + 7) // 8
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 0
    if data_type == onnx.TensorProto.STRING:
        itemsize = 0
    return elements, elements * itemsize


def constant_sizes(graph: onnx.GraphProto) -> dict[str, tuple[int, int]]:
    """(elements, bytes) of every initializer and Constant-node output, in this graph and its subgraphs."""
    sizes: dict[str, tuple[int, int]] = {}
    for init in graph.initializer:
        sizes[init.name] = _tensor_size(init.dims, init.data_type)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
            size = _constant_node_size(node)
            if size is not None:
                sizes[node.output[0]] = size
        for subgraph in _subgraphs(node):
            sizes.update(constant_sizes(subgraph))
    return sizes


def _constant_node_size(node: onnx.NodeProto) -> tuple[int, int] | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return _tensor_size(attribute.t.dims, attribute.t.data_type)
        if attribute.name == "sparse_value":
            return _tensor_size(attribute.sparse_tensor.values.dims, attribute.sparse_tensor.values.data_type)
        if attribute.name in ("value_float", "value_int"):
            return 1, 4 if attribute.name == "value_float" else 8
        if attribute.name == "value_floats":
            return len(attribute.floats), 4 * len(attribute.floats)
        if attribute.name == "value_ints":
            return len(attribute.ints), 8 * len(attribute.ints)
        if attribute.name in ("value_string", "value_strings"):
            return (1 if attribute.name == "value_string" else len(attribute.strings)), 0
    return None


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            graphs.append(attribute.g)
        graphs.extend(attribute.graphs)
    return graphs


def read_names(node: onnx.NodeProto) -> list[str]:
    """Tensor names the node reads, including those read inside its subgraphs (and their initializers)."""
    names = [name for name in node.input if name]
    for subgraph in _subgraphs(node):
        names += [init.name for init in subgraph.initializer]
        for inner in subgraph.node:
            names += read_names(inner)
            if inner.op_type == "Constant":
                names += [out for out in inner.output if out]
    return names


# -- MACs ----------------------------------------------------------------------------------------


def _ints(shape: Shape) -> list[int] | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return [int(d) for d in shape]


class _Operands:
    """A node with its attributes and the concrete shapes of its inputs and first output (None: unknown)."""

    def __init__(self, node: onnx.NodeProto, op: str, shapes: dict[str, Shape]) -> None:
        self.node, self.op, self.attrs = node, op, attrs(node)
        self._shapes = shapes
        self.out = _ints(shapes.get(node.output[0])) if node.output and node.output[0] else None

    def input(self, position: int) -> list[int] | None:
        if position >= len(self.node.input) or not self.node.input[position]:
            return None
        return _ints(self._shapes.get(self.node.input[position]))


def node_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> MacCount:
    """(MACs, note) of one node; MACs None with the reason in the note when they cannot be counted."""
    microsoft = node.domain == "com.microsoft"
    op = _MICROSOFT_ALIASES.get(node.op_type, node.op_type) if microsoft else node.op_type
    if node.domain not in DEFAULT_DOMAINS:
        if microsoft and op in _ZERO_MAC_CUSTOM:
            return 0, None
        if not microsoft or op not in _MICROSOFT_COUNTED:
            return None, f"not counted: custom op {node.domain}::{node.op_type}"
    rule = _MAC_RULES.get(op)
    return rule(_Operands(node, op, shapes)) if rule is not None else (0, None)


def _conv(n: _Operands) -> MacCount:
    x, w = (n.input(0), n.input(3)) if n.op == "QLinearConv" else (n.input(0), n.input(1))
    if n.out is None:
        return None, UNKNOWN_DYNAMIC
    if w is not None and len(w) >= 2:
        return math.prod(n.out) * math.prod(w[1:]), None
    kernel = n.attrs.get("kernel_shape")
    if x is None or not kernel:
        return None, UNKNOWN_DYNAMIC
    return math.prod(n.out) * (x[1] // int(n.attrs.get("group", 1))) * math.prod(kernel), None


def _conv_transpose(n: _Operands) -> MacCount:
    x, w = n.input(0), n.input(1)
    if x is None or w is None or len(w) < 2:
        return None, UNKNOWN_DYNAMIC
    return math.prod(x) * math.prod(w[1:]), None


def _gemm(n: _Operands) -> MacCount:
    a = n.input(0)
    if n.out is None or a is None or len(a) != 2:
        return None, UNKNOWN_DYNAMIC
    return math.prod(n.out) * (a[0] if n.attrs.get("transA", 0) else a[1]), None


def _matmul(n: _Operands) -> MacCount:
    a, b = n.input(0), n.input(3 if n.op == "QLinearMatMul" else 1)
    if n.out is None:
        return None, UNKNOWN_DYNAMIC
    fused = n.op == "FusedMatMul"  # com.microsoft: may transpose either operand
    if a is not None and a:
        k = a[-2] if fused and n.attrs.get("transA", 0) and len(a) >= 2 else a[-1]
    elif b is not None and b:
        k = b[-1] if fused and n.attrs.get("transB", 0) else (b[-2] if len(b) >= 2 else b[0])
    else:
        return None, UNKNOWN_DYNAMIC
    return math.prod(n.out) * k, None


def _recurrent(n: _Operands) -> MacCount:
    x, w, r = n.input(0), n.input(1), n.input(2)
    if x is None or w is None or r is None or len(x) < 2:
        return None, UNKNOWN_DYNAMIC
    return x[0] * x[1] * (math.prod(w) + math.prod(r)), None


def _einsum(n: _Operands) -> MacCount:
    equation = n.attrs.get("equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    lhs = equation.split("->")[0].split(",")
    if len(lhs) == 1:
        return 0, None  # a transpose, trace or reduction
    if len(lhs) != 2 or "..." in equation:
        return None, "not counted: Einsum with ellipsis or more than two operands"
    operands = [n.input(i) for i in range(len(n.node.input))]
    sizes: dict[str, int] = {}
    for letters, dims in zip(lhs, operands, strict=False):
        if dims is None or len(dims) != len(letters):
            return None, UNKNOWN_DYNAMIC
        sizes.update(zip(letters, dims, strict=True))
    return math.prod(sizes.values()), None


def _with_body(n: _Operands) -> MacCount:
    return None, f"not counted: ops inside the {n.op} body"


# op -> its MAC rule; every op not listed does no multiply-accumulate work and counts 0.
_MAC_RULES: dict[str, Callable[[_Operands], MacCount]] = {
    "Conv": _conv,
    "ConvInteger": _conv,
    "QLinearConv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "MatMulInteger": _matmul,
    "QLinearMatMul": _matmul,
    "FusedMatMul": _matmul,
    "RNN": _recurrent,
    "GRU": _recurrent,
    "LSTM": _recurrent,
    "Einsum": _einsum,
    "If": _with_body,
    "Loop": _with_body,
    "Scan": _with_body,
}
