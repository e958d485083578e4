"""Accuracy passes before quantization: cross-layer equalization and empirical bias correction.

Both change the float weights, so both are recorded in the QuantSpec (`transforms`) as plain numbers
and replayed by `apply_transforms`: a target rebuilding the QDQ model from (model, QuantSpec) gets the
same weights calibration saw.

- Cross-layer equalization (Nagel et al., "Data-Free Quantization", ICCV 2019): for Conv -> ReLU -> Conv
  chains (depthwise included), scale output channel i of the first conv by 1/s_i and input channel i
  of the second by s_i, s_i = sqrt(r1_i / r2_i), so both weight ranges meet in the middle; ReLU is
  positively homogeneous, so outputs are unchanged. Clip/ReLU6 is not, so such pairs are skipped.
- Empirical bias correction: the mean per-channel difference between float and quantized outputs of
  each quantized Conv/Gemm, measured on calibration samples, is added to its bias.

AdaRound's learned rounding (calibration/adaround.py) is replayed here too, between the two.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import QuantSpecError
from edgekit.onnx_toolbox import consumers

HOMOGENEOUS = {"Relu"}  # activations f with f(x / s) = f(x) / s for s > 0


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    attribute = next((a for a in node.attribute if a.name == name), None)
    return onnx.helper.get_attribute_value(attribute) if attribute is not None else default


def equalization_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(first, second) Conv pairs joined by one ReLU (or nothing), each tensor read only by the next."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    consumers_of = consumers(graph)
    outputs = {o.name for o in graph.output}
    pairs = []
    for first in graph.node:
        if first.op_type != "Conv" or first.input[1] not in inits:
            continue
        tensor, chain = first.output[0], []
        while True:
            readers = consumers_of.get(tensor, [])
            if tensor in outputs or len(readers) != 1:
                break
            reader = readers[0]
            if reader.op_type in HOMOGENEOUS and not chain:
                chain.append(reader)
                tensor = reader.output[0]
                continue
            if reader.op_type == "Conv" and reader.input[0] == tensor and reader.input[1] in inits:
                groups = _attr(reader, "group", 1)
                weight = next(i for i in graph.initializer if i.name == reader.input[1])
                channels = weight.dims[0]
                if groups == 1 or groups == channels and weight.dims[1] == 1:
                    pairs.append((first, reader))
            break
    return pairs


def compute_equalization(model: onnx.ModelProto, iterations: int = 4) -> list[dict[str, Any]]:
    """Scales for every equalizable pair; applied in place to `model`, and returned for the QuantSpec."""
    inits = {i.name: i for i in model.graph.initializer}
    records: dict[tuple[str, str], np.ndarray] = {}
    pairs = equalization_pairs(model)
    for _ in range(iterations):
        for first, second in pairs:
            w1 = numpy_helper.to_array(inits[first.input[1]])
            w2 = numpy_helper.to_array(inits[second.input[1]])
            depthwise = _attr(second, "group", 1) != 1
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = np.abs(w2).reshape(w2.shape[0], -1).max(axis=1) if depthwise else np.abs(w2).max(axis=(0, 2, 3))
            scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-12)), 1.0).astype(np.float32)
            _apply_pair(inits, first, second, scale)
            key = (first.name, second.name)
            records[key] = records.get(key, np.ones_like(scale)) * scale
    return [{"first": a, "second": b, "scales": [float(v) for v in s]} for (a, b), s in records.items()]


def _apply_pair(inits: dict, first: onnx.NodeProto, second: onnx.NodeProto, scale: np.ndarray) -> None:
    def replace(name: str, values: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))

    w1 = numpy_helper.to_array(inits[first.input[1]])
    replace(first.input[1], w1 / scale.reshape(-1, 1, 1, 1))
    if len(first.input) > 2 and first.input[2] in inits:
        replace(first.input[2], numpy_helper.to_array(inits[first.input[2]]) / scale)
    w2 = numpy_helper.to_array(inits[second.input[1]])
    if _attr(second, "group", 1) != 1:
        replace(second.input[1], w2 * scale.reshape(-1, 1, 1, 1))
    else:
        replace(second.input[1], w2 * scale.reshape(1, -1, 1, 1))


def apply_transforms(model: onnx.ModelProto, transforms: list[dict[str, Any]]) -> onnx.ModelProto:
    """Replay recorded transforms on a prepared float model (in place), in order."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for transform in transforms:
        if transform["kind"] == "equalize":
            for pair in transform["pairs"]:
                _apply_pair(inits, nodes[pair["first"]], nodes[pair["second"]], np.asarray(pair["scales"], np.float32))
        elif transform["kind"] == "adaround":
            from edgekit.calibration.adaround import replay

            replay(inits, transform)
        elif transform["kind"] == "bias_correction":
            for name, delta in transform["biases"].items():
                values = numpy_helper.to_array(inits[name]) + np.asarray(delta, np.float32)
                inits[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
        else:
            raise QuantSpecError(f"unknown transform {transform['kind']!r} in the QuantSpec; upgrade edgekit")
    return model


def bias_corrections(
    float_model: onnx.ModelProto,
    spec: Any,
    feeds: list[dict[str, np.ndarray]],
    reference_model: onnx.ModelProto | None = None,
) -> dict[str, list[float]]:
    """Per bias initializer: mean(float output) - mean(quantized output) of its Conv/Gemm, per channel.

    Layers are corrected one after another in graph order, each measured with every earlier correction
    already applied: correcting all at once from one measurement over-corrects deep networks (measured
    here on a MobileNetV2-style network: -19 dB instead of a gain), because each layer's shift also
    moves every layer after it. `float_model` is corrected in place. The float outputs come from
    `reference_model` when given (the float weights before AdaRound snapped `float_model`'s onto their grid).
    """
    from edgekit.calibration.graph import session_with_outputs
    from edgekit.calibration.qdq import write_qdq

    inits = {i.name: i for i in float_model.graph.initializer}
    targets = [
        n
        for n in float_model.graph.node
        if n.op_type in ("Conv", "Gemm")
        and len(n.input) > 2
        and n.input[2] in inits
        and n.input[2] in spec.tensors
        and n.name not in spec.float_nodes
    ]
    if not targets or not feeds:
        return {}
    names = [n.output[0] for n in targets]
    float_session = session_with_outputs(float_model if reference_model is None else reference_model, names)
    reference = [float_session.run(names, feed) for feed in feeds]  # float outputs do not change with biases
    corrections: dict[str, list[float]] = {}
    for index, node in enumerate(targets):
        qdq_session = session_with_outputs(write_qdq(float_model, spec), [node.output[0]])
        total = None
        for feed, ref in zip(feeds, reference, strict=True):
            (test,) = qdq_session.run([node.output[0]], feed)
            r = ref[index]
            axes = (0, *range(2, r.ndim)) if r.ndim > 2 else (0,)
            delta = (r.astype(np.float64) - test).mean(axis=axes)
            total = delta if total is None else total + delta
        delta = (total / len(feeds)).astype(np.float32)
        bias = node.input[2]
        corrections[bias] = [float(v) for v in delta]
        values = numpy_helper.to_array(inits[bias]) + delta
        inits[bias].CopyFrom(numpy_helper.from_array(values.astype(np.float32), bias))
    return corrections
