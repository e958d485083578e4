"""Calibration to QDQ on a real model: integer kernels in ONNX Runtime, accuracy, specs and budgets."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.calibration.calibrate import CalibrationError, calibrate, prepare_float_model
from edgekit.calibration.data import CalibrationDataError
from edgekit.calibration.graph import fold_batchnorm
from edgekit.calibration.qdq import write_qdq
from edgekit.calibration.quant_spec import QuantSpec, QuantSpecError
from edgekit.calibration.quantize import quantize, save_quantized
from edgekit.model import Model


def optimized_ops(model: onnx.ModelProto, tmp_path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (after its fusions)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    return {op: ops.count(op) for op in set(ops)}


def top1(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": x})[0].argmax(1) == y).mean())


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_uint8_qdq_runs_integer_kernels_and_keeps_accuracy(digits_model, digits_tensors, observer, tmp_path):
    x, y = digits_tensors
    calibration = calibrate(digits_model, x[500:564], observer=observer, progress=False)
    qdq = write_qdq(calibration.float_model, calibration.spec)
    onnx.checker.check_model(qdq)
    ops = optimized_ops(qdq, tmp_path)
    assert ops.get("QLinearConv") == 2 and "Conv" not in ops and "FusedConv" not in ops
    assert ops.get("QGemm") == 2
    drop = top1(digits_model.proto, x, y) - top1(qdq, x, y)
    assert drop <= 0.004  # on 1,000 real held-out digits


def test_the_model_input_keeps_its_whole_range_with_clipping_observers(digits_model, digits_tensors):
    x, y = digits_tensors
    calibration = calibrate(digits_model, x[500:564], observer="entropy", progress=False)
    entry = calibration.spec.tensors["input"]
    assert entry.range == entry.observed and entry.observer == "minmax (model input)"
    assert calibration.spec.calibration["observer"] == "entropy"
    assert calibration.spec.tensors["relu"].observer == "entropy"
    # clipping the input at +0.43 (the KL search's pick) left 10 % top-1; entropy now stays usable
    assert top1(write_qdq(calibration.float_model, calibration.spec), x, y) >= 0.85


def test_integer_arithmetic_is_left_unquantized(tmp_path):
    """Shape arithmetic (Shape -> Add on int64 -> Reshape) beside a Conv: only float tensors get quantizers."""
    from edgekit.calibration.graph import plan_quantization

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32) * 0.1, "w")
    one = numpy_helper.from_array(np.array([0, 0], np.int64), "zeros")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["shape"], end=2),
        helper.make_node("Add", ["shape", "zeros"], ["shape2"], name="int_add"),
        helper.make_node("Concat", ["shape2", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["y"]),
    ]
    minus1 = numpy_helper.from_array(np.array([-1], np.int64), "minus1")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 64])],
        [weight, one, minus1],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plan = plan_quantization(proto)
    assert "int_add" not in plan.nodes and "shape" not in plan.activations and "shape2" not in plan.activations
    model = Model(proto)
    calibration = calibrate(
        model, list(np.random.default_rng(0).random((4, 1, 3, 8, 8), dtype=np.float32)), progress=False
    )
    ort.InferenceSession(
        write_qdq(calibration.float_model, calibration.spec).SerializeToString(), providers=["CPUExecutionProvider"]
    )


def test_int8_symmetric_qdq_is_valid_and_accurate(digits_model, digits_tensors):
    x, y = digits_tensors
    calibration = calibrate(digits_model, x[:64], activations="int8_sym", progress=False)
    qdq = write_qdq(calibration.float_model, calibration.spec)
    zero_points = [numpy_helper.to_array(i) for i in qdq.graph.initializer if i.name.endswith("_zero_point")]
    assert all(z.dtype in (np.int8, np.int32) and not z.any() for z in zero_points)  # int32: biases
    assert top1(qdq, x, y) >= top1(digits_model.proto, x, y) - 0.005


def test_qdq_scales_are_exactly_the_quant_spec(digits_model, digits_tensors):
    calibration = calibrate(digits_model, digits_tensors[0][:32], observer="percentile", progress=False)
    qdq = write_qdq(calibration.float_model, calibration.spec)
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    outputs = {name for name, entry in calibration.spec.tensors.items() if entry.kind == "output"}
    assert outputs == {o.name for o in qdq.graph.output}  # recorded for full-integer targets, left float in QDQ
    assert not any(f"{name}_scale" in inits for name in outputs)
    for name, entry in calibration.spec.tensors.items():
        if entry.kind == "output":
            continue
        np.testing.assert_array_equal(inits[f"{name}_scale"], np.asarray(entry.scale, np.float32))
        np.testing.assert_array_equal(inits[f"{name}_zero_point"].astype(np.int64), np.asarray(entry.zero_point))


def test_spec_round_trips_and_refuses_another_model(digits_model, digits_tensors, tmp_path, classifier_path):
    spec = calibrate(digits_model, digits_tensors[0][:16], progress=False).spec
    again = QuantSpec.load(spec.save(tmp_path / "spec.json"))
    assert again.to_dict() == spec.to_dict() and again.sha256 == spec.sha256
    assert "uint8_asym" in again.summary()
    with pytest.raises(QuantSpecError, match="calibrate this model again"):
        again.check_model(Model.load(classifier_path).sha256)
    (tmp_path / "bad.json").write_text('{"schema": "something else"}')
    with pytest.raises(QuantSpecError, match="not a QuantSpec"):
        QuantSpec.load(tmp_path / "bad.json")


def test_batchnorm_folding_keeps_outputs(tmp_path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"]),
        ],
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folded = fold_batchnorm(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    np.testing.assert_allclose(run(folded), run(model), atol=1e-4)


def test_budget_keeps_sensitive_layers_float(digits_model, digits_tensors):
    x, y = digits_tensors
    feeds = [{"input": x[i : i + 1]} for i in range(300)]
    # entropy clips these sparse digit activations hard: the budget must put layers back in float
    result = quantize(
        digits_model,
        x[500:564],
        observer="entropy",
        eval_feeds=feeds,
        eval_labels=list(y[:300]),
        max_drop=0.5,
        progress=False,
    )
    assert result.budget.met and result.budget.float_nodes
    assert result.accuracy["quantized_top1"] >= result.accuracy["float_top1"] - 0.005
    assert set(result.budget.float_nodes) == result.spec.float_nodes
    assert result.budget.history[0]["score"] < result.budget.score


def test_min_sqnr_budget_and_saved_files(digits_model, digits_tensors, tmp_path):
    x, _ = digits_tensors
    result = quantize(digits_model, x[:64], observer="minmax", min_sqnr=25.0, progress=False)
    assert result.budget.met and result.budget.score >= 25.0
    out = save_quantized(result, tmp_path / "q")
    report = json.loads((out / "report.json").read_text())
    assert report["budget"]["met"] and report["tensor_errors"]
    assert QuantSpec.load(out / "quant_spec.json").sha256 == report["quant_spec_sha256"]
    onnx.checker.check_model(onnx.load(out / "model.onnx"))
    assert not (out / "trt_calibration.cache").exists()  # TensorRT's cache is the CLI's (a target's) business


# -- bad input --------------------------------------------------------------------------------------


def test_missing_and_empty_calibration_folders(digits_model, tmp_path):
    with pytest.raises(CalibrationDataError, match="does not exist"):
        calibrate(digits_model, tmp_path / "nowhere", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationDataError, match="holds no images"):
        calibrate(digits_model, tmp_path / "empty", progress=False)


def test_undecodable_images_are_skipped_then_fail_when_none_left(digits_model, tmp_path):
    import cv2

    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"ok{i}.png"), np.full((28, 28, 3), i * 60, np.uint8))
    (folder / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1"):
        assert calibrate(digits_model, folder, progress=False).samples == 3
    for i in range(3):
        (folder / f"ok{i}.png").write_bytes(b"junk")
    with pytest.raises(CalibrationDataError, match="none of the 4 image files could be decoded"):
        calibrate(digits_model, folder, progress=False)


def test_nan_activations_are_an_error(digits_model):
    x = np.full((2, 1, 28, 28), np.nan, np.float32)
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        calibrate(digits_model, x, progress=False)


def test_model_without_quantizable_ops(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "relu.onnx")
    with pytest.raises(CalibrationError, match="no quantizable op"):
        calibrate(Model.load(tmp_path / "relu.onnx"), np.ones((2, 1, 4), np.float32), progress=False)


def test_old_opset_models_are_upgraded_for_qdq(classifier_path):
    model = Model.load(classifier_path)
    assert prepare_float_model(model.proto).opset_import[0].version >= 13


def test_int7_weights_stay_within_63(digits_model, digits_tensors):
    """x86 without VNNI saturates u8 x s8 pairs: x86-ort's weights use [-63, 63]."""
    from edgekit.targets import get_target

    scheme = get_target("x86-ort").weight_scheme
    calibration = calibrate(digits_model, digits_tensors[0][:16], weights=scheme, progress=False)
    qdq = write_qdq(calibration.float_model, calibration.spec)
    weights = [numpy_helper.to_array(i) for i in qdq.graph.initializer if i.name.endswith("_quantized")]
    assert weights and all(np.abs(w.astype(np.int32)).max() <= 63 for w in weights if w.dtype == np.int8)
    assert max(np.abs(w.astype(np.int32)).max() for w in weights if w.dtype == np.int8) == 63


def test_trt_calibration_cache_round_trips(digits_model, digits_tensors, tmp_path):
    from edgekit.targets.tensorrt_cache import read_trt_cache, trt_cache_header, write_trt_cache

    spec = calibrate(
        digits_model, digits_tensors[0][:16], observer="entropy", activations="int8_sym", progress=False
    ).spec
    header, scales = read_trt_cache(write_trt_cache(spec, tmp_path / "calib.cache"))
    # TensorRT 8.5.2 (JetPack 5.1) by default; the engine's calibrator is entropy-2 whatever observer ran
    assert header == "TRT-8502-EntropyCalibration2" == trt_cache_header("8.5")
    assert trt_cache_header("10.3.0.30") == "TRT-100300-EntropyCalibration2"
    assert trt_cache_header("8.6.1") == "TRT-8601-EntropyCalibration2"
    with pytest.raises(Exception, match="major.minor.patch"):
        trt_cache_header("ten")
    activations = {n: t for n, t in spec.tensors.items() if t.kind == "activation"}
    assert set(scales) == set(activations)
    for name, entry in activations.items():
        assert scales[name] == pytest.approx(entry.scale, rel=1e-6)  # int8_sym: the same scale
    line = (tmp_path / "calib.cache").read_text().splitlines()[1]
    assert len(line.split(": ")[1]) == 8  # big-endian float32 as 8 hex digits
    (tmp_path / "bad.cache").write_text("not a cache\n")
    with pytest.raises(Exception, match="not a TensorRT calibration cache"):
        read_trt_cache(tmp_path / "bad.cache")


def test_every_node_kept_float_gives_the_float_model(digits_model, digits_tensors):
    x, _ = digits_tensors
    calibration = calibrate(digits_model, x[:16], progress=False)
    for node in calibration.plan.nodes:
        calibration.spec.keep_float(node, "test")
    qdq = write_qdq(calibration.float_model, calibration.spec)
    assert not [n for n in qdq.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
