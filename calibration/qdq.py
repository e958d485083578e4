"""Write a QDQ ONNX model from a float model and its QuantSpec.

QuantizeLinear/DequantizeLinear pairs go on the activation tensors the QuantSpec lists, weights are
stored as int8 with a DequantizeLinear, biases as int32 (scale = input scale x weight scale). ONNX
Runtime fuses DQ -> op -> Q into integer kernels (QLinearConv, QGemm, ...) and TensorRT reads the
same graph as explicit quantization. Nothing here knows how the QuantSpec was computed.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.calibration.graph import FUSED_ACTIVATIONS, SHARED_SCALE_OPS, plan_quantization
from edgekit.calibration.quant_spec import QuantSpec, QuantSpecError, TensorQuant
from edgekit.onnx_toolbox import DEFAULT_DOMAINS, SHAPE_OPS, consumers, drop_unused_initializers

QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis attribute)
INITIALIZER_KINDS = ("weight", "bias", "constant")  # spec entries stored as integers with a DequantizeLinear


def _np_dtype(name: str) -> type:
    return {"uint8": np.uint8, "int8": np.int8, "int32": np.int32}[name]


def _scale_array(entry: TensorQuant) -> np.ndarray:
    return np.asarray(entry.scale, dtype=np.float32)


def _zero_point_array(entry: TensorQuant) -> np.ndarray:
    return np.asarray(entry.zero_point, dtype=_np_dtype(entry.dtype))


def quantize_initializer(values: np.ndarray, entry: TensorQuant) -> np.ndarray:
    """Integer values of a weight or bias, from the scales the QuantSpec holds."""
    scale = _scale_array(entry).astype(np.float64)
    zero_point = np.asarray(entry.zero_point, dtype=np.int64)
    if entry.axis is not None:
        shape = [1] * values.ndim
        shape[entry.axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(_np_dtype(entry.dtype))
    low = -127 if entry.kind == "weight" and entry.dtype == "int8" else info.min
    q = np.round(values.astype(np.float64) / scale) + zero_point
    return np.clip(q, low, info.max).astype(_np_dtype(entry.dtype))


def write_qdq(model: onnx.ModelProto, spec: QuantSpec) -> onnx.ModelProto:
    """A copy of `model` (already prepared: BatchNorm folded, nodes named) with the spec's quantizers."""
    qdq = onnx.ModelProto()
    qdq.CopyFrom(model)
    graph = qdq.graph
    consumers_of = consumers(graph)  # read before any rewrite
    readers_of = quantized_readers(model, spec, consumers_of)
    new_inits: list[onnx.TensorProto] = []
    dq_nodes = _dequantize_weights(graph, spec, consumers_of, new_inits)
    inserts = _quantize_activations(graph, spec, readers_of, new_inits)

    # Rebuild the node list in topological order: weight DQs and graph-input quantizers first.
    ordered = [*dq_nodes, *inserts.get(-1, [])]
    for i, node in enumerate(graph.node):
        ordered.append(node)
        ordered.extend(inserts.get(i, []))
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_inits)
    drop_unused_initializers(graph)
    for opset in qdq.opset_import:
        if opset.domain in DEFAULT_DOMAINS and opset.version < QDQ_OPSET:
            opset.version = QDQ_OPSET
    return qdq


def _qparams(name: str, entry: TensorQuant, new_inits: list[onnx.TensorProto]) -> tuple[str, str]:
    """Add the scale and zero-point initializers of tensor `name` to `new_inits`; their names."""
    scale_name, zp_name = f"{name}_scale", f"{name}_zero_point"
    new_inits.append(numpy_helper.from_array(_scale_array(entry), scale_name))
    new_inits.append(numpy_helper.from_array(_zero_point_array(entry), zp_name))
    return scale_name, zp_name


def _read_instead(readers: list[onnx.NodeProto], name: str, replacement: str) -> None:
    for reader in readers:
        for i, input_name in enumerate(reader.input):
            if input_name == name:
                reader.input[i] = replacement


def _dequantize_weights(
    graph: onnx.GraphProto,
    spec: QuantSpec,
    consumers_of: dict[str, list[onnx.NodeProto]],
    new_inits: list[onnx.TensorProto],
) -> list[onnx.NodeProto]:
    """Weights and biases: each initializer read by a quantized node gets its integer form (in `new_inits`) and
    a DequantizeLinear (returned) that its quantized readers read instead."""
    inits = {init.name: init for init in graph.initializer}
    dq_nodes: list[onnx.NodeProto] = []
    for name, entry in sorted(spec.tensors.items()):  # sorted: the same spec always writes the same bytes
        if entry.kind not in INITIALIZER_KINDS:
            continue
        if name not in inits:
            raise QuantSpecError(f"QuantSpec lists {entry.kind} {name!r}, which the model does not have")
        readers = [n for n in consumers_of.get(name, []) if n.name not in spec.float_nodes]
        if not readers:
            continue
        values = numpy_helper.to_array(inits[name])
        quant_name = f"{name}_quantized"
        new_inits.append(numpy_helper.from_array(quantize_initializer(values, entry), quant_name))
        scale_name, zp_name = _qparams(name, entry, new_inits)
        dq_out = f"{name}_dequantized"
        attrs = {"axis": entry.axis} if entry.axis is not None else {}
        dq_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [quant_name, scale_name, zp_name],
                [dq_out],
                name=f"{name}_DequantizeLinear",
                **attrs,
            )
        )
        _read_instead(readers, name, dq_out)
    return dq_nodes


def quantized_readers(
    model: onnx.ModelProto, spec: QuantSpec, consumers_of: dict[str, list[onnx.NodeProto]] | None = None
) -> dict[str, list[onnx.NodeProto]]:
    """For each activation of the spec, the readers that read it after its quantizer (none: the tensor stays
    float). Quantized readers do; so do other ops (Identity, Reshape, ...) when the producer runs quantized or
    moves quantized values (Reshape, MaxPool, ...), so ORT still finds op -> Q to fuse. Readers kept float,
    and other ops after a float producer, read the float tensor, except float nodes that keep their inputs'
    quantizers (a mixed-range concat, policy "branches")."""
    graph = model.graph
    consumers_of = consumers(graph) if consumers_of is None else consumers_of
    float_nodes, reading_quantized = spec.float_nodes, spec.float_nodes_reading_quantized
    producers = {out: node for node in graph.node for out in node.output}
    # the nodes that run quantized: not the insides of GELU/LayerNorm or a MatMul's bias Add (graph.py)
    planned = set(plan_quantization(model, float_nodes=float_nodes).nodes)
    constants = {init.name for init in graph.initializer}

    def reads_quantized(reader: onnx.NodeProto, name: str) -> bool:
        if reader.op_type in SHAPE_OPS:
            return False  # the float tensor serves: a second reader of the DequantizeLinear stops ORT's fusion
        if reader.name in float_nodes:
            return reader.name in reading_quantized
        if reader.name in planned:
            return True
        return produced_quantized(name)

    @cache
    def produced_quantized(name: str) -> bool:
        """A quantized node made it (directly, or behind the Relu/Clip or bias Add quantized as its output), or a
        data-movement op that itself reads its input quantized."""
        producer = producers.get(name)
        if producer is None or producer.name in float_nodes:
            return False
        if producer.name in planned:
            return True
        computed = [i for i in producer.input if i and i not in constants]
        if producer.op_type in SHARED_SCALE_OPS:
            return producer.input[0] in spec.tensors and reads_quantized(producer, producer.input[0])
        if producer.op_type in FUSED_ACTIVATIONS or (producer.op_type == "Add" and len(computed) == 1):
            return len(computed) == 1 and produced_quantized(computed[0])
        return False

    return {
        name: [n for n in consumers_of.get(name, []) if reads_quantized(n, name)]
        for name, entry in spec.tensors.items()
        if entry.kind == "activation"
    }


def quantized_tensors(model: onnx.ModelProto, spec: QuantSpec) -> set[str]:
    """The activations, weights and biases that `write_qdq` puts quantizers on (what other targets replay)."""
    graph = model.graph
    consumers_of = consumers(graph)
    activations = {name for name, readers in quantized_readers(model, spec, consumers_of).items() if readers}
    initializers = {
        name
        for name, entry in spec.tensors.items()
        if entry.kind in INITIALIZER_KINDS and any(n.name not in spec.float_nodes for n in consumers_of.get(name, []))
    }
    return activations | initializers


def _quantize_activations(
    graph: onnx.GraphProto,
    spec: QuantSpec,
    readers_of: dict[str, list[onnx.NodeProto]],
    new_inits: list[onnx.TensorProto],
) -> dict[int, list[onnx.NodeProto]]:
    """Activations: Q -> DQ right after the tensor is produced, returned by the index of the producer (-1: a
    graph input); the readers `quantized_readers` names read the DQ output."""
    producer_index = {out: i for i, node in enumerate(graph.node) for out in node.output}
    inserts: dict[int, list[onnx.NodeProto]] = {}
    for name, entry in sorted(spec.tensors.items()):  # sorted: the same spec always writes the same bytes
        readers = readers_of.get(name)
        if not readers:
            continue
        scale_name, zp_name = _qparams(name, entry, new_inits)
        q_out, dq_out = f"{name}_quantized", f"{name}_dequantized"
        pair = [
            helper.make_node("QuantizeLinear", [name, scale_name, zp_name], [q_out], name=f"{name}_QuantizeLinear"),
            helper.make_node(
                "DequantizeLinear", [q_out, scale_name, zp_name], [dq_out], name=f"{name}_DequantizeLinear"
            ),
        ]
        inserts.setdefault(producer_index.get(name, -1), []).extend(pair)
        _read_instead(readers, name, dq_out)
    return inserts
