"""The jetson-trt target: float ONNX for fp32/fp16, a symmetric int8 QDQ model TensorRT parses plus its
calibration cache for int8, and the build section the agent hands to the tensorrt engine. TensorRT itself
is not here; the QDQ model is checked with ONNX Runtime and the build section with the engine's own
option check."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekit.calibration.calibrate import calibrate
from edgekit.cli import main
from edgekit.demo_data import digits_model_path, preprocessed_heldout_digits
from edgekit.model import Model
from edgekit.runtime.engines.tensorrt import validate_options
from edgekit.targets import BuildError, TargetError, get_target, target_names
from edgekit.targets.tensorrt import is_2_4_sparse, not_2_4_sparse_layers
from edgekit.targets.tensorrt_ops import TENSORRT_ONNX_OPS


@pytest.fixture(scope="module")
def digits() -> tuple[Model, np.ndarray, np.ndarray]:
    """The shipped digits CNN and 300 real held-out digits, preprocessed by the agent's code, with labels."""
    x, labels = preprocessed_heldout_digits(300)
    return Model.load(digits_model_path()), x, labels


@pytest.fixture(scope="module")
def sym_spec(digits):
    model, x, _ = digits
    return calibrate(model, x[:64], activations="int8_sym", weights="int8_per_channel", progress=False).spec


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()


def build(model, out, precision="fp32", spec=None, **options):
    return get_target("jetson-trt").build(model, out, precision=precision, quant_spec=spec, options=options)


def test_registered_with_three_precisions_and_tensorrt_schemes():
    assert "jetson-trt" in target_names()
    described = get_target("jetson-trt").describe()
    assert described["engine"] == "tensorrt" and described["precisions"] == ["fp32", "fp16", "int8"]
    assert described["activation_scheme"] == "int8_sym" and described["weight_scheme"] == "int8_per_channel"
    assert {"Conv", "Gemm", "QuantizeLinear", "DequantizeLinear"} <= TENSORRT_ONNX_OPS
    assert not {"Hardmax", "LayerNormalization", "QLinearConv"} & TENSORRT_ONNX_OPS  # "N" in TensorRT 8.5


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_float_precisions_carry_the_float_model_as_given(digits, tmp_path, precision):
    model = digits[0]
    artifact = build(model, tmp_path / precision, precision)
    manifest = artifact.manifest
    assert sorted(manifest["files"]) == ["model.onnx"]
    # fp16 too: TensorRT builds FP16 from the float weights (BuilderFlag.FP16); nothing is converted here
    packaged = Model.load(artifact.model_path)
    # the digits CNN is opset 18: TensorRT 8.5 (the default) gets it at opset 17, same nodes and weights
    assert manifest["opset"] == {"source": 18, "built": 17, "how": "onnx.version_converter", "why": ANY_TEXT}
    assert [n.op_type for n in packaged.proto.graph.node] == [n.op_type for n in model.proto.graph.node]
    assert {i.name: i.raw_data for i in packaged.proto.graph.initializer} == {
        i.name: i.raw_data for i in model.proto.graph.initializer
    }
    assert packaged.preprocess == model.preprocess
    assert not [i.name for i in packaged.proto.graph.initializer if i.data_type == TensorProto.FLOAT16]
    as_given = build(model, tmp_path / "trt10", precision, trt_version="10.3")  # TensorRT 10 reads opset 18 right
    assert Model.load(as_given.model_path).sha256 == model.sha256
    assert as_given.manifest["opset"] == {"source": 18, "built": 18}
    assert manifest["engine"] == "tensorrt" and manifest["precision"] == precision
    assert manifest["build"] == {
        "precision": precision,
        "calibration_cache": None,
        "dla_core": None,
        "gpu_fallback": False,
        "sparsity": False,
        "workspace_mb": None,
        "profile_shapes": {"input": [[1, 1, 28, 28], [1, 1, 28, 28], [1, 1, 28, 28]]},
    }
    # what the agent does with it: the tensorrt engine's own option check accepts the build section
    assert validate_options(manifest["build"], str(artifact.path))["precision"] == precision
    assert build(model, tmp_path / "again", precision).id == artifact.id


def test_int8_is_a_symmetric_qdq_model_tensorrt_parses_and_runs_close_to_float(digits, sym_spec, tmp_path):
    model, x, labels = digits
    artifact = build(model, tmp_path / "int8", "int8", sym_spec)
    manifest = artifact.manifest
    assert sorted(manifest["files"]) == ["model.onnx"]
    assert manifest["quant_spec_sha256"] == sym_spec.sha256 and manifest["not_honoured"] == []
    assert manifest["quantization"]["scheme"] == {"activations": "int8_sym", "weights": "int8_per_channel"}
    qdq = onnx.load(artifact.model_path)
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    quantizers = [n for n in qdq.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert quantizers
    for node in quantizers:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    # weights in float behind Q -> DQ, biases float (TensorRT refuses int8/int32 constants into a DQ)
    assert not [n for n in qdq.graph.initializer if n.data_type in (TensorProto.INT32,) and n.dims]
    for node in qdq.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            weight_dq = next(n for n in qdq.graph.node if node.input[1] in n.output)
            weight_q = next(n for n in qdq.graph.node if weight_dq.input[0] in n.output)
            assert weight_dq.op_type == "DequantizeLinear" and weight_q.op_type == "QuantizeLinear"
            assert inits[weight_q.input[0]].dtype == np.float32
            assert inits[node.input[2]].dtype == np.float32  # the bias
    # runs in ONNX Runtime close to the float model on real digits
    float_out = ort.InferenceSession(str(digits_model_path())).run(None, {"input": x})[0]
    int8_out = ort.InferenceSession(str(artifact.model_path)).run(None, {"input": x})[0]
    sqnr = 10 * np.log10((float_out**2).sum() / ((float_out - int8_out) ** 2).sum())
    assert sqnr > 25, sqnr
    assert (int8_out.argmax(1) == float_out.argmax(1)).mean() > 0.97
    assert (int8_out.argmax(1) == labels).mean() > 0.95
    # the weights TensorRT quantizes are exactly the integers the spec gives
    entry = sym_spec.tensors["features.4.weight"]
    q = inits["features.4.weight_quantized_float"] / np.asarray(entry.scale, np.float32).reshape(-1, 1, 1, 1)
    assert np.abs(q - np.round(q)).max() < 1e-3 and np.abs(np.round(q)).max() == 127


def test_int8_is_explicit_qdq_without_a_calibration_cache_and_says_why(digits, sym_spec, tmp_path):
    """TensorRT ignores a calibrator for a network with Q/DQ layers: the artifact carries none, the manifest says so,
    and the agent's engine option check takes the build section as it is."""
    artifact = build(digits[0], tmp_path / "int8", "int8", sym_spec)
    assert not (artifact.path / "trt_calibration.cache").exists()
    tensorrt = artifact.manifest["quantization"]["tensorrt"]
    assert tensorrt["mode"] == "explicit Q/DQ" and tensorrt["calibration_cache"] is None
    assert "ignore a calibrator" in tensorrt["why"]
    build_section = artifact.manifest["build"]
    assert build_section["precision"] == "int8" and build_section["calibration_cache"] is None
    assert validate_options(build_section, str(artifact.path))["calibration_cache"] is None


def test_asymmetric_spec_is_refused_unless_it_came_from_qat(digits, tmp_path):
    model, x, _ = digits
    x86_spec = calibrate(model, x[:32], progress=False).spec  # uint8_asym: what x86-ort wants
    with pytest.raises(BuildError, match=r"asymmetric activations.*calibrate for jetson-trt \(int8_sym\)"):
        build(model, tmp_path / "a", "int8", x86_spec)
    assert not (tmp_path / "a").exists()
    # a QAT spec is the training's result: widened to symmetric ranges, and the manifest says so
    qat_spec = dataclasses.replace(x86_spec, created_by="qat")
    artifact = build(model, tmp_path / "qat", "int8", qat_spec)
    notes = artifact.manifest["not_honoured"]
    assert len(notes) == 1 and "uint8_asym from QAT" in notes[0]["what"]
    qdq = onnx.load(artifact.model_path)
    zero_points = [numpy_helper.to_array(i) for i in qdq.graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    int8_out = ort.InferenceSession(str(artifact.model_path)).run(None, {"input": x})[0]
    assert (int8_out.argmax(1) == digits[2]).mean() > 0.9


def test_dla_needs_fp16_or_int8_and_a_real_core(digits, tmp_path):
    model = digits[0]
    with pytest.raises(BuildError, match="--precision fp16 or --precision int8"):
        build(model, tmp_path / "a", "fp32", dla_core=0)
    with pytest.raises(BuildError, match="0 and 1"):
        build(model, tmp_path / "a", "fp16", dla_core=2)
    with pytest.raises(BuildError, match="--dla"):
        build(model, tmp_path / "a", "fp16", gpu_fallback=True)
    section = build(model, tmp_path / "dla", "fp16", dla_core=1).manifest["build"]
    assert section["dla_core"] == 1 and section["gpu_fallback"] is True
    assert (
        build(model, tmp_path / "nofb", "fp16", dla_core=0, gpu_fallback=False).manifest["build"]["gpu_fallback"]
        is False
    )
    assert validate_options(section)["dla_core"] == 1


def test_max_batch_sets_the_profile_and_a_fixed_batch_refuses_it(digits, tmp_path, classifier_factory):
    section = build(digits[0], tmp_path / "b8", "fp16", max_batch=8, workspace_mb=512).manifest["build"]
    assert section["profile_shapes"] == {"input": [[1, 1, 28, 28], [1, 1, 28, 28], [8, 1, 28, 28]]}
    assert section["workspace_mb"] == 512
    fixed = onnx.load(classifier_factory(tmp_path / "tiny.onnx"))
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(BuildError, match="fixed batch of 1"):
        build(Model(fixed), tmp_path / "fixed", max_batch=4)
    assert build(Model(fixed), tmp_path / "fixed").manifest["build"]["profile_shapes"] is None


def _pruned_2_4(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Keep the 2 largest of every 4 consecutive input-channel weights of each Conv/Gemm that has a
    multiple of 4 input channels (the digits CNN's first conv has 1 and stays dense)."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(proto)
    weights = {n.input[1] for n in pruned.graph.node if n.op_type in ("Conv", "Gemm")}
    for init in pruned.graph.initializer:
        w = numpy_helper.to_array(init)
        if init.name not in weights or w.shape[1] % 4:
            continue
        groups = np.moveaxis(w, 1, -1).reshape(-1, 4).copy()
        smallest = np.argsort(np.abs(groups), axis=1)[:, :2]
        np.put_along_axis(groups, smallest, 0.0, axis=1)
        moved = np.moveaxis(w, 1, -1).shape
        init.CopyFrom(numpy_helper.from_array(np.moveaxis(groups.reshape(moved), -1, 1).copy(), init.name))
    return pruned


def test_sparsity_lists_dense_layers_and_passes_pruned_ones(digits, tmp_path):
    model = digits[0]
    dense = build(model, tmp_path / "dense", "fp16", sparsity="2:4").manifest
    assert dense["build"]["sparsity"] is True
    assert dense["not_honoured"][0]["layers"] == ["node_Conv_37", "node_Conv_39", "node_linear", "node_linear_1"]
    pruned_model = Model(_pruned_2_4(model.proto), preprocess=model.preprocess)
    pruned = build(pruned_model, tmp_path / "pruned", "fp16", sparsity="2:4").manifest
    assert pruned["build"]["sparsity"] is True
    assert pruned["not_honoured"][0]["layers"] == ["node_Conv_37"]  # one input channel: no groups of 4
    assert "node_Conv_37" in pruned["not_honoured"][0]["what"]
    with pytest.raises(BuildError, match="2:4"):
        build(model, tmp_path / "x", "fp16", sparsity="1:4")
    assert not_2_4_sparse_layers(pruned_model.proto) == ["node_Conv_37"]


def test_2_4_check_agrees_with_the_pruning_helper():
    torch = pytest.importorskip("torch")
    from edgekit.compress.pruning import is_n_m_sparse, n_m_mask

    rng = np.random.default_rng(0)
    for shape in [(8, 8, 3, 3), (16, 784), (4, 6, 1, 1), (8, 1, 3, 3)]:
        weight = torch.from_numpy(rng.normal(size=shape).astype(np.float32))
        assert is_2_4_sparse(weight.numpy()) == is_n_m_sparse(weight, 2, 4) is False
        if shape[1] % 4 == 0:
            pruned = weight * n_m_mask(weight, 2, 4)
            assert is_2_4_sparse(pruned.numpy()) == is_n_m_sparse(pruned, 2, 4) is True
    gemm = rng.normal(size=(8, 4)).astype(np.float32)
    gemm[1::2] = 0.0  # (K, N) without transB: groups run along axis 0
    assert is_2_4_sparse(gemm, input_axis=0) and not is_2_4_sparse(gemm, input_axis=1)


def test_unsupported_op_is_refused_by_name(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["input"], ["out"], axis=-1, name="hardmax")],
        "hardmax",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    with pytest.raises(
        BuildError,
        match=r"jetson-trt cannot take 1 node\(s\) of this model:\n  - Hardmax node 'hardmax': Hardmax is parsed "
        r"from TensorRT 10.0 \(JetPack 6.1\+\); this build targets 8.5: pass -O trt_version=10.0",
    ):
        build(Model(proto), tmp_path / "a")
    # a TensorRT 10.3 device (JetPack 6.1+) takes it: the 10.0 list applies to every 10.x
    artifact = build(Model(proto), tmp_path / "b", trt_version="10.3")
    assert artifact.manifest["op_check"] == {
        "tensorrt": "10.3",
        "op_list": "onnx/onnx-tensorrt docs/operators.md, branch 10.0-GA",
    }


def _layer_norm_model() -> Model:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8])
    inits = [
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
    ]
    node = helper.make_node("LayerNormalization", ["input", "gamma", "beta"], ["out"], axis=-1, name="block0.ln")
    proto = helper.make_model(
        helper.make_graph([node], "ln", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    proto.ir_version = 8
    return Model(proto)


def test_the_op_check_follows_the_devices_tensorrt_version(tmp_path):
    """LayerNormalization (ConvNeXt, ViT) is parsed from TensorRT 8.6 (JetPack 6.0) on: refused for the default
    8.5 with the release that takes it, built for 8.6; inspect predicts the default build's refusal."""
    from edgekit.inspect import inspect_model
    from edgekit.targets.tensorrt_ops import first_version_with, op_list_version, tensorrt_ops

    model = _layer_norm_model()
    with pytest.raises(BuildError, match=r"LayerNormalization node 'block0.ln': .* from TensorRT 8.6 \(JetPack 6.0\)"):
        build(model, tmp_path / "a", precision="fp16")
    assert get_target("jetson-trt").unsupported_ops(model.proto) == {"LayerNormalization": 1}
    assert inspect_model(model, targets=["jetson-trt"]).unsupported["jetson-trt"] == {"LayerNormalization": 1}
    artifact = build(model, tmp_path / "b", precision="fp16", trt_version="8.6")
    assert artifact.manifest["validation"]["passed"] and artifact.manifest["op_check"]["tensorrt"] == "8.6"
    assert op_list_version("8.6.2") == "8.6" and op_list_version("10") == "10.0" and op_list_version("9.2") == "8.6"
    assert first_version_with("Conv") == "8.5" and first_version_with("Mish") == "10.0"
    assert first_version_with("QLinearConv") is None and tensorrt_ops("8.5") < tensorrt_ops("8.6") < tensorrt_ops("10")
    with pytest.raises(BuildError, match=r"-O trt_version=8.4: give the devices' TensorRT version, 8.5 or newer"):
        build(model, tmp_path / "c", trt_version="8.4")


def test_inspect_predicts_the_build_with_its_options(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import main
    from edgekit.inspect import inspect_model
    from edgekit.targets import TargetError

    model = _layer_norm_model()
    assert inspect_model(model, targets=["jetson-trt"], options={"trt_version": "10.3"}).unsupported["jetson-trt"] == {}
    with pytest.raises(TargetError, match="build option.s. bogus are not taken by jetson-trt"):
        inspect_model(model, targets=["jetson-trt"], options={"bogus": "1"})
    path = tmp_path / "ln.onnx"
    model.save(path)
    runner = CliRunner(env={"COLUMNS": "200"})
    default = runner.invoke(main, ["inspect", str(path), "-t", "jetson-trt"])
    newer = runner.invoke(main, ["inspect", str(path), "-t", "jetson-trt", "-O", "trt_version=10.3"])
    assert "pass -O trt_version=8.6" in " ".join(default.output.split()) and newer.exit_code == 0
    assert "jetson-trt unsupported ops: none" in " ".join(newer.output.replace("│", " ").split())


def test_options_are_checked_and_other_targets_refuse_them(digits, tmp_path):
    import edgekit

    with pytest.raises(TargetError, match="does not take the build option.*colour"):
        build(digits[0], tmp_path / "a", colour="red")
    with pytest.raises(TargetError, match=r"x86-ort does not take the build option\(s\) dla_core; it takes: isa"):
        edgekit.build(digits[0], "x86-ort", tmp_path / "b", options={"dla_core": 0})
    # None means "not given": the CLI passes every flag
    artifact = edgekit.build(digits[0], "x86-ort", tmp_path / "c", options={"dla_core": None, "max_batch": None})
    assert artifact.manifest["target"] == "x86-ort"


def test_cli_builds_jetson_int8_and_other_targets_reject_jetson_flags(digits, tmp_path):
    _, x, _ = digits
    calib = tmp_path / "calib.npy"
    np.save(calib, x[:32])
    runner = CliRunner(env={"COLUMNS": "200"})
    args = [
        "build",
        str(digits_model_path()),
        "--target",
        "jetson-trt",
        "-p",
        "int8",
        "--calib",
        str(calib),
        "--dla",
        "0",
        "--max-batch",
        "4",
        "--sparsity",
        "2:4",
        "-o",
        str(tmp_path / "art"),
    ]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(jetson-trt/int8)" in result.output and "not honoured" in result.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["quantization"]["scheme"]["activations"] == "int8_sym"  # calibrated for the target
    assert manifest["build"]["dla_core"] == 0 and manifest["build"]["sparsity"] is True
    assert manifest["build"]["profile_shapes"]["input"][2] == [4, 1, 28, 28]
    assert sorted(manifest["files"]) == ["model.onnx"]  # explicit Q/DQ: no calibration cache
    refused = runner.invoke(
        main, ["build", str(digits_model_path()), "-t", "x86-ort", "--max-batch", "4", "-o", str(tmp_path / "x86")]
    )
    assert refused.exit_code == 2
    assert "target x86-ort does not take the build option(s) max_batch" in refused.output
    fp32_dla = runner.invoke(
        main, ["build", str(digits_model_path()), "-t", "jetson-trt", "--dla", "0", "-o", str(tmp_path / "fp32")]
    )
    assert fp32_dla.exit_code == 2 and "--precision fp16" in fp32_dla.output
