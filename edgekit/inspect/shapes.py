"""The shape of every tensor at the caller's input shapes: ONNX shape inference on a light copy of the graph,
with shape arithmetic (Shape -> Gather -> Concat -> Reshape) folded to constants between rounds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.errors import ModelError
from edgekit.inspect.report import Dim, Shape
from edgekit.onnx_toolbox import DEFAULT_DOMAINS, SHAPE_OPS, attrs, constant_value, graph_inputs

# Constant tensors up to this many elements stay in the light graph (shape arithmetic needs their values);
# larger ones become typed inputs, so inference never copies or serialises the weights.
SMALL = 4096
_MAX_FOLD_ROUNDS = 64
# Ops folded to constants when all their inputs are known and small: what shape arithmetic is made of.
_FOLDABLE_OPS = (
    "Identity Cast CastLike Gather GatherElements Slice Concat Unsqueeze Squeeze Reshape Flatten Transpose "
    "Add Sub Mul Div Mod Neg Abs Floor Ceil Round Sqrt Pow Min Max Sum Clip Equal Less LessOrEqual Greater "
    "GreaterOrEqual Not And Or Where Range ConstantOfShape Expand Tile ReduceProd ReduceSum ReduceMin "
    "ReduceMax ArgMax ArgMin"
)
_FOLDABLE = frozenset(_FOLDABLE_OPS.split())


# -- declared shapes and the caller's input shapes -------------------------------------------------


def shape_of(value: onnx.ValueInfoProto) -> Shape:
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


def check_input_shapes(proto: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """The caller's input shapes as ints, after checking each names an input, fits its rank and changes only
    symbolic dims; a ModelError says which one does not."""
    declared = {v.name: shape_of(v) for v in graph_inputs(proto)}
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
        _check_fits(name, declared[name], ints)
        checked[name] = ints
    return checked


def _check_fits(name: str, shape: Shape, ints: list[int]) -> None:
    if shape is not None and len(shape) != len(ints):
        raise ModelError(f"input {name!r} has rank {len(shape)} ({shape}), but input_shapes gives {ints}")
    for axis, (have, want) in enumerate(zip(shape or [], ints, strict=False)):
        if isinstance(have, int) and have != want:
            raise ModelError(
                f"input {name!r} has a fixed dim {axis} = {have} ({shape}), but input_shapes gives {want}; "
                "only symbolic dims can be changed"
            )


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a bool is not a dim")
    number = int(value) if isinstance(value, (int, np.integer)) else None
    if number is None or number <= 0:
        raise ValueError(f"{value!r} is not a positive integer")
    return number


# -- inference, round after round --------------------------------------------------------------------


def resolve_shapes(proto: onnx.ModelProto, fixed: dict[str, list[int | None]]) -> tuple[dict[str, Shape], list[str]]:
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
        shape = shape_of(value)
        if shape is not None or value.name not in shapes:
            shapes[value.name] = shape
    return shapes


# -- the light copy -----------------------------------------------------------------------------------


def _light_copy(proto: onnx.ModelProto, fixed: dict[str, list[int | None]]) -> onnx.ModelProto:
    """The graph without its weights (large constants become typed inputs) and with `fixed` input dims."""
    work = onnx.ModelProto()
    work.ir_version = proto.ir_version
    work.opset_import.extend(proto.opset_import)
    work.functions.extend(proto.functions)
    source, graph = proto.graph, work.graph
    graph.name = source.name
    graph.input.extend(source.input)
    _fix_input_dims(graph, fixed)
    _copy_light_constants(source, graph)
    _copy_value_info_and_outputs(source, graph)
    return work


def _fix_input_dims(graph: onnx.GraphProto, fixed: dict[str, list[int | None]]) -> None:
    for value in graph.input:
        if value.name not in fixed:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(fixed[value.name]):
            value.type.tensor_type.shape.ClearField("dim")
            dims.extend(onnx.TensorShapeProto.Dimension() for _ in fixed[value.name])
        for dim, want in zip(dims, fixed[value.name], strict=True):
            if want is not None:
                dim.Clear()
                dim.dim_value = int(want)


def _copy_light_constants(source: onnx.GraphProto, graph: onnx.GraphProto) -> None:
    """Initializers and Constant nodes up to SMALL elements as initializers, larger ones as typed inputs; the
    other nodes as they are."""
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
        if math.prod(init.dims) <= SMALL:
            graph.initializer.append(init)
        else:
            as_input(init.name, init.data_type, list(init.dims))
    graph.sparse_initializer.extend(source.sparse_initializer)
    for node in source.node:
        tensor = _constant_tensor(node)
        if tensor is None:
            graph.node.append(node)
        elif math.prod(tensor.dims) > SMALL:
            as_input(tensor.name, tensor.data_type, list(tensor.dims))
        else:
            graph.initializer.append(tensor)


def _copy_value_info_and_outputs(source: onnx.GraphProto, graph: onnx.GraphProto) -> None:
    """Declared shapes of tensors that standard ops produce are dropped: inference recomputes them, and stale
    ones from the exporter would clash with the fixed input dims. Custom ops keep theirs (nothing else knows)."""
    standard_outputs = {out for node in source.node if node.domain in DEFAULT_DOMAINS for out in node.output}
    graph.value_info.extend(v for v in source.value_info if v.name not in standard_outputs)
    for value in source.output:
        copy = graph.output.add()
        copy.CopyFrom(value)
        if value.name in standard_outputs and copy.type.WhichOneof("value") == "tensor_type":
            copy.type.tensor_type.ClearField("shape")


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a numeric Constant node produces, named after its output; None for any other node."""
    value = constant_value(node) if node.output else None
    if value is None or value.dtype == object:
        return None  # strings and sparse values: inference reads the node itself
    return numpy_helper.from_array(value, node.output[0])


# -- folding shape arithmetic -------------------------------------------------------------------------


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
        values = _fold_node(node, shapes, known, work) if node.domain in DEFAULT_DOMAINS else None
        if values is None or any(v.size > SMALL for v in values):
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


def _fold_node(
    node: onnx.NodeProto, shapes: dict[str, Shape], known: dict[str, np.ndarray], work: onnx.ModelProto
) -> list[np.ndarray] | None:
    """The output values of a default-domain node, when its inputs' shapes or values make them computable."""
    if node.op_type in SHAPE_OPS:
        shape = shapes.get(node.input[0])
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        if node.op_type == "Size":
            return [np.array(math.prod(shape), dtype=np.int64)]
        given = attrs(node)
        return [np.array(shape[given.get("start", 0) : given.get("end", len(shape))], dtype=np.int64)]
    if node.op_type in _FOLDABLE:
        inputs = [name for name in node.input if name]
        if not all(name in known for name in inputs) or sum(known[n].size for n in inputs) > SMALL:
            return None
        return _evaluate(node, {name: known[name] for name in inputs}, work)
    return None


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
