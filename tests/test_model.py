"""Model import: ONNX files (checked), torch modules (exported), and the metadata that travels."""

from __future__ import annotations

import json

import pytest

from edgekit.errors import ModelError
from edgekit.model import CLASS_NAMES_KEY, PREPROCESS_KEY, Model
from edgekit.runtime.preprocess import PreprocessSpec


def test_load_reads_io_and_guesses_preprocessing(classifier_path):
    model = Model.load(classifier_path)
    assert [(t.name, t.shape, t.dtype) for t in model.inputs] == [("input", ("batch", 3, 16, 16), "float32")]
    assert [(t.name, t.shape) for t in model.outputs] == [("logits", ("batch", 4))]
    assert model.opset == 17
    assert model.preprocess == PreprocessSpec(resize=[16, 16], color="RGB", layout="NCHW")


def test_preprocess_and_class_names_travel_inside_the_onnx_file(classifier_path, tmp_path):
    model = Model.load(classifier_path)
    model.preprocess = {"resize": [16, 16], "color": "BGR", "mean": [0.5], "std": [0.25]}
    model.class_names = ["a", "b", "c", "d"]
    saved = model.save(tmp_path / "with_meta.onnx")
    again = Model.load(saved)
    assert again.preprocess == PreprocessSpec(resize=[16, 16], color="BGR", mean=[0.5], std=[0.25])
    assert again.class_names == ["a", "b", "c", "d"]
    assert again.sha256 == model.sha256  # metadata does not change the model's identity
    import onnx

    props = {p.key: p.value for p in onnx.load(saved).metadata_props}
    assert json.loads(props[CLASS_NAMES_KEY]) == ["a", "b", "c", "d"]
    assert json.loads(props[PREPROCESS_KEY])["color"] == "BGR"


def test_user_preprocess_overrides_metadata(classifier_path):
    model = Model.load(classifier_path, preprocess={"resize": [8, 8], "color": "GRAY"})
    assert model.preprocess.resize == [8, 8] and model.preprocess.color == "GRAY"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Model.load(tmp_path / "nope.onnx")


def test_truncated_file_is_named(classifier_path, tmp_path):
    broken = tmp_path / "truncated.onnx"
    broken.write_bytes(classifier_path.read_bytes()[:200])
    with pytest.raises(ModelError, match="truncated.onnx"):
        Model.load(broken)


def test_garbage_file_is_named(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model at all" * 10)
    with pytest.raises(ModelError, match="garbage.onnx"):
        Model.load(garbage)


def test_invalid_graph_fails_the_checker(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "dangling.onnx"
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ModelError, match="dangling.onnx"):
        Model.load(path)


def test_bad_preprocess_metadata_is_reported(classifier_path, tmp_path):
    import onnx

    proto = onnx.load(classifier_path)
    proto.metadata_props.add(key=PREPROCESS_KEY, value='{"color": "CMYK"}')
    path = tmp_path / "badmeta.onnx"
    onnx.save(proto, path)
    with pytest.raises(ModelError, match="CMYK"):
        Model.load(path)


def test_from_torch_exports_with_dynamic_batch():
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    import numpy as np
    import onnxruntime as ort

    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 10),
    )
    module.train()
    model = Model.from_torch(module, torch.randn(1, 1, 28, 28), class_names=[str(i) for i in range(10)])
    assert module.training  # the module is handed back in the mode it came in
    assert model.torch_module is module
    assert model.inputs[0].shape == ("batch", 1, 28, 28)
    assert model.preprocess.color == "GRAY"
    batch = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)
    session = ort.InferenceSession(model.to_bytes(), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": batch})
    module.eval()
    with torch.no_grad():
        torch_out = module(torch.from_numpy(batch)).numpy()
    assert onnx_out.shape == (3, 10)
    assert np.abs(onnx_out - torch_out).max() < 1e-4
