"""The output tail: the decoding ops after a model's last learned layers are found from the graph, kept float
by default, reported, and read at their whole range; "int8" quantizes them like the rest."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from test_detection_heads import _box_and_score_sqnr, _outputs, detector  # noqa: F401 (a fixture)

from edgekit.calibration.calibrate import calibrate
from edgekit.calibration.output_tail import apply_policy, find_output_tail, report_lines
from edgekit.calibration.quant_spec import QuantSpec
from edgekit.calibration.quantize import quantize
from edgekit.calibration.spec_summary import head_lines
from edgekit.errors import CalibrationError
from edgekit.model import Model
from edgekit.targets import get_target


def _dfl_head(dfl_weights: np.ndarray, activation: str = "Sigmoid") -> onnx.ModelProto:
    """conv (learned) -> Relu -> head conv (learned) -> Softmax over 4 bins -> 'DFL' conv -> Mul(stride) and
    a score branch head conv -> activation; both concatenated at the output."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.normal(size=(4, 8, 1, 1)).astype(np.float32), "w_box"),
        numpy_helper.from_array(rng.normal(size=(2, 8, 1, 1)).astype(np.float32), "w_cls"),
        numpy_helper.from_array(dfl_weights.astype(np.float32).reshape(1, -1, 1, 1), "w_dfl"),
        numpy_helper.from_array(np.array([8.0], np.float32), "stride"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["f"], name="backbone", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["f"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w_box"], ["box"], name="box_head"),
        helper.make_node("Softmax", ["box"], ["bins"], name="softmax", axis=1),
        helper.make_node("Conv", ["bins", "w_dfl"], ["dist"], name="dfl"),
        helper.make_node("Mul", ["dist", "stride"], ["scaled"], name="scale"),
        helper.make_node("Conv", ["r", "w_cls"], ["cls"], name="cls_head"),
        helper.make_node(activation, ["cls"], ["scores"], name="scores"),
        helper.make_node("Concat", ["scaled", "scores"], ["out"], name="concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 16, 16])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_tail_runs_from_the_last_learned_layers_to_the_output():
    tail = find_output_tail(_dfl_head(np.arange(4)))
    assert tail.nodes == ["softmax", "dfl", "scale", "scores", "concat"]  # graph order; not the learned convs
    assert tail.inputs == ["box", "cls"]  # what the last learned layers hand over
    assert tail.op_counts == {"Softmax": 1, "Conv": 1, "Mul": 1, "Sigmoid": 1, "Concat": 1}
    assert 0 < tail.macs_share < 0.05


def test_a_conv_with_learned_weights_is_not_arithmetic():
    # fractional weights: a learned 1x1 conv, where the tail stops
    assert "dfl" not in find_output_tail(_dfl_head(np.array([0.3, 1.7, 2.2, 2.9]))).nodes
    # whole numbers but hundreds of them: a layer, not DFL's expectation
    many = find_output_tail(_dfl_head(np.arange(300) % 5)).nodes
    assert "dfl" not in many and "softmax" not in many


def test_an_activation_fused_into_its_layer_stays_with_it():
    tail = find_output_tail(_dfl_head(np.arange(4), activation="Relu"))
    assert "scores" not in tail.nodes and "concat" in tail.nodes


def test_a_classifier_has_no_tail_and_a_text_detector_its_sigmoid():
    import importlib.util
    from pathlib import Path

    from edgekit.demo_data import digits_model_path

    assert find_output_tail(Model.load(digits_model_path()).proto).nodes == []  # logits from the last Gemm
    found = importlib.util.find_spec("rapidocr")
    if found is None or not found.submodule_search_locations:
        pytest.skip("rapidocr is not installed (pip install rapidocr): it ships the PaddleOCR ONNX models")
    path = Path(next(iter(found.submodule_search_locations))) / "models" / "PP-OCRv6_det_small.onnx"
    if not path.is_file():
        pytest.skip(f"this rapidocr has no {path.name}")
    tail = find_output_tail(Model.load(path).proto)  # DB: ConvTranspose -> Sigmoid, the probability map
    assert tail.op_counts["Sigmoid"] == 1 and set(tail.op_counts) <= {"Sigmoid", "Identity"}  # not the bias Add


def test_policy_float_keeps_the_tail_float_and_records_why():
    tail = find_output_tail(_dfl_head(np.arange(4)))
    spec = QuantSpec("0" * 64, {"activations": "uint8_asym", "weights": "int8_per_channel"})
    apply_policy(spec, tail, "float")
    assert spec.float_nodes == set(tail.nodes)
    assert spec.nodes["dfl"]["reason"].startswith("output tail")
    [line] = report_lines(json.loads(json.dumps(spec.calibration["output_tail"])))
    assert line.startswith("output tail: 5 ops after the last learned layers (") and line.endswith("kept float")
    left = QuantSpec("0" * 64, {})
    apply_policy(left, tail, "int8")
    assert left.float_nodes == set() and "quantized (policy 'int8')" in report_lines(left.calibration["output_tail"])[0]
    with pytest.raises(CalibrationError, match="unknown output-tail policy 'fp16'.*float, int8"):
        apply_policy(left, tail, "fp16")


def test_the_tails_inputs_keep_their_whole_range(detector):  # noqa: F811
    model, photos, _ = detector
    spec = calibrate(model, photos[:4], observer="percentile", progress=False).spec
    tail = spec.calibration["output_tail"]
    assert tail["inputs"]
    assert all(spec.tensors[t].observer == "minmax (read by the output tail)" for t in tail["inputs"])
    for name in tail["inputs"]:
        (lo, hi), (seen_lo, seen_hi) = spec.tensors[name].range, spec.tensors[name].observed
        assert (lo, hi) == pytest.approx((min(seen_lo, 0.0), max(seen_hi, 0.0)))  # the grid holds 0
    others = [t for t in spec.tensors.values() if t.kind == "activation" and t.observer == "percentile"]
    assert others  # the rest of the model keeps the chosen observer


def test_a_float_tail_keeps_boxes_and_scores_on_x86(detector, tmp_path):  # noqa: F811
    """The tiny YOLO-style detector (anchor arithmetic and sigmoids after its last convs), INT8 on x86-ort with
    the tail float vs quantized: box and score SQNR against FP32."""
    model, photos, _ = detector
    reference = _outputs(model.proto, photos)
    figures = {}
    for policy in ("float", "int8"):
        result = quantize(model, photos, progress=False, error_samples=2, output_tail=policy)
        artifact = get_target("x86-ort").build(model, tmp_path / policy, precision="int8", quant_spec=result.spec)
        figures[policy] = _box_and_score_sqnr(reference, _outputs(artifact.model_path, photos))
        assert artifact.manifest["quantization"]["output_tail"] == head_lines(result.spec)[-1:]
    print("x86-ort (box SQNR, score SQNR) dB by output-tail policy:", figures)
    assert figures["float"][0] > figures["int8"][0] + 3 and figures["float"][1] >= figures["int8"][1]


def test_edgekit_quantize_and_build_print_the_tail(detector, tmp_path):  # noqa: F811
    from edgekit.cli import main

    _, photos, path = detector
    np.save(tmp_path / "calib.npy", photos[:4])
    runner = CliRunner(env={"COLUMNS": "250"})
    args = ["quantize", str(path), "--calib", str(tmp_path / "calib.npy"), "-o", str(tmp_path / "q")]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "output tail: " in result.output and "kept float" in result.output
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["output_tail"]["policy"] == "float" and report["output_tail"]["nodes"]
    bad = runner.invoke(main, [*args[:-1], str(tmp_path / "b"), "--output-tail", "fp16"])
    assert bad.exit_code == 2 and "fp16" in bad.output
    built = runner.invoke(main, ["build", str(path), "-p", "int8", *args[2:4], "-o", str(tmp_path / "art")])
    assert built.exit_code == 0, built.output
    assert "output tail: " in built.output
