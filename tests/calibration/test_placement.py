"""QDQ placement that ONNX Runtime fuses: what is left of the quantizers after ORT's own optimiser, on real models.

The PP-OCR models of the rapidocr wheel (Paddle exports: bias-less Conv + Add + Identity, GELU and LayerNorm
spelled out, attention with Reshape/Transpose/Slice) and a torchvision MobileNetV2 (shared zero biases).
"""

from __future__ import annotations

import collections
import importlib.util
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekit.calibration.calibrate import calibrate, prepare_float_model
from edgekit.calibration.canonical import fold_bias_adds, remove_identities, unshare_biases
from edgekit.calibration.fused_patterns import float_fused_nodes
from edgekit.calibration.qdq import write_qdq
from edgekit.model import Model
from edgekit.targets.onnxruntime_graph import fuse_for_ort

# ops with an integer kernel in ORT's CPU EP, or that it runs on the integers between equal quantizers: a
# DequantizeLinear in front of one of them after optimisation is a quantizer placed where ORT cannot fuse it
FUSABLE = {
    "QuantizeLinear", "Conv", "MatMul", "Add", "Concat", "MaxPool", "Resize", "Reshape", "Transpose", "Slice",
    "GlobalAveragePool", "AveragePool", "Sigmoid", "Squeeze", "Unsqueeze", "Flatten",
    "Gemm",  # a Linear layer's MatMul + bias Add, fused by ORT into a Gemm: QGemm only with an int32 bias
}  # fmt: skip


def _rapidocr(kind: str) -> Path:
    found = importlib.util.find_spec("rapidocr")
    if found is None or not found.submodule_search_locations:
        pytest.skip("rapidocr is not installed (pip install rapidocr): it ships the PaddleOCR ONNX models")
    models = sorted((Path(next(iter(found.submodule_search_locations))) / "models").glob(f"*{kind}*.onnx"))
    if not models:
        pytest.skip(f"this rapidocr has no {kind} model")
    return models[0]


def _fixed(proto: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    for dim, value in zip(proto.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    return proto


def _ort_optimised(proto: onnx.ModelProto, tmp_path: Path) -> onnx.GraphProto:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath).graph


def _leftovers(graph: onnx.GraphProto) -> tuple[collections.Counter, int, int]:
    """(op types read through an activation DequantizeLinear, activation Q count, activation DQ count)."""
    constants = {init.name for init in graph.initializer}
    readers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    behind = collections.Counter()
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in constants]
    for node in dq:
        behind.update(reader.op_type for reader in readers[node.output[0]])
    quantizers = sum(1 for n in graph.node if n.op_type == "QuantizeLinear")
    return behind, quantizers, len(dq)


def _ort_quantize_static(path: Path, x: np.ndarray, out: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load(path, load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = [{name: x[i : i + 1]} for i in range(len(x))]

        def get_next(self):
            return self.left.pop() if self.left else None

    quantize_static(
        str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
    )  # fmt: skip
    return onnx.load(out)


@pytest.mark.parametrize(("kind", "shape"), [("det", (1, 3, 96, 128)), ("rec", (1, 3, 48, 160)), ("cls", None)])
def test_ppocr_quantizers_left_after_ort_are_only_around_float_ops(kind: str, shape, tmp_path: Path) -> None:
    proto = onnx.load(_rapidocr(kind))
    shape = shape or tuple(d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim)
    model = Model(_fixed(proto, shape))
    x = np.random.default_rng(0).uniform(-2, 2, (3, *shape[1:])).astype(np.float32)
    calibration = calibrate(model, x, weights="int7_per_channel", progress=False)
    ours = write_qdq(calibration.float_model, calibration.spec)
    fuse_for_ort(ours)
    behind, quantizers, dequantizers = _leftovers(_ort_optimised(ours, tmp_path))
    assert not set(behind) & FUSABLE, behind
    # ONNX Runtime's own quantizer on the same float graph (Paddle's spelling already canonicalised) leaves about
    # as many or more: it quantizes inside GELU and LayerNorm and around Slice (measured det 28/28 vs 29/29, rec
    # 24/23 vs 29/34, cls 10/9 vs 10/11)
    prepared = tmp_path / "prepared.onnx"
    onnx.save(prepare_float_model(model.proto), prepared)
    theirs = _ort_quantize_static(prepared, x, tmp_path / "ort.onnx")
    _, their_quantizers, their_dequantizers = _leftovers(_ort_optimised(theirs, tmp_path))
    print(f"{kind}: Q/DQ left after ORT's optimiser: edgekit {quantizers}/{dequantizers}, "
          f"ORT quantize_static {their_quantizers}/{their_dequantizers}, behind our DQs {dict(behind)}")  # fmt: skip
    assert quantizers + dequantizers <= their_quantizers + their_dequantizers + 1


def test_mobilenet_v2_runs_every_layer_on_integers(torchvision_ops, tmp_path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.mobilenet_v2().eval()
    buffer = io.BytesIO()
    torch.onnx.export(module, torch.zeros(1, 3, 96, 96), buffer, opset_version=17, input_names=["x"], dynamo=False)
    model = Model(onnx.load_from_string(buffer.getvalue()))
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    calibration = calibrate(model, x, progress=False)
    graph = _ort_optimised(write_qdq(calibration.float_model, calibration.spec), tmp_path)
    ops = collections.Counter(n.op_type for n in graph.node)
    # every convolution integer (the shared zero biases of fresh BatchNorms split per layer), one quantizer on
    # the input and nothing dequantized before the float logits
    assert ops["QLinearConv"] == 52 and ops["Conv"] == 0, ops
    assert _leftovers(graph)[1:] == (1, 0)


def _conv_add_identity_graph() -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(4, np.float32), "zeros"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "b"], ["a"], name="bias"),
        helper.make_node("Identity", ["a"], ["i"], name="identity"),
        helper.make_node("Relu", ["i"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "zeros"], ["c2"], name="conv2"),
        helper.make_node("Conv", ["c2", "w2", "zeros"], ["c3"], name="conv3"),
        helper.make_node("Identity", ["c3"], ["y"], name="out"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_canonical_rewrites_are_exact_and_keep_output_names() -> None:
    proto = _conv_add_identity_graph()
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(proto)
    remove_identities(rewritten)
    fold_bias_adds(rewritten)
    unshare_biases(rewritten)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Relu", "Conv", "Conv"]
    assert rewritten.graph.output[0].name == "y" and rewritten.graph.node[-1].output[0] == "y"
    assert rewritten.graph.node[2].input[2] != rewritten.graph.node[3].input[2]  # each its own bias
    got = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_gelu_and_layer_norm_insides_stay_float_and_become_ort_ops(tmp_path: Path) -> None:
    proto = onnx.load(_rapidocr("rec"))
    model = Model(_fixed(proto, (1, 3, 48, 160)))
    prepared = prepare_float_model(model.proto)
    fused = float_fused_nodes(prepared)
    ops = collections.Counter(n.op_type for n in prepared.graph.node if n.name in fused)
    assert ops["Erf"] >= 1 and ops["ReduceMean"] >= 2 and ops["Sqrt"] >= 1, ops
    x = np.random.default_rng(0).uniform(-2, 2, (2, 3, 48, 160)).astype(np.float32)
    calibration = calibrate(model, x, progress=False)
    assert not fused & set(calibration.plan.nodes)
    qdq = write_qdq(calibration.float_model, calibration.spec)
    plain = qdq.SerializeToString()
    counts = fuse_for_ort(qdq)
    assert counts["Gelu"] == ops["Erf"] and counts["LayerNormalization"] >= 1
    # the same numbers: the fused ops compute exactly what their spelled-out patterns did
    runs = []
    for data in (plain, qdq.SerializeToString()):
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        runs.append(session.run(None, {session.get_inputs()[0].name: x[:1]})[0])
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-4)
