"""ONNX -> TensorFlow -> .tflite for the CNN op set edge vision models use, with activations kept NHWC.

Why our own translator: onnx2tf pins TensorFlow, numpy, ONNX Runtime and protobuf versions that clash with
the base install (a pip extra cannot install it with --no-deps), and onnx2torch -> litert-torch pulls a
converter that downgrades typing_extensions. The op set covers CNN classifiers (grouped convs included),
YOLOv8 exports (static or dynamic shapes), PaddleOCR's text detector and direction classifier and vision
transformers as timm exports them (DeiT, MobileViT, ConvNeXt); a variant outside it is refused by the check
registered with its op, before anything is converted, naming the op, the node and the reason.

How: each ONNX node becomes TF ops inside one `tf.function`, by the function registered for its op in
`OPS` (an `OpTable`, as in the Core ML replay; SUPPORTED_OPS is what is registered): elementwise, shape and
matrix ops in targets/onnx_to_tf_ops.py, convolution, pooling and resizing in targets/onnx_to_tf_spatial.py,
unary/comparison/reduction ops, LayerNormalization and Einsum in targets/onnx_to_tf_math.py, Gather/Pad/Tile/
TopK on activations in targets/onnx_to_tf_tensor.py. The walk runs an op's check before its function, so the
refusals `edgekit inspect` lists (OPS.refusals) are exactly what the build refuses.
Rank-4 activations stay NHWC (TFLite's layout, so no transposes around every conv) and are transposed back
to NCHW only where a value leaves the 4-D world (Flatten/Reshape) or the graph. Constant sub-graphs
(Shape -> Gather -> Concat -> Reshape) are folded in numpy (targets/onnx_to_tf_folds.py). This module holds the
walk, the ONNX op -> TFLite builtins table and the conversion itself; TensorFlow's converter then fuses bias,
BatchNorm and activations into the convs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import EdgekitError, ModelError
from edgekit.onnx_toolbox import attrs as node_attrs
from edgekit.onnx_toolbox import (
    constant_value,
    default_opset,
    fixed_input_shape,
    graph_inputs,
    image_layout,
    node_label,
)
from edgekit.op_support import GraphFacts
from edgekit.targets import onnx_to_tf_math, onnx_to_tf_spatial, onnx_to_tf_tensor  # noqa: F401  (they register ops in OPS)
from edgekit.targets.onnx_to_tf_folds import FOLDS
from edgekit.targets.onnx_to_tf_fusions import fuse_gelu
from edgekit.targets.onnx_to_tf_ops import NCHW_TO_NHWC, NHWC_TO_NCHW, OPS, Value

# ONNX op -> the TFLite builtins it becomes (what `edgekit inspect` checks against NNAPI's list); its keys are
# the ops registered below (SUPPORTED_OPS)
TFLITE_OPS: dict[str, tuple[str, ...]] = {
    "Conv": ("CONV_2D", "DEPTHWISE_CONV_2D", "PAD"),
    "BatchNormalization": ("MUL", "ADD"),  # usually fused into the conv before it
    "Relu": ("RELU",),
    "Clip": ("RELU6", "RELU_0_TO_1", "MINIMUM", "MAXIMUM"),
    "HardSigmoid": ("RELU6", "MUL"),
    "HardSwish": ("HARD_SWISH",),
    "Sigmoid": ("LOGISTIC",),
    "Add": ("ADD",),
    "Sub": ("SUB",),
    "Mul": ("MUL",),
    "Div": ("DIV", "MUL"),
    "MaxPool": ("MAX_POOL_2D", "PAD"),
    "AveragePool": ("AVERAGE_POOL_2D", "PAD"),
    "GlobalAveragePool": ("MEAN",),
    "ReduceMean": ("MEAN", "TRANSPOSE", "RESHAPE"),
    "Flatten": ("TRANSPOSE", "RESHAPE"),
    "Reshape": ("TRANSPOSE", "RESHAPE"),
    "Transpose": ("TRANSPOSE",),
    "Concat": ("CONCATENATION",),
    "Gemm": ("FULLY_CONNECTED",),
    "MatMul": ("FULLY_CONNECTED", "BATCH_MATMUL"),
    "Softmax": ("SOFTMAX",),
    "ConvTranspose": ("TRANSPOSE_CONV", "SLICE"),  # the slice only for pads
    "Resize": ("RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"),
    "Split": ("SPLIT", "SLICE"),  # unequal parts: a slice each
    "Slice": ("STRIDED_SLICE", "SLICE"),  # SLICE where the steps are 1
    "Softplus": ("RELU", "ABS", "NEG", "EXP", "ADD", "LOG"),  # kept float in INT8 builds
    "Gelu": ("GELU",),
    "Erf": ("GELU", "ABS", "MUL", "ADD", "DIV", "EXP", "SIGN"),  # GELU's formula fused; alone a polynomial
    "Sqrt": ("SQRT",),
    "Pow": ("MUL", "SQRT", "POW"),  # x^2 and x^0.5 without POW
    "Identity": (),
    "Dropout": (),
    "Constant": (),
    "Neg": ("NEG",),
    "Abs": ("ABS",),
    "Exp": ("EXP",),
    "Log": ("LOG",),
    "Tanh": ("TANH",),
    "Reciprocal": ("DIV",),
    "Floor": ("FLOOR",),
    "Ceil": ("CEIL",),
    "Round": ("ROUND",),
    "Sin": ("SIN",),
    "Cos": ("COS",),
    "Not": ("LOGICAL_NOT",),
    "Sign": ("SIGN",),
    "LeakyRelu": ("LEAKY_RELU",),
    "Elu": ("ELU", "SELECT_V2", "MUL"),  # alpha other than 1 selects alpha * elu(x) below zero
    "PRelu": ("PRELU",),
    "Mish": ("RELU", "ABS", "NEG", "EXP", "ADD", "LOG", "TANH", "MUL"),  # kept float in INT8 builds
    "Min": ("MINIMUM",),
    "Max": ("MAXIMUM",),
    "Less": ("LESS",),
    "LessOrEqual": ("LESS_EQUAL",),
    "Greater": ("GREATER",),
    "GreaterOrEqual": ("GREATER_EQUAL",),
    "And": ("LOGICAL_AND",),
    "Or": ("LOGICAL_OR",),
    "Equal": ("EQUAL",),
    "Where": ("SELECT_V2", "CAST"),
    "ReduceMax": ("REDUCE_MAX", "TRANSPOSE", "RESHAPE"),
    "ReduceMin": ("REDUCE_MIN", "TRANSPOSE", "RESHAPE"),
    "ReduceSum": ("SUM", "TRANSPOSE", "RESHAPE"),
    "ReduceProd": ("REDUCE_PROD", "TRANSPOSE", "RESHAPE"),
    "LayerNormalization": ("MEAN", "SUB", "MUL", "RSQRT", "ADD"),  # kept float in INT8 builds
    "Einsum": ("BATCH_MATMUL", "TRANSPOSE", "RESHAPE", "FULLY_CONNECTED"),
    "Pad": ("PAD", "PADV2", "MIRROR_PAD", "SLICE", "TILE", "CONCATENATION"),  # edge: border slices tiled
    "Tile": ("TILE",),
    "TopK": ("TOPK_V2", "NEG", "CAST"),
    # folded in numpy when their inputs are constant (shape arithmetic); on activations a TFLite op
    "Shape": (),
    "Gather": ("GATHER", "STRIDED_SLICE"),  # a scalar index: a strided slice
    "Unsqueeze": ("RESHAPE",),
    "Squeeze": ("RESHAPE",),
    "Cast": ("CAST",),
    "Expand": ("MUL",),
    "ConstantOfShape": (),
    "Range": (),
}


class ConversionError(EdgekitError):
    """An ONNX model this converter cannot translate; names the op and node and what to do."""


_UNSUPPORTED_ADVICE = "Export the model without it, or use another target"


class Translator:
    """The walk: ONNX nodes in graph order, each to TF ops (or a folded constant), activations kept NHWC."""

    def __init__(self, proto: onnx.ModelProto, tf: Any) -> None:
        self.tf = tf
        self.graph = proto.graph
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        self.values: dict[str, Value] = {}
        self.opset = default_opset(proto, 1)
        self.node = onnx.NodeProto()  # the node being translated (an op function may read its outputs)
        self.proto = proto
        self._facts: GraphFacts | None = None

    @property
    def facts(self) -> GraphFacts:
        """Static shapes and constants for the op checks (computed once, on the first node that has a check)."""
        if self._facts is None:
            self._facts = GraphFacts(self.proto)
        return self._facts

    # -- helpers ---------------------------------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def broadcast_const(self, array: np.ndarray, like: Value) -> Any:
        """A numpy constant in ONNX (NCHW) layout, laid out to broadcast against `like`."""
        array = np.asarray(array, np.float32) if array.dtype.kind == "f" else np.asarray(array)
        if like.nhwc and array.ndim >= 1:
            array = array.reshape((1,) * (4 - array.ndim) + array.shape).transpose(NCHW_TO_NHWC)
        return self.tf.constant(array)

    def operand(self, name: str, like: Value) -> Any:
        if name in self.consts:
            return self.broadcast_const(self.consts[name], like)
        value = self.values[name]
        if value.nhwc != like.nhwc:
            return self.nhwc(value) if like.nhwc else self.nchw(value)
        return value.tensor

    def nchw(self, value: Value) -> Any:
        return self.tf.transpose(value.tensor, NHWC_TO_NCHW) if value.nhwc else value.tensor

    def nhwc(self, value: Value) -> Any:
        return value.tensor if value.nhwc else self.tf.transpose(value.tensor, NCHW_TO_NHWC)

    # -- the walk --------------------------------------------------------------------------------

    def run(self, x: Any, nhwc: bool = True) -> list[Any]:
        """The graph's outputs for input `x`: an NHWC image of an NCHW model (`nhwc`), or the model's own
        input as it is (a channel-last model's NHWC input: its own Transpose makes it NCHW)."""
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        self.values[inputs[0].name] = Value(x, nhwc)
        for node in self.graph.node:
            self.visit(node)
        outputs = []
        for output in self.graph.output:
            if output.name in self.values:
                outputs.append(self.nchw(self.values[output.name]))
            else:
                outputs.append(self.tf.constant(self.consts[output.name]))
        return outputs

    def visit(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Constant":
            self.consts[node.output[0]] = _constant_of(node)
            return
        self.node = node
        attrs = node_attrs(node)
        try:
            result = self.folded(node, attrs)
            if result is None:
                function = OPS.lookup(node, ConversionError, _UNSUPPORTED_ADVICE)
                check = OPS.checks.get(node.op_type)  # the reason `refusals` gives, so the two cannot disagree
                if check is not None and (reason := check(node, attrs, self.facts)):
                    raise NotImplementedError(reason)
                result = function(self, list(node.input), attrs)
        except ConversionError:
            raise
        except (NotImplementedError, ValueError) as exc:
            raise ConversionError(f"cannot convert {node.op_type} node {node_label(node)!r} to TFLite: {exc}") from exc
        for name, value in zip(node.output, result if isinstance(result, list) else [result], strict=True):
            if isinstance(value, np.ndarray):
                self.consts[name] = value
            elif name:
                self.values[name] = value

    def folded(self, node: onnx.NodeProto, attrs: dict[str, Any]) -> np.ndarray | list[np.ndarray] | None:
        """The node's value(s) when all its inputs are constant and it folds in numpy; else None."""
        fold = FOLDS.functions.get(node.op_type)
        names = [i for i in node.input if i]
        if fold is None or not names or not all(i in self.consts for i in names):
            return None
        value = fold([self.consts.get(i) for i in node.input], attrs)
        return [np.asarray(v) for v in value] if isinstance(value, list) else np.asarray(value)  # numpy scalars too


def _constant_of(node: onnx.NodeProto) -> np.ndarray:
    value = constant_value(node)
    if value is None:
        raise ConversionError(f"Constant node {node_label(node)!r} has no value the TFLite converter can read")
    return value


SUPPORTED_OPS = OPS.ops  # every key of TFLITE_OPS (tests/test_target_tflite.py holds them equal)


def static_input_shape(proto: onnx.ModelProto, size: tuple[int, int] | None = None) -> tuple[int, ...]:
    """The single input's shape in the model's own layout (NCHW, or NHWC for a channel-last model): a dynamic
    batch becomes 1, dynamic height/width come from `size` (the preprocess resize); any other dynamic axis, or
    an input that is not a rank-4 image, is a ConversionError."""
    try:
        shape = fixed_input_shape(proto, size)
    except ModelError as exc:
        raise ConversionError(f"the TFLite target: {exc}") from exc
    name = graph_inputs(proto)[0].name
    if len(shape) != 4:
        raise ConversionError(f"the TFLite target takes one image input (rank 4); input {name!r} is {list(shape)}")
    return shape


def channel_last(shape: tuple[int, ...]) -> bool:
    """Whether a model input of `shape` is an NHWC image: its .tflite input is then the model's own, no
    transposes added (the model's own Transpose to NCHW meets the translator's NHWC and both go)."""
    return image_layout(shape) == "NHWC"


def to_tflite(
    proto: onnx.ModelProto,
    *,
    fp16: bool = False,
    nchw_input: bool = False,
    size: tuple[int, int] | None = None,
    converter_int8_data: Any = None,
) -> bytes:
    """Convert a float ONNX model to a float32 (or float16-weight) .tflite model.

    The .tflite input is NHWC (what Android camera frames are) unless `nchw_input`; a channel-last model keeps
    its own NHWC input (`nchw_input` does not apply). Outputs keep ONNX's layout, so they compare one to one
    with ONNX Runtime's. `converter_int8_data` (float arrays in the model's input layout, one per sample) makes
    TensorFlow's own full-integer model with its own min-max calibration instead: the anchor the benchmarks
    compare the QuantSpec route against.
    """
    import tensorflow as tf

    shape = static_input_shape(proto, size)
    as_given = channel_last(shape)  # the model's own NHWC input: no layout change at all
    n, c, h, w = (shape[0], shape[3], shape[1], shape[2]) if as_given else shape
    translator = Translator(fuse_gelu(proto), tf)
    spec = tf.TensorSpec(list(shape) if nchw_input or as_given else [n, h, w, c], tf.float32, name="input")

    @tf.function(input_signature=[spec], autograph=False)
    def graph(x: Any) -> list[Any]:
        if as_given:
            return translator.run(x, nhwc=False)
        return translator.run(tf.transpose(x, NCHW_TO_NHWC) if nchw_input else x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    if fp16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    if converter_int8_data is not None:
        samples = [np.asarray(x, np.float32).reshape(shape) for x in converter_int8_data]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        as_is = nchw_input or as_given
        converter.representative_dataset = lambda: ([x if as_is else x.transpose(0, 2, 3, 1)] for x in samples)
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ... with long MLIR dumps
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"TensorFlow's TFLite converter failed: {first}") from exc
