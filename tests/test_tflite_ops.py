"""The TFLite translator op by op: small ONNX graphs built with onnx.helper, converted to .tflite and compared with
ONNX Runtime for each attribute variant the translator takes, and a refusal naming the op and node for variants
it does not; then real models end to end: PaddleOCR's text detector (rapidocr), the shipped demo detector (FP32
and INT8 with calibration data), a YOLOv8n (nudenet's wheel) and one timm architecture per family (ResNet,
MobileNetV3, RegNet, GhostNet, DeiT, MobileViT, ConvNeXt) at fp32, fp16 and, four of them, int8."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tensorflow", reason="needs the tflite extra (pip install 'edgekit[tflite]')")
pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (pip install 'edgekit[tflite]')")

import onnxruntime as ort

import edgekit
from edgekit.model import Model
from edgekit.runtime.engines.tflite import TfliteEngine
from edgekit.targets import BuildError, get_target
from edgekit.targets.onnx_to_tf import ConversionError, to_tflite
from edgekit.targets.tflite_quant import _interpreter

TEST_MODELS = Path.home() / ".cache" / "edgekit" / "test-models"
INT64_MAX = np.iinfo(np.int64).max


def _model(
    nodes: list[onnx.NodeProto], shape: list[int], inits: dict[str, np.ndarray] | None = None, opset: int = 17
) -> onnx.ModelProto:
    """One float input `x` of `shape`, one output `y`."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ort(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    with TfliteEngine.from_bytes(data, {"threads": 1}) as engine:
        return engine.infer({engine.input_names[0]: x.transpose(0, 2, 3, 1)})[0]


def _ops(data: bytes) -> set[str]:
    """The .tflite's op kinds, less the TRANSPOSEs between NHWC and NCHW at its input and output."""
    return {op["op_name"] for op in _interpreter(data)._get_ops_details()} - {"TRANSPOSE"}


def _check(proto: onnx.ModelProto, atol: float = 1e-5, scale: float = 1.0) -> bytes:
    """Convert `proto` and assert the .tflite computes what ONNX Runtime does; returns the .tflite."""
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = (np.random.default_rng(0).standard_normal(shape) * scale).astype(np.float32)
    data = to_tflite(proto)
    want, got = _ort(proto, x), _tflite(data, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-5)
    return data


# -- Resize ------------------------------------------------------------------------------------------------


def _resize(mode: str, coordinates: str | None, rule: str | None, *, scales=None, sizes=None, opset=18, **extra):
    attrs = {"mode": mode, **extra}
    if coordinates is not None:
        attrs["coordinate_transformation_mode"] = coordinates
    if rule is not None:
        attrs["nearest_mode"] = rule
    inits = {}
    if opset < 11:
        inputs, inits["scales"] = ["x", "scales"], np.array([1, 1, *scales], np.float32)
    elif scales is not None:
        inputs, inits["scales"] = ["x", "", "scales"], np.array([1, 1, *scales], np.float32)
    else:
        inputs = ["x", "", "", "sizes"]
        inits["sizes"] = np.array(sizes if "axes" in extra else [1, 3, *sizes], np.int64)
    return _model([helper.make_node("Resize", inputs, ["y"], name="rs", **attrs)], [1, 3, 5, 7], inits, opset)


RESIZES = {
    "nearest asymmetric floor x2 (YOLOv8, PP-OCR)": ("nearest", "asymmetric", "floor", {"scales": [2.0, 2.0]}),
    "nearest asymmetric round_prefer_floor x2": ("nearest", "asymmetric", "round_prefer_floor", {"scales": [2, 2]}),
    "nearest half_pixel round_prefer_floor x3 (defaults)": ("nearest", None, None, {"scales": [3.0, 3.0]}),
    "nearest align_corners round_prefer_ceil to 8x11": (
        "nearest",
        "align_corners",
        "round_prefer_ceil",
        {"sizes": [8, 11]},
    ),
    "nearest tf_half_pixel_for_nn floor down to 3x4": (
        "nearest",
        "tf_half_pixel_for_nn",
        "floor",
        {"sizes": [3, 4], "opset": 13},
    ),
    "nearest half_pixel_symmetric, axes, sizes 8x11": (
        "nearest",
        "half_pixel_symmetric",
        "round_prefer_ceil",
        {"sizes": [8, 11], "axes": [2, 3]},
    ),
    "nearest opset 10 (X, scales)": ("nearest", None, None, {"scales": [2.0, 2.0], "opset": 10}),
    "linear asymmetric x2": ("linear", "asymmetric", None, {"scales": [2.0, 2.0]}),
    "linear half_pixel to 8x11": ("linear", "half_pixel", None, {"sizes": [8, 11]}),
    "linear pytorch_half_pixel down to 3x4": ("linear", "pytorch_half_pixel", None, {"sizes": [3, 4]}),
    "linear align_corners x3": ("linear", "align_corners", None, {"scales": [3.0, 3.0]}),
}


@pytest.mark.parametrize("case", list(RESIZES))
def test_resize_variants_match_onnxruntime(case: str) -> None:
    mode, coordinates, rule, options = RESIZES[case]
    data = _check(_resize(mode, coordinates, rule, **options))
    assert _ops(data) == {"RESIZE_NEAREST_NEIGHBOR" if mode == "nearest" else "RESIZE_BILINEAR"}


def test_resize_that_no_tflite_kernel_computes_is_refused_by_name(tmp_path: Path) -> None:
    # x3 with ceil rounding samples pixels no RESIZE_NEAREST_NEIGHBOR variant samples
    with pytest.raises(
        ConversionError,
        match=r"Resize node 'rs'.*no TFLite resize samples like nearest with coordinate_transformation_mode "
        r"'asymmetric', nearest_mode 'ceil' \(5->15, 7->21\)",
    ):
        to_tflite(_resize("nearest", "asymmetric", "ceil", scales=[3.0, 3.0]))
    with pytest.raises(ConversionError, match=r"Resize node 'rs'.*scales or sizes must be constants"):
        to_tflite(_model([helper.make_node("Resize", ["x", "", "x"], ["y"], name="rs")], [1, 3, 5, 7]))
    cubic = Model(_resize("cubic", "half_pixel", None, scales=[2.0, 2.0]))
    with pytest.raises(BuildError, match=r"(?s)cannot take 1 node.*Resize node 'rs': mode 'cubic'"):
        get_target("android-tflite").build(cubic, tmp_path / "cubic")
    assert not (tmp_path / "cubic").exists()  # refused before anything is written


# -- Split, Slice --------------------------------------------------------------------------------------------


def _split_then_concat(axis: int, parts: int, opset: int, split=None, **attrs) -> onnx.ModelProto:
    """Split x, then concatenate the parts in reverse order (checks each part and their order in one output)."""
    names = [f"part{i}" for i in range(parts)]
    inputs, inits = ["x"], {}
    if split is not None and opset >= 13:
        inputs, inits["split"] = ["x", "split"], np.array(split, np.int64)
    elif split is not None:
        attrs["split"] = split
    nodes = [
        helper.make_node("Split", inputs, names, axis=axis, name="split", **attrs),
        helper.make_node("Concat", names[::-1], ["y"], axis=axis),
    ]
    return _model(nodes, [1, 6, 5, 8], inits, opset)


@pytest.mark.parametrize(
    "axis, parts, opset, split, attrs, ops",
    [
        (1, 2, 17, [2, 4], {}, {"SLICE"}),  # the split input, unequal: a slice each
        (1, 2, 11, [3, 3], {}, {"SPLIT"}),  # the split attribute, equal (YOLOv8's C2f)
        (3, 2, 17, None, {}, {"SPLIT"}),  # equal parts by output count, along W
        (2, 3, 18, None, {"num_outputs": 3}, {"SLICE"}),  # 5 rows in 3: 2, 2, 1
    ],
)
def test_split_variants_match_onnxruntime(axis, parts, opset, split, attrs, ops) -> None:
    data = _check(_split_then_concat(axis, parts, opset, split, **attrs))
    assert ops <= _ops(data)


@pytest.mark.parametrize(
    "starts, ends, axes, steps, opset",
    [
        ([1], [3], [1], None, 17),  # channels 1..2
        ([0, -4], [INT64_MAX, INT64_MAX], [2, 3], [2, 1], 17),  # every second row, the last 4 columns
        ([1, 1], [4, 7], None, None, 17),  # axes default: N and C
        ([1], [5], [3], None, 9),  # opset 9: attributes
    ],
)
def test_slice_on_an_activation_matches_onnxruntime(starts, ends, axes, steps, opset) -> None:
    if opset < 10:
        node = helper.make_node("Slice", ["x"], ["y"], starts=starts, ends=ends, axes=axes)
        inits = {}
    else:
        inits = {"starts": np.array(starts), "ends": np.array(ends)}
        inputs = ["x", "starts", "ends"]
        if axes is not None:
            inits["axes"] = np.array(axes)
            inputs.append("axes")
        if steps is not None:
            inits["steps"] = np.array(steps)
            inputs.append("steps")
        node = helper.make_node("Slice", inputs, ["y"])
    shape = [2, 6, 5, 8] if axes is None else [1, 6, 5, 8]
    _check(_model([node], shape, inits, opset))


def test_flipping_slice_is_refused_by_name() -> None:
    inits = {"s": np.array([-1]), "e": np.array([-INT64_MAX]), "a": np.array([3]), "st": np.array([-1])}
    flip = _model([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"], name="flip")], [1, 3, 4, 4], inits)
    with pytest.raises(ConversionError, match=r"Slice node 'flip'.*negative step"):
        to_tflite(flip)


# -- Softplus, GELU, Sqrt/Pow -----------------------------------------------------------------------------------


def test_softplus_matches_onnxruntime_without_overflow() -> None:
    # inputs up to about +-150: log(1 + exp(x)) would overflow to inf in float32
    data = _check(_model([helper.make_node("Softplus", ["x"], ["y"])], [1, 3, 8, 8]), atol=1e-5, scale=40.0)
    assert {"EXP", "LOG"} <= _ops(data)


def _gelu_chain(order: str) -> list[onnx.NodeProto]:
    """x * 0.5 * (1 + erf(x / sqrt(2))) in the orders exporters write it."""
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"])
        if order != "mul"
        else helper.make_node("Mul", ["x", "rsqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["a"]),
    ]
    if order == "half_first":  # (x * 0.5) * (1 + erf)
        return [*nodes, helper.make_node("Mul", ["x", "half"], ["h"]), helper.make_node("Mul", ["h", "a"], ["y"])]
    return [*nodes, helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]


@pytest.mark.parametrize("order", ["div", "mul", "half_first"])
def test_erf_gelu_chain_becomes_one_gelu(order: str) -> None:
    constants = {"sqrt2": np.float32(np.sqrt(2)), "rsqrt2": np.float32(1 / np.sqrt(2))}
    constants.update(one=np.float32(1), half=np.float32(0.5))
    data = _check(_model(_gelu_chain(order), [1, 3, 8, 8], constants), atol=1e-4, scale=3.0)
    assert _ops(data) == {"GELU"}


def test_gelu_op_of_opset_20_and_a_lone_erf() -> None:
    for approximate in ("none", "tanh"):
        gelu = helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)
        _check(_model([gelu], [1, 3, 8, 8], opset=20), atol=1e-4, scale=3.0)
    # outside GELU's formula an Erf is a polynomial of builtins (|error| < 1.5e-7)
    data = _check(_model([helper.make_node("Erf", ["x"], ["y"], name="alone")], [1, 3, 8, 8]), atol=1e-6, scale=2.0)
    assert "GELU" not in _ops(data) and "EXP" in _ops(data)


def test_layer_norm_arithmetic_sqrt_and_pow() -> None:
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1]),
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Pow", ["centred", "two"], ["square"]),
        helper.make_node("ReduceMean", ["square"], ["var"], axes=[1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["centred", "std"], ["y"]),
    ]
    _check(_model(nodes, [1, 3, 8, 8], {"two": np.float32(2), "eps": np.float32(1e-5)}, opset=17), atol=1e-4)


# -- ConvTranspose, auto_pad ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel, attrs, bias",
    [
        (2, {"strides": [2, 2]}, True),  # PP-OCR det's upsampling head
        (3, {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, False),
        (4, {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
        (3, {"pads": [1, 0, 1, 2]}, False),
    ],
)
def test_conv_transpose_matches_onnxruntime(kernel, attrs, bias) -> None:
    rng = np.random.default_rng(1)
    inits = {"w": rng.standard_normal((3, 5, kernel, kernel)).astype(np.float32)}
    if bias:
        inits["b"] = rng.standard_normal(5).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"] if bias else ["x", "w"], ["y"], **attrs)
    data = _check(_model([node], [1, 3, 5, 6], inits), atol=1e-4)
    assert "TRANSPOSE_CONV" in _ops(data)


def test_grouped_conv_transpose_is_refused_by_name() -> None:
    inits = {"w": np.ones((4, 1, 2, 2), np.float32)}
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=4, strides=[2, 2], name="up")
    with pytest.raises(ConversionError, match=r"ConvTranspose node 'up'.*groups or dilations"):
        to_tflite(_model([node], [1, 4, 5, 5], inits))


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("Conv", {"auto_pad": "SAME_UPPER", "kernel_shape": [2, 2]}),  # PP-OCR det
        ("Conv", {"auto_pad": "SAME_LOWER", "kernel_shape": [2, 2], "strides": [2, 2]}),
        ("MaxPool", {"auto_pad": "SAME_UPPER", "kernel_shape": [2, 2]}),
        ("AveragePool", {"auto_pad": "SAME_UPPER", "kernel_shape": [3, 3], "strides": [2, 2]}),  # excludes pads
    ],
)
def test_auto_pad_matches_onnxruntime(op: str, attrs: dict) -> None:
    inits = {"w": np.random.default_rng(2).standard_normal((4, 3, 2, 2)).astype(np.float32)} if op == "Conv" else {}
    _check(_model([helper.make_node(op, ["x", "w"] if inits else ["x"], ["y"], **attrs)], [1, 3, 7, 8], inits))


# -- constant folding: shape arithmetic that must vanish at the fixed input shape ---------------------------------


def test_anchor_grid_arithmetic_folds_away() -> None:
    """A dynamic-shape export's anchor grid (Shape -> Range -> Expand, ConstantOfShape, Equal/Where) becomes
    one constant: the .tflite is a single ADD."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i2"], ["h"], axis=0),
        helper.make_node("Gather", ["shape", "i3"], ["w"], axis=0),
        helper.make_node("Range", ["zero", "h", "step"], ["rows"]),
        helper.make_node("Range", ["zero", "w", "step"], ["cols"]),
        helper.make_node("Unsqueeze", ["h", "ax0"], ["h1"]),
        helper.make_node("Unsqueeze", ["w", "ax0"], ["w1"]),
        helper.make_node("Concat", ["h1", "w1"], ["hw"], axis=0),
        helper.make_node("Unsqueeze", ["rows", "ax1"], ["rows_col"]),
        helper.make_node("Expand", ["rows_col", "hw"], ["grid_y"]),
        helper.make_node("Expand", ["cols", "hw"], ["grid_x"]),
        helper.make_node("Equal", ["grid_x", "zero"], ["first"]),
        helper.make_node("Where", ["first", "grid_y", "grid_x"], ["picked"]),
        helper.make_node("ConstantOfShape", ["hw"], ["ones"], value=one),
        helper.make_node("Cast", ["picked"], ["picked_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["picked_f", "ones"], ["grid"]),
        helper.make_node("Add", ["x", "grid"], ["y"]),
    ]
    ints = {"i2": np.int64(2), "i3": np.int64(3), "zero": np.int64(0), "step": np.int64(1)}
    data = _check(_model(nodes, [1, 3, 4, 6], {**ints, "ax0": np.array([0]), "ax1": np.array([1])}))
    assert _ops(data) == {"ADD"}


# -- the ops transformers and mobile nets add (each against ONNX Runtime) -----------------------------------------

_RNG = np.random.default_rng(3)
_N = helper.make_node


def _shape(name: str, shape: list[int]) -> dict[str, np.ndarray]:
    return {name: np.array(shape, np.int64)}


OP_CASES = {
    # name: (nodes, input shape, initializers, opset)
    "unary chain Abs Neg Exp Log Tanh Reciprocal": (
        [
            _N("Abs", ["x"], ["a"]),
            _N("Add", ["a", "one"], ["a1"]),
            _N("Log", ["a1"], ["l"]),
            _N("Reciprocal", ["a1"], ["r"]),
            _N("Neg", ["l"], ["n"]),
            _N("Exp", ["n"], ["e"]),
            _N("Tanh", ["r"], ["t"]),
            _N("Add", ["e", "t"], ["y"]),
        ],
        [1, 3, 5, 6],
        {"one": np.float32(1.0)},
        17,
    ),
    "LeakyRelu": ([_N("LeakyRelu", ["x"], ["y"], alpha=0.1)], [1, 3, 5, 6], {}, 17),
    "Elu alpha 0.5": ([_N("Elu", ["x"], ["y"], alpha=0.5)], [1, 3, 5, 6], {}, 17),
    "PRelu per channel": (
        [_N("PRelu", ["x", "s"], ["y"])],
        [1, 3, 5, 6],
        {"s": _RNG.random((3, 1, 1)).astype(np.float32)},
        17,
    ),
    "Mish": ([_N("Mish", ["x"], ["y"])], [1, 3, 5, 6], {}, 18),
    "HardSwish": ([_N("HardSwish", ["x"], ["y"])], [1, 3, 5, 6], {}, 17),
    "Min Max of three": (
        [_N("Mul", ["x", "x"], ["x2"]), _N("Max", ["x", "c", "x2"], ["m"]), _N("Min", ["m", "d"], ["y"])],
        [1, 3, 5, 6],
        {"c": np.float32(-0.5), "d": _RNG.random((3, 1, 1)).astype(np.float32)},
        17,
    ),
    "Where on a runtime condition": (
        [_N("Greater", ["x", "zero"], ["c"]), _N("Where", ["c", "x", "k"], ["y"])],
        [1, 3, 5, 6],
        {"zero": np.float32(0.0), "k": _RNG.random((3, 1, 1)).astype(np.float32)},
        17,
    ),
    "ReduceMax channels, keepdims 0": (
        [_N("ReduceMax", ["x", "ax"], ["y"], keepdims=0)],
        [1, 3, 5, 6],
        {"ax": np.array([1])},
        18,
    ),
    "ReduceSum H W, keepdims 1": ([_N("ReduceSum", ["x", "ax"], ["y"])], [1, 3, 5, 6], {"ax": np.array([2, 3])}, 13),
    "ReduceMean H only, keepdims 0": ([_N("ReduceMean", ["x"], ["y"], axes=[2], keepdims=0)], [1, 3, 5, 6], {}, 17),
    "ReduceMin over every axis": ([_N("ReduceMin", ["x"], ["y"])], [1, 3, 5, 6], {}, 18),
    "Softmax over H": ([_N("Softmax", ["x"], ["y"], axis=2)], [1, 3, 5, 6], {}, 17),
    "Softmax over W": ([_N("Softmax", ["x"], ["y"], axis=-1)], [1, 3, 5, 6], {}, 17),
    "LayerNormalization of tokens (rank 3)": (
        [_N("Reshape", ["x", "s"], ["t"]), _N("LayerNormalization", ["t", "g", "b"], ["y"], epsilon=1e-6)],
        [1, 3, 5, 6],
        {**_shape("s", [1, 5, 18]), "g": _RNG.random(18).astype(np.float32), "b": _RNG.random(18).astype(np.float32)},
        17,
    ),
    "LayerNormalization channels-last (ConvNeXt)": (
        [
            _N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
            _N("LayerNormalization", ["t", "g", "b"], ["n"]),
            _N("Transpose", ["n"], ["y"], perm=[0, 3, 1, 2]),
        ],
        [1, 3, 5, 6],
        {"g": _RNG.random(3).astype(np.float32), "b": _RNG.random(3).astype(np.float32)},
        17,
    ),
    "LayerNormalization over C H W": (
        [_N("LayerNormalization", ["x", "g"], ["y"], axis=1)],
        [1, 3, 5, 6],
        {"g": _RNG.random((3, 5, 6)).astype(np.float32)},
        17,
    ),
    "Gather the class token x[:, 0]": (
        [_N("Reshape", ["x", "s"], ["t"]), _N("Gather", ["t", "i"], ["y"], axis=1)],
        [1, 3, 5, 6],
        {**_shape("s", [1, 5, 18]), "i": np.array(0, np.int64)},
        17,
    ),
    "Gather channels": ([_N("Gather", ["x", "i"], ["y"], axis=1)], [1, 3, 5, 6], {"i": np.array([2, 0])}, 17),
    "Pad constant": (
        [_N("Pad", ["x", "p", "v"], ["y"])],
        [1, 3, 5, 6],
        {"p": np.array([0, 0, 1, 2, 0, 1, 2, 0]), "v": np.float32(0.5)},
        18,
    ),
    "Pad reflect": (
        [_N("Pad", ["x", "p"], ["y"], mode="reflect")],
        [1, 3, 5, 6],
        {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1])},
        18,
    ),
    "Pad edge": (
        [_N("Pad", ["x", "p"], ["y"], mode="edge")],
        [1, 3, 5, 6],
        {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1])},
        18,
    ),
    "Tile": ([_N("Tile", ["x", "r"], ["y"])], [1, 3, 5, 6], {"r": np.array([1, 2, 1, 3])}, 17),
    "Expand on data": ([_N("Expand", ["x", "s"], ["y"])], [1, 3, 1, 6], _shape("s", [1, 3, 5, 6]), 17),
    "TopK values and indices": (
        [
            _N("TopK", ["x", "k"], ["v", "i"], axis=-1),
            _N("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
            _N("Concat", ["v", "f"], ["y"], axis=-1),
        ],
        [1, 3, 5, 6],
        {"k": np.array([3])},
        17,
    ),
    "attention: batched MatMul, softmax, Einsum": (
        [
            _N("Reshape", ["x", "s"], ["q"]),  # [1, 2 heads, 5 tokens, 9]
            _N("Transpose", ["q"], ["kt"], perm=[0, 1, 3, 2]),
            _N("MatMul", ["q", "kt"], ["att"]),
            _N("Softmax", ["att"], ["p"], axis=-1),
            _N("Einsum", ["p", "q"], ["y"], equation="bhij,bhjd->bhid"),
        ],
        [1, 3, 5, 6],
        _shape("s", [1, 2, 5, 9]),
        17,
    ),
    "timm attention: qkv rank-5 reshape, Split, Squeeze": (
        [
            _N("Reshape", ["x", "s"], ["t"]),  # [1, 5 tokens, 18] -> [1, 5, 3, 2 heads, 3]
            _N("Reshape", ["t", "s5"], ["qkv"]),
            _N("Transpose", ["qkv"], ["p"], perm=[2, 0, 3, 1, 4]),
            _N("Split", ["p"], ["q5", "k5", "v5"], axis=0, num_outputs=3),
            _N("Squeeze", ["q5", "zero"], ["q"]),
            _N("Squeeze", ["k5", "zero"], ["k"]),
            _N("Squeeze", ["v5", "zero"], ["v"]),
            _N("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            _N("MatMul", ["q", "kt"], ["a"]),
            _N("Softmax", ["a"], ["w"], axis=-1),
            _N("MatMul", ["w", "v"], ["o"]),
            _N("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
            _N("Reshape", ["ot", "s6"], ["y"]),
        ],
        [1, 3, 5, 6],
        {**_shape("s", [1, 5, 18]), **_shape("s5", [1, 5, 3, 2, 3]), **_shape("s6", [1, 5, 6]), "zero": np.array([0])},
        18,
    ),
    "channel shuffle (rank 5)": (
        [
            _N("Reshape", ["x", "s5"], ["g"]),
            _N("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
            _N("Reshape", ["t", "s4"], ["y"]),
        ],
        [1, 6, 5, 6],
        {**_shape("s5", [1, 2, 3, 5, 6]), **_shape("s4", [1, 6, 5, 6])},
        17,
    ),
    "grouped Conv (3 groups of 2 channels, RegNet)": (
        [_N("Conv", ["x", "w", "b"], ["y"], group=3, pads=[1, 1, 1, 1], strides=[2, 1])],
        [1, 6, 5, 6],
        {"w": _RNG.standard_normal((9, 2, 3, 3)).astype(np.float32), "b": _RNG.standard_normal(9).astype(np.float32)},
        17,
    ),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_op_matches_onnxruntime(case: str) -> None:
    nodes, shape, inits, opset = OP_CASES[case]
    _check(_model(nodes, shape, inits, opset), atol=1e-5, scale=1.5)


def test_grouped_conv_is_split_into_per_group_convs() -> None:
    nodes, shape, inits, opset = OP_CASES["grouped Conv (3 groups of 2 channels, RegNet)"]
    ops = _ops(to_tflite(_model(nodes, shape, inits, opset)))
    assert {"SPLIT", "CONV_2D", "CONCATENATION"} <= ops and "DEPTHWISE_CONV_2D" not in ops


# Variants the translator cannot take: `Target.refusals` (what `edgekit inspect` shows) names each node with the
# reason the walk itself would give, so a build never fails after inspect said the model is fine
REFUSED = {
    "cubic Resize": (_resize("cubic", "half_pixel", None, scales=[2.0, 2.0]), "rs", "mode 'cubic'"),
    "Resize no kernel samples like": (
        _resize("nearest", "asymmetric", "ceil", scales=[3.0, 3.0]),
        "rs",
        "no TFLite resize samples like nearest",
    ),
    "flipping Slice": (
        _model(
            [_N("Slice", ["x", "s", "e", "a", "st"], ["y"], name="flip")],
            [1, 3, 4, 4],
            {"s": np.array([-1]), "e": np.array([-INT64_MAX]), "a": np.array([3]), "st": np.array([-1])},
        ),
        "flip",
        "negative step",
    ),
    "grouped ConvTranspose": (
        _model(
            [_N("ConvTranspose", ["x", "w"], ["y"], group=4, strides=[2, 2], name="up")],
            [1, 4, 5, 5],
            {"w": np.ones((4, 1, 2, 2), np.float32)},
        ),
        "up",
        "groups or dilations",
    ),
    "ceil_mode pooling": (
        _model(
            [_N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, name="mp")], [1, 3, 5, 5]
        ),
        "mp",
        "ceil_mode=1",
    ),
    "average pooling excluding asymmetric pads": (
        _model([_N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[0, 0, 2, 2], name="ap")], [1, 3, 6, 6]),
        "ap",
        "excludes the pads",
    ),
    "Reshape to a computed shape": (
        _model(
            [
                _N("Relu", ["x"], ["r"]),
                _N("Cast", ["r"], ["s"], to=TensorProto.INT64),
                _N("Flatten", ["s"], ["f"]),
                _N("Reshape", ["x", "f"], ["y"], name="rs"),
            ],
            [1, 1, 1, 4],
        ),
        "rs",
        "target shape are computed",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusals_predict_what_the_walk_refuses(case: str) -> None:
    proto, node, reason = REFUSED[case]
    refusals = get_target("android-tflite").refusals(proto)
    assert [(r.node, reason in r.reason) for r in refusals] == [(node, True)]
    with pytest.raises(ConversionError, match=rf"node '{node}'.*{reason}"):
        to_tflite(proto)


def test_channel_last_input_stays_nhwc(tmp_path: Path) -> None:
    """A model taking NHWC [1, 12, 10, 3] builds with that very input (no transposes added): the manifest, the
    .tflite's input and its outputs against ONNX Runtime on the model's own layout say so."""
    rng = np.random.default_rng(4)
    nodes = [
        _N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        _N("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
        _N("Relu", ["c"], ["y"]),
    ]
    proto = _model(nodes, [1, 12, 10, 3], {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)})
    proto.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 10]))
    artifact = edgekit.build(Model(proto), "android-tflite", tmp_path / "nhwc")
    assert artifact.manifest["inputs"][0]["shape"] == [1, 12, 10, 3]
    assert artifact.manifest["validation"]["max_abs_error"] < 1e-5
    data = artifact.model_path.read_bytes()
    assert list(_interpreter(data).get_input_details()[0]["shape"]) == [1, 12, 10, 3]
    x = rng.standard_normal((1, 12, 10, 3)).astype(np.float32)
    with TfliteEngine.from_bytes(data, {"threads": 1}) as engine:
        got = engine.infer({engine.input_names[0]: x})[0]
    np.testing.assert_allclose(got, _ort(proto, x), atol=1e-5)
    assert _ops(data) == {"CONV_2D"}  # the model's Transpose and the translator's NHWC cancel
    with pytest.raises(BuildError, match="channel-last"):
        edgekit.build(Model(proto), "android-tflite", tmp_path / "nchw", options={"nchw_input": True})


# -- real models end to end -----------------------------------------------------------------------------------


def _sqnr(reference: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((got.astype(np.float64) - reference) ** 2))
    return 10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / max(noise, 1e-30))


def _photo_folder(folder: Path, count: int = 3) -> Path:
    """Crops of scikit-learn's two sample photographs, as JPEG files (calibration images)."""
    import cv2

    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn (a dev dependency) ships photos")
    folder.mkdir(parents=True, exist_ok=True)
    photos = sklearn_datasets.load_sample_images().images
    for i in range(count):
        photo = photos[i % len(photos)]
        crop = photo[i * 60 : i * 60 + 300, i * 90 : i * 90 + 400]
        cv2.imwrite(str(folder / f"photo_{i}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return folder


def _text_folder(folder: Path, count: int = 3) -> Path:
    """Lines of black words on white (what a text detector is for), as PNG files (calibration images)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["edge", "devices", "latency", "model", "camera", "power", "frames", "int8", "text", "detector"]
    for i in range(count):
        page = np.full((300, 400, 3), 255, np.uint8)
        for line in range(6):
            origin = (10 + int(rng.integers(0, 40)), 40 + line * 45)
            text = " ".join(rng.choice(words, 3))
            cv2.putText(page, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.8 + 0.4 * rng.random(), (0, 0, 0), 2)
        cv2.imwrite(str(folder / f"text_{i}.png"), page)
    return folder


def _preprocessed(model: Model, folder: Path) -> np.ndarray:
    from edgekit.calibration.data import load_calibration_data

    data = load_calibration_data(folder, spec=model.preprocess, input_name=model.inputs[0].name)
    return np.concatenate([next(iter(feed.values())) for feed in data.feeds]).astype(np.float32)


def _outputs(artifact, proto: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX Runtime FP32, the .tflite) first outputs on the NCHW frames `x`."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    want = np.concatenate([session.run(None, {name: f[None]})[0] for f in x])
    got = np.concatenate([_tflite(artifact.model_path.read_bytes(), f[None]) for f in x])
    return want, got.reshape(want.shape)


@pytest.fixture(scope="module")
def ppocr_det() -> Model:
    import importlib.util

    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr is not installed (pip install rapidocr): it ships the PaddleOCR ONNX models")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    found = sorted(models.glob("*det*.onnx"))
    if not found:
        pytest.skip(f"this rapidocr has no text detector under {models}")
    model = Model.load(found[0])
    # a small fixed input (a multiple of 32) and PaddleOCR's normalisation
    model.preprocess = {
        "resize": [96, 128],
        "layout": "NCHW",
        "color": "RGB",
        "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    return model


def test_ppocr_text_detector_fp32(ppocr_det: Model, tmp_path: Path) -> None:
    artifact = edgekit.build(ppocr_det, "android-tflite", tmp_path / "fp32")
    assert artifact.manifest["validation"]["max_abs_error"] < 1e-3
    assert artifact.manifest["inputs"][0]["shape"] == [1, 96, 128, 3]
    assert {"TRANSPOSE_CONV", "RESIZE_NEAREST_NEIGHBOR", "GELU"} <= _ops(artifact.model_path.read_bytes())


def test_ppocr_text_detector_int8_with_calibration_images(ppocr_det: Model, tmp_path: Path) -> None:
    from edgekit.calibration.calibrate import calibrate, prepare_float_model
    from edgekit.calibration.qdq import write_qdq

    pages = _text_folder(tmp_path / "pages")
    target = get_target("android-tflite")
    # full integer: the output tail (the final Sigmoid) quantized too; by default it stays float
    activations = target.activation_scheme
    spec = calibrate(ppocr_det, pages, activations=activations, progress=False, output_tail="int8").spec
    artifact = edgekit.build(ppocr_det, "android-tflite", tmp_path / "int8", precision="int8", quant_spec=spec)
    quantization = artifact.manifest["quantization"]
    assert quantization["full_integer"] and quantization["activations_from_spec"] > 100
    assert all(
        "TFLite fixes its parameters" in note["why"] or note["what"].startswith("activations the QDQ model")
        for note in artifact.manifest["not_honoured"]
    )
    x = _preprocessed(ppocr_det, pages)
    reference, got = _outputs(artifact, ppocr_det.proto, x)
    session = ort.InferenceSession(
        write_qdq(prepare_float_model(ppocr_det.proto, spec), spec).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    qdq = np.concatenate([session.run(None, {session.get_inputs()[0].name: f[None]})[0] for f in x])
    # the int8 .tflite is within the int8 budget and near ONNX Runtime's int8 model of the same QuantSpec (which
    # runs the GELUs float where the full-integer .tflite runs them in int8: measured 23.1 vs 27.0 dB), and the
    # text mask (probability > 0.3, PaddleOCR's threshold) stays the same almost everywhere
    print(f"PP-OCR det int8: .tflite {_sqnr(reference, got):.1f} dB, ORT QDQ {_sqnr(reference, qdq):.1f} dB")
    assert _sqnr(reference, got) > max(20.0, _sqnr(reference, qdq) - 5.0)
    assert np.mean((got > 0.3) == (reference > 0.3)) > 0.98


def test_demo_detector_fp32_and_int8_from_a_video(tmp_path: Path) -> None:
    from edgekit.demo_data import detector_model_path, render_detection_frames

    video, _ = render_detection_frames(tmp_path / "frames.mp4", 6)
    model = Model.load(detector_model_path())
    fp32 = edgekit.build(model, "android-tflite", tmp_path / "fp32")
    assert fp32.manifest["validation"]["max_abs_error"] < 1e-3
    int8 = edgekit.build(model, "android-tflite", tmp_path / "int8", precision="int8", calib=str(video))
    notes = [note["what"] for note in int8.manifest["not_honoured"]]
    assert any(what.startswith("softplus (7 TFLite ops) computed in float") for what in notes)
    quantization = int8.manifest["quantization"]
    # the decoding after the last convs (the mixed-range head concat among it) stays float: the output tail
    assert {"/Concat_3", "/Softplus", "/Sigmoid"} <= set(quantization["kept_float"])
    assert quantization["output_tail"][0].startswith("output tail: 10 ops after the last learned layers")
    frames = np.stack([next(iter(f.values()))[0] for f in _video_feeds(model, video)])
    reference, got = _outputs(int8, model.proto, frames)
    boxes, scores = _sqnr(reference[:, :4], got[:, :4]), _sqnr(reference[:, 4:], got[:, 4:])
    print(f"demo detector int8 from the video: box SQNR {boxes:.1f} dB, score SQNR {scores:.1f} dB")
    assert boxes > 35 and scores > 20


def _video_feeds(model: Model, video: Path) -> list[dict]:
    from edgekit.calibration.data import load_calibration_data

    return list(load_calibration_data(video, spec=model.preprocess, input_name=model.inputs[0].name, limit=6).feeds)


# -- YOLOv8n: nudenet's wheel ships one (320n.onnx, dynamic input shape) -----------------------------------------


@pytest.fixture(scope="module")
def yolov8n() -> Path:
    """nudenet 3.4.2's 320n.onnx, downloaded once with pip into ~/.cache/edgekit/test-models."""
    out = TEST_MODELS / "nudenet-3.4.2" / "320n.onnx"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "nudenet==3.4.2", "-d", folder]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=300)
            wheel = next(Path(folder).glob("nudenet-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read("nudenet/320n.onnx")
        except (OSError, subprocess.SubprocessError, StopIteration, KeyError) as exc:
            pytest.skip(f"cannot fetch nudenet 3.4.2's wheel (it holds a YOLOv8n, 320n.onnx) with pip: {exc}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(out)
    return out


def test_yolov8n_with_dynamic_shapes_converts_and_matches_onnxruntime(yolov8n: Path, tmp_path: Path) -> None:
    """Split, Resize, and the anchor grid built from Shape/Range/Expand/ConstantOfShape at a fixed 320x320."""
    model = Model.load(yolov8n)
    artifact = edgekit.build(model, "android-tflite", tmp_path / "fp32")
    validation = artifact.manifest["validation"]
    assert validation["max_abs_error"] < 1e-5 * validation["reference_abs_max"] * 100  # 0.1% of the box range
    ops = _ops(artifact.model_path.read_bytes())
    assert {"SPLIT", "RESIZE_NEAREST_NEIGHBOR", "SOFTMAX"} <= ops and not ops & {"RANGE", "FILL", "BROADCAST_TO"}
    photos = _photo_folder(tmp_path / "photos", 2)
    letterboxed = dict(model.preprocess.to_dict(), stride=None)  # the .tflite input is fixed at 320x320
    reference, got = _outputs(artifact, model.proto, _preprocessed(Model(model.proto, preprocess=letterboxed), photos))
    assert _sqnr(reference, got) > 80


# -- timm architectures, one per family: random seeded weights, exported at 64 px ------------------------------

TIMM_MODELS = {
    "resnet18": {},  # max pooling's PADV2
    "mobilenetv3_small_100": {},  # HardSwish, HardSigmoid squeeze-excite
    "regnetx_002": {},  # grouped convs
    "ghostnet_100": {},  # channel slices of the ghost modules
    "deit_tiny_patch16_224": {"img_size": 64, "depth": 2},  # attention, LayerNorm, GELU, class token
    "mobilevit_xxs": {},  # unfold/fold reshapes around attention
    "convnext_atto": {},  # channels-last LayerNorm between transposes
}
TIMM_INT8 = ("resnet18", "mobilenetv3_small_100", "regnetx_002", "deit_tiny_patch16_224")


@pytest.fixture(scope="module")
def timm_models(tmp_path_factory, timm_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("timm")
    paths = {}
    for name, options in TIMM_MODELS.items():
        _, proto = timm_factory(name, 64, num_classes=10, **options)
        paths[name] = folder / f"{name}.onnx"
        onnx.save(proto, paths[name])
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _photo_folder(tmp_path_factory.mktemp("photos"), 4)


@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_timm_architecture_fp32_and_fp16(name: str, timm_models: dict[str, Path], photos: Path, tmp_path: Path):
    model = Model.load(timm_models[name])
    assert get_target("android-tflite").model_refusals(model, "fp32") == []
    fp32 = edgekit.build(model, "android-tflite", tmp_path / "fp32")
    validation = fp32.manifest["validation"]
    assert validation["max_abs_error"] <= 1e-4 * validation["reference_abs_max"]
    fp16 = edgekit.build(model, "android-tflite", tmp_path / "fp16", precision="fp16")
    reference, got = _outputs(fp16, model.proto, _preprocessed(model, photos))
    print(
        f"{name}: fp32 {validation['max_abs_error']:.2e} of {validation['reference_abs_max']:.2e}, "
        f"fp16 {_sqnr(reference, got):.1f} dB"
    )
    assert _sqnr(reference, got) >= 40


@pytest.mark.parametrize("name", TIMM_INT8)
def test_timm_architecture_int8(name: str, timm_models: dict[str, Path], photos: Path, tmp_path: Path) -> None:
    """Every CNN within the int8 budget (SQNR >= 20 dB or top-1 agreement); the random-weight DeiT's near-uniform
    attention loses more on the QuantSpec's own grids (softmax at 1/256): there the .tflite must be as close to
    FP32 as ONNX Runtime's QDQ model of the same QuantSpec."""
    from edgekit.calibration.calibrate import calibrate, prepare_float_model
    from edgekit.calibration.qdq import write_qdq

    model = Model.load(timm_models[name])
    spec = calibrate(model, photos, activations="int8_asym", progress=False).spec
    int8 = edgekit.build(model, "android-tflite", tmp_path / "int8", precision="int8", quant_spec=spec)
    x = _preprocessed(model, photos)
    reference, got = _outputs(int8, model.proto, x)
    qdq = ort.InferenceSession(
        write_qdq(prepare_float_model(model.proto, spec), spec).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    qdq_out = np.concatenate([qdq.run(None, {qdq.get_inputs()[0].name: f[None]})[0] for f in x])
    top1 = float(np.mean(reference.argmax(-1) == got.argmax(-1)))
    sqnr, qdq_sqnr = _sqnr(reference, got), _sqnr(reference, qdq_out)
    print(f"{name} int8: {sqnr:.1f} dB (ORT QDQ {qdq_sqnr:.1f} dB), top-1 agreement {top1:.2f}")
    assert sqnr >= qdq_sqnr - 1.0
    if name != "deit_tiny_patch16_224":
        assert sqnr >= 20 or top1 >= 0.95


def test_int8_keeps_float_what_the_quantspec_has_no_range_for(tmp_path: Path) -> None:
    """A LayerNorm spelled out in ONNX ops (PP-OCR's recognizer): its statistics are float in the QDQ model and
    never observed, so the full-integer .tflite computes them in float between a DEQUANTIZE and a QUANTIZE,
    says so, and stays close to ONNX Runtime."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sub", ["c", "mean"], ["centred"]),
        helper.make_node("Pow", ["centred", "two"], ["square"]),
        helper.make_node("ReduceMean", ["square", "axes"], ["variance"], keepdims=1),
        helper.make_node("Add", ["variance", "eps"], ["padded"]),
        helper.make_node("Sqrt", ["padded"], ["deviation"]),
        helper.make_node("Div", ["centred", "deviation"], ["normed"]),
        helper.make_node("Conv", ["normed", "w2", "b2"], ["y"]),
    ]
    inits = {
        "w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "b": rng.standard_normal(8).astype(np.float32),
        "axes": np.array([1], np.int64),
        "two": np.array(2.0, np.float32),
        "eps": np.array(1e-5, np.float32),
        "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3,
        "b2": np.zeros(4, np.float32),
    }
    model = Model(_model(nodes, [1, 3, 16, 16], inits, opset=18), preprocess={"resize": [16, 16]})
    images = rng.random((16, 3, 16, 16), dtype=np.float32)
    artifact = edgekit.build(model, "android-tflite", tmp_path / "a", precision="int8", calib=images)
    notes = [n["what"] for n in artifact.manifest["not_honoured"]]
    assert any(note.endswith("TFLite ops computed in float") for note in notes), notes
    assert artifact.manifest["validation"]["sqnr_db"] >= 20


def test_int8_divides_by_an_activation_in_float(tmp_path: Path) -> None:
    """EfficientViT's linear attention divides by a sum ReLU can bring to ~0; TFLite's int8 DIV would stop the
    interpreter there (a divisor at its zero point), so the division stays float and the model runs."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ReduceSum", ["r", "axes"], ["total"], keepdims=1),
        helper.make_node("Add", ["total", "eps"], ["divisor"]),
        helper.make_node("Div", ["r", "divisor"], ["share"]),
        helper.make_node("Conv", ["share", "w2", "b2"], ["y"]),
    ]
    inits = {
        "w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "b": np.full(8, -0.5, np.float32),  # most of the ReLU's outputs are 0: sums near 0 occur
        "axes": np.array([1], np.int64),
        "eps": np.array(1e-6, np.float32),
        "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
        "b2": np.zeros(4, np.float32),
    }
    model = Model(_model(nodes, [1, 3, 16, 16], inits), preprocess={"resize": [16, 16]})
    images = rng.random((16, 3, 16, 16), dtype=np.float32)
    artifact = edgekit.build(model, "android-tflite", tmp_path / "a", precision="int8", calib=images)
    notes = [n["what"] for n in artifact.manifest["not_honoured"]]
    assert "1 divisions by an activation computed in float" in notes
    assert "DIV" in _ops(artifact.path.joinpath("model.tflite").read_bytes())
