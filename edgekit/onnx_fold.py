"""Fold a model's shape arithmetic at the shape it will be built for.

Exporters write dynamic models: YOLOv8 computes its anchor grid from `Shape` of a feature map
(Shape -> Gather -> Range -> Expand -> ConstantOfShape ...), PyTorch exports ViT reshapes from `Shape` of the
tokens. A device artifact has one input shape, and at that shape all of this is constant. `fold_at_shape` fixes
the input's dims, runs ONNX shape inference (with data propagation, so Reshape targets computed from shapes
resolve) and replaces every node whose inputs are all known constants — `Shape` of a statically shaped tensor
included — by an initializer holding its value, computed by ONNX's reference evaluator. Every other node and
tensor keeps its name, so a QuantSpec calibrated on the original model still names the same activations.

Why not onnxsim: it folds too, but also rewrites and fuses the graph (BatchNorm into Conv, ...), which renames
the tensors a QuantSpec names, and its result depends on its own ONNX Runtime build.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.onnx_toolbox import (
    DEFAULT_DOMAINS,
    SHAPE_OPS,
    constant_value,
    default_opset,
    drop_unused_initializers,
    graph_inputs,
)

# ops kept as they are even when their inputs are constant: quantization boundaries (a QDQ model's weight
# DequantizeLinear is what a runtime fuses) and random generators
_KEEP = frozenset({"QuantizeLinear", "DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
                   "RandomUniformLike", "Multinomial", "Bernoulli"})  # fmt: skip
MAX_FOLDED_ELEMENTS = 1 << 24  # a constant larger than this (64 MB of float32) stays a node
_ROUNDS = 64  # each round can make more shapes static (a Reshape target folds, its output is known next round)


def fold_at_shape(proto: onnx.ModelProto, input_shape: Sequence[int]) -> onnx.ModelProto:
    """A copy of `proto` with its single input fixed to `input_shape` and its constant sub-graphs folded."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    _fix_input(model, input_shape)
    opset = default_opset(model, 1)
    for _ in range(_ROUNDS):
        if not _fold_round(model, opset):
            break
    drop_unused_initializers(model.graph)
    return _with_shapes(model)


def _fix_input(model: onnx.ModelProto, input_shape: Sequence[int]) -> None:
    value = graph_inputs(model)[0]
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise ValueError(f"input {value.name!r} has rank {len(dims)}; cannot fix it to {list(input_shape)}")
    for dim, size in zip(dims, input_shape, strict=True):
        dim.Clear()
        dim.dim_value = int(size)
    for output in model.graph.output:  # exporters' symbolic output dims would clash with the fixed ones
        if output.type.tensor_type.HasField("shape"):
            for dim in output.type.tensor_type.shape.dim:
                dim.Clear()
    del model.graph.value_info[:]


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a custom op shape inference does not know: fold what is known, without value_info
        return model


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = _with_shapes(model).graph
    shapes = {}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            if all(d >= 0 for d in dims):
                shapes[value.name] = tuple(dims)
    return shapes


def _fold_round(model: onnx.ModelProto, opset: int) -> bool:
    """Fold what is constant now; True when something was folded."""
    graph = model.graph
    shapes = _static_shapes(model)
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    kept: list[onnx.NodeProto] = []
    folded: dict[str, np.ndarray] = {}
    for node in graph.node:
        values = _node_value(node, consts, shapes, opset)
        if values is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, values, strict=True):
            if name:
                consts[name] = folded[name] = value
    if not folded:
        return False
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in folded.items())
    return True


def _node_value(
    node: onnx.NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int
) -> list[np.ndarray] | None:
    """The node's output values when they are constant at this input shape, else None."""
    if node.domain not in DEFAULT_DOMAINS or node.op_type in _KEEP or _has_subgraph(node):
        return None
    if node.op_type == "Constant":
        value = constant_value(node)
        return None if value is None else [value]
    if node.op_type in SHAPE_OPS and node.input[0] not in consts:
        shape = shapes.get(node.input[0])
        return None if shape is None else [_shape_value(node, shape)]
    inputs = [i for i in node.input if i]
    if not inputs or not all(i in consts for i in inputs):
        return None
    try:
        values = _evaluate(node, [consts[i] if i else None for i in node.input], opset)
    except Exception:  # the reference evaluator lacks this op or variant: the node stays
        return None
    if any(np.asarray(v).size > MAX_FOLDED_ELEMENTS for v in values):
        return None
    return [np.asarray(v) for v in values]


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), np.int64)
    attributes = {a.name: a.i for a in node.attribute}
    start, end = attributes.get("start", 0), attributes.get("end", len(shape))
    return np.array(shape[start:end], np.int64)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """One node run by ONNX's reference evaluator (any op of the standard, no runtime build needed)."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" if name else "" for k, name in enumerate(node.input)]
    single = helper.make_node(node.op_type, names, [f"out{k}" for k in range(len(node.output))])
    single.attribute.extend(node.attribute)
    feeds = {n: v for n, v in zip(names, inputs, strict=True) if n}
    graph = helper.make_graph(
        [single],
        "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in feeds.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in single.output],
    )
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    return list(evaluator.run(None, feeds))
