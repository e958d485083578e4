"""Rewrites of the x86-ort INT8 graph that ONNX Runtime's own optimiser cannot make on a QDQ model.

ORT fuses a GELU spelled with Erf into its Gelu kernel in a float graph, but not in a QDQ graph: it gives
each reader of a DequantizeLinear its own copy first, and the two readers of the GELU's input then read
different tensors, so the pattern no longer matches (PP-OCRv6 det kept 13 unfused GELUs: 65 float nodes).
Writing ORT's contrib `Gelu` op ourselves gives the fused kernel back; it is exact GELU, as the pattern is.
"""

from __future__ import annotations

import math

import onnx
from onnx import helper, numpy_helper

from edgekit.calibration.fused_patterns import GeluMatch, gelu_matches, layer_norm_matches
from edgekit.onnx_toolbox import drop_unused_initializers

CONTRIB = "com.microsoft"


def _constant(inits: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> float | None:
    """The single value of the node's one constant operand, or None."""
    constant = [name for name in node.input if name in inits]
    if len(constant) != 1:
        return None
    values = numpy_helper.to_array(inits[constant[0]])
    return float(values.reshape(-1)[0]) if values.size == 1 else None


def is_exact_gelu(match: GeluMatch, inits: dict[str, onnx.TensorProto]) -> bool:
    """The matched constants are GELU's: x / sqrt(2) (or x * 1/sqrt(2)), + 1, * 0.5, * x."""
    scale, _, add, *muls = match.nodes
    divisor = _constant(inits, scale)
    if not divisor:
        return False
    if scale.op_type == "Mul":
        divisor = 1.0 / divisor
    halves = [_constant(inits, mul) for mul in muls]
    return (
        math.isclose(divisor, math.sqrt(2.0), rel_tol=1e-4)
        and _constant(inits, add) == 1.0
        and any(h is not None and math.isclose(h, 0.5, rel_tol=1e-6) for h in halves)
    )


def fuse_for_ort(model: onnx.ModelProto) -> dict[str, int]:
    """Replace every exact GELU and every LayerNorm pattern of `model` (in place) by ORT's Gelu and
    LayerNormalization ops; how many of each were replaced."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    replaced: dict[str, onnx.NodeProto | None] = {}  # node name -> its replacement (None: removed)
    counts = {"Gelu": 0, "LayerNormalization": 0}
    for match in gelu_matches(model):
        if is_exact_gelu(match, inits):
            fused = helper.make_node("Gelu", [match.x], [match.y], name=f"{match.nodes[1].name}_Gelu", domain=CONTRIB)
            _replace(replaced, match.nodes, fused)
            counts["Gelu"] += 1
    for norm in layer_norm_matches(model):
        epsilon = float(numpy_helper.to_array(inits[norm.epsilon]).reshape(-1)[0])
        fused = helper.make_node(
            "LayerNormalization", [norm.x, norm.scale, norm.bias], [norm.y], name=f"{norm.nodes[0].name}_LayerNorm",
            axis=norm.axis, epsilon=epsilon,
        )  # fmt: skip
        _replace(replaced, norm.nodes, fused)
        counts["LayerNormalization"] += 1
    if not replaced:
        return counts
    nodes = [replaced.get(node.name, node) for node in graph.node]
    del graph.node[:]
    graph.node.extend(node for node in nodes if node is not None)
    if counts["Gelu"] and not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    drop_unused_initializers(graph)
    return counts


def _replace(replaced: dict[str, onnx.NodeProto | None], nodes: list[onnx.NodeProto], fused: onnx.NodeProto) -> None:
    """The pattern's nodes go; `fused` takes the place of its last one (its inputs are produced before that)."""
    for node in nodes:
        replaced[node.name] = None
    replaced[nodes[-1].name] = fused
