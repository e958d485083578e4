"""The ios-coreml target: every precision converts here, compressed weights are really compressed, the W8A8
program carries the QuantSpec's scales, the ONNX replay matches ONNX Runtime, and the ANE report's rules.
Prediction needs macOS and skips elsewhere."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.model import Model
from edgekit.targets import BuildError, get_target, target_names
from edgekit.targets.coreml_ane import FALLS_BACK, ane_report

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")

from edgekit.calibration.calibrate import calibrate  # noqa: E402
from edgekit.onnx_toolbox import fixed_input_shape  # noqa: E402
from edgekit.targets.coreml import PACKAGE, program_ops, unzip_package  # noqa: E402
from edgekit.targets.coreml_onnx import build_module, verify_against_ort  # noqa: E402

DIGITS = Path(__file__).resolve().parents[1] / "edgekit" / "assets" / "digits_cnn.onnx"
PRECISIONS = ("fp32", "fp16", "w8", "w4", "w8a8")
IMAGENET = {"resize": [32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class SmallCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _spec(model: Model, shape: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
    return calibrate(model, batches, activations="int8_sym", progress=False).spec


def _build_all(model: Model, spec, out: Path) -> dict:
    target = get_target("ios-coreml")
    return {p: target.build(model, out / p, precision=p, quant_spec=spec if p == "w8a8" else None) for p in PRECISIONS}


def _mlmodel(artifact, tmp: Path):
    package = unzip_package(artifact.model_path.read_bytes(), tmp)
    return ct.models.MLModel(str(package), skip_model_load=True), package


@pytest.fixture(scope="module")
def torch_built(tmp_path_factory):
    torch.manual_seed(0)
    module = SmallCnn().eval()
    model = Model.from_torch(module, torch.zeros(1, 3, 32, 32), preprocess=IMAGENET)
    spec = _spec(model, (1, 3, 32, 32))
    return model, spec, _build_all(model, spec, tmp_path_factory.mktemp("torch"))


@pytest.fixture(scope="module")
def digits_built(tmp_path_factory):
    model = Model.load(DIGITS)
    spec = _spec(model, (1, 1, 28, 28))
    return model, spec, _build_all(model, spec, tmp_path_factory.mktemp("digits"))


def test_registered_with_its_precisions():
    assert "ios-coreml" in target_names()
    described = get_target("ios-coreml").describe()
    assert described["precisions"] == list(PRECISIONS)
    assert described["quantized_precisions"] == ["w8a8"] and described["activation_scheme"] == "int8_sym"


@pytest.mark.parametrize("fixture", ["torch_built", "digits_built"])
def test_every_precision_builds_a_package(fixture, request, tmp_path):
    model, _, built = request.getfixturevalue(fixture)
    for precision, artifact in built.items():
        manifest = artifact.manifest
        assert manifest["engine"] == "coreml" and manifest["model_file"] == "model.mlpackage.zip"
        names = zipfile.ZipFile(artifact.model_path).namelist()
        assert f"{PACKAGE}/Manifest.json" in names and f"{PACKAGE}/Data/com.apple.CoreML/model.mlmodel" in names
        mlmodel, _ = _mlmodel(artifact, tmp_path / precision)
        spec = mlmodel.get_spec()
        assert spec.WhichOneof("Type") == "mlProgram"
        assert [i.name for i in spec.description.input] == [manifest["inputs"][0]["name"]]
        assert [o.name for o in spec.description.output] == [o["name"] for o in manifest["outputs"]]
        assert manifest["coreml"]["deployment_target"] == ("iOS17" if precision == "w8a8" else "iOS16")
    route = built["fp16"].manifest["coreml"]["route"]
    assert route == ("torch module" if model.torch_module is not None else "onnx-replay")


def test_image_input_folds_the_preprocessing(torch_built, digits_built):
    _, _, torch_art = torch_built
    coreml = torch_art["fp16"].manifest["coreml"]["input"]
    # ImageNet's per-channel std cannot share Core ML's single scale: (x - mean) / std goes into the graph
    assert coreml["kind"] == "image" and coreml["color_layout"] == "RGB" and coreml["scale"] == pytest.approx(1 / 255)
    assert coreml["normalize_in_graph"] == {"mean": IMAGENET["mean"], "std": IMAGENET["std"]}
    agent = torch_art["fp16"].manifest["preprocess"]
    assert (agent["dtype"], agent["layout"], agent["scale"], agent["resize"]) == ("uint8", "NHWC", 1.0, [32, 32])
    assert torch_art["fp16"].manifest["inputs"][0] == {
        "name": "input",
        "shape": [1, 32, 32, 3],
        "dtype": "uint8",
        "layout": "NHWC",
    }
    # the digits model's single std folds in whole: scale/std and -mean/std
    model, _, digits_art = digits_built
    folded = digits_art["fp16"].manifest["coreml"]["input"]
    p = model.preprocess
    assert folded["color_layout"] == "GRAY" and folded["normalize_in_graph"] is None
    assert folded["scale"] == pytest.approx(p.scale / p.std[0])
    assert folded["bias"] == pytest.approx([-p.mean[0] / p.std[0]])


def test_building_twice_gives_the_same_id(digits_built, tmp_path):
    model, spec, built = digits_built
    target = get_target("ios-coreml")
    for precision in ("fp16", "w4"):
        again = target.build(Model.load(DIGITS), tmp_path / precision, precision=precision)
        assert again.id == built[precision].id


def _weight_bytes(artifact, tmp: Path) -> int:
    _, package = _mlmodel(artifact, tmp)
    return (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size


@pytest.mark.parametrize("fixture", ["torch_built", "digits_built"])
def test_w8_and_w4_weights_are_really_compressed(fixture, request, tmp_path):
    _, _, built = request.getfixturevalue(fixture)
    ops = {p: [op for op, _, _ in program_ops(_mlmodel(built[p], tmp_path / p)[0])] for p in ("fp16", "w8", "w4")}
    assert "constexpr_affine_dequantize" in ops["w8"] and "constexpr_lut_to_dense" in ops["w4"]
    assert not any(op.startswith("constexpr_") for op in ops["fp16"])
    sizes = {p: _weight_bytes(built[p], tmp_path / f"s{p}") for p in ("fp32", "fp16", "w8", "w4")}
    assert sizes["fp32"] > sizes["fp16"] > sizes["w8"] > sizes["w4"]
    assert built["w8"].manifest["coreml"]["compressed_weights"]["constexpr_ops"]["constexpr_affine_dequantize"] >= 1


@pytest.mark.parametrize("fixture", ["torch_built", "digits_built"])
def test_w8a8_program_carries_the_quantspec_scales(fixture, request, tmp_path):
    _, spec, built = request.getfixturevalue(fixture)
    artifact = built["w8a8"]
    ops = program_ops(_mlmodel(artifact, tmp_path)[0])
    program = sorted(float(v["scale"]) for op, _, v in ops if op == "quantize")
    dequant = sorted(float(v["scale"]) for op, _, v in ops if op == "dequantize")
    removed = {e["what"].removeprefix("activation ") for e in artifact.manifest["not_honoured"]}
    wanted = sorted(e.scale for n, e in spec.tensors.items() if e.kind == "activation" and n not in removed)
    assert len(program) == len(wanted) and len(wanted) >= 4
    np.testing.assert_allclose(program, wanted, rtol=1e-3)  # stored as float16 beside float16 activations
    np.testing.assert_allclose(dequant, wanted, rtol=1e-3)
    # weights: int8 data with the spec's per-channel scales
    weight_scales = [v["scale"].reshape(-1) for op, _, v in ops if op == "constexpr_affine_dequantize"]
    spec_scales = [np.asarray(e.scale, np.float32).reshape(-1) for e in spec.tensors.values() if e.kind == "weight"]
    assert len(weight_scales) == len(spec_scales)
    for got in weight_scales:
        assert any(got.shape == s.shape and np.allclose(got, s, rtol=1e-3) for s in spec_scales)
    quant = artifact.manifest["quantization"]
    assert quant["activations_quantized"] == len(wanted) and quant["scale_max_relative_error"] < 1e-3
    assert any(e["what"].startswith("int32 biases") for e in artifact.manifest["not_honoured"])


def test_w8a8_lists_spec_entries_it_cannot_honour(tmp_path):
    model = Model.load(DIGITS)
    spec = _spec(model, (1, 1, 28, 28))
    name = next(n for n, e in spec.tensors.items() if e.kind == "activation")
    spec.tensors["no_such_tensor"] = spec.tensors[name]
    spec.tensors[name] = type(spec.tensors[name])("activation", "int16", 0.1, 0)
    artifact = get_target("ios-coreml").build(model, tmp_path / "a", precision="w8a8", quant_spec=spec)
    why = {e["what"]: e["why"] for e in artifact.manifest["not_honoured"]}
    assert "no such tensor" in why["activation no_such_tensor"]
    assert "int16" in why[f"activation {name}"]


def test_onnx_replay_matches_onnx_runtime():
    proto = onnx.load(DIGITS)
    shape = fixed_input_shape(proto, None)
    assert shape == (1, 1, 28, 28)
    assert verify_against_ort(proto, build_module(proto, shape), shape) < 1e-4
    rapidocr = pytest.importorskip("rapidocr")
    cls = Path(rapidocr.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
    if not cls.exists():
        pytest.skip("rapidocr's cls model is not in this wheel")
    proto = onnx.load(cls)
    shape = fixed_input_shape(proto, [48, 192])
    assert shape == (1, 3, 48, 192)
    assert verify_against_ort(proto, build_module(proto, shape), shape) < 1e-4


def _graph(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_onnx_only_model_with_an_op_the_replay_lacks_is_refused(tmp_path):
    proto = _graph(
        [helper.make_node("Hardmax", ["x"], ["y"], name="hm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])],
    )
    with pytest.raises(BuildError, match="Hardmax node 'hm'"):
        get_target("ios-coreml").build(Model(proto), tmp_path / "a", precision="fp16")


def test_free_spatial_dims_without_resize_are_refused(tmp_path):
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    proto = _graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h", "w"])],
        [weight],
    )
    with pytest.raises(BuildError, match="resize"):
        get_target("ios-coreml").build(Model(proto), tmp_path / "a", precision="fp16")


# -- ANE readiness --------------------------------------------------------------------------------------


def _conv_graph(**conv_attrs):
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    return _graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **conv_attrs)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )


def test_ane_report_clean_model_is_ready():
    report = ane_report(_conv_graph(pads=[1, 1, 1, 1]))
    assert report.ready and report.findings == []
    fp32 = ane_report(_conv_graph(pads=[1, 1, 1, 1]), precision="fp32")
    assert not fp32.ready and "float16" in fp32.findings[0].why


def test_ane_report_names_each_rule_and_its_source():
    dilated = ane_report(_conv_graph(dilations=[2, 2], pads=[2, 2, 2, 2]))
    assert [f.rule for f in dilated.findings] == ["dilated convolution"]
    assert dilated.findings[0].nodes == ["conv"] and "hollance" in dilated.findings[0].source
    gather = _graph(
        [
            helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0),
            helper.make_node("Gather", ["x", "i"], ["y"], name="gather", axis=1),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    assert [f.rule for f in ane_report(gather).findings] == ["gather with computed indices"]
    const_gather = _graph(
        [helper.make_node("Gather", ["x", "k"], ["y"], axis=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([0, 2], np.int64), "k")],
    )
    assert ane_report(const_gather).ready
    five_d = _graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="to5d")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 2, 4, 4, 4], np.int64), "s")],
    )
    found = ane_report(five_d).findings
    assert [f.rule for f in found] == ["tensor rank above 4"] and found[0].effect != FALLS_BACK
    assert "Apple" in found[0].source
    lstm = _graph(
        [helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=2)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.ones((1, 8, 4), np.float32), "w"),
            numpy_helper.from_array(np.ones((1, 8, 2), np.float32), "r"),
        ],
    )
    report = ane_report(lstm)
    assert not report.ready and report.findings[0].rule.startswith("recurrent")
    assert json.loads(json.dumps(report.to_dict()))["findings"][0]["count"] == 1
    assert get_target("ios-coreml").ane_report(lstm).to_dict() == report.to_dict()


def test_inspect_shows_the_ane_report_for_ios_coreml(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import main
    from edgekit.inspect import inspect_model

    path = tmp_path / "dilated.onnx"
    dilated = _conv_graph(dilations=[2, 2], pads=[2, 2, 2, 2])
    dilated.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16]))
    onnx.save(dilated, path)
    report = inspect_model(Model.load(path), targets=["ios-coreml"])
    assert list(report.unsupported) == ["ios-coreml"]  # only the target asked for
    assert report.fallbacks["ios-coreml"] == {"ane": {"Conv": 1}}
    detail = report.to_dict()["accelerator_reports"]["ios-coreml"]
    assert detail["accelerator"] == "ane" and not detail["ready"]
    assert detail["findings"][0]["ops"] == {"Conv": 1} and "hollance" in detail["findings"][0]["source"]
    every = inspect_model(Model.load(path))  # all targets: the fallback counts, not the detailed reports
    assert every.fallbacks["ios-coreml"] == {"ane": {"Conv": 1}} and every.accelerator_reports == {}
    result = CliRunner().invoke(main, ["inspect", str(path), "-t", "ios-coreml"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "falls back: dilated convolution x1" in result.output and "hollance" in result.output
    unknown = CliRunner().invoke(main, ["inspect", str(path), "-t", "ios-corml"])
    assert unknown.exit_code != 0 and "known targets" in unknown.output


def test_manifest_carries_the_ane_report(digits_built):
    _, _, built = digits_built
    assert built["fp16"].manifest["ane"] == {"ready": True, "findings": []}
    fp32 = built["fp32"].manifest["ane"]
    assert not fp32["ready"] and fp32["findings"][0]["rule"] == "float32 precision"


def test_enumerated_shapes_convert_and_are_listed(torch_built, tmp_path):
    model, spec, _ = torch_built
    target = get_target("ios-coreml")
    for precision in ("fp16", "w8a8"):
        artifact = target.build(
            model,
            tmp_path / precision,
            precision=precision,
            quant_spec=spec if precision == "w8a8" else None,
            options={"shapes": "48x48,64x32,32x32"},
        )
        entry = artifact.manifest["inputs"][0]
        assert entry["shape"] == [1, 32, 32, 3]  # the preprocess size stays the default
        assert entry["enumerated_shapes"] == [[1, 32, 32, 3], [1, 48, 48, 3], [1, 64, 32, 3]]
        mlmodel, _ = _mlmodel(artifact, tmp_path / f"{precision}-unzipped")
        image = mlmodel.get_spec().description.input[0].type.imageType
        sizes = [(s.height, s.width) for s in image.enumeratedSizes.sizes]
        assert sizes == [(32, 32), (48, 48), (64, 32)] and (image.height, image.width) == (32, 32)


def test_enumerated_shapes_a_model_cannot_take_are_refused(tmp_path):
    target = get_target("ios-coreml")
    digits = Model.load(DIGITS)  # flattens a 7x7 map into its classifier: 28x28 only
    with pytest.raises(BuildError, match="--shapes 32x32"):
        target.build(digits, tmp_path / "a", precision="fp16", options={"shapes": "32x32"})
    for bad in ("32", "0x32", "axb", ""):
        with pytest.raises(BuildError, match="--shapes"):
            target.build(digits, tmp_path / "b", precision="fp16", options={"shapes": bad or []})


@pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS (Core ML prediction)")
def test_prediction_matches_onnx_runtime_on_macos(digits_built, tmp_path):
    import onnxruntime as ort

    from edgekit.runtime.engines import open_engine
    from edgekit.runtime.preprocess import preprocess

    model, _, built = digits_built
    frames = np.load(DIGITS.parent / "digits_heldout.npz")["images"][:16]
    session = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    artifact = built["fp16"]
    agent_spec = type(model.preprocess).from_dict(artifact.manifest["preprocess"])
    agree = 0
    with open_engine("coreml", str(artifact.model_path), {"compute_units": "CPU_ONLY"}) as engine:
        for frame in frames:
            (got,) = engine.infer({engine.input_names[0]: preprocess(frame, agent_spec)})
            (want,) = session.run(None, {"input": preprocess(frame, model.preprocess)})
            agree += int(np.argmax(got) == np.argmax(want))
    assert agree >= 15


# -- coremltools' failures, and real architectures through both routes ------------------------------------


def test_a_coremltools_failure_names_the_torch_op_and_the_other_route():
    from edgekit.targets.coreml_convert import convert

    class Kron(torch.nn.Module):
        def forward(self, x):
            return torch.kron(x, x)

    traced = torch.jit.trace(Kron(), torch.rand(1, 2, 4, 4))
    with pytest.raises(BuildError, match=r"torch op 'kron' \(node %\w+\).*build from the model's ONNX export"):
        convert(ct, traced, route="torch module", inputs=[ct.TensorType(shape=(1, 2, 4, 4))], convert_to="mlprogram")


def _timm(factory, name: str, size: int, **kwargs):
    module, _ = factory(name, size, num_classes=10, **kwargs)
    return Model.from_torch(module, torch.zeros(1, 3, size, size), preprocess={**IMAGENET, "resize": [size, size]})


def _build(model: Model, precision: str, out: Path, spec=None):
    return get_target("ios-coreml").build(model, out / precision, precision=precision, quant_spec=spec)


def _float_replay_exact(manifest: dict) -> bool:
    """The replay (or traced module) Core ML converts matches ONNX Runtime FP32 within the fp32 budget."""
    validation = manifest["validation"]
    return validation["max_abs_error"] <= 1e-4 * max(1.0, validation["reference_abs_max"])


def test_mobilevit_builds_from_its_torch_module_and_its_onnx_export(tmp_path, timm_factory):
    """MobileViT: attention with unfold/fold reshapes; its torch route needs coremltools' int() cast mended, its
    ONNX export the folded shape arithmetic and the replay's one rule for constants (a Sqrt of a shape)."""
    model = _timm(timm_factory, "mobilevit_xxs", 64)
    from_torch = _build(model, "fp16", tmp_path / "torch")
    assert from_torch.manifest["coreml"]["route"] == "torch module"
    from_onnx = _build(Model(model.proto, preprocess=model.preprocess), "w8", tmp_path / "onnx")
    assert from_onnx.manifest["coreml"]["route"] == "onnx-replay"
    assert _float_replay_exact(from_onnx.manifest)


def test_deit_onnx_export_builds_w8a8(tmp_path, timm_factory):
    """A ViT export: patch embedding, class-token Gather, Split of qkv, batched MatMul, Softmax, LayerNorm, Erf."""
    model = _timm(timm_factory, "deit_tiny_patch16_224", 32, img_size=32, depth=2)
    onnx_only = Model(model.proto, preprocess=model.preprocess)
    artifact = _build(onnx_only, "w8a8", tmp_path, spec=_spec(onnx_only, (1, 3, 32, 32)))
    assert artifact.manifest["quantization"]["activations_quantized"] > 10
    assert artifact.manifest["validation"]["ran"].startswith("torch replay")  # its float twin passed fp32 first


def test_yolov8n_onnx_export_builds(tmp_path, torchvision_ops):
    """YOLOv8n from ultralytics' config (random weights): anchors folded at the build shape, nearest Resize,
    Split, Concat, the DFL Softmax; inspect predicts no refusal and the build agrees."""
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    module = DetectionModel("yolov8n.yaml", verbose=False).eval()
    for layer in module.modules():
        if hasattr(layer, "export"):
            layer.export, layer.format = True, "onnx"
    model = Model.from_torch(module, torch.zeros(1, 3, 64, 64), preprocess={"resize": [64, 64]})
    onnx_only = Model(model.proto, preprocess=model.preprocess)
    assert get_target("ios-coreml").model_refusals(onnx_only, "fp16") == []
    artifact = _build(onnx_only, "fp16", tmp_path)
    assert _float_replay_exact(artifact.manifest)
