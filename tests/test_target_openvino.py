"""The x86-openvino target and the agent's openvino engine: FP32/INT8 IR of the shipped digits CNN built, validated
against ONNX Runtime FP32 and run through the real agent (local transport) on held-out digits; the precision hint
in the manifest and what OpenVINO reports it used; the same id when built twice; refusals predicted by inspect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

pytest.importorskip("openvino", reason="needs the openvino extra (pip install 'edgekit[openvino]')")

import edgekit
from edgekit.calibration.calibrate import calibrate
from edgekit.cli import main
from edgekit.demo_data import digits_model_path, load_heldout_digits, preprocessed_heldout_digits, render_digits_video
from edgekit.model import Model
from edgekit.runtime.engines import EngineError, open_engine
from edgekit.targets import BuildError, get_target
from edgekit.targets.openvino import cpu_capabilities


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """fp32 and int8 of the digits CNN (int8 from an x86-ort QuantSpec), each built twice."""
    model = Model.load(digits_model_path())
    x, _ = preprocessed_heldout_digits()
    ort = get_target("x86-ort")
    spec = calibrate(
        model,
        x[:64],
        observer="percentile",
        activations=ort.activation_scheme,
        weights=ort.weight_scheme,
        progress=False,
    ).spec
    out = tmp_path_factory.mktemp("openvino")
    target = get_target("x86-openvino")
    artifacts = {}
    for precision in ("fp32", "int8"):
        for copy in ("", "_again"):
            given = spec if precision == "int8" else None
            artifacts[precision + copy] = target.build(
                model, out / (precision + copy), precision=precision, quant_spec=given
            )
    return {"model": model, "spec": spec, **artifacts}


@pytest.fixture(scope="module")
def held_digits(tmp_path_factory) -> Path:
    images, labels = load_heldout_digits()
    return render_digits_video(images[-200:], labels[-200:], tmp_path_factory.mktemp("video") / "held.mp4")


def test_fp32_and_int8_are_validated_ir_with_the_f32_hint(built) -> None:
    for precision in ("fp32", "int8"):
        artifact = built[precision]
        manifest = artifact.manifest
        assert manifest["target"] == "x86-openvino" and manifest["engine"] == "openvino"
        assert manifest["model_file"] == "model.xml" and (artifact.path / "model.bin").is_file()
        assert manifest["build"] == {"inference_precision": "f32"}  # never left to the CPU (bf16 on AMX)
        assert manifest["inputs"][0]["shape"] == [1, 1, 28, 28]  # the static shape the IR was reshaped to
        validation = manifest["validation"]
        assert validation["passed"] and validation["inference_precision"] == "f32", validation
        assert validation["reference"] == "ONNX Runtime FP32 on the source model" and "OpenVINO" in validation["ran"]
        assert validation["top1_agreement"] == 1.0 and manifest["not_honoured"] == []
        assert manifest["tools"]["openvino"]
    assert built["fp32"].manifest["validation"]["max_abs_error"] < 1e-4
    assert built["int8"].manifest["quant_spec_sha256"] == built["spec"].sha256
    assert "FakeQuantize" in (built["int8"].path / "model.xml").read_text()
    assert (built["int8"].path / "model.bin").stat().st_size < (built["fp32"].path / "model.bin").stat().st_size


def test_building_twice_gives_the_same_artifact_id(built) -> None:
    for precision in ("fp32", "int8"):
        assert built[precision].id == built[precision + "_again"].id, precision


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_agent_runs_it_at_the_manifest_hint_with_real_top1(built, held_digits, precision) -> None:
    record = edgekit.run(built[precision], held_digits, labels=f"{held_digits}.labels.json", warmup=2, threads=1)
    result = record.result
    assert result["status"] == "ok", result["errors"]
    assert result["accuracy"]["count"] == 200 and result["accuracy"]["top1"] > 0.95
    engine = result["engine"]
    assert engine["name"] == "openvino" and engine["requested_inference_precision"] == "f32"
    assert engine["inference_precision"] == "f32" and engine["execution_devices"] == ["CPU"]  # read back
    assert engine["threads"] == 1 and engine["providers"] == ["CPU"]


def test_a_plan_option_overrides_the_hint_and_the_engine_reports_what_it_used(built, held_digits) -> None:
    record = edgekit.run(built["fp32"], held_digits, frames=20, warmup=1, engine_options={"inference_precision": "f16"})
    engine = record.result["engine"]
    assert engine["requested_inference_precision"] == "f16"
    # what the CPU really runs: f16 where OpenVINO says it has FP16, else f32
    assert engine["inference_precision"] == ("f16" if "FP16" in cpu_capabilities() else "f32")
    with pytest.raises(EngineError, match="inference_precision 'f8'"):
        open_engine("openvino", str(built["fp32"].model_path), {"inference_precision": "f8"})


def test_the_engine_matches_onnx_runtime_on_the_fp32_ir(built) -> None:
    import onnxruntime as ort

    x, _ = preprocessed_heldout_digits(16)
    session = ort.InferenceSession(str(digits_model_path()), providers=["CPUExecutionProvider"])
    with open_engine("openvino", str(built["fp32"].model_path), {"inference_precision": "f32", "threads": 1}) as engine:
        for sample in x:
            got = engine.infer({engine.input_names[0]: sample[None]})[0]
            np.testing.assert_allclose(got, session.run(None, {"input": sample[None]})[0], atol=1e-4)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precisions_carry_their_hint_and_say_when_this_cpu_cannot_run_it(built, tmp_path, precision) -> None:
    artifact = get_target("x86-openvino").build(built["model"], tmp_path / precision, precision=precision)
    manifest = artifact.manifest
    hint = {"fp16": "f16", "bf16": "bf16"}[precision]
    assert manifest["build"] == {"inference_precision": hint}
    validation = manifest["validation"]
    assert validation["passed"] and validation["precision"] == precision
    assert validation["inference_precision"] in (hint, "f32")  # what OpenVINO reported it ran, named in `ran`
    assert f"inference precision {validation['inference_precision']}" in validation["ran"]
    native = {"fp16": "FP16", "bf16": "BF16"}[precision] in cpu_capabilities()
    if native:
        assert manifest["not_honoured"] == []
    else:
        (entry,) = manifest["not_honoured"]
        assert hint in entry["what"] and "capabilities" in entry["why"]
    if precision == "fp16":  # float16 weights in the IR
        assert (artifact.path / "model.bin").stat().st_size < (built["fp32"].path / "model.bin").stat().st_size * 0.6


def _model_with(tmp_path: Path, node: onnx.NodeProto, opsets: list) -> Path:
    relu = helper.make_node("Relu", ["x"], ["a"], name="relu")
    graph = helper.make_graph(
        [relu, node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


def test_inspect_predicts_what_openvino_refuses_and_the_build_refuses_it(tmp_path) -> None:
    custom = helper.make_node("Mystery", ["a"], ["y"], name="mystery", domain="com.example")
    path = _model_with(tmp_path, custom, [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    result = CliRunner().invoke(main, ["inspect", str(path), "-t", "x86-openvino", "--json"])
    assert result.exit_code == 0, result.output
    refused = json.loads(result.output)["refusals"]["x86-openvino"]
    assert refused == [
        {
            "op": "Mystery",
            "node": "mystery",
            "reason": "OpenVINO's ONNX frontend has no conversion rule for com.example.Mystery",
        }
    ]
    with pytest.raises(BuildError, match="mystery"):
        get_target("x86-openvino").build(Model.load(path), tmp_path / "a")


def test_a_node_the_frontend_fails_to_convert_is_refused_with_its_message(tmp_path) -> None:
    # STFT needs a static rank-3 signal in OpenVINO's ONNX frontend; this one is rank 2
    stft = helper.make_node("STFT", ["a", "step"], ["y"], name="stft")
    path = _model_with(tmp_path, stft, [helper.make_opsetid("", 17)])
    proto = onnx.load(path)
    proto.graph.initializer.append(helper.make_tensor("step", TensorProto.INT64, [], [4]))
    (refusal,) = get_target("x86-openvino").refusals(proto)
    assert refusal.op == "STFT" and refusal.node == "stft" and "fails to convert" in refusal.reason


def test_devices_check_facts_list_the_openvino_engine() -> None:
    from edgekit.runtime.facts import agent_facts

    facts = agent_facts()
    assert facts["engine_packages"]["openvino"] is True and "openvino" in facts["engines"]
