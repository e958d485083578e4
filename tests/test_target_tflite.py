"""The android-tflite target: FP32/FP16/INT8 .tflite from the shipped digits CNN, checked against ONNX Runtime,
INT8 activation parameters read back from the .tflite and compared with the QuantSpec, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("tensorflow", reason="needs the tflite extra (pip install 'edgekit[tflite]')")
pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (pip install 'edgekit[tflite]')")

import edgekit
from edgekit.calibration.calibrate import calibrate
from edgekit.demo_data import digits_model_path, preprocessed_heldout_digits
from edgekit.model import Model
from edgekit.runtime.engines import open_engine
from edgekit.targets import BuildError, TargetError, get_target
from edgekit.targets.tflite_quant import int8_grid, read_parameters


@pytest.fixture(scope="module")
def digits() -> tuple[Model, np.ndarray, np.ndarray]:
    x, labels = preprocessed_heldout_digits()
    return Model.load(digits_model_path()), x, labels


@pytest.fixture(scope="module")
def built(digits, tmp_path_factory) -> dict:
    model, x, _ = digits
    spec = calibrate(
        model,
        x[:128],
        observer="percentile",
        activations="int8_asym",
        weights="int8_per_channel",
        batch=32,
        progress=False,
    ).spec
    out = tmp_path_factory.mktemp("tflite")
    target = get_target("android-tflite")
    artifacts = {
        p: target.build(model, out / p, precision=p, quant_spec=spec if p == "int8" else None)
        for p in ("fp32", "fp16", "int8")
    }
    artifacts["int8_io"] = target.build(
        model, out / "int8io", precision="int8", quant_spec=spec, options={"int8_io": True}
    )
    return {"spec": spec, **artifacts}


def _top1(artifact, x: np.ndarray, labels: np.ndarray, count: int = 300) -> float:
    with open_engine("tflite", str(artifact.model_path), {"threads": 1}) as engine:
        preds = [
            engine.infer({engine.input_names[0]: x[i : i + 1].transpose(0, 2, 3, 1)})[0].argmax() for i in range(count)
        ]
    return float(np.mean(np.array(preds) == labels[:count]))


def test_every_precision_builds_a_checked_nhwc_tflite(built) -> None:
    for precision in ("fp32", "fp16", "int8"):
        manifest = built[precision].manifest
        assert manifest["model_file"] == "model.tflite" and manifest["engine"] == "tflite"
        assert manifest["inputs"][0]["shape"] == [1, 28, 28, 1] and manifest["inputs"][0]["layout"] == "NHWC"
        assert manifest["preprocess"]["layout"] == "NHWC"
        validation = manifest["validation"]
        assert validation["inputs"] == 8 and validation["top1_agreement"] == 1.0, precision
    assert built["fp32"].manifest["validation"]["max_abs_error"] < 1e-3
    assert built["fp16"].manifest["validation"]["max_abs_error"] < 0.1
    sizes = {p: (built[p].path / "model.tflite").stat().st_size for p in ("fp32", "fp16", "int8")}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def _check_against_spec(spec, artifact) -> set[str]:
    """Compare every int8 activation of the .tflite with its QuantSpec entry; return the ONNX tensors checked."""
    params = read_parameters((artifact.path / "model.tflite").read_bytes())
    overridden = {
        entry["what"].split(" (TFLite tensor ")[1].rstrip(")")
        for entry in artifact.manifest["not_honoured"]
        if "TFLite tensor" in entry["what"]
    }
    checked = set()
    for tflite_name, onnx_name in artifact.manifest["quantization"]["mapped"].items():
        got = params.get(tflite_name)
        if got is None or got["dtype"] != "int8" or tflite_name in overridden:
            continue
        scale, zero_point = int8_grid(spec.tensors[onnx_name])
        assert got["scales"][0] == pytest.approx(scale, rel=1e-6), tflite_name
        assert int(got["zero_points"][0]) == zero_point, tflite_name
        checked.add(onnx_name)
    return checked


def test_int8_activation_parameters_are_the_quant_spec(built, digits) -> None:
    spec = built["spec"]
    inner = _check_against_spec(spec, built["int8"])
    edges = _check_against_spec(spec, built["int8_io"])
    assert len(inner) >= 3  # conv outputs and the hidden fully connected layer
    assert {digits[0].inputs[0].name, digits[0].outputs[0].name} <= edges  # int8 I/O: input and logits too
    # what TFLite overrides is listed, never silently changed: here the second max-pool must share its input's grid
    assert all("TFLite fixes its parameters" in e["why"] for e in built["int8"].manifest["not_honoured"])
    params = read_parameters((built["int8"].path / "model.tflite").read_bytes())
    weights = [p for p in params.values() if p["dtype"] == "int8" and len(p["scales"]) > 1]
    assert weights and all(not p["zero_points"].any() for p in weights)  # symmetric per-channel int8 weights


def test_int8_keeps_accuracy_and_int8_io_has_int8_tensors(digits, built) -> None:
    _, x, labels = digits
    fp32, int8 = _top1(built["fp32"], x, labels), _top1(built["int8"], x, labels)
    assert int8 >= fp32 - 0.01
    interpreter_params = read_parameters((built["int8_io"].path / "model.tflite").read_bytes())
    with open_engine("tflite", str(built["int8_io"].model_path)) as engine:
        assert engine.facts()["input_dtype"] == ["int8"]
        assert engine.inputs[0].dtype == np.float32  # the engine quantizes float frames itself
    assert interpreter_params and _top1(built["int8_io"], x, labels) >= fp32 - 0.01


def test_uint8_spec_from_x86_calibration_maps_exactly_and_lists_its_weights(digits, tmp_path) -> None:
    model, x, _ = digits
    spec = calibrate(model, x[:64], weights="int7_per_channel", progress=False).spec  # the x86-ort scheme
    artifact = edgekit.build(
        model, "android-tflite", tmp_path / "a", precision="int8", quant_spec=spec, options={"int8_io": True}
    )
    assert any(e["what"] == "weights int7_per_channel" for e in artifact.manifest["not_honoured"])
    params = read_parameters((artifact.path / "model.tflite").read_bytes())
    first = next(n for n, o in artifact.manifest["quantization"]["mapped"].items() if o == model.inputs[0].name)
    assert int(params[first]["zero_points"][0]) == int(spec.tensors[model.inputs[0].name].zero_point) - 128


def test_unsupported_op_is_named_and_options_are_checked(digits, tmp_path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="the_det")], "g", [x], [y])
    odd = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(BuildError, match="Det node 'the_det'"):
        get_target("android-tflite").build(odd, tmp_path / "odd")
    model = digits[0]
    with pytest.raises(BuildError, match="needs quantization parameters"):
        get_target("android-tflite").build(model, tmp_path / "b", precision="int8")
    with pytest.raises(BuildError, match=r"-O int8_io=true \(--int8-io\) needs --precision int8"):
        get_target("android-tflite").build(model, tmp_path / "c", options={"int8_io": True})
    with pytest.raises(TargetError, match="dla_core"):
        get_target("android-tflite").build(model, tmp_path / "d", options={"dla_core": 0})


def test_shape_arithmetic_on_a_computed_tensor_is_refused_by_name(tmp_path) -> None:
    """A shape computed from an activation (not folded at the build shape) is refused naming the node."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Cast", ["x"], ["s4"], to=TensorProto.INT64),
        helper.make_node("Flatten", ["s4"], ["shape"]),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="pick"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    odd = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(BuildError, match="Reshape node 'pick'.*target shape are computed"):
        get_target("android-tflite").build(odd, tmp_path / "odd")


def test_dynamic_spatial_axes_need_a_resize(tmp_path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(BuildError, match="resize"):
        get_target("android-tflite").build(model, tmp_path / "a")
    model.preprocess = {"resize": [16, 24], "layout": "NCHW"}
    artifact = get_target("android-tflite").build(model, tmp_path / "b")
    assert artifact.manifest["inputs"][0]["shape"] == [1, 16, 24, 3]


def test_cli_builds_int8_with_calibration(tmp_path, digits) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main

    calib = tmp_path / "calib.npy"
    np.save(calib, digits[1][:64])
    args = [
        "build",
        str(digits_model_path()),
        "--target",
        "android-tflite",
        "-p",
        "int8",
        "--calib",
        str(calib),
        "--observer",
        "percentile",
        "-o",
        str(tmp_path / "art"),
    ]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["quantization"]["observer"] == "percentile" and Path(tmp_path / "art" / "model.tflite").exists()
    onnx.checker  # noqa: B018  (onnx stays importable next to TensorFlow)
