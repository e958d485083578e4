"""Cross-layer equalization and bias correction on a depthwise network whose channel ranges differ
wildly (as BatchNorm folding leaves them in real MobileNets)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.calibration.calibrate import calibrate, prepare_float_model
from edgekit.calibration.equalize import compute_equalization, equalization_pairs
from edgekit.calibration.mixed_precision import Evaluator
from edgekit.calibration.qdq import write_qdq
from edgekit.model import Model


def depthwise_net(seed: int = 0, channels: int = 16) -> onnx.ModelProto:
    """conv 3x3 -> ReLU -> depthwise 3x3 -> ReLU -> pointwise 1x1 -> ReLU -> pool -> linear."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, channels).astype(np.float32)
    w2 = rng.normal(0, 0.3, (channels, 1, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, channels).astype(np.float32)
    w3 = rng.normal(0, 0.2, (32, channels, 1, 1)).astype(np.float32)
    # Imbalance the channels without changing the function, as BatchNorm folding does: channel i of a
    # layer grows by g_i and the next layer's weights for it shrink by 1/g_i (ReLU commutes with g_i > 0).
    g, h = (np.exp(rng.normal(0, 1.5, channels)).astype(np.float32) for _ in range(2))
    w1, b1, w2 = w1 * g[:, None, None, None], b1 * g, w2 / g[:, None, None, None]
    w2, b2, w3 = w2 * h[:, None, None, None], b2 * h, w3 / h[None, :, None, None]
    fc = rng.normal(0, 0.2, (10, 32)).astype(np.float32)
    inits = [
        numpy_helper.from_array(v, k)
        for k, v in {
            "w1": w1,
            "b1": b1,
            "w2": w2,
            "b2": b2,
            "w3": w3,
            "b3": np.zeros(32, np.float32),
            "fc": fc,
            "fcb": np.zeros(10, np.float32),
        }.items()
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=channels, name="dw"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pw"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "depthwise",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def data(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, 3, 16, 16)).astype(np.float32)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[
        0
    ]


def test_equalization_keeps_the_float_outputs_and_balances_ranges():
    model = prepare_float_model(depthwise_net())
    pairs = equalization_pairs(model)
    assert [(a.name, b.name) for a, b in pairs] == [("conv1", "dw"), ("dw", "pw")]
    x = data(4, 1)
    before = run(model, x)
    w1_before = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    compute_equalization(model)
    np.testing.assert_allclose(run(model, x), before, rtol=1e-4, atol=1e-4)
    w1_after = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    spread = lambda w: np.abs(w).reshape(len(w), -1).max(1)  # noqa: E731
    assert spread(w1_after).max() / spread(w1_after).min() < spread(w1_before).max() / spread(w1_before).min()


def test_equalization_and_bias_correction_help_per_tensor_weights(tmp_path):
    onnx.save(depthwise_net(), tmp_path / "dw.onnx")
    model = Model.load(tmp_path / "dw.onnx")
    calib, held = data(64, 2), data(32, 3)
    evaluator = Evaluator.for_sqnr(model.proto, [{"input": held[i : i + 1]} for i in range(len(held))])

    def sqnr(**options) -> float:
        c = calibrate(model, calib, weights="int8_per_tensor", progress=False, **options)
        return evaluator(write_qdq(c.float_model, c.spec))

    plain, equalized, both = sqnr(), sqnr(equalize=True), sqnr(equalize=True, bias_correction=True)
    assert equalized > plain + 3.0  # dB
    assert both >= equalized - 0.5


def test_targets_replay_the_recorded_transforms(tmp_path):
    from edgekit.targets import get_target

    onnx.save(depthwise_net(), tmp_path / "dw.onnx")
    model = Model.load(tmp_path / "dw.onnx")
    c = calibrate(model, data(32, 4), equalize=True, bias_correction=True, progress=False)
    assert [t["kind"] for t in c.spec.transforms] == ["equalize", "bias_correction"]
    artifact = get_target("x86-ort").build(model, tmp_path / "art", precision="int8", quant_spec=c.spec)
    x = data(4, 5)
    np.testing.assert_allclose(
        run(onnx.load(artifact.model_path), x), run(write_qdq(c.float_model, c.spec), x), rtol=1e-5, atol=1e-5
    )
