"""The target registry and the x86 ONNX Runtime target: content-addressed, checked artifacts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgekit.artifact import Artifact
from edgekit.errors import ArtifactError
from edgekit.model import Model
from edgekit.targets import BuildError, TargetError, get_target, list_targets, target_names


def test_registry_lists_x86_ort():
    assert "x86-ort" in target_names()
    described = {t.name: t.describe() for t in list_targets()}
    assert described["x86-ort"]["engine"] == "onnxruntime"
    assert "fp32" in described["x86-ort"]["precisions"]


def test_unknown_target_names_the_known_ones():
    with pytest.raises(TargetError, match="x86-ort"):
        get_target("playstation")


def test_build_writes_manifest_and_same_model_gives_same_id(classifier_path, tmp_path):
    model = Model.load(classifier_path)
    target = get_target("x86-ort")
    first = target.build(model, tmp_path / "a")
    second = target.build(Model.load(classifier_path), tmp_path / "b")
    assert first.id == second.id
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["target"] == "x86-ort" and manifest["precision"] == "fp32"
    assert manifest["inputs"][0] == {
        "name": "input",
        "shape": ["batch", 3, 16, 16],
        "dtype": "float32",
        "layout": "NCHW",
    }
    assert manifest["source_model_sha256"] == model.sha256
    assert manifest["preprocess"]["resize"] == [16, 16]
    assert {"edgekit", "onnx", "onnxruntime"} <= set(manifest["tools"])
    # the artifact's model runs in ONNX Runtime and carries the preprocessing in its metadata
    session = ort.InferenceSession(str(first.model_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input"
    assert Model.load(first.model_path).preprocess == model.preprocess


def test_the_manifest_names_the_model_for_reports(classifier_path, tmp_path):
    model = Model.load(classifier_path)
    assert get_target("x86-ort").build(model, tmp_path / "a").manifest["model_name"] == classifier_path.stem
    model.name = "digits-cnn v2"  # the user's own name wins
    assert get_target("x86-ort").build(model, tmp_path / "b").manifest["model_name"] == "digits-cnn v2"


def test_changing_preprocessing_changes_the_id(classifier_path, tmp_path):
    model = Model.load(classifier_path)
    first = get_target("x86-ort").build(model, tmp_path / "a")
    model.preprocess = {"resize": [16, 16], "color": "BGR"}
    second = get_target("x86-ort").build(model, tmp_path / "b")
    assert first.id != second.id


def test_rebuild_into_existing_artifact_replaces_it(classifier_path, tmp_path):
    model = Model.load(classifier_path)
    first = get_target("x86-ort").build(model, tmp_path / "a")
    again = get_target("x86-ort").build(model, tmp_path / "a")
    assert again.id == first.id
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["manifest.json", "model.onnx"]


def test_refuses_to_overwrite_a_folder_that_is_not_an_artifact(classifier_path, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        get_target("x86-ort").build(Model.load(classifier_path), precious)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_unsupported_precision_is_refused(classifier_path, tmp_path):
    with pytest.raises(TargetError, match="fp32"):
        get_target("x86-ort").build(Model.load(classifier_path), tmp_path / "a", precision="int3")


def test_ops_onnx_runtime_lacks_are_listed_before_building(tmp_path):
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    target = get_target("x86-ort")
    assert target.unsupported_ops(proto) == {"FancyOp": 1}
    with pytest.raises(BuildError, match="FancyOp"):
        target.build(Model(proto), tmp_path / "a")


def test_tampered_artifact_is_detected(classifier_path, tmp_path):
    artifact = get_target("x86-ort").build(Model.load(classifier_path), tmp_path / "a")
    data = bytearray(artifact.model_path.read_bytes())
    data[-1] ^= 0xFF
    artifact.model_path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        Artifact.load(tmp_path / "a")


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.onnx", "sub/model.onnx", ".."])
def test_a_manifest_naming_a_path_outside_the_folder_is_refused_on_load(classifier_path, tmp_path, name):
    import json

    artifact = get_target("x86-ort").build(Model.load(classifier_path), tmp_path / "a")
    manifest = json.loads((artifact.path / "manifest.json").read_text())
    manifest["model_file"] = name
    (artifact.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a plain file name inside the artifact folder"):
        Artifact.load(artifact.path, verify=False)


def test_loading_a_folder_without_manifest_says_what_to_do(tmp_path):
    with pytest.raises(ArtifactError, match="edgekit build"):
        Artifact.load(tmp_path)


def test_artifact_model_keeps_graph_bytes(classifier_path, tmp_path):
    artifact = get_target("x86-ort").build(Model.load(classifier_path), tmp_path / "a")
    original = onnx.load(classifier_path)
    built = onnx.load(artifact.model_path)
    assert built.graph == original.graph


# -- typed build options -----------------------------------------------------------------------------


def test_options_from_text_follow_the_field_types():
    from edgekit.targets import options_from_text

    trt, tflite, coreml = (get_target(n).Options for n in ("jetson-trt", "android-tflite", "ios-coreml"))
    assert options_from_text(trt, {"dla_core": "0", "gpu_fallback": "false", "sparsity": "2:4"}, owner="t") == {
        "dla_core": 0,
        "gpu_fallback": False,
        "sparsity": "2:4",
    }
    assert options_from_text(trt, {"dla_core": "none"}, owner="t") == {"dla_core": None}
    assert options_from_text(tflite, {"int8_io": "true", "nchw_input": "0"}, owner="t") == {
        "int8_io": True,
        "nchw_input": False,
    }
    assert options_from_text(coreml, {"shapes": "256x256, 320x320"}, owner="t") == {"shapes": ((256, 256), (320, 320))}
    # Python values go through the same types: a list of pairs is a tuple of tuples, an integer stays one
    assert coreml(shapes=[[224, 224], "320x320"]).shapes == ((224, 224), (320, 320))
    assert trt(dla_core=np.int64(1)).dla_core == 1 and type(trt(dla_core=np.int64(1)).dla_core) is int


@pytest.mark.parametrize(
    ("target", "items", "named"),
    [
        ("jetson-trt", {"dla_core": "zero"}, r"-O dla_core=zero \(--dla\): expected int or none.*e\.g\. -O dla_core=0"),
        ("jetson-trt", {"max_batch": "4.5"}, r"-O max_batch=4.5 \(--max-batch\): expected int"),
        ("android-tflite", {"int8_io": "maybe"}, r"-O int8_io=maybe \(--int8-io\): expected bool.*-O int8_io=true"),
        ("ios-coreml", {"shapes": "256"}, r"-O shapes=256 \(--shapes\): expected list of int x int.*256x256,320x320"),
    ],
)
def test_a_bad_option_value_names_the_option_the_type_and_an_example(target, items, named):
    from edgekit.targets import options_from_text

    with pytest.raises(BuildError, match=named):
        options_from_text(get_target(target).Options, items, owner=f"target {target}")


def test_an_unknown_option_is_refused_naming_the_known_ones_with_their_help(classifier_path, tmp_path):
    model = Model.load(classifier_path)
    with pytest.raises(TargetError) as refused:
        get_target("jetson-trt").build(model, tmp_path / "a", precision="fp16", options={"dla": "0"})
    message = str(refused.value)
    assert message.startswith("target jetson-trt does not take the build option(s) dla; it takes: dla_core [run on")
    assert "max_batch [largest batch" in message and "edgekit targets --options jetson-trt" in message
    with pytest.raises(TargetError, match="takes TensorRTOptions, not TFLiteOptions"):
        get_target("jetson-trt").build(model, tmp_path / "b", options=get_target("android-tflite").Options())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_options_reach_the_build_typed_and_every_target_describes_its_options(classifier_path, tmp_path):
    target = get_target("jetson-trt")
    model = Model.load(classifier_path)
    from_text = target.build(model, tmp_path / "a", precision="fp16", options={"dla_core": "1", "max_batch": "4"})
    typed = target.build(model, tmp_path / "b", precision="fp16", options=target.Options(dla_core=1, max_batch=4))
    assert from_text.id == typed.id and typed.manifest["build"]["dla_core"] == 1
    assert typed.manifest["build"]["profile_shapes"]["input"][2][0] == 4
    described = {t.name: t.describe()["options"] for t in list_targets()}
    assert [(o["name"], o["default"]) for o in described["x86-ort"]] == [("isa", "auto")]
    assert [o["name"] for o in described["android-tflite"]] == ["int8_io", "nchw_input"]
    shapes = described["ios-coreml"][0]
    assert shapes["type"] == "list of int x int or none" and shapes["default"] is None and shapes["help"]
    assert all(o["help"] and o["example"] for options in described.values() for o in options)
