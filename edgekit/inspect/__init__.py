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

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import onnx
from onnx import helper

from edgekit.inspect.macs import constant_sizes, node_macs, read_names
from edgekit.inspect.render import format_shape, human_bytes, human_count, render_table
from edgekit.inspect.report import UNKNOWN_DYNAMIC, Dim, InspectReport, LayerInfo, Shape, Totals
from edgekit.inspect.shapes import check_input_shapes, resolve_shapes, shape_of
from edgekit.onnx_toolbox import DEFAULT_DOMAINS, graph_inputs

if TYPE_CHECKING:
    from edgekit.model import Model

__all__ = [
    "UNKNOWN_DYNAMIC",
    "Dim",
    "InspectReport",
    "LayerInfo",
    "Shape",
    "Totals",
    "format_shape",
    "human_bytes",
    "human_count",
    "inspect_model",
    "render_table",
]


def inspect_model(
    model: Model,
    *,
    input_shapes: dict[str, list[int]] | None = None,
    targets: list[str] | None = None,
    options: Mapping[str, str] | None = None,
) -> InspectReport:
    """Inspect `model`: one LayerInfo per node of the main graph (graph order), totals and model facts.

    `input_shapes` fixes the dims of named inputs (all of them, positive ints) before shape inference, so
    a dynamic model (e.g. [?, 3, ?, ?]) gets concrete shapes and MACs. A symbolic first dim of an input of
    rank >= 2 that the caller leaves open is taken as batch = 1 for the MACs only; the shapes shown keep it
    symbolic. See the module docstring for what is counted. `targets` limits the per-target checks to those
    (default: every registered target) and adds each one's detailed accelerator report (ios-coreml: the ANE).
    `options` are build options (`-O` text) of the named targets: each target takes the keys it knows, and
    its refusals are those of a build with them (jetson-trt's `trt_version`); a key no named target takes is
    a TargetError naming it.
    """
    proto = model.proto
    graph = proto.graph
    fixed = check_input_shapes(proto, input_shapes or {})
    shapes, notes = resolve_shapes(proto, fixed)
    mac_shapes = _shapes_per_sample(proto, fixed, shapes, notes)
    layers, read = _layers(graph, shapes, mac_shapes)
    unsupported, refusals, fallbacks, reports, target_errors, build_notes = _unsupported_by_target(
        model, targets, options
    )

    return InspectReport(
        path=str(model.path) if model.path else None,
        file_size_bytes=proto.ByteSize(),
        ir_version=int(proto.ir_version),
        producer=" ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        opsets={(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        inputs=[_io_dict(v) for v in graph_inputs(proto)],
        outputs=[_io_dict(v) for v in graph.output],
        preprocess=model.preprocess.to_dict() if model.preprocess is not None else None,
        input_shapes={name: [int(d) for d in dims] for name, dims in fixed.items()},
        macs_input_shapes={v.name: mac_shapes.get(v.name, shape_of(v)) for v in graph_inputs(proto)},
        layers=layers,
        totals=_totals(graph, layers, read),
        unsupported=unsupported,
        refusals=refusals,
        target_errors=target_errors,
        notes=notes,
        fallbacks=fallbacks,
        accelerator_reports=reports,
        build_notes=build_notes,
        preprocess_source=model.preprocess_source,
        preprocess_sources=dict(getattr(model, "preprocess_sources", {}) or {}),
        task=model.task,
        task_source=model.task_source,
        class_names=model.class_names,
        class_names_source=model.class_names_source,
        metadata_notes=list(model.metadata_notes),
    )


def _shapes_per_sample(
    proto: onnx.ModelProto, fixed: dict[str, list[int]], shapes: dict[str, Shape], notes: list[str]
) -> dict[str, Shape]:
    """The shapes MACs are counted at: `shapes`, or, where an input's first dim stays symbolic, the shapes
    with that dim taken as 1 (a note in `notes` says so)."""
    macs_fixed: dict[str, list[int | None]] = {name: list(dims) for name, dims in fixed.items()}
    for value in graph_inputs(proto):
        shape = shape_of(value)
        if value.name not in fixed and shape is not None and len(shape) >= 2 and not isinstance(shape[0], int):
            macs_fixed[value.name] = [1] + [None] * (len(shape) - 1)
            notes.append(f"MACs are per sample: the first dim {shape[0]!r} of input {value.name!r} is taken as 1")
    if macs_fixed == fixed:
        return shapes
    mac_shapes, shape_notes = resolve_shapes(proto, macs_fixed)
    notes += [n for n in shape_notes if n not in notes]
    return mac_shapes


def _layers(
    graph: onnx.GraphProto, shapes: dict[str, Shape], mac_shapes: dict[str, Shape]
) -> tuple[list[LayerInfo], dict[str, tuple[int, int]]]:
    """One LayerInfo per node, and the (elements, bytes) of every constant tensor some node reads."""
    constants = constant_sizes(graph)
    layers: list[LayerInfo] = []
    read: dict[str, tuple[int, int]] = {}
    for index, node in enumerate(graph.node):
        names = set(read_names(node)) & constants.keys()
        read.update((n, constants[n]) for n in names)
        macs, note = node_macs(node, mac_shapes)
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
    return layers, read


def _totals(graph: onnx.GraphProto, layers: list[LayerInfo], read: dict[str, tuple[int, int]]) -> Totals:
    """Sums over the layers; each constant tensor counts once, however many nodes read it."""
    unknown = sum(1 for layer in layers if layer.macs is None)
    known = sum(layer.macs for layer in layers if layer.macs is not None)
    histogram = Counter(_op_label(node) for node in graph.node)
    return Totals(
        nodes=len(graph.node),
        params=sum(elements for elements, _ in read.values()),
        param_bytes=sum(size for _, size in read.values()),
        macs=known if unknown == 0 else None,
        macs_known=known,
        macs_unknown_layers=unknown,
        op_histogram=dict(sorted(histogram.items(), key=lambda item: (-item[1], item[0]))),
    )


def _unsupported_by_target(
    model: Model, names: list[str] | None, options: Mapping[str, str] | None
) -> tuple[
    dict[str, dict[str, int]],
    dict[str, list[dict[str, str]]],
    dict[str, dict[str, dict[str, int]]],
    dict[str, dict[str, Any]],
    dict[str, str],
]:
    """Ops each target cannot run (counts, and for targets named in `names` every refused node with its reason:
    what `build` would refuse), those its accelerators hand back to the CPU, and (for targets named) the detailed
    accelerator reports; a target that fails to load is reported, not fatal."""
    from edgekit.op_support import refused_op_counts
    from edgekit.targets import get_target, target_names

    proto = model.proto
    unsupported: dict[str, dict[str, int]] = {}
    refusals: dict[str, list[dict[str, str]]] = {}
    fallbacks: dict[str, dict[str, dict[str, int]]] = {}
    reports: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    unknown = sorted(set(names or ()) - set(target_names()))
    if unknown:
        get_target(unknown[0])  # the TargetError that lists the known targets
    per_target = _options_per_target(names or [], options or {})
    for name in names or target_names():
        try:
            target = get_target(name)
            refused = target.model_refusals(model, None, per_target.get(name))
            unsupported[name] = refused_op_counts(refused)
            if names:
                refusals[name] = [r.to_dict() for r in refused]
                notes[name] = target.build_notes(proto, per_target.get(name))
            fallbacks[name] = target.accelerator_fallbacks(proto)
            report = target.accelerator_report(proto) if names else None
            if report is not None:
                reports[name] = report
        except Exception as exc:  # a backend's optional dependency may be missing; inspect still works
            errors[name] = f"{type(exc).__name__}: {exc}"
    return unsupported, refusals, fallbacks, reports, errors, notes


def _options_per_target(names: list[str], options: Mapping[str, str]) -> dict[str, Any]:
    """Each named target's checked Options from the `-O` items it knows; TargetError for a key none takes."""
    import dataclasses

    from edgekit.targets import TargetError, get_target

    checked, taken = {}, set()
    for name in names:
        target = get_target(name)
        fields = {f.name for f in dataclasses.fields(target.Options)}
        given = {k: v for k, v in options.items() if k in fields}
        taken |= given.keys()
        if given:
            checked[name] = target.make_options(given, target.precisions[0])
    unknown = sorted(set(options) - taken)
    if unknown:
        raise TargetError(
            f"build option(s) {', '.join(unknown)} are not taken by {', '.join(names)}; "
            "`edgekit targets --options NAME` lists each target's options"
        )
    return checked


def _op_label(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _io_dict(value: onnx.ValueInfoProto) -> dict[str, Any]:
    elem_type = value.type.tensor_type.elem_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        dtype = onnx.TensorProto.DataType.Name(elem_type).lower()
    return {"name": value.name, "shape": shape_of(value), "dtype": dtype}
