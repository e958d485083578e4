"""One validation for every target: probes (real images through the preprocessing, else seeded random), the
per-output figures against ONNX Runtime FP32, the budgets (a float build outside budget is a BuildError; a
quantized one is recorded and `edgekit build` warns), and the same `validation` block in every target's
manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgekit.calibration.calibrate import calibrate
from edgekit.cli import main
from edgekit.demo_data import digits_model_path, load_heldout_digits, preprocessed_heldout_digits
from edgekit.model import Model
from edgekit.targets import BuildError, get_target
from edgekit.targets.validation import (
    OrtRunner,
    Probes,
    budget_for,
    probe_inputs,
    probe_shapes,
    reference_outputs,
    summary_lines,
    validate,
)

SHAPE = {"input": (1, 1, 28, 28)}


@pytest.fixture(scope="module")
def digits() -> Model:
    return Model.load(digits_model_path())


def _tiny(op: str = "Relu", opset: int = 17, preprocess: dict | None = None, shape=(1, 3, 8, 8)) -> Model:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name=f"{op.lower()}0")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return Model(proto, preprocess=preprocess)


def test_probes_are_real_digits_through_the_models_preprocessing(digits):
    probes = probe_inputs(digits, SHAPE)
    assert len(probes.feeds) == 8 and "held-out MNIST digits" in probes.source and "preprocessing" in probes.source
    first = probes.feeds[0]["input"]
    assert first.shape == (1, 1, 28, 28) and first.dtype == np.float32
    # the last 8 held-out digits, upscaled as a camera would see them, then the model's own preprocessing
    images, _ = load_heldout_digits()
    assert len(images) >= 8 and float(first.std()) > 0.5  # a real digit, not a flat or random frame
    assert probe_inputs(digits, SHAPE).feeds[3]["input"].tobytes() == probes.feeds[3]["input"].tobytes()


def test_without_a_fitting_preprocess_the_probes_are_seeded_random():
    model = _tiny(shape=(1, 8, 16))  # not an image
    probes = probe_inputs(model, {"x": (1, 8, 16)}, count=4)
    assert probes.source == "seeded random inputs" and len(probes.feeds) == 4
    again = probe_inputs(model, {"x": (1, 8, 16)}, count=4)
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(probes.feeds, again.feeds, strict=True))
    # a preprocess whose output does not fit the input (28x28 grey for an 8x8 RGB input) falls back too
    odd = _tiny(preprocess={"resize": [28, 28], "color": "GRAY"})
    assert probe_inputs(odd, {"x": (1, 3, 8, 8)}).source == "seeded random inputs"
    assert probe_shapes(odd) == {"x": (1, 3, 8, 8)}


def test_random_probes_cover_the_calibrated_input_range(digits):
    x, _ = preprocessed_heldout_digits(16)
    spec = calibrate(digits, x, progress=False).spec
    low, high = spec.tensors["input"].observed
    bare = Model(digits.proto)  # no preprocess: random probes over the range
    bare.preprocess = None
    probes = probe_inputs(bare, SHAPE, spec)
    assert probes.source == "seeded random inputs over the calibrated input range"
    values = np.concatenate([f["input"].ravel() for f in probes.feeds])
    assert low <= values.min() and values.max() <= high


def _noisy(model: Model, noise: float, seed: int = 0):
    """A runner that adds Gaussian noise of std `noise` (relative to each output's std) to ORT's outputs."""
    runner = OrtRunner(model.proto)
    rng = np.random.default_rng(seed)

    def run(feed):
        return [o + rng.standard_normal(o.shape).astype(np.float32) * noise * float(o.std()) for o in runner(feed)]

    return run


def test_figures_per_output_and_the_fp32_budget(digits):
    probes = probe_inputs(digits, SHAPE)
    block = validate(digits, "fp32", OrtRunner(digits.proto), ran="ONNX Runtime", probes=probes)
    (output,) = block["outputs"]
    assert output["name"] == "logits" and output["passed"] and block["passed"]
    assert output["max_abs_error"] <= 1e-4 * output["range"] and output["range"] > 1.0
    assert output["top1_agreement"] == 1.0  # a classifier: top-1 agreement is measured
    assert block["probes"] == {"source": probes.source, "count": 8} and block["inputs"] == 8
    assert block["reference"] == "ONNX Runtime FP32 on the source model"
    assert output["budget"] == budget_for("fp32", True)
    json.dumps(block, allow_nan=False)  # the manifest stays strict JSON
    lines = summary_lines(block)
    assert len(lines) == 2
    assert lines[0].startswith("validation passed: fp32 build (ONNX Runtime) vs ONNX Runtime FP32 on 8 probes (")
    assert lines[1].startswith("  the one output: logits max abs error")
    assert "(budget: max abs error <= 1e-4" in lines[1]


def test_a_float_build_outside_budget_is_a_converter_defect(digits):
    probes = probe_inputs(digits, SHAPE)
    reference = reference_outputs(digits.proto, probes.feeds)
    with pytest.raises(BuildError) as raised:
        validate(digits, "fp32", _noisy(digits, 1e-2), ran="the converter", probes=probes, reference=reference)
    message = str(raised.value)
    assert "validation of this fp32 build failed" in message and "output 'logits'" in message
    assert "max abs error" in message and "budget max abs error <= 1e-4 of the output range" in message
    # fp16 outside its budget is written and marked (half precision loses more on some real models)
    lossy = validate(digits, "fp16", _noisy(digits, 0.05), ran="the converter", probes=probes, reference=reference)
    assert lossy["passed"] is False and 20 <= lossy["outputs"][0]["sqnr_db"] < 40
    # 0.3 % noise is inside the fp16 budget (SQNR about 50 dB)
    assert validate(digits, "fp16", _noisy(digits, 0.003), ran="x", probes=probes, reference=reference)["passed"]


def test_a_quantized_build_outside_budget_is_recorded_not_raised(digits):
    probes = probe_inputs(digits, SHAPE)
    block = validate(digits, "int8", _noisy(digits, 3.0), ran="x", probes=probes)
    (output,) = block["outputs"]
    assert not block["passed"] and not output["passed"] and output["sqnr_db"] < 20
    assert output["top1_agreement"] < 0.95
    first, second = summary_lines(block)
    assert first.startswith("validation OUTSIDE BUDGET: int8 build (x)")
    assert second.startswith("  1 of 1 outputs outside the budget: logits max abs error") and "SQNR >= 20 dB" in second
    # a classifier whose top-1 agrees passes at low SQNR: the int8 budget is SQNR or top-1 agreement
    close = validate(digits, "int8", _noisy(digits, 0.2), ran="x", probes=probes)["outputs"][0]
    assert close["sqnr_db"] < 20 and close["top1_agreement"] >= 0.95 and close["passed"]


def test_a_runner_that_breaks_or_changes_shape_is_named(digits):
    probes = Probes(probe_inputs(digits, SHAPE).feeds[:2], "two digits")

    def broken(feed):
        raise RuntimeError("boom")

    with pytest.raises(BuildError, match=r"validation: the LiteRT interpreter failed on a probe input \(RuntimeError"):
        validate(digits, "int8", broken, ran="LiteRT interpreter", probes=probes)
    block = validate(digits, "int8", lambda feed: [np.zeros((1, 5), np.float32)], ran="x", probes=probes)
    assert block["outputs"][0]["problem"].startswith("shapes differ") and not block["passed"]
    block = validate(digits, "int8", lambda feed: [np.full((1, 10), np.nan, np.float32)], ran="x", probes=probes)
    assert block["outputs"][0]["problem"] == "non-finite values"


TARGET_RUNS = [
    ("x86-ort", "fp32", "ONNX Runtime on the artifact's ONNX model"),
    ("x86-ort", "int8", "ONNX Runtime on the QDQ model"),
    ("android-tflite", "fp16", "LiteRT interpreter"),
    ("jetson-trt", "int8", "ONNX Runtime on the emitted ONNX (TensorRT not installed here)"),
    ("ios-coreml", "w8a8", "torch replay of the ONNX graph (Core ML cannot run on Linux)"),
]


@pytest.mark.parametrize(("target", "precision", "ran"), TARGET_RUNS)
def test_every_target_writes_the_same_validation_block(digits, tmp_path, target, precision, ran):
    if target == "android-tflite":
        pytest.importorskip("tensorflow")
    if target == "ios-coreml":
        pytest.importorskip("torch")
        pytest.importorskip("coremltools")
    chosen = get_target(target)
    spec = None
    if precision in chosen.quantized_precisions:
        x, _ = preprocessed_heldout_digits(32)
        scheme = {"activations": chosen.activation_scheme, "weights": chosen.weight_scheme}
        spec = calibrate(digits, x, progress=False, **scheme).spec
    block = chosen.build(digits, tmp_path / "a", precision=precision, quant_spec=spec).manifest["validation"]
    assert block["ran"] == ran and block["precision"] == precision and block["passed"] is True
    assert block["probes"]["count"] == 8 and "held-out MNIST digits" in block["probes"]["source"]
    (output,) = block["outputs"]
    assert {"name", "max_abs_error", "range", "sqnr_db", "top1_agreement", "budget", "passed"} <= set(output)
    assert output["top1_agreement"] == 1.0
    if precision in ("fp16", "int8", "w8a8"):
        assert output["sqnr_db"] >= (40 if precision == "fp16" else 20)


def test_x86_ort_builds_hardswish_a_function_op_ort_expands(tmp_path):
    """HardSwish has no ORT CPU kernel but is an ONNX function (HardSigmoid * x): ORT runs it, so x86-ort takes
    it (MobileNetV3 was refused for `HardSwish x21`)."""
    from edgekit.targets.onnxruntime import onnx_function_ops, ort_cpu_ops

    assert ("ai.onnx", "HardSwish") not in ort_cpu_ops() and "HardSwish" in onnx_function_ops(17)
    assert "Mish" in onnx_function_ops(18) and "Mish" not in onnx_function_ops(17)  # Mish is opset 18
    model = _tiny("HardSwish")
    target = get_target("x86-ort")
    assert target.refusals(model.proto) == [] and target.unsupported_ops(model.proto) == {}
    artifact = target.build(model, tmp_path / "a")
    assert artifact.manifest["validation"]["passed"] and artifact.manifest["validation"]["probes"]["count"] == 8
    # an op that is neither a kernel nor a function is still refused, by node
    (refusal,) = target.refusals(_tiny("FancyOp").proto)
    assert refusal.op == "FancyOp" and refusal.node == "fancyop0"


def test_a_real_mobilenet_v3_builds_for_x86_ort(tmp_path, timm_factory):
    from edgekit.inspect import inspect_model

    _, proto = timm_factory("mobilenetv3_small_050", 64)
    assert sum(n.op_type == "HardSwish" for n in proto.graph.node) >= 10
    model = Model(proto, preprocess={"resize": [64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    assert inspect_model(model, targets=["x86-ort"]).unsupported["x86-ort"] == {}
    block = get_target("x86-ort").build(model, tmp_path / "a").manifest["validation"]
    assert block["passed"] and "held-out MNIST digits" in block["probes"]["source"]


def test_edgekit_build_prints_the_validation_and_warns_outside_budget(digits, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["build", str(digits_model_path()), "-t", "x86-ort", "-o", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "validation passed: fp32 build (ONNX Runtime on the artifact's ONNX model) vs ONNX Runtime FP32 on 8" in text
    assert "the one output: logits max abs error" in text
    # a QuantSpec calibrated on inputs 50x too dark: real digits saturate, the int8 build is far off
    x, _ = preprocessed_heldout_digits(16)
    spec = calibrate(digits, x * 0.02, activations="uint8_asym", weights="int7_per_channel", progress=False).spec
    spec_path = tmp_path / "spec.json"
    spec.save(spec_path)
    args = ["build", str(digits_model_path()), "-t", "x86-ort", "-p", "int8", "--spec", str(spec_path)]
    result = runner.invoke(main, [*args, "-o", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "validation OUTSIDE BUDGET: int8 build (ONNX Runtime on the QDQ model)" in text
    assert "1 of 1 outputs outside the budget: logits" in text and "(budget: SQNR >= 20 dB or top-1" in text
    assert "warning: this int8 build is outside its accuracy budget" in text
    assert "note: these probes are not your data; pass `--calib DIR`" in text  # built from a spec alone


def test_a_build_with_calibration_data_validates_on_the_users_own_samples(tmp_path):
    from edgekit import build

    images, _ = preprocessed_heldout_digits(32)
    artifact = build(digits_model_path(), "x86-ort", tmp_path / "a", precision="int8", calib=images)
    block = artifact.manifest["validation"]
    assert block["probes"]["source"].startswith("8 of the calibration samples given to the build")
    assert block["passed"] and block["outputs"][0]["top1_agreement"] >= 0.95
    model = Model.load(digits_model_path())
    model.validation_feeds = [{"input": np.zeros((1, 1, 20, 20), np.float32)}]  # not the build shape: unused
    assert "calibration samples" not in probe_inputs(model, SHAPE).source
