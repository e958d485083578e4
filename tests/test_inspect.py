"""`edgekit inspect`: per-layer shapes, parameters and MACs, checked by hand and against ONNX Runtime."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from edgekit.errors import ModelError
from edgekit.inspect import UNKNOWN_DYNAMIC, human_count, inspect_model, render_table
from edgekit.model import Model

# -- a tiny model whose figures are worked out by hand ---------------------------------------------


def _tiny(spatial: tuple[int | str, int | str] = (32, 32)) -> Model:
    """Conv 3->16 (3x3, stride 2), Relu, Mul(s), depthwise Conv (3x3, group 16), Mul(s), GAP, Flatten, Gemm 16->10."""
    rng = np.random.default_rng(0)
    weights = {
        "conv_w": rng.normal(size=(16, 3, 3, 3)).astype(np.float32),  # 432
        "conv_b": np.zeros(16, np.float32),  # 16
        "dw_w": rng.normal(size=(16, 1, 3, 3)).astype(np.float32),  # 144
        "s": np.ones(1, np.float32),  # 1, read by two nodes
        "fc_w": rng.normal(size=(10, 16)).astype(np.float32),  # 160
        "fc_b": np.zeros(10, np.float32),  # 10
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Mul", ["r1", "s"], ["m1"], name="scale1"),
        helper.make_node("Conv", ["m1", "dw_w"], ["c2"], pads=[1, 1, 1, 1], group=16, name="depthwise"),
        helper.make_node("Mul", ["c2", "s"], ["m2"], name="scale2"),
        helper.make_node("GlobalAveragePool", ["m2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, *spatial])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    proto.ir_version = 8
    model = Model(proto)
    model.check()
    return model


# By hand, per sample at 32x32: conv out 16x16x16 = 4096 elements, each 3*3*3 MACs; the depthwise conv
# 4096 elements, each 1*3*3 MACs (C_in / group = 1); the Gemm 1*10 outputs, each 16 MACs.
CONV_MACS = 4096 * 27
DEPTHWISE_MACS = 4096 * 9
GEMM_MACS = 10 * 16
TINY_MACS = CONV_MACS + DEPTHWISE_MACS + GEMM_MACS
TINY_PARAMS = 432 + 16 + 144 + 1 + 160 + 10


def test_tiny_model_params_and_macs_match_hand_counts():
    report = inspect_model(_tiny())
    layers = {layer.name: layer for layer in report.layers}
    assert [layer.name for layer in report.layers] == [
        "conv",
        "relu",
        "scale1",
        "depthwise",
        "scale2",
        "pool",
        "flatten",
        "fc",
    ]
    assert (layers["conv"].params, layers["conv"].macs) == (448, CONV_MACS)
    assert (layers["depthwise"].params, layers["depthwise"].macs) == (144, DEPTHWISE_MACS)
    assert (layers["fc"].params, layers["fc"].macs) == (170, GEMM_MACS)
    assert layers["scale1"].params == layers["scale2"].params == 1  # each reader shows it ...
    assert report.totals.params == TINY_PARAMS  # ... the total counts it once
    assert report.totals.param_bytes == TINY_PARAMS * 4
    assert all(layers[n].macs == 0 for n in ("relu", "scale1", "scale2", "pool", "flatten"))
    # the symbolic batch stays symbolic in the shapes, and MACs are per sample (batch = 1)
    assert layers["conv"].output_shapes == [["batch", 16, 16, 16]]
    assert layers["fc"].output_shapes == [["batch", 10]]
    assert report.macs_input_shapes == {"x": [1, 3, 32, 32]}
    assert report.totals.macs == report.totals.macs_known == TINY_MACS
    assert report.totals.macs_unknown_layers == 0
    assert report.totals.nodes == 8
    assert report.totals.op_histogram == {
        "Conv": 2,
        "Mul": 2,
        "Flatten": 1,
        "GlobalAveragePool": 1,
        "Gemm": 1,
        "Relu": 1,
    }
    assert report.opsets == {"ai.onnx": 17} and report.ir_version == 8 and report.producer == "edgekit-tests"
    assert report.inputs == [{"name": "x", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]
    assert report.file_size_bytes == len(_tiny().proto.SerializeToString())
    assert report.unsupported["x86-ort"] == {}


def test_batch_given_by_the_caller_scales_macs():
    report = inspect_model(_tiny(), input_shapes={"x": [4, 3, 32, 32]})
    assert report.totals.macs == 4 * TINY_MACS
    assert report.layers[0].output_shapes == [[4, 16, 16, 16]]
    assert report.input_shapes == {"x": [4, 3, 32, 32]}


def test_dynamic_spatial_dims_give_unknown_macs_until_input_shapes_fix_them():
    model = _tiny(("h", "w"))
    report = inspect_model(model)
    layers = {layer.name: layer for layer in report.layers}
    for name in ("conv", "depthwise"):
        assert layers[name].macs is None and layers[name].macs_note == UNKNOWN_DYNAMIC
        assert all(isinstance(d, str) for d in layers[name].output_shapes[0][2:])
    assert layers["fc"].macs == GEMM_MACS  # after the global pool nothing is dynamic any more
    assert report.totals.macs is None
    assert (report.totals.macs_known, report.totals.macs_unknown_layers) == (GEMM_MACS, 2)

    fixed = inspect_model(model, input_shapes={"x": [1, 3, 32, 32]})
    assert fixed.totals.macs == TINY_MACS
    assert model.inputs[0].shape == ("batch", 3, "h", "w")  # the model itself is untouched


def test_conv_transpose_and_batched_matmul():
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 6, 2, 2)).astype(np.float32), "up_w"),
        numpy_helper.from_array(np.array([2, 6, 256], np.int64), "shape"),
        numpy_helper.from_array(rng.normal(size=(256, 5)).astype(np.float32), "proj"),
    ]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "up_w"], ["up"], strides=[2, 2], name="up"),
        helper.make_node("Reshape", ["up", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "proj"], ["y"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "ct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 5])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    report = inspect_model(Model(proto))
    up, _, proj = report.layers
    assert up.output_shapes == [[2, 6, 16, 16]]
    assert up.macs == (2 * 4 * 8 * 8) * (6 * 2 * 2)  # every input element meets C_out/group * kH * kW weights
    assert proj.macs == (2 * 6 * 5) * 256  # out elements * K
    assert report.totals.params == 4 * 6 * 4 + 3 + 256 * 5


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"image": [1, 3, 32, 32]}, "not an input of the model; its inputs are: x"),
        ({"x": [1, 3, 32]}, "rank 4"),
        ({"x": [1, 4, 32, 32]}, "fixed dim 1 = 3"),
        ({"x": [1, 3, 0, 32]}, "positive integer"),
        ({"x": [1, 3, "a", 32]}, "positive integer"),
    ],
)
def test_bad_input_shapes_name_the_problem(shapes, message):
    with pytest.raises(ModelError, match=message):
        inspect_model(_tiny(("h", "w")), input_shapes=shapes)


def test_render_table_shows_layers_and_totals():
    report = inspect_model(_tiny())
    console = Console(file=io.StringIO(), width=160)
    render_table(report, console)
    out = console.file.getvalue()
    for text in ("depthwise", "Conv", "Gemm", "GlobalAveragePool", "[batch, 16, 16, 16]", "x86-ort", "none"):
        assert text in out
    assert f"{human_count(TINY_MACS)} MACs" in out and "147.6 K MACs" in out
    assert "763 params" in out

    console = Console(file=io.StringIO(), width=160)
    render_table(report, console, max_rows=3)
    out = console.file.getvalue()
    assert "5 more layers" in out and "scale1" in out and "depthwise" not in out


def test_import_is_light():
    code = "import sys, edgekit.inspect; print('rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == (
        "False"
    )


# -- the real PaddleOCR models that ship with rapidocr -----------------------------------------------


def _rapidocr_models() -> Path:
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr is not installed (pip install rapidocr): it ships the PaddleOCR ONNX models")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


PADDLE = {  # file, a concrete input shape for MACs
    "det": ("PP-OCRv6_det_small.onnx", [1, 3, 320, 320]),
    "rec": ("PP-OCRv6_rec_small.onnx", [1, 3, 48, 320]),
    "cls": ("ch_ppocr_mobile_v2.0_cls_mobile.onnx", [1, 3, 48, 192]),
}


@pytest.fixture(scope="module")
def paddle() -> dict[str, Model]:
    folder = _rapidocr_models()
    missing = [f for f, _ in PADDLE.values() if not (folder / f).is_file()]
    if missing:
        pytest.skip(f"this rapidocr has no {', '.join(missing)} under {folder}")
    return {key: Model.load(folder / f) for key, (f, _) in PADDLE.items()}


def _constant_elements(proto: onnx.ModelProto) -> int:
    """Elements of all initializers plus all Constant-node tensors (cls keeps its weights in Constant nodes)."""
    total = sum(math.prod(init.dims) for init in proto.graph.initializer)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            total += math.prod(node.attribute[0].t.dims)
    return total


@pytest.mark.parametrize("key", list(PADDLE))
def test_paddleocr_report_without_shapes_keeps_dynamic_dims(paddle, key):
    model = paddle[key]
    report = inspect_model(model)
    assert len(report.layers) == len(model.proto.graph.node) > 100
    assert report.totals.params == _constant_elements(model.proto) > 100_000
    assert [i["name"] for i in report.inputs] == ["x"]
    assert any(isinstance(d, str) for d in report.inputs[0]["shape"])
    assert any(isinstance(d, str) for layer in report.layers for s in layer.output_shapes if s for d in s)
    # the spatial dims stay open, so convolution MACs are unknown, never guessed
    assert report.totals.macs is None and report.totals.macs_unknown_layers > 0
    assert {layer.macs_note for layer in report.layers if layer.macs is None} == {UNKNOWN_DYNAMIC}
    assert report.macs_input_shapes["x"][0] == 1  # the batch is taken as 1
    json.dumps(report.to_dict())


@pytest.mark.parametrize("key", list(PADDLE))
def test_paddleocr_macs_at_fixed_shape_match_onnxruntime_shapes(paddle, key):
    """Every layer's shape equals what ONNX Runtime produces, and Conv/ConvTranspose/MatMul MACs follow from it."""
    model, shape = paddle[key], PADDLE[key][1]
    report = inspect_model(model, input_shapes={"x": shape})
    assert report.totals.macs is not None and report.totals.macs > 1_000_000
    assert all(layer.macs is not None for layer in report.layers)
    assert report.totals.macs == sum(layer.macs for layer in report.layers)
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data

    probe = onnx.ModelProto()
    probe.CopyFrom(model.proto)
    declared = {o.name for o in probe.graph.output}
    produced = [out for node in probe.graph.node if node.op_type != "Constant" for out in node.output]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in produced if n not in declared)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {"x": np.zeros(shape, np.float32)})
    actual = {n: list(v.shape) for n, v in zip(names, values, strict=True)}
    constants = {i.name: list(i.dims) for i in model.proto.graph.initializer}
    constants |= {n.output[0]: list(n.attribute[0].t.dims) for n in model.proto.graph.node if n.op_type == "Constant"}

    macs = 0
    for node, layer in zip(model.proto.graph.node, report.layers, strict=True):
        if node.op_type != "Constant":
            assert layer.output_shapes == [actual[o] for o in node.output], layer.name
        dims = {**actual, **constants}
        if node.op_type == "Conv":
            expected = math.prod(dims[node.output[0]]) * math.prod(dims[node.input[1]][1:])
        elif node.op_type == "ConvTranspose":
            expected = math.prod(dims[node.input[0]]) * math.prod(dims[node.input[1]][1:])
        elif node.op_type == "MatMul":
            expected = math.prod(dims[node.output[0]]) * dims[node.input[0]][-1]
        else:
            assert layer.macs == 0
            continue
        assert layer.macs == expected, layer.name
        macs += expected
    assert report.totals.macs == macs


@pytest.mark.parametrize("key", ["det", "rec", "cls"])
def test_paddleocr_runs_on_x86_ort(paddle, key):
    assert inspect_model(paddle[key]).unsupported["x86-ort"] == {}


def test_paddleocr_det_renders(paddle):
    report = inspect_model(paddle["det"], input_shapes={"x": [1, 3, 640, 640]})
    console = Console(file=io.StringIO(), width=160)
    render_table(report, console, max_rows=20)
    out = console.file.getvalue()
    assert "Conv" in out and "HardSigmoid" in out
    assert f"{human_count(report.totals.params)} params" in out
    assert f"{human_count(report.totals.macs)} MACs at x [1, 3, 640, 640]" in out
    assert f"{len(report.layers) - 20} more layers" in out
    assert f"{len(report.layers)} nodes: Identity ×147, Add ×111, Conv ×83" in out  # the op histogram


def test_nnapi_fallbacks_are_listed_for_android() -> None:
    # a MatMul between two activations becomes BATCH_MATMUL, which the NNAPI delegate does not take
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])
    nodes = [helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 1]), helper.make_node("MatMul", ["a", "t"], ["y"])]
    graph = helper.make_graph(nodes, "g", [a], [y])
    report = inspect_model(Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    # the translator takes image inputs only (refused: its input), and its MatMul would run on the CPU under NNAPI
    assert report.unsupported["android-tflite"] == {"input": 1}
    assert report.fallbacks["android-tflite"] == {"nnapi": {"MatMul": 1}}
    assert report.to_dict()["fallbacks"]["android-tflite"]["nnapi"] == {"MatMul": 1}
    buffer = io.StringIO()
    render_table(report, Console(file=buffer, width=140))
    assert "android-tflite (nnapi)" in buffer.getvalue() and "MatMul ×1" in buffer.getvalue()
    assert inspect_model(_tiny()).fallbacks["android-tflite"] == {"nnapi": {}}
