"""jetson-trt brings models above opset 17 down to 17 for TensorRT 8.5/8.6, whose ONNX parser ignores the axes
input opset 18 gave ReduceMean (and reduces every axis); TensorRT 10 gets the model as it is."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.model import Model
from edgekit.targets import BuildError, get_target
from edgekit.targets.tensorrt_opset import opset_for_tensorrt


def _pooled_model(opset: int = 18, extra_nodes=(), extra_inits=()) -> Model:
    """Conv -> ReduceMean over H and W (axes as an input, the opset-18 form) -> [1, 4]: a global average pool as
    exporters write it."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "hw_axes"),
        *extra_inits,
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("ReduceMean", ["conv", "hw_axes"], ["out"], keepdims=0, name="gap")
        if opset >= 18
        else helper.make_node("ReduceMean", ["conv"], ["out"], axes=[2, 3], keepdims=0, name="gap"),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes,
        "pooled",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return Model(proto)


def build(model, out, **options):
    return get_target("jetson-trt").build(model, out, precision="fp32", options=options)


def _reduce_mean(proto: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.op_type == "ReduceMean")


def _check_opset_17_with_axes_attribute(artifact, model: Model) -> None:
    built = onnx.load(artifact.model_path)
    assert [o.version for o in built.opset_import if o.domain in ("", "ai.onnx")] == [17]
    gap = _reduce_mean(built)
    assert list(gap.input) == ["conv"]
    assert {a.name: list(a.ints) for a in gap.attribute if a.name == "axes"} == {"axes": [2, 3]}
    # the target's validation block: the artifact against ONNX Runtime FP32 on the source
    validation = artifact.manifest["validation"]
    assert validation["passed"] is True
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    source = ort.InferenceSession(model.to_bytes()).run(None, {"input": x})[0]
    ours = ort.InferenceSession(str(artifact.model_path)).run(None, {"input": x})[0]
    assert ours.shape == (1, 4) and np.allclose(ours, source, rtol=1e-5, atol=1e-6)


def test_opset_18_reduce_mean_comes_down_to_17_for_tensorrt_8_5(tmp_path):
    model = _pooled_model()
    artifact = build(model, tmp_path / "a", trt_version="8.5")
    _check_opset_17_with_axes_attribute(artifact, model)
    record = artifact.manifest["opset"]
    assert record["source"] == 18 and record["built"] == 17 and record["how"] == "onnx.version_converter"
    assert "TensorRT 8.5" in record["why"] and "ReduceMean" in record["why"]


def test_tensorrt_10_gets_the_model_as_it_is(tmp_path):
    model = _pooled_model()
    artifact = build(model, tmp_path / "a", trt_version="10.3")
    assert artifact.manifest["opset"] == {"source": 18, "built": 18}
    assert len(_reduce_mean(onnx.load(artifact.model_path)).input) == 2
    assert Model.load(artifact.model_path).sha256 == model.sha256


def test_opset_17_and_below_are_left_alone():
    data = _pooled_model(opset=17).to_bytes()  # ReduceMean-13: axes an attribute, which TensorRT 8.x reads
    assert opset_for_tensorrt(data, "8.6") == (data, {"source": 17, "built": 17})


def _failing_converter(monkeypatch):
    from onnx import version_converter

    def refuse(proto, version):
        raise RuntimeError("No Adapter From Version $19 for Foo")

    monkeypatch.setattr(version_converter, "convert_version", refuse)


def test_when_the_converter_fails_the_reductions_are_rewritten(tmp_path, monkeypatch):
    _failing_converter(monkeypatch)
    model = _pooled_model()
    artifact = build(model, tmp_path / "a", trt_version="8.6")
    _check_opset_17_with_axes_attribute(artifact, model)
    assert artifact.manifest["opset"]["how"] == "reduction axes inputs as attributes"
    assert "hw_axes" not in {i.name for i in onnx.load(artifact.model_path).graph.initializer}


def test_an_op_without_an_opset_17_form_is_refused_by_name(tmp_path, monkeypatch):
    _failing_converter(monkeypatch)
    # Pad with an axes input exists from opset 18 only
    pad = helper.make_node("Pad", ["input", "pads", "", "pad_axes"], ["padded"], name="edge_pad")
    inits = [
        numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "pad_axes"),
    ]
    model = _pooled_model(extra_nodes=[pad], extra_inits=inits)
    model.proto.graph.output.append(helper.make_tensor_value_info("padded", TensorProto.FLOAT, [1, 3, 10, 10]))
    with pytest.raises(BuildError, match=r"(?s)TensorRT 8.5 reads opsets up to 17.*Pad 'edge_pad' \(opset 18 form\)"):
        build(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_inspect_says_an_opset_18_model_is_built_at_17_for_tensorrt_8(tmp_path):
    from edgekit.inspect import inspect_model

    model = _pooled_model()
    report = inspect_model(model, targets=["jetson-trt"])
    [note] = report.build_notes["jetson-trt"]
    assert note.startswith("opset 18: built at opset 17 for TensorRT 8.5") and "trt_version=10.x" in note
    assert report.to_dict()["build_notes"] == {"jetson-trt": [note]}
    newer = inspect_model(model, targets=["jetson-trt"], options={"trt_version": "10.3"})
    assert newer.build_notes["jetson-trt"] == [] and newer.to_dict()["build_notes"] == {}
