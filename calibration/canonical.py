"""Canonical float graph before quantization: the rewrites that decide where integer kernels can run.

Exporters spell the same computation in ways that hide it from the QDQ fusions of integer runtimes:
Paddle writes every convolution as a bias-less Conv, an Add of a [1, C, 1, 1] constant and an Identity; some
exporters write global average pooling as ReduceMean over H, W, a division by a constant as Div, and store
equal biases once. A quantizer between the Conv and its bias Add (or before a Relu behind an Identity) leaves
ONNX Runtime a float Add with a DequantizeLinear before and a QuantizeLinear after it, per convolution
(measured on PP-OCRv6 det: 90 float Adds, 156 Q / 158 DQ nodes left after ORT's optimiser). Every rewrite
here is exact in float arithmetic but Div -> Mul (one rounding).

Patterns that integer runtimes run faster as one fused float op (GELU spelled with Erf, LayerNorm spelled with
ReduceMean) are named by `fused_patterns.float_fused_nodes`, so the plan quantizes their inputs and outputs but
not the pieces between them (ONNX Runtime then fuses them into Gelu / LayerNormalization).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.onnx_toolbox import attrs, consumers, default_opset, drop_nodes, drop_unused_initializers

CONV_OPS = {"Conv": 0, "ConvTranspose": 1}  # op -> output-channel axis of its weight


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (modified in place) with bias Adds folded into their Conv and ReduceMean over the spatial axes
    of a 4-D tensor written as GlobalAveragePool (Identity nodes go first: `remove_identities`, before
    BatchNorm folding, which an Identity between Conv and BatchNormalization would block too)."""
    fold_bias_adds(model)
    unshare_biases(model)
    divisions_to_products(model)
    spatial_means_to_pooling(model)
    drop_unused_initializers(model.graph)
    return model


def _subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Names read inside If/Loop/Scan bodies (outer-scope reads that a rewrite must not rename)."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for body in bodies:
                names.update(name for inner in body.node for name in inner.input)
                names |= _subgraph_names(body)
    return names


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def remove_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop Identity nodes: readers read the Identity's input. One that produces a graph output renames its
    producer's output instead (when that is not a graph input or output itself), so output names stay."""
    graph = model.graph
    protected = _subgraph_names(graph)
    graph_inputs = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    producers = {out: node for node in graph.node for out in node.output}
    removed = set()
    for node in graph.node:
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.input) != 1:
            continue
        source, target = node.input[0], node.output[0]
        if target in protected or source in protected:
            continue
        if target in graph_outputs:
            producer = producers.get(source)
            if producer is None or source in graph_inputs or source in graph_outputs:
                continue
            producer.output[list(producer.output).index(source)] = target
            producers[target] = producer
            _rename_reads(graph, source, target)
        else:
            _rename_reads(graph, target, source)
        removed.add(id(node))
    drop_nodes(graph, removed)
    return model


def _per_channel_constant(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """The per-output-channel vector an Add constant adds to an [N, C, ...] tensor of `rank`, or None when it
    varies along another axis (then it is not a bias)."""
    if value.ndim > rank or value.size not in (1, channels):
        return None
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), np.float64)
    shape = (1,) * (rank - value.ndim) + value.shape  # numpy broadcasting aligns to the right
    if shape[1] != channels:
        return None
    return value.reshape(-1).astype(np.float64)


def fold_bias_adds(model: onnx.ModelProto) -> None:
    """Conv/ConvTranspose followed by an Add of a per-channel constant (its only reader) becomes one Conv whose
    bias includes the constant."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    readers_of = consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    protected = _subgraph_names(graph)
    removed = set()
    for conv in graph.node:
        if conv.op_type not in CONV_OPS or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        out = conv.output[0]
        readers = readers_of.get(out, [])
        if out in graph_outputs or out in protected or len(readers) != 1 or readers[0].op_type != "Add":
            continue
        add = readers[0]
        constant = next((name for name in add.input if name != out), None)
        if constant not in inits or list(add.input).count(out) != 1:
            continue
        weight = inits[conv.input[1]]
        channels = weight.dims[0] if conv.op_type == "Conv" else weight.dims[1] * attrs(conv).get("group", 1)
        vector = _per_channel_constant(numpy_helper.to_array(inits[constant]), channels, len(weight.dims))
        if vector is None or inits[constant].data_type != onnx.TensorProto.FLOAT:
            continue
        _add_to_bias(graph, conv, inits, readers_of, vector)
        conv.output[0] = add.output[0]
        removed.add(id(add))
    drop_nodes(graph, removed)


def _add_to_bias(graph, conv, inits, readers_of, vector: np.ndarray) -> None:
    """Add `vector` to the Conv's bias; a new bias initializer when it has none or shares it with other nodes."""
    bias_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
    if bias_name and bias_name in inits and len(readers_of.get(bias_name, [])) == 1:
        values = numpy_helper.to_array(inits[bias_name]).astype(np.float64) + vector
        inits[bias_name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), bias_name))
        return
    base = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name in inits else 0.0
    name = f"{conv.name or conv.output[0]}_bias"
    while name in inits:
        name += "_"
    tensor = numpy_helper.from_array((base + vector).astype(np.float32), name)
    graph.initializer.append(tensor)
    inits[name] = tensor
    if len(conv.input) == 2:
        conv.input.append(name)
    else:
        conv.input[2] = name


def unshare_biases(model: onnx.ModelProto) -> None:
    """Give each Conv/ConvTranspose/Gemm its own bias initializer. Exporters store equal constants once (all
    zero biases, or the equal biases of freshly initialised BatchNorms), but an integer bias is quantized with
    its own layer's input scale x weight scale: a shared one fits only the first reader, and ONNX Runtime
    then runs the others in float (7 of MobileNetV2's 52 convolutions)."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        name = node.input[2]
        if name not in seen:
            seen.add(name)
            continue
        copy_name = f"{name}_{node.name or node.output[0]}"
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = copy_name
        graph.initializer.append(copy)
        inits[copy_name] = copy
        node.input[2] = copy_name


def divisions_to_products(model: onnx.ModelProto) -> None:
    """Div by a float constant without zeros becomes Mul by its reciprocal (within one rounding of the
    quotient): Mul has integer kernels (QLinearMul), Div none (a hard-swish's / 6, a GELU's / sqrt 2)."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type != "Div" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        divisor = inits[node.input[1]]
        values = numpy_helper.to_array(divisor)
        if divisor.data_type != onnx.TensorProto.FLOAT or not np.all(values != 0):
            continue
        name = f"{node.input[1]}_reciprocal"
        if name not in inits:
            inits[name] = numpy_helper.from_array((1.0 / values.astype(np.float64)).astype(np.float32), name)
            graph.initializer.append(inits[name])
        node.op_type = "Mul"
        node.input[1] = name


def spatial_means_to_pooling(model: onnx.ModelProto) -> None:
    """ReduceMean over axes (2, 3) of a 4-D tensor, keeping dims, is GlobalAveragePool (which has an integer
    kernel in ONNX Runtime, TFLite and TensorRT; ReduceMean has none in ONNX Runtime)."""
    ranks = _ranks(model)
    opset = default_opset(model, 13)
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        values = attrs(node)
        axes = values.get("axes")
        if axes is None and opset >= 18 and len(node.input) > 1:
            axes = _initializer_values(model, node.input[1])
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3] or values.get("keepdims", 1) != 1:
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        del node.input[1:]


def _initializer_values(model: onnx.ModelProto, name: str) -> list[int] | None:
    init = next((i for i in model.graph.initializer if i.name == name), None)
    return None if init is None else [int(v) for v in numpy_helper.to_array(init).reshape(-1)]


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an uninferable model keeps its ReduceMeans
        return {}
    graph = inferred.graph
    return {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in (*graph.input, *graph.value_info, *graph.output)
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape")
    }
