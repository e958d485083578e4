"""Float patterns that runtimes fuse into one op, so the quantizer plan leaves their inside alone.

GELU spelled out (x * 0.5 * (1 + erf(x / sqrt 2))) and LayerNorm spelled out (ReduceMean, Sub, Pow, ReduceMean,
Add, Sqrt, Div, then the affine Mul/Add) have no integer kernel as a whole, but ONNX Runtime, TensorRT and
OpenVINO fuse each into one float op. Quantizing the Adds and Muls inside breaks that fusion and leaves a
Q/DQ pair per piece (PP-OCRv6 det: 13 GELUs, 52 extra quantizers); keeping the inside float leaves one DQ before
and one Q after the pattern. Matching is structural and conservative: anything unexpected ends the match.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edgekit.onnx_toolbox import consumers


def float_fused_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes inside GELU and LayerNorm patterns."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    readers_of = consumers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    found: set[str] = set()
    for node in graph.node:
        if node.op_type == "Erf":
            match = _gelu(node, constants, readers_of, producers)
            found |= {n.name for n in match.nodes} if match else set()
        elif node.op_type == "ReduceMean":
            found |= _layer_norm(node, constants, readers_of)
    return found


def _only_reader(name: str, readers_of: dict[str, list[onnx.NodeProto]]) -> onnx.NodeProto | None:
    readers = readers_of.get(name, [])
    return readers[0] if len(readers) == 1 else None


def _other_input(node: onnx.NodeProto, name: str) -> str | None:
    others = [i for i in node.input if i != name]
    return others[0] if len(others) == 1 else None


@dataclass
class GeluMatch:
    x: str  # the input
    y: str  # the output
    nodes: list[onnx.NodeProto]


def gelu_matches(model: onnx.ModelProto) -> list[GeluMatch]:
    """Every GELU spelled out with Erf (an x86 runtime may then write it as its own Gelu op)."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    readers_of = consumers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    matches = (_gelu(node, constants, readers_of, producers) for node in graph.node if node.op_type == "Erf")
    return [m for m in matches if m is not None]


def _gelu(erf, constants, readers_of, producers) -> GeluMatch | None:
    """Div|Mul(x, c) -> Erf -> Add(1) -> Mul(x) [-> Mul(0.5)], with the 0.5 Mul anywhere on the chain. The
    constants are not checked: a runtime replacing the match by its Gelu op checks them (`is_exact_gelu`)."""
    scale = producers.get(erf.input[0])
    if scale is None or scale.op_type not in ("Div", "Mul") or scale.input[1] not in constants:
        return None
    x = scale.input[0]
    nodes = [scale, erf]
    add = _only_reader(erf.output[0], readers_of)
    if add is None or add.op_type != "Add" or _other_input(add, erf.output[0]) not in constants:
        return None
    nodes.append(add)
    tensor, multiplied_by_x = add.output[0], False
    for _ in range(2):  # the Mul by x and, in either order, the Mul by 0.5
        mul = _only_reader(tensor, readers_of)
        if mul is None or mul.op_type != "Mul":
            break
        other = _other_input(mul, tensor)
        if other == x and not multiplied_by_x:
            multiplied_by_x = True
        elif other not in constants:
            break
        nodes.append(mul)
        tensor = mul.output[0]
    return GeluMatch(x, tensor, nodes) if multiplied_by_x else None


LAYER_NORM_OPS = {"Sub", "Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Div"}


@dataclass
class LayerNormMatch:
    x: str
    y: str
    nodes: list[onnx.NodeProto]
    axis: int  # the one ReduceMean axis
    epsilon: str  # the initializer added to the variance
    scale: str  # gamma and beta initializers
    bias: str


def layer_norm_matches(model: onnx.ModelProto) -> list[LayerNormMatch]:
    """Every LayerNorm spelled out with ReduceMean over one axis and ending in Mul(gamma) -> Add(beta), the form
    exporters write (a runtime may write it as its own LayerNormalization op)."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    readers_of = consumers(graph)
    found = []
    for node in graph.node:
        names = _layer_norm(node, constants, readers_of) if node.op_type == "ReduceMean" else set()
        nodes = [n for n in graph.node if n.name in names]
        axes = [list(a.ints) for a in node.attribute if a.name == "axes"]
        if len(nodes) < 4 or axes == [] or len(axes[0]) != 1 or [n.op_type for n in nodes[-2:]] != ["Mul", "Add"]:
            continue
        sqrt = next((n for n in nodes if n.op_type == "Sqrt"), None)
        variance = sqrt.input[0] if sqrt is not None else None
        epsilon = next((n for n in nodes if n.op_type == "Add" and variance in n.output), None)
        if epsilon is None or _const_of(epsilon, constants) is None:
            continue
        scale, bias = _const_of(nodes[-2], constants), _const_of(nodes[-1], constants)
        found.append(
            LayerNormMatch(node.input[0], nodes[-1].output[0], nodes, axes[0][0], _const_of(epsilon, constants),
                           scale, bias)
        )  # fmt: skip
    return found


def _const_of(node: onnx.NodeProto, constants: set[str]) -> str | None:
    return next((name for name in node.input if name in constants), None)


def _layer_norm(mean, constants, readers_of) -> set[str]:
    """ReduceMean(x) -> Sub(x, mean) -> ... -> Div(sub, sqrt(var + eps)) [-> Mul(gamma) -> Add(beta)]: every
    node between the first ReduceMean and the Div, found by walking forward from Sub through LayerNorm ops."""
    x = mean.input[0]
    sub = next((r for r in readers_of.get(mean.output[0], []) if r.op_type == "Sub" and r.input[0] == x), None)
    if sub is None or not any(r is sub for r in readers_of.get(x, [])):
        return set()
    nodes = {id(mean): mean, id(sub): sub}
    frontier, divide = [sub], None
    while frontier and len(nodes) < 12:
        node = frontier.pop()
        for reader in readers_of.get(node.output[0], []):
            if reader.op_type not in LAYER_NORM_OPS or id(reader) in nodes:
                continue
            nodes[id(reader)] = reader
            if reader.op_type == "Div":
                divide = reader
            else:
                frontier.append(reader)
    if divide is None or not any(n.op_type == "Sqrt" for n in nodes.values()):
        return set()
    tail = divide
    for op in ("Mul", "Add"):  # the affine part, when it multiplies and adds constants
        reader = _only_reader(tail.output[0], readers_of)
        if reader is None or reader.op_type != op or _other_input(reader, tail.output[0]) not in constants:
            break
        nodes[id(reader)] = reader
        tail = reader
    return {n.name for n in nodes.values()}
