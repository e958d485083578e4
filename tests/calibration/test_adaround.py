"""AdaRound on the shipped digits CNN (real held-out digits) and on a seeded net with every layer shape the
reconstruction handles (strided, dilated, grouped, depthwise with SAME_UPPER, Gemm, MatMul)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekit.calibration import adaround as ada
from edgekit.calibration.calibrate import calibrate, prepare_float_model
from edgekit.calibration.graph import session_with_outputs
from edgekit.calibration.qdq import write_qdq
from edgekit.calibration.quant_spec import QuantSpec
from edgekit.errors import CalibrationError
from edgekit.model import Model

pytest.importorskip("torch")

CALIB = slice(0, 64)
HELD_OUT = slice(500, 700)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((reference - test) ** 2)))


def weight_integers(qdq: onnx.ModelProto, spec: QuantSpec) -> dict[str, np.ndarray]:
    inits = {i.name: i for i in qdq.graph.initializer}
    return {
        name: numpy_helper.to_array(inits[f"{name}_quantized"])
        for name, t in spec.tensors.items()
        if t.kind == "weight"
    }


@pytest.fixture(scope="module")
def digits_calibrations(digits_model, digits_tensors):
    x = digits_tensors[0][CALIB]
    nearest = calibrate(digits_model, x, weights="int7_per_channel", progress=False)
    learned = calibrate(digits_model, x, weights="int7_per_channel", progress=False, rounding="adaround")
    return nearest, learned


def test_adaround_keeps_what_lowers_a_layers_error_and_raises_the_output_sqnr(
    digits_model, digits_tensors, digits_calibrations
):
    nearest, learned = digits_calibrations
    assert [o.node for o in learned.rounding] == [
        n.name for n in learned.float_model.graph.node if n.op_type in ("Conv", "Gemm")
    ]
    for outcome in learned.rounding:  # measured on held-out calibration samples; only what helps is kept
        assert outcome.learned == (outcome.adaround_error < outcome.nearest_error), outcome
        if outcome.node.startswith("node_Conv"):  # thousands of positions to learn from: always better
            assert outcome.learned, outcome
    kept = {o.weight for o in learned.rounding if o.learned}
    assert set(learned.spec.transforms[0]["weights"]) == kept
    x = digits_tensors[0][HELD_OUT]
    reference = run(prepare_float_model(digits_model.proto), x)  # ORT FP32 on held-out digits
    before = sqnr_db(reference, run(write_qdq(nearest.float_model, nearest.spec), x))
    after = sqnr_db(reference, run(write_qdq(learned.float_model, learned.spec), x))
    assert after > before + 0.5, (before, after)


def test_the_spec_replays_the_learned_integers_within_the_schemes_bounds(digits_model, digits_calibrations, tmp_path):
    nearest, learned = digits_calibrations
    assert [t["kind"] for t in learned.spec.transforms] == ["adaround"]
    loaded = QuantSpec.load(learned.spec.save(tmp_path / "quant_spec.json"))
    calibrated = weight_integers(write_qdq(learned.float_model, learned.spec), learned.spec)
    replayed = weight_integers(write_qdq(prepare_float_model(digits_model.proto, loaded), loaded), loaded)
    rounded = weight_integers(write_qdq(nearest.float_model, nearest.spec), nearest.spec)
    assert calibrated.keys() == replayed.keys() == rounded.keys() and calibrated
    flipped = 0
    for name, q in calibrated.items():
        np.testing.assert_array_equal(replayed[name], q)
        assert np.abs(q.astype(int)).max() <= 63  # int7 weights
        step = q.astype(int) - rounded[name]
        assert np.abs(step).max() <= 1  # up or down: never further than the other neighbour
        flipped += int(np.count_nonzero(step))
    assert flipped > 0


def test_replay_needs_no_torch_and_learning_names_the_extra(
    digits_model, digits_tensors, digits_calibrations, monkeypatch
):
    _, learned = digits_calibrations
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    prepare_float_model(digits_model.proto, learned.spec)  # targets replay the rounding with numpy alone
    with pytest.raises(CalibrationError, match=r"edgekit\[torch\]"):
        calibrate(digits_model, digits_tensors[0][:8], progress=False, rounding="adaround")
    with pytest.raises(CalibrationError, match="unknown rounding"):
        calibrate(digits_model, digits_tensors[0][:8], progress=False, rounding="stochastic")


def test_round_up_bits_round_trip():
    up = np.random.default_rng(0).random((7, 5, 3)) > 0.5
    assert np.array_equal(ada.decode_round_up(ada.encode_round_up(up), up.size).reshape(up.shape), up)


# -- every layer shape: the reconstruction computes exactly what ONNX Runtime computes ----------------------


def shapes_net(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, shape).astype(np.float32)

    values = {
        "w1": w(8, 3, 3, 3),
        "b1": w(8),
        "w2": w(8, 4, 3, 3),
        "b2": w(8),
        "w3": w(8, 1, 3, 3),
        "b3": w(8),
        "w4": w(16, 8, 1, 1),
        "lo": np.array(0, np.float32),
        "hi": np.array(6, np.float32),
        "fc": w(16, 12),
        "fcb": w(12),
        "mm": w(12, 10),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 0, 2, 1], strides=[2, 1], name="strided"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], pads=[2, 2, 2, 2], dilations=[2, 2], group=2, name="grouped"
        ),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"], auto_pad="SAME_UPPER", strides=[2, 2], group=8, name="dw"),
        helper.make_node("Clip", ["c3", "lo", "hi"], ["r3"], name="relu6"),
        helper.make_node("Conv", ["r3", "w4"], ["c4"], name="pointwise"),
        helper.make_node("GlobalAveragePool", ["c4"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["g"], alpha=0.5, beta=2.0, name="fc"),
        helper.make_node("MatMul", ["g", "mm"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "shapes",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 15, 14])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v, k) for k, v in values.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_the_layer_function_matches_onnx_runtime_for_every_layer_shape():
    import torch

    model = prepare_float_model(shapes_net())
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 15, 14)).astype(np.float32)
    spec = calibrate(Model(model), x, progress=False).spec
    layers = ada.find_layers(model, spec)
    assert [(la.node.name, la.output, la.clip) for la in layers] == [
        ("strided", "r1", (0.0, float("inf"))),
        ("grouped", "c2", None),
        ("dw", "r3", (0.0, 6.0)),
        ("pointwise", "c4", None),
        ("fc", "g", None),
        ("head", "logits", None),
    ]
    names = [n for la in layers for n in (la.node.input[0], la.output)]
    values = dict(zip(names, session_with_outputs(model, names).run(names, {"input": x}), strict=True))
    values["input"] = x
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for layer in layers:
        rows = ada._input_rows(values[layer.node.input[0]], layer, torch)
        function = ada._LayerFunction(layer, inits.get(layer.bias), torch)
        got = function(rows, torch.tensor(inits[layer.weight])).numpy()
        np.testing.assert_allclose(got, ada._as_rows(values[layer.output], layer), atol=1e-4, err_msg=layer.node.name)


def test_adaround_on_every_layer_shape_keeps_only_what_helps():
    model = prepare_float_model(shapes_net())
    x = np.random.default_rng(2).uniform(-1, 1, (16, 3, 15, 14)).astype(np.float32)
    calibration = calibrate(Model(model), x, weights="int8_per_channel", progress=False)
    feeds = [{"input": x[i : i + 1]} for i in range(8)]
    settings = ada.AdaRoundSettings(iterations=100, rows=512, batch=256)
    transform, outcomes = ada.adaround(
        calibration.float_model, calibration.spec, feeds, settings=settings, progress=False
    )
    assert len(outcomes) == 6
    for outcome in outcomes:
        assert min(outcome.adaround_error, outcome.nearest_error) <= outcome.nearest_error
        assert (outcome.weight in transform["weights"]) == outcome.learned
    assert any(o.learned for o in outcomes)


def test_quantize_cli_takes_rounding(digits_model, digits_tensors, tmp_path):
    from edgekit.cli import main
    from edgekit.demo_data import digits_model_path

    data = tmp_path / "calib.npy"
    np.save(data, digits_tensors[0][:16])
    args = [
        "quantize",
        str(digits_model_path()),
        "--calib",
        str(data),
        "--rounding",
        "adaround",
        "-o",
        str(tmp_path / "q"),
    ]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    spec = QuantSpec.load(tmp_path / "q" / "quant_spec.json")
    assert [t["kind"] for t in spec.transforms] == ["adaround"] and spec.transforms[0]["weights"]
    assert "transforms: adaround" in result.output
