"""Graph preparation for quantization: BatchNorm folding, and which tensors and weights get quantized.

The plan is derived from the float graph alone, so calibration (which observes the activations) and
the QDQ writer (which inserts the quantizers) always agree on the same tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.calibration.fused_patterns import float_fused_nodes
from edgekit.onnx_toolbox import DEFAULT_DOMAINS, attrs, consumers, drop_nodes, drop_unused_initializers

# Ops with weights that become integer kernels (QLinearConv, QGemm, MatMulInteger, ...).
WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op -> index of the weight input
# Ops without weights that integer runtimes run on quantized tensors (QLinearAdd, QLinearConcat, ...).
ACTIVATION_OPS = {"Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "MaxPool", "Sigmoid", "LeakyRelu"}
# Binary ops whose constant operand is quantized too: ORT's QLinearAdd/QLinearMul need both inputs integer
# (a hard-swish's x + 3, a scale's x * gamma).
CONSTANT_OPERAND_OPS = {"Add", "Mul"}
# Ops that move or select values without computing new ones: their output takes their input's scale and zero
# point, so runtimes drop the DQ -> op -> Q around them and run them on the integers (ORT's DropQDQ rules,
# TFLite's same-scale MAX_POOL_2D/RESHAPE). Resize qualifies in nearest and linear modes (convex combinations).
SHARED_SCALE_OPS = {
    "MaxPool", "Resize", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "DepthToSpace", "SpaceToDepth",
    "Slice", "Gather",
}  # fmt: skip
# Activations that fuse into the op before them: the quantizer goes after them, not between.
FUSED_ACTIVATIONS = {"Relu", "Clip"}
QUANTIZABLE_OPS = set(WEIGHT_OPS) | ACTIVATION_OPS


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every BatchNormalization that directly follows a Conv (whose output only it reads) into the Conv."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = model_copy.graph
    inits = {init.name: init for init in graph.initializer}
    consumers_of = consumers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    removed = set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producers.get(bn.input[0])
        params = [inits.get(name) for name in bn.input[1:5]]
        if (
            conv is None
            or conv.op_type != "Conv"
            or len(consumers_of[conv.output[0]]) != 1
            or conv.output[0] in graph_outputs
            or any(p is None for p in params)
            or conv.input[1] not in inits
            or len(consumers_of[conv.input[1]]) != 1
        ):
            continue
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
        factor = gamma / np.sqrt(var + epsilon)
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name else np.zeros(len(factor))
        if bias_name and len(consumers_of[bias_name]) != 1:
            continue
        new_weight = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        new_bias = ((bias - mean) * factor + beta).astype(np.float32)
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(new_weight, conv.input[1]))
        if bias_name:
            inits[bias_name].CopyFrom(numpy_helper.from_array(new_bias, bias_name))
        else:
            bias_name = conv.name + "_folded_bias" if conv.name else conv.output[0] + "_bias"
            graph.initializer.append(numpy_helper.from_array(new_bias, bias_name))
            if len(conv.input) == 2:
                conv.input.append(bias_name)
            else:
                conv.input[2] = bias_name
        conv.output[0] = bn.output[0]
        removed.add(id(bn))
    if removed:
        drop_nodes(graph, removed)
        drop_unused_initializers(graph)
    return model_copy


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn Constant nodes holding a tensor into initializers, so weights stored that way are weights."""
    graph = model.graph
    kept = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if (
            node.op_type == "Constant"
            and node.domain in DEFAULT_DOMAINS
            and value is not None
            and len(node.attribute) == 1
        ):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    return model


def node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (specs and overrides refer to nodes by name)."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    return model


@dataclass
class WeightEntry:
    node: str
    name: str
    axis: int | None  # per-channel axis, None for per-tensor


@dataclass
class BiasEntry:
    node: str
    name: str
    input_tensor: str
    weight: str


@dataclass
class QuantPlan:
    """Which nodes run quantized, and the tensors, weights and biases that carry quantizers."""

    nodes: list[str] = field(default_factory=list)
    activations: list[str] = field(default_factory=list)
    # graph outputs of quantized nodes: QDQ writers leave them float; full-integer targets (TFLite) need ranges
    outputs: list[str] = field(default_factory=list)
    # output -> input of data-movement ops (SHARED_SCALE_OPS): the output is quantized with the input's parameters
    shared: dict[str, str] = field(default_factory=dict)
    # constant operands of Add/Mul: quantized like activations (from their values), so both inputs are integers
    constants: list[str] = field(default_factory=list)
    weights: list[WeightEntry] = field(default_factory=list)
    biases: list[BiasEntry] = field(default_factory=list)


def weight_axis(node: onnx.NodeProto, weight: np.ndarray) -> int | None:
    """The output-channel axis of a weight, or None where per-channel is not used."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return None  # MatMul: per-tensor, the layout every integer MatMul kernel accepts


def plan_quantization(
    model: onnx.ModelProto, *, float_nodes: set[str] = frozenset(), per_channel: bool = True
) -> QuantPlan:
    """Decide the quantizers: inputs of quantized nodes, their outputs (after a fused Relu/Clip), weights, biases."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers_of = consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    plan = QuantPlan()
    activations: dict[str, None] = {}  # ordered set

    types = tensor_types(model)

    def is_float(name: str) -> bool:  # unknown types count as float (shape inference may not reach them)
        return types.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES

    fused = float_fused_nodes(model)
    bias_adds = {add.name: node for node in graph.node if (add := matmul_bias_add(node, consumers_of, inits))}
    for node in graph.node:
        if node.op_type not in QUANTIZABLE_OPS or node.name in float_nodes or node.name in fused:
            continue
        if node.name in bias_adds and bias_adds[node.name].name not in float_nodes:
            continue  # quantized as the output of its MatMul
        if not all(is_float(name) for name in (*node.input, *node.output) if name):
            continue  # integer arithmetic (shape computations): nothing to quantize
        if not _plan_weight(node, inits, plan, per_channel):
            continue
        _plan_matmul_bias(node, consumers_of, inits, float_nodes, plan)
        plan.nodes.append(node.name)
        # its computed inputs (never an initializer: a weight, bias or constant operand)
        activations.update(dict.fromkeys(name for name in node.input if name and name not in inits))
        if node.op_type in CONSTANT_OPERAND_OPS:
            plan.constants += [n for n in node.input if n in inits and is_float(n) and n not in plan.constants]
        _plan_outputs(node, consumers_of, graph_outputs, activations, plan, inits)
    # every graph output gets a range (a softmax after the last Gemm too): full-integer targets quantize them all
    plan.outputs += [
        o.name for o in graph.output if o.name not in plan.outputs and o.name not in activations and is_float(o.name)
    ]
    plan.shared = _shared_scales(graph, activations, float_nodes, graph_outputs)
    plan.activations = list(activations)
    return plan


def _shared_scales(
    graph: onnx.GraphProto, activations: dict[str, None], float_nodes: set[str], graph_outputs: set[str]
) -> dict[str, str]:
    """Data-movement ops whose input is quantized: their output is quantized too (added to `activations`), with
    the parameters of the tensor returned for it (followed through chains such as Reshape -> Transpose ->
    Slice), so integers flow through them to the next integer kernel."""
    shared: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in SHARED_SCALE_OPS or node.name in float_nodes or not node.input:
            continue
        source, out = node.input[0], node.output[0]
        if node.op_type == "Resize" and attrs(node).get("mode", b"nearest") not in (b"nearest", b"linear"):
            continue  # cubic overshoots its input's range
        if source in activations and out not in graph_outputs:
            activations[out] = None
            shared[out] = shared.get(source, source)
    return shared


def _plan_weight(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], plan: QuantPlan, per_channel: bool) -> bool:
    """Add the node's weight and bias quantizers to `plan`; False when the node stays float (a Conv or Gemm
    whose weight is computed, not an initializer)."""
    weight_index = WEIGHT_OPS.get(node.op_type)
    if weight_index is None:
        return True
    if len(node.input) <= weight_index or node.input[weight_index] not in inits:
        return node.op_type == "MatMul"  # MatMul of two activations: both inputs get activation quantizers
    weight = numpy_helper.to_array(inits[node.input[weight_index]])
    axis = weight_axis(node, weight) if per_channel else None
    plan.weights.append(WeightEntry(node.name, node.input[weight_index], axis))
    bias_index = 2
    if len(node.input) > bias_index and node.input[bias_index] in inits and node.op_type != "MatMul":
        plan.biases.append(BiasEntry(node.name, node.input[bias_index], node.input[0], node.input[1]))
    return True


def _plan_matmul_bias(
    node: onnx.NodeProto,
    consumers_of: dict[str, list[onnx.NodeProto]],
    inits: dict[str, onnx.TensorProto],
    float_nodes: set[str],
    plan: QuantPlan,
) -> None:
    """A Linear layer's bias (the constant of its MatMul's bias Add) is quantized like a Gemm's: int32 at input
    scale x weight scale. ONNX Runtime fuses MatMul + Add into a Gemm first; with a float bias that Gemm stays
    float when its output is not quantized (a recogniser's last layer before a float softmax: 2.3 of 10.6 ms
    on PP-OCRv6 rec), with an int32 one it becomes QGemm."""
    add = matmul_bias_add(node, consumers_of, inits)
    if add is None or add.name in float_nodes or node.input[1] not in inits:
        return
    bias = next(name for name in add.input if name != node.output[0])
    if inits[bias].data_type == onnx.TensorProto.FLOAT and len(consumers_of.get(bias, [])) == 1:
        plan.biases.append(BiasEntry(add.name, bias, node.input[0], node.input[1]))


def matmul_bias_add(
    node: onnx.NodeProto, consumers_of: dict[str, list[onnx.NodeProto]], inits: dict[str, onnx.TensorProto]
) -> onnx.NodeProto | None:
    """The Add of a constant (a Linear layer's bias) that is the only reader of a MatMul's output, or None.
    Its quantizer goes after the Add, as after a fused Relu: ONNX Runtime then runs MatMul + bias as one
    integer kernel instead of a float Add between a DequantizeLinear and a QuantizeLinear."""
    if node.op_type != "MatMul":
        return None
    followers = consumers_of.get(node.output[0], [])
    if len(followers) != 1 or followers[0].op_type != "Add":
        return None
    add = followers[0]
    others = [name for name in add.input if name != node.output[0]]
    return add if len(others) == 1 and others[0] in inits else None


def _plan_outputs(
    node: onnx.NodeProto,
    consumers_of: dict[str, list[onnx.NodeProto]],
    graph_outputs: set[str],
    activations: dict[str, None],
    plan: QuantPlan,
    inits: dict[str, onnx.TensorProto],
) -> None:
    """Quantize each output of the node, after the Relu/Clip that fuses into it; graph outputs stay float in
    QDQ and are listed in `plan.outputs` for the targets that need their ranges."""
    for name in node.output:
        followers = consumers_of.get(name, [])
        if name not in graph_outputs and matmul_bias_add(node, consumers_of, inits):
            name, followers = followers[0].output[0], consumers_of.get(followers[0].output[0], [])
        if len(followers) == 1 and followers[0].op_type in FUSED_ACTIVATIONS and name not in graph_outputs:
            name = followers[0].output[0]
        if name not in graph_outputs:
            activations[name] = None
        elif name not in plan.outputs:
            plan.outputs.append(name)


FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor shape inference can type (graph inputs, outputs, initializers, values)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an untypeable model still gets planned (as before: every tensor taken as float)
        inferred = model
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "none": "ORT_DISABLE_ALL",
}


def session_with_outputs(
    model: onnx.ModelProto, names: Iterable[str], *, optimization: str = "all", threads: int | None = None
) -> Any:
    """An ONNX Runtime CPU session of `model` that also returns the named intermediate tensors (graph outputs are
    not added again). `optimization` is ORT's graph optimization: `all`, `basic` (no fusion that
    would hide a tensor someone wants to read) or `none` (every node runs as written)."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[optimization])
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
