"""The target registry and the x86 ONNX Runtime target: content-addressed, checked artifacts."""

from __future__ import annotations

import json

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
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )  # fmt: skip
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


def test_loading_a_folder_without_manifest_says_what_to_do(tmp_path):
    with pytest.raises(ArtifactError, match="edgekit build"):
        Artifact.load(tmp_path)


def test_artifact_model_keeps_graph_bytes(classifier_path, tmp_path):
    artifact = get_target("x86-ort").build(Model.load(classifier_path), tmp_path / "a")
    original = onnx.load(classifier_path)
    built = onnx.load(artifact.model_path)
    assert built.graph == original.graph
