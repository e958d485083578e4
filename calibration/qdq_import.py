"""Read a QDQ ONNX model (from QAT, or any QDQ export) back into a float model plus a QuantSpec.

`split_qdq` removes QuantizeLinear -> DequantizeLinear pairs on activations and the DequantizeLinear
(with or without a QuantizeLinear before it) on weights, restoring float initializers that hold the
dequantized values. The scales it finds are keyed by the float model's tensor names, so
`quant_spec_from_qdq` gives a QuantSpec that targets consume exactly as a calibration result:
`write_qdq(prepare_float_model(float_model, spec), spec)` writes the same quantizers back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.calibration.graph import WEIGHT_OPS, constants_to_initializers
from edgekit.calibration.quant_spec import QuantSpec, QuantSpecError, TensorQuant
from edgekit.onnx_toolbox import DEFAULT_DOMAINS, consumers, drop_unused_initializers


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers, plus outputs of Cast nodes on them (torch casts its zero points to u8/s8) and of
    Identity nodes (the exporter shares equal constants, e.g. two layers' all-zero zero points)."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in values:
            to = next(a.i for a in node.attribute if a.name == "to")
            values[node.output[0]] = values[node.input[0]].astype(helper.tensor_dtype_to_np_dtype(to))
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> np.ndarray:
    scale, zero_point = scale.astype(np.float32), zero_point.astype(np.int64)
    if axis is not None:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((q.astype(np.int64) - zero_point) * scale).astype(np.float32)


def _quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> np.ndarray:
    """QuantizeLinear as ONNX defines it: round half to even, saturate to the zero point's dtype."""
    dtype = zero_point.dtype
    scale_f, zp = scale.astype(np.float32), zero_point.astype(np.int64)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale_f, zp = scale_f.reshape(shape), zp.reshape(shape)
    info = np.iinfo(dtype)
    return np.clip(np.rint(x.astype(np.float32) / scale_f) + zp, info.min, info.max).astype(dtype)


def split_qdq(qdq_model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, dict[str, Any]]]:
    """The float model and, per float tensor name, what quantized it.

    Each entry: {"kind": "activation" | "weight", "dtype": "uint8" | "int8", "scale": ndarray,
    "zero_point": ndarray, "axis": int | None}. Weights become float initializers holding their
    dequantized values, so quantizing them again with the same scale gives back the same integers.
    """
    model = onnx.ModelProto()
    model.CopyFrom(qdq_model)
    constants_to_initializers(model)
    graph = model.graph
    reader = _QdqReader(graph)
    for dq in graph.node:
        if dq.op_type == "DequantizeLinear" and dq.domain in DEFAULT_DOMAINS:
            reader.take(dq)
    _remove_quantizers(graph, reader.removed, reader.rename)
    return model, reader.found


class _QdqReader:
    """Walks the DequantizeLinear nodes of a graph: records what each quantizes, restores float weights, and
    collects the nodes to remove and the tensor names to rewire."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.values = _constant_values(graph)
        self.inits = {init.name: init for init in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.consumers_of = consumers(graph)
        self.found: dict[str, dict[str, Any]] = {}
        self.removed: set[int] = set()
        self.rename: dict[str, str] = {}  # DQ output -> the float tensor that replaces it

    def take(self, dq: onnx.NodeProto) -> None:
        scale, zero_point, axis = self._qparams(dq)
        if axis is not None and axis < 0:
            axis += len(self.values[dq.input[0]].shape) if dq.input[0] in self.values else 0
        source = dq.input[0]
        q = self.producers.get(source)
        if q is not None and q.op_type == "QuantizeLinear":
            self._take_pair(q, dq, (scale, zero_point, axis))
        elif source in self.inits:  # an integer weight stored with its DequantizeLinear
            float_name = dq.output[0]
            dequantized = _dequantize(numpy_helper.to_array(self.inits[source]), scale, zero_point, axis)
            self.graph.initializer.append(numpy_helper.from_array(dequantized, float_name))
            self.inits[float_name] = self.graph.initializer[-1]
            self._record(float_name, "weight", scale, zero_point, axis)
            self.removed.add(id(dq))
        else:
            raise QuantSpecError(
                f"DequantizeLinear {dq.name!r} reads {source!r}, neither a QuantizeLinear nor a weight"
            )

    def _take_pair(
        self, q: onnx.NodeProto, dq: onnx.NodeProto, qparams: tuple[np.ndarray, np.ndarray, int | None]
    ) -> None:
        """A QuantizeLinear -> DequantizeLinear pair: on an activation, or on a float weight."""
        scale, zero_point, axis = qparams
        float_name = q.input[0]
        if float_name in self.inits:  # a float weight quantized in the graph: store what Q -> DQ computes
            float_values = numpy_helper.to_array(self.inits[float_name])
            q_scale, q_zero_point, q_axis = self._qparams(q)
            dequantized = _dequantize(_quantize(float_values, q_scale, q_zero_point, q_axis), scale, zero_point, axis)
            self.inits[float_name].CopyFrom(numpy_helper.from_array(dequantized, float_name))
            self._record(float_name, "weight", scale, zero_point, axis)
        else:
            self._record(float_name, "activation", scale, zero_point, axis)
        self.removed.add(id(dq))
        if all(c.op_type == "DequantizeLinear" for c in self.consumers_of.get(dq.input[0], [])):
            self.removed.add(id(q))
        self.rename[dq.output[0]] = float_name

    def _qparams(self, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, int | None]:
        if node.input[1] not in self.values:
            raise QuantSpecError(f"{node.op_type} {node.name!r} has a computed scale; only constant scales import")
        scale = np.asarray(self.values[node.input[1]], dtype=np.float32)
        if len(node.input) > 2 and node.input[2]:
            zero_point = np.asarray(self.values[node.input[2]])
        else:
            zero_point = np.zeros(scale.shape, dtype=np.uint8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.size > 1 else None
        return scale, zero_point, axis

    def _record(self, name: str, kind: str, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> None:
        entry = {"kind": kind, "dtype": zero_point.dtype.name, "scale": scale, "zero_point": zero_point, "axis": axis}
        previous = self.found.get(name)
        if previous is not None and not (
            np.array_equal(previous["scale"], scale) and np.array_equal(previous["zero_point"], zero_point)
        ):
            raise QuantSpecError(f"tensor {name!r} is quantized twice with different scales; cannot import")
        self.found[name] = entry


def _remove_quantizers(graph: onnx.GraphProto, removed: set[int], rename: dict[str, str]) -> None:
    """Drop the removed nodes, let their readers read the float tensors, keep the graph's output names (an
    Identity), and drop what feeds nothing now."""
    graph_outputs = {o.name for o in graph.output}
    identities = [
        helper.make_node("Identity", [new], [old], name=f"{old}_Identity")
        for old, new in rename.items()
        if old in graph_outputs
    ]
    kept = [node for node in graph.node if id(node) not in removed]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend([*kept, *identities])
    # Casts of zero points feed nothing now
    used = {name for node in graph.node for name in node.input} | graph_outputs
    live = [n for n in graph.node if n.op_type != "Cast" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(live)
    drop_unused_initializers(graph)
    del graph.value_info[:]  # shapes of removed tensors


def _scheme_of(found: dict[str, dict[str, Any]], float_model: onnx.ModelProto) -> dict[str, str]:
    acts = [e for e in found.values() if e["kind"] == "activation"]
    if acts and acts[0]["dtype"] == "uint8":
        activations = "uint8_asym"
    elif acts and all(int(np.abs(e["zero_point"]).max()) == 0 for e in acts):
        activations = "int8_sym"
    else:
        activations = "int8_asym" if acts else "uint8_asym"
    inits = {init.name: init for init in float_model.graph.initializer}
    weights = [(n, e) for n, e in found.items() if e["kind"] == "weight"]
    largest = 0
    for name, entry in weights:
        q = _quantize(numpy_helper.to_array(inits[name]), entry["scale"], entry["zero_point"], entry["axis"])
        largest = max(largest, int(np.abs(q.astype(np.int64)).max()) if q.size else 0)
    bits = "int7" if weights and largest <= 63 else "int8"
    per_channel = any(e["axis"] is not None for _, e in weights)
    return {"activations": activations, "weights": f"{bits}_{'per_channel' if per_channel else 'per_tensor'}"}


def quant_spec_from_qdq(
    qdq_model: onnx.ModelProto,
    *,
    source_model_sha256: str | None = None,
    scheme: dict[str, str] | None = None,
    created_by: str = "qat",
) -> tuple[onnx.ModelProto, QuantSpec]:
    """The float model and the QuantSpec that the QDQ model's quantizers amount to.

    `source_model_sha256` defaults to the returned float model's own hash (`Model(float_model).sha256`);
    pass it when the float model will be changed (metadata does not count) before it is built.
    `scheme` defaults to what the quantizers show (uint8 -> uint8_asym; weights within +-63 -> int7).
    Biases of Conv/Gemm with quantized input and weight get int32 entries, as calibration writes them.
    """
    float_model, found = split_qdq(qdq_model)
    if source_model_sha256 is None:
        from edgekit.model import Model

        source_model_sha256 = Model(float_model).sha256
    spec = QuantSpec(
        source_model_sha256=source_model_sha256,
        scheme=scheme or _scheme_of(found, float_model),
        calibration={"observer": "qat", "settings": {}, "samples": 0, "data": "quantization-aware training"},
        created_by=created_by,
    )
    for name, entry in found.items():
        scale, zero_point, axis = entry["scale"], entry["zero_point"], entry["axis"]
        per_channel = axis is not None
        if entry["kind"] == "weight" and entry["dtype"] != "int8":
            raise QuantSpecError(f"weight {name!r} is quantized to {entry['dtype']}; targets take int8 weights")
        spec.tensors[name] = TensorQuant(
            entry["kind"],
            entry["dtype"],
            [float(s) for s in scale.reshape(-1)] if per_channel else float(scale.reshape(-1)[0]),
            [int(z) for z in zero_point.reshape(-1)] if per_channel else int(zero_point.reshape(-1)[0]),
            axis=axis,
            observer="qat",
        )
    inits = {init.name for init in float_model.graph.initializer}
    for node in float_model.graph.node:
        if node.op_type not in WEIGHT_OPS or node.op_type == "MatMul" or len(node.input) < 3:
            continue
        act, weight, bias = spec.tensors.get(node.input[0]), spec.tensors.get(node.input[1]), node.input[2]
        if act is None or weight is None or bias not in inits or act.kind != "activation" or weight.kind != "weight":
            continue
        scale = (np.float32(act.scale) * np.asarray(weight.scale, dtype=np.float32)).astype(np.float32)
        per_channel = scale.ndim == 1
        spec.tensors[bias] = TensorQuant(
            "bias",
            "int32",
            [float(s) for s in scale] if per_channel else float(scale),
            [0] * len(scale) if per_channel else 0,
            axis=0 if per_channel else None,
        )
    return float_model, spec
