"""Inspect a Model: per-layer output shapes, parameters and MACs, totals, and what each target cannot run.

What is counted
---------------
* **Parameters** of a layer: the elements of the constant tensors the node reads, i.e. initializers and
  outputs of `Constant` nodes (some exporters, PaddlePaddle among them, store weights that way), including
  those read inside an If/Loop/Scan body. A `Constant` node itself owns no parameters; its reader does.
  Small tensors (a Reshape's target shape, a Clip bound) count too, like in every ONNX tool, so the total
  equals the size of all constant data the graph uses. Each tensor counts once in the totals, even when
  several nodes read it.
* **MACs** (multiply-accumulates, one multiply plus one add) at the input shapes the caller gives; a
  symbolic first dimension of an input of rank >= 2 is taken as batch = 1, so MACs are per sample:

  - Conv, ConvInteger, QLinearConv (and com.microsoft FusedConv): out_elements * (C_in / group) * prod(kernel),
    so depthwise convolutions cost out_elements * prod(kernel);
  - ConvTranspose: in_elements * (C_out / group) * prod(kernel);
  - Gemm (and FusedGemm): M * N * K;
  - MatMul, MatMulInteger, QLinearMatMul (and FusedMatMul), batched or not: out_elements * K;
  - Einsum with two operands and no ellipsis: the product of the sizes of all its letters;
  - RNN, GRU, LSTM: seq_len * batch * (elements of W + elements of R), the gate matrix products.

  Every other op counts 0: elementwise ops, activations, normalisation, pooling, resizing and data movement
  cost memory traffic rather than multiply-accumulates, and leaving them out keeps the total comparable to
  the figures papers quote (MobileNetV2 at 224x224: about 300 M MACs). A layer whose count depends on a
  dimension that stays symbolic reports `macs=None` with the note "unknown: dynamic shape" (pass
  `input_shapes`); If/Loop/Scan and unknown custom-domain ops report None with a "not counted" note.
  The totals give `macs` only when every layer is known (else None), and always `macs_known` (the sum of the
  known layers) with `macs_unknown_layers`.

Shapes come from ONNX shape inference on a light copy of the graph (weights replaced by their shapes, the
caller's input shapes fixed). Tensors computed from shapes (Shape -> Gather -> Concat -> Reshape, as torch
and Paddle exports write them) are folded to constants between rounds, so a dynamic model given concrete
input shapes gets concrete shapes throughout. The Model itself is never modified.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.errors import ModelError
from edgekit.onnx_toolbox import DEFAULT_DOMAINS, constant_value
from edgekit.onnx_toolbox import attrs as node_attrs

if TYPE_CHECKING:
    from edgekit.model import Model

Dim = int | str
Shape = list[Dim] | None  # None: the rank is unknown

UNKNOWN_DYNAMIC = "unknown: dynamic shape"
# Constant tensors up to this many elements stay in the light graph (shape arithmetic needs their values);
# larger ones become typed inputs, so inference never copies or serialises the weights.
_SMALL = 4096
_MAX_FOLD_ROUNDS = 64
# Ops folded to constants when all their inputs are known and small: what shape arithmetic is made of.
_FOLDABLE_OPS = (
    "Identity Cast CastLike Gather GatherElements Slice Concat Unsqueeze Squeeze Reshape Flatten Transpose "
    "Add Sub Mul Div Mod Neg Abs Floor Ceil Round Sqrt Pow Min Max Sum Clip Equal Less LessOrEqual Greater "
    "GreaterOrEqual Not And Or Where Range ConstantOfShape Expand Tile ReduceProd ReduceSum ReduceMin "
    "ReduceMax ArgMax ArgMin"
)
_FOLDABLE = frozenset(_FOLDABLE_OPS.split())
# com.microsoft ops that do no multiply-accumulate work in the sense counted here.
_ZERO_MAC_CUSTOM_OPS = (
    "Gelu FastGelu BiasGelu QuickGelu BiasAdd BiasSoftmax SkipLayerNormalization SimplifiedLayerNormalization "
    "SkipSimplifiedLayerNormalization LayerNormalization QuantizeLinear DequantizeLinear NhwcMaxPool QLinearAdd "
    "QLinearMul QLinearSigmoid QLinearLeakyRelu QLinearAveragePool QLinearGlobalAveragePool QLinearConcat "
    "QLinearSoftmax Rfft Irfft"
)
_ZERO_MAC_CUSTOM = frozenset(_ZERO_MAC_CUSTOM_OPS.split())


# -- the report ----------------------------------------------------------------------------------


@dataclass
class LayerInfo:
    """One graph node: its output shapes, the parameters it reads and its MACs (None when unknown)."""

    index: int
    name: str
    op_type: str
    domain: str
    output_shapes: list[Shape]
    params: int
    macs: int | None
    macs_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": int(self.index),
            "name": self.name,
            "op_type": self.op_type,
            "domain": self.domain,
            "output_shapes": [_json_shape(s) for s in self.output_shapes],
            "params": int(self.params),
            "macs": None if self.macs is None else int(self.macs),
            "macs_note": self.macs_note,
        }


@dataclass
class Totals:
    """Sums over the graph; `macs` is None unless every layer's MACs are known (see `macs_known`)."""

    nodes: int
    params: int
    param_bytes: int
    macs: int | None
    macs_known: int
    macs_unknown_layers: int
    op_histogram: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": int(self.nodes),
            "params": int(self.params),
            "param_bytes": int(self.param_bytes),
            "macs": None if self.macs is None else int(self.macs),
            "macs_known": int(self.macs_known),
            "macs_unknown_layers": int(self.macs_unknown_layers),
            "op_histogram": {op: int(n) for op, n in self.op_histogram.items()},
        }


@dataclass
class InspectReport:
    """Everything `edgekit inspect` shows: model facts, layers, totals and unsupported ops per target."""

    path: str | None
    file_size_bytes: int
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    preprocess: dict[str, Any] | None
    input_shapes: dict[str, list[int]]
    macs_input_shapes: dict[str, Shape]
    layers: list[LayerInfo]
    totals: Totals
    unsupported: dict[str, dict[str, int]]
    target_errors: dict[str, str]
    notes: list[str]
    # target -> accelerator -> ops it hands back to the CPU (e.g. android-tflite -> nnapi -> {"MatMul": 1})
    fallbacks: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    # target -> its detailed accelerator readiness report (rules, sources, nodes), e.g. ios-coreml's ANE report
    accelerator_reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict with stable keys (plain ints, strings, lists and dicts only)."""
        return {
            "version": 1,
            "path": self.path,
            "file_size_bytes": int(self.file_size_bytes),
            "ir_version": int(self.ir_version),
            "producer": self.producer,
            "opsets": {domain: int(v) for domain, v in self.opsets.items()},
            "inputs": [_json_io(t) for t in self.inputs],
            "outputs": [_json_io(t) for t in self.outputs],
            "preprocess": self.preprocess,
            "input_shapes": {name: [int(d) for d in dims] for name, dims in self.input_shapes.items()},
            "macs_input_shapes": {name: _json_shape(s) for name, s in self.macs_input_shapes.items()},
            "totals": self.totals.to_dict(),
            "unsupported": {t: {op: int(n) for op, n in ops.items()} for t, ops in self.unsupported.items()},
            "target_errors": dict(self.target_errors),
            "fallbacks": {
                t: {a: {op: int(n) for op, n in ops.items()} for a, ops in by.items()}
                for t, by in self.fallbacks.items()
            },  # fmt: skip
            "accelerator_reports": {
                t: {k: v for k, v in r.items() if k != "lines"} for t, r in self.accelerator_reports.items()
            },  # fmt: skip
            "notes": list(self.notes),
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _json_shape(shape: Shape) -> list[int | str] | None:
    if shape is None:
        return None
    return [d if isinstance(d, str) else int(d) for d in shape]


def _json_io(tensor: dict[str, Any]) -> dict[str, Any]:
    return {"name": tensor["name"], "shape": _json_shape(tensor["shape"]), "dtype": tensor["dtype"]}


# -- the engine ----------------------------------------------------------------------------------


def inspect_model(
    model: Model, *, input_shapes: dict[str, list[int]] | None = None, targets: list[str] | None = None
) -> InspectReport:
    """Inspect `model`: one LayerInfo per node of the main graph (graph order), totals and model facts.

    `input_shapes` fixes the dims of named inputs (all of them, positive ints) before shape inference, so
    a dynamic model (e.g. [?, 3, ?, ?]) gets concrete shapes and MACs. A symbolic first dim of an input of
    rank >= 2 that the caller leaves open is taken as batch = 1 for the MACs only; the shapes shown keep it
    symbolic. See the module docstring for what is counted. `targets` limits the per-target checks to those
    (default: every registered target) and adds each one's detailed accelerator report (ios-coreml: the ANE).
    """
    proto = model.proto
    graph = proto.graph
    fixed = _check_input_shapes(proto, input_shapes or {})
    notes: list[str] = []

    shapes, shape_notes = _resolve_shapes(proto, fixed)
    notes += shape_notes
    macs_fixed = dict(fixed)
    for value in _real_inputs(proto):
        shape = _shape_of(value)
        if value.name not in fixed and shape is not None and len(shape) >= 2 and not isinstance(shape[0], int):
            macs_fixed[value.name] = [1] + [None] * (len(shape) - 1)
            notes.append(f"MACs are per sample: the first dim {shape[0]!r} of input {value.name!r} is taken as 1")
    if macs_fixed == fixed:
        mac_shapes = shapes
    else:
        mac_shapes, shape_notes = _resolve_shapes(proto, macs_fixed)
        notes += [n for n in shape_notes if n not in notes]
    macs_input_shapes = {v.name: mac_shapes.get(v.name, _shape_of(v)) for v in _real_inputs(proto)}

    constants = _constant_sizes(graph)
    layers: list[LayerInfo] = []
    read: set[str] = set()
    for index, node in enumerate(graph.node):
        names = set(_read_names(node)) & constants.keys()
        read |= names
        macs, note = _node_macs(node, mac_shapes)
        layers.append(
            LayerInfo(
                index=index,
                name=node.name or f"{node.op_type}_{index}",
                op_type=node.op_type,
                domain=node.domain if node.domain not in DEFAULT_DOMAINS else "",
                output_shapes=[shapes.get(out) for out in node.output if out],
                params=sum(constants[n][0] for n in names),
                macs=macs,
                macs_note=note,
            )
        )

    unknown = sum(1 for layer in layers if layer.macs is None)
    known = sum(layer.macs for layer in layers if layer.macs is not None)
    histogram = Counter(_op_label(node) for node in graph.node)
    totals = Totals(
        nodes=len(graph.node),
        params=sum(constants[n][0] for n in read),
        param_bytes=sum(constants[n][1] for n in read),
        macs=known if unknown == 0 else None,
        macs_known=known,
        macs_unknown_layers=unknown,
        op_histogram=dict(sorted(histogram.items(), key=lambda item: (-item[1], item[0]))),
    )
    unsupported, fallbacks, reports, target_errors = _unsupported_by_target(proto, targets)

    return InspectReport(
        path=str(model.path) if model.path else None,
        file_size_bytes=proto.ByteSize(),
        ir_version=int(proto.ir_version),
        producer=" ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        opsets={(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        inputs=[_io_dict(v) for v in _real_inputs(proto)],
        outputs=[_io_dict(v) for v in graph.output],
        preprocess=model.preprocess.to_dict() if model.preprocess is not None else None,
        input_shapes={name: [int(d) for d in dims] for name, dims in fixed.items()},
        macs_input_shapes=macs_input_shapes,
        layers=layers,
        totals=totals,
        unsupported=unsupported,
        target_errors=target_errors,
        notes=notes,
        fallbacks=fallbacks,
        accelerator_reports=reports,
    )


def _unsupported_by_target(proto: onnx.ModelProto, names: list[str] | None) -> tuple[
    dict[str, dict[str, int]], dict[str, dict[str, dict[str, int]]], dict[str, dict[str, Any]], dict[str, str]
]:  # fmt: skip
    """Ops each target cannot run and those its accelerators hand back to the CPU, and (for targets named in
    `names`) the detailed accelerator reports; a target that fails to load is reported, not fatal."""
    from edgekit.targets import get_target, target_names

    unsupported: dict[str, dict[str, int]] = {}
    fallbacks: dict[str, dict[str, dict[str, int]]] = {}
    reports: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    unknown = sorted(set(names or ()) - set(target_names()))
    if unknown:
        get_target(unknown[0])  # the TargetError that lists the known targets
    for name in names or target_names():
        try:
            target = get_target(name)
            unsupported[name] = dict(target.unsupported_ops(proto))
            fallbacks[name] = target.accelerator_fallbacks(proto)
            report = target.accelerator_report(proto) if names else None
            if report is not None:
                reports[name] = report
        except Exception as exc:  # a backend's optional dependency may be missing; inspect still works
            errors[name] = f"{type(exc).__name__}: {exc}"
    return unsupported, fallbacks, reports, errors


def _op_label(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


# -- inputs and shapes ---------------------------------------------------------------------------


def _real_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in initializers]


def _shape_of(value: onnx.ValueInfoProto) -> Shape:
    """Dims as ints, symbolic names, or "?" (no dim, or a negative dim some exporters write); None: no rank."""
    if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append("?")
    return dims


def _io_dict(value: onnx.ValueInfoProto) -> dict[str, Any]:
    elem_type = value.type.tensor_type.elem_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        dtype = onnx.TensorProto.DataType.Name(elem_type).lower()
    return {"name": value.name, "shape": _shape_of(value), "dtype": dtype}


def _check_input_shapes(proto: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    declared = {v.name: _shape_of(v) for v in _real_inputs(proto)}
    checked: dict[str, list[int]] = {}
    for name, dims in input_shapes.items():
        if name not in declared:
            raise ModelError(
                f"input_shapes names {name!r}, which is not an input of the model; its inputs are: "
                f"{', '.join(declared) or 'none'}"
            )
        try:
            ints = [_positive_int(d) for d in dims]
        except (TypeError, ValueError) as exc:
            raise ModelError(f"input_shapes[{name!r}] = {list(dims)!r}: every dim must be a positive integer") from exc
        shape = declared[name]
        if shape is not None and len(shape) != len(ints):
            raise ModelError(f"input {name!r} has rank {len(shape)} ({shape}), but input_shapes gives {ints}")
        for axis, (have, want) in enumerate(zip(shape or [], ints, strict=False)):
            if isinstance(have, int) and have != want:
                raise ModelError(
                    f"input {name!r} has a fixed dim {axis} = {have} ({shape}), but input_shapes gives {want}; "
                    "only symbolic dims can be changed"
                )
        checked[name] = ints
    return checked


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a bool is not a dim")
    number = int(value) if isinstance(value, (int, np.integer)) else None
    if number is None or number <= 0:
        raise ValueError(f"{value!r} is not a positive integer")
    return number


def _resolve_shapes(proto: onnx.ModelProto, fixed: dict[str, list[int | None]]) -> tuple[dict[str, Shape], list[str]]:
    """Shape of every tensor of the main graph, with `fixed` input dims set (None keeps a dim as it is)."""
    work = _light_copy(proto, fixed)
    notes: list[str] = []
    shapes: dict[str, Shape] | None = None
    for _ in range(_MAX_FOLD_ROUNDS):
        try:
            inferred = _infer(work)
        except Exception as exc:  # onnx raises several types; the declared shapes are still worth showing
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(f"ONNX shape inference failed ({first}); shapes are those declared in the file")
            break
        shapes = _collect_shapes(inferred.graph)
        if not _fold_shape_tensors(work, shapes):
            break
    if shapes is None:
        shapes = _collect_shapes(proto.graph)
    return shapes, notes


def _infer(work: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(work, data_prop=True)
    except Exception:
        return onnx.shape_inference.infer_shapes(work)


def _collect_shapes(graph: onnx.GraphProto) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {init.name: [int(d) for d in init.dims] for init in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shape = _shape_of(value)
        if shape is not None or value.name not in shapes:
            shapes[value.name] = shape
    return shapes


def _light_copy(proto: onnx.ModelProto, fixed: dict[str, list[int | None]]) -> onnx.ModelProto:
    """The graph without its weights (large constants become typed inputs) and with `fixed` input dims."""
    work = onnx.ModelProto()
    work.ir_version = proto.ir_version
    work.opset_import.extend(proto.opset_import)
    work.functions.extend(proto.functions)
    source, graph = proto.graph, work.graph
    graph.name = source.name
    standard_outputs = {out for node in source.node if node.domain in DEFAULT_DOMAINS for out in node.output}

    graph.input.extend(source.input)
    for value in graph.input:
        if value.name in fixed:
            dims = value.type.tensor_type.shape.dim
            if len(dims) != len(fixed[value.name]):
                value.type.tensor_type.shape.ClearField("dim")
                dims.extend(onnx.TensorShapeProto.Dimension() for _ in fixed[value.name])
            for dim, want in zip(dims, fixed[value.name], strict=True):
                if want is not None:
                    dim.Clear()
                    dim.dim_value = int(want)
    input_names = {value.name for value in graph.input}

    def as_input(name: str, elem_type: int, dims: list[int]) -> None:
        value = helper.make_tensor_value_info(name, elem_type, dims)
        if name in input_names:  # IR < 4 lists initializers as inputs too
            for existing in graph.input:
                if existing.name == name:
                    existing.CopyFrom(value)
        else:
            graph.input.append(value)
            input_names.add(name)

    for init in source.initializer:
        if math.prod(init.dims) <= _SMALL:
            graph.initializer.append(init)
        else:
            as_input(init.name, init.data_type, list(init.dims))
    graph.sparse_initializer.extend(source.sparse_initializer)
    for node in source.node:
        tensor = _constant_tensor(node)
        if tensor is None:
            graph.node.append(node)
        elif math.prod(tensor.dims) > _SMALL:
            as_input(tensor.name, tensor.data_type, list(tensor.dims))
        else:
            graph.initializer.append(tensor)
    # Declared shapes of tensors that standard ops produce are dropped: inference recomputes them, and stale
    # ones from the exporter would clash with the fixed input dims. Custom ops keep theirs (nothing else knows).
    graph.value_info.extend(v for v in source.value_info if v.name not in standard_outputs)
    for value in source.output:
        copy = graph.output.add()
        copy.CopyFrom(value)
        if value.name in standard_outputs and copy.type.WhichOneof("value") == "tensor_type":
            copy.type.tensor_type.ClearField("shape")
    return work


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a numeric Constant node produces, named after its output; None for any other node."""
    value = constant_value(node) if node.output else None
    if value is None or value.dtype == object:
        return None  # strings and sparse values: inference reads the node itself
    return numpy_helper.from_array(value, node.output[0])


def _fold_shape_tensors(work: onnx.ModelProto, shapes: dict[str, Shape]) -> bool:
    """Replace nodes whose outputs are small computable constants by initializers; True if any was folded."""
    known: dict[str, np.ndarray] = {}
    for init in work.graph.initializer:
        try:
            known[init.name] = numpy_helper.to_array(init)
        except Exception:  # an exotic dtype: not a shape tensor anyway
            continue
    folded: list[tuple[onnx.NodeProto, list[np.ndarray]]] = []
    for node in work.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            continue
        values: list[np.ndarray] | None = None
        if node.op_type in ("Shape", "Size"):
            shape = shapes.get(node.input[0])
            if shape is None or not all(isinstance(d, int) for d in shape):
                continue
            if node.op_type == "Size":
                values = [np.array(math.prod(shape), dtype=np.int64)]
            else:
                attrs = {a.name: a.i for a in node.attribute}
                values = [np.array(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], dtype=np.int64)]
        elif node.op_type in _FOLDABLE:
            inputs = [name for name in node.input if name]
            if not all(name in known for name in inputs) or sum(known[n].size for n in inputs) > _SMALL:
                continue
            values = _evaluate(node, {name: known[name] for name in inputs}, work)
        if values is None or any(v.size > _SMALL for v in values):
            continue
        known.update(zip(node.output, values, strict=False))
        folded.append((node, values))
    if not folded:
        return False
    folded_ids = {id(node) for node, _ in folded}
    kept = [node for node in work.graph.node if id(node) not in folded_ids]
    for node, values in folded:
        for name, value in zip(node.output, values, strict=False):
            if name:
                work.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    del work.graph.node[:]
    work.graph.node.extend(kept)
    return True


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], work: onnx.ModelProto) -> list[np.ndarray] | None:
    """Run one node with ONNX's reference implementation, at the model's opset; None if it cannot."""
    from onnx.reference import ReferenceEvaluator

    try:
        inputs = [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            for name, value in feeds.items()
        ]
        outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
        graph = helper.make_graph([node], "fold", inputs, outputs)
        single = helper.make_model(graph, opset_imports=list(work.opset_import))
        results = ReferenceEvaluator(single).run(None, feeds)
        return [np.asarray(r) for r in results]
    except Exception:  # anything the reference evaluator cannot do simply stays unfolded
        return None


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


def _constant_sizes(graph: onnx.GraphProto) -> dict[str, tuple[int, int]]:
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
            sizes.update(_constant_sizes(subgraph))
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


def _read_names(node: onnx.NodeProto) -> list[str]:
    """Tensor names the node reads, including those read inside its subgraphs (and their initializers)."""
    names = [name for name in node.input if name]
    for subgraph in _subgraphs(node):
        names += [init.name for init in subgraph.initializer]
        for inner in subgraph.node:
            names += _read_names(inner)
            if inner.op_type == "Constant":
                names += [out for out in inner.output if out]
    return names


# -- MACs ----------------------------------------------------------------------------------------


def _ints(shape: Shape) -> list[int] | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return [int(d) for d in shape]


def _node_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> tuple[int | None, str | None]:
    """(MACs, note) of one node; MACs None with the reason in the note when they cannot be counted."""
    op, custom = node.op_type, node.domain not in DEFAULT_DOMAINS
    attrs = node_attrs(node)

    def shape(position: int) -> list[int] | None:
        if position >= len(node.input) or not node.input[position]:
            return None
        return _ints(shapes.get(node.input[position]))

    out = _ints(shapes.get(node.output[0])) if node.output and node.output[0] else None
    if custom and node.domain == "com.microsoft":
        op = {"FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "FusedMatMul"}.get(op, op)
        if op in _ZERO_MAC_CUSTOM:
            return 0, None
        if op not in ("Conv", "Gemm", "FusedMatMul", "QLinearConv", "MatMulInteger"):
            return None, f"not counted: custom op {node.domain}::{node.op_type}"
    elif custom:
        return None, f"not counted: custom op {node.domain}::{node.op_type}"

    if op in ("Conv", "ConvInteger", "QLinearConv"):
        x, w = (shape(0), shape(3)) if op == "QLinearConv" else (shape(0), shape(1))
        if out is None:
            return None, UNKNOWN_DYNAMIC
        if w is not None and len(w) >= 2:
            return math.prod(out) * math.prod(w[1:]), None
        kernel = attrs.get("kernel_shape")
        if x is None or not kernel:
            return None, UNKNOWN_DYNAMIC
        return math.prod(out) * (x[1] // int(attrs.get("group", 1))) * math.prod(kernel), None
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if x is None or w is None or len(w) < 2:
            return None, UNKNOWN_DYNAMIC
        return math.prod(x) * math.prod(w[1:]), None
    if op == "Gemm":
        a = shape(0)
        if out is None or a is None or len(a) != 2:
            return None, UNKNOWN_DYNAMIC
        return math.prod(out) * (a[0] if attrs.get("transA", 0) else a[1]), None
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
        a, b = shape(0), shape(3 if op == "QLinearMatMul" else 1)
        if out is None:
            return None, UNKNOWN_DYNAMIC
        if a is not None and a:
            k = a[-2] if op == "FusedMatMul" and attrs.get("transA", 0) and len(a) >= 2 else a[-1]
        elif b is not None and b:
            k = b[-1] if op == "FusedMatMul" and attrs.get("transB", 0) else (b[-2] if len(b) >= 2 else b[0])
        else:
            return None, UNKNOWN_DYNAMIC
        return math.prod(out) * k, None
    if op in ("RNN", "GRU", "LSTM"):
        x, w, r = shape(0), shape(1), shape(2)
        if x is None or w is None or r is None or len(x) < 2:
            return None, UNKNOWN_DYNAMIC
        return x[0] * x[1] * (math.prod(w) + math.prod(r)), None
    if op == "Einsum":
        return _einsum_macs(node, attrs, [shape(i) for i in range(len(node.input))])
    if op in ("If", "Loop", "Scan"):
        return None, f"not counted: ops inside the {op} body"
    return 0, None


def _einsum_macs(
    node: onnx.NodeProto, attrs: dict[str, Any], operands: list[list[int] | None]
) -> tuple[int | None, str | None]:
    equation = attrs.get("equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    lhs = equation.split("->")[0].split(",")
    if len(lhs) == 1:
        return 0, None  # a transpose, trace or reduction
    if len(lhs) != 2 or "..." in equation:
        return None, "not counted: Einsum with ellipsis or more than two operands"
    sizes: dict[str, int] = {}
    for letters, dims in zip(lhs, operands, strict=False):
        if dims is None or len(dims) != len(letters):
            return None, UNKNOWN_DYNAMIC
        sizes.update(zip(letters, dims, strict=True))
    return math.prod(sizes.values()), None


# -- rendering -----------------------------------------------------------------------------------


def human_count(value: int | None) -> str:
    """3_512_000 -> "3.5 M"; small numbers stay exact; None -> "?"."""
    if value is None:
        return "?"
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.1f} {unit}"
    return str(int(value))


def human_bytes(value: int) -> str:
    """14_012_345 -> "14.0 MB" (decimal units)."""
    for factor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{int(value)} B"


def format_shape(shape: Shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join(str(d) for d in shape) + "]"


def render_table(report: InspectReport, console: Any = None, *, max_rows: int | None = None) -> None:
    """Print the per-layer table (at most `max_rows` rows; default all) and the summary to a rich Console."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    shown = report.layers if max_rows is None else report.layers[: max(0, max_rows)]
    table = Table(title=f"{report.path or 'model'}: {report.totals.nodes} layers", title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("name", overflow="fold", max_width=48)
    table.add_column("op")
    table.add_column("output shape", overflow="fold")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for layer in shown:
        op = layer.op_type if not layer.domain else f"{layer.domain}::{layer.op_type}"
        shapes = "; ".join(format_shape(s) for s in layer.output_shapes)
        macs = Text(human_count(layer.macs)) if layer.macs is not None else Text("?", style="yellow")
        table.add_row(
            str(layer.index),
            Text(layer.name),
            Text(op),
            Text(shapes),
            Text(human_count(layer.params) if layer.params else "-"),
            macs,
        )
    hidden = len(report.layers) - len(shown)
    if hidden > 0:
        more = Text(f"{hidden} more layers (all of them: no max_rows / --max-rows, or --json)", style="dim")
        table.add_row("…", more, "", "", "", "")
    console.print(table)
    console.print(_summary(report))


def _summary(report: InspectReport) -> Any:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    totals = report.totals
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()

    def row(key: str, value: str, style: str | None = None) -> None:
        grid.add_row(key, Text(value, style=style or ""))

    row("file size", f"{human_bytes(report.file_size_bytes)} ({report.file_size_bytes} bytes serialized)")
    row("opset", ", ".join(f"{domain} {v}" for domain, v in report.opsets.items()))
    row("IR version", str(report.ir_version))
    row("producer", report.producer or "unknown")
    for key, tensors in (("inputs", report.inputs), ("outputs", report.outputs)):
        row(key, "; ".join(f"{t['name']} {t['dtype']} {format_shape(t['shape'])}" for t in tensors))
    if report.preprocess:
        p = report.preprocess
        parts = [f"resize {p['resize']}" if p.get("resize") else "no resize", str(p.get("color"))]
        if p.get("scale") is not None:
            parts.append(f"scale {p['scale']:.6g}")
        parts += [f"{key} {p[key]}" for key in ("mean", "std") if p.get(key) is not None]
        parts += [str(p.get("layout")), str(p.get("dtype"))]
        row("preprocess", ", ".join(parts))
    else:
        row("preprocess", "none")
    top = list(totals.op_histogram.items())
    ops = ", ".join(f"{op} ×{n}" for op, n in top[:10])
    if len(top) > 10:
        ops += f", … {len(top) - 10} more op types"
    row("layers", f"{totals.nodes} nodes: {ops}")
    row("params", f"{human_count(totals.params)} params ({human_bytes(totals.param_bytes)} of weights)")
    at = "; ".join(f"{name} {format_shape(shape)}" for name, shape in report.macs_input_shapes.items())
    if totals.macs is not None:
        row("MACs", f"{human_count(totals.macs)} MACs at {at}")
    else:
        why = Counter(layer.macs_note for layer in report.layers if layer.macs is None)
        reasons = ", ".join(f"{n} {note}" for note, n in why.items())
        hint = "; fix the dynamic dims with input_shapes / --shape NAME=D0,D1,.." if UNKNOWN_DYNAMIC in why else ""
        row(
            "MACs",
            f"unknown for {totals.macs_unknown_layers} layers ({reasons}); {human_count(totals.macs_known)} MACs in "
            f"the known ones at {at}{hint}",
            "yellow",
        )
    for target, ops_missing in report.unsupported.items():
        if ops_missing:
            listed = ", ".join(f"{op} ×{n}" for op, n in ops_missing.items())
            row(f"{target}", f"cannot run: {listed}", "red")
        else:
            row(f"{target}", "unsupported ops: none", "green")
    for target, by_accelerator in report.fallbacks.items():
        for accelerator, ops in by_accelerator.items():
            if ops:
                listed = ", ".join(f"{op} ×{n}" for op, n in ops.items())
                row(f"{target} ({accelerator})", f"runs on the CPU instead: {listed}", "yellow")
    for target, detail in report.accelerator_reports.items():
        for line in detail.get("lines", []):
            style = "yellow" if line.startswith(("falls", "slows")) else "green"
            row(f"{target} ({detail.get('accelerator')})", line, style)
    for target, error in report.target_errors.items():
        row(f"{target}", f"not checked: {error}", "yellow")
    for note in report.notes:
        row("note", note, "dim")
    return Panel(grid, title="summary", title_align="left", expand=False)
