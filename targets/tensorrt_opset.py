"""The ONNX opset TensorRT's ONNX parser reads right: models above opset 17 come down to 17 for TensorRT 8.5/8.6.

Opset 18 made `axes` an input of ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2, ReduceLogSum,
ReduceLogSumExp and ReduceSumSquare (ReduceSum moved in opset 13). The parsers of TensorRT 8.5 and 8.6
(onnx/onnx-tensorrt builtin_op_importers.cpp, branches 8.5-GA and 8.6-GA) read that input for ReduceSum only; for
the others they never look at it and reduce every axis: a silently wrong answer, not an error. Their op lists stop
at opset 17 too. TensorRT 10's parser reads the axes input of every reduction (10.0-GA onnxOpImporters.cpp), so
models go to it as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit.onnx_toolbox import DEFAULT_DOMAINS, default_opset
from edgekit.targets.base import BuildError, all_nodes

if TYPE_CHECKING:
    import onnx

TRT8_MAX_OPSET = 17  # the newest opset the 8.5-GA and 8.6-GA op lists cover
# reductions whose axes became an input in opset 18, which the TensorRT 8.x parsers ignore
AXES_INPUT_IGNORED = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
    }
)


def _trt_major(trt_version: str) -> int:
    return int(trt_version.strip().partition(".")[0])


def opset_for_tensorrt(data: bytes, trt_version: str) -> tuple[bytes, dict[str, Any]]:
    """(the ONNX bytes TensorRT `trt_version` should parse, the manifest's `opset` record: source, built, and how
    and why when they differ). Bytes the parser already reads right come back unchanged."""
    import onnx

    proto = onnx.load_from_string(data)
    source = default_opset(proto)
    record: dict[str, Any] = {"source": source, "built": source}
    if source is None or source <= TRT8_MAX_OPSET or _trt_major(trt_version) >= 10:
        return data, record
    why = (
        f"TensorRT {trt_version}'s ONNX parser covers opsets up to {TRT8_MAX_OPSET} and ignores the axes input that "
        "opset 18 gave ReduceMean and the other reductions (it would reduce every axis)"
    )
    try:
        lowered, how = _convert(proto), "onnx.version_converter"
    except Exception as exc:  # the converter has no adapter for some op: fall back to the reductions alone
        lowered, how = _rewrite_reductions(proto, source, trt_version, exc), "reduction axes inputs as attributes"
    left = [f"{n.op_type} {n.name or n.output[0]!r}" for n in all_nodes(lowered.graph) if _axes_as_input(n)]
    if left:
        raise BuildError(f"opset {source} -> {TRT8_MAX_OPSET} left reductions with an axes input: {', '.join(left)}")
    onnx.checker.check_model(lowered)
    return lowered.SerializeToString(), {**record, "built": TRT8_MAX_OPSET, "how": how, "why": why}


def _axes_as_input(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS and node.op_type in AXES_INPUT_IGNORED and len(node.input) > 1


def _convert(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnx import version_converter

    lowered = version_converter.convert_version(proto, TRT8_MAX_OPSET)
    # the converter rebuilds the model; edgekit's metadata (preprocessing, task) must travel with it
    del lowered.metadata_props[:]
    lowered.metadata_props.extend(proto.metadata_props)
    return lowered


def _rewrite_reductions(proto: onnx.ModelProto, source: int, trt_version: str, cause: Exception) -> onnx.ModelProto:
    """Opset 17 by hand: each reduction's constant axes input becomes its axes attribute. Only sound when no other
    node's op changed after opset 17, so any such node (and a reduction whose axes are not constant) is refused
    by name."""
    import onnx
    from onnx import helper, numpy_helper

    lowered = onnx.ModelProto()
    lowered.CopyFrom(proto)
    constants = {init.name: init for init in lowered.graph.initializer}
    blocked = []
    for node in all_nodes(lowered.graph):
        if node.domain not in DEFAULT_DOMAINS:
            continue
        if _axes_as_input(node) and node.input[1] in constants and not _attr(node, "noop_with_empty_axes"):
            axes = [int(a) for a in numpy_helper.to_array(constants[node.input[1]]).reshape(-1)]
            del node.input[1:]
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend([*kept, *([helper.make_attribute("axes", axes)] if axes else [])])
            continue
        since = onnx.defs.get_schema(node.op_type, source, node.domain).since_version
        if since > TRT8_MAX_OPSET or _axes_as_input(node):
            blocked.append(f"{node.op_type} {node.name or node.output[0]!r} (opset {since} form)")
    if blocked:
        raise BuildError(
            f"TensorRT {trt_version} reads opsets up to {TRT8_MAX_OPSET}, and this opset-{source} model cannot come "
            f"down to it (onnx.version_converter: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}"
            f"); these nodes have no opset-{TRT8_MAX_OPSET} form here: {', '.join(blocked[:8])}"
            f"{f' and {len(blocked) - 8} more' if len(blocked) > 8 else ''}. Export the model at opset "
            f"{TRT8_MAX_OPSET}, or pass -O trt_version=10.3 if the devices run TensorRT 10 (JetPack 6.1+)"
        )
    used = {name for node in all_nodes(lowered.graph) for name in node.input} | {o.name for o in lowered.graph.output}
    kept_inits = [init for init in lowered.graph.initializer if init.name in used]
    del lowered.graph.initializer[:]
    lowered.graph.initializer.extend(kept_inits)
    for opset in lowered.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            opset.version = TRT8_MAX_OPSET
    return lowered


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)
