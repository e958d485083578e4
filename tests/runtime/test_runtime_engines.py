"""The engine registry and the ONNX Runtime engine on a real tiny model; postprocessors on real outputs."""

import importlib.util
import sys

import numpy as np
import onnxruntime as ort
import pytest
from runtime_testkit import SIZE, classifier_model, two_output_model

from edgekit.runtime.engines import (
    Engine,
    EngineError,
    EngineUnavailable,
    available_engines,
    known_engines,
    open_engine,
)
from edgekit.runtime.postprocess import Classification, PostprocessError, RawComparison, make_postprocessor


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(classifier_model().SerializeToString())
    return str(path)


def feed(value=0.0, dtype=np.float32, shape=(1, 3, SIZE, SIZE)):
    return {"input": np.full(shape, value, dtype)}


def test_registry_lists_engines():
    assert {"onnxruntime", "tflite", "coreml", "tensorrt"} <= set(known_engines())
    assert "onnxruntime" in available_engines()
    # an engine whose library this machine lacks is known but not available (TensorRT needs a Jetson/GPU)
    assert "tensorrt" not in available_engines() or importlib.util.find_spec("tensorrt") is not None


def test_onnxruntime_engine_runs_and_reports_facts(model_path):
    with open_engine("onnxruntime", model_path, {"threads": 1}) as engine:
        assert isinstance(engine, Engine)
        assert engine.input_names == ["input"] and engine.output_names == ["logits"]
        assert engine.inputs[0].shape == ["batch", 3, SIZE, SIZE] and engine.inputs[0].dtype == np.float32
        data = feed()
        data["input"][:, 0] = 1.0  # all red
        (logits,) = engine.infer(data)
        assert logits.shape == (1, 4) and int(np.argmax(logits)) == 0
        facts = engine.facts()
        assert facts["name"] == "onnxruntime" and facts["version"] == ort.__version__
        assert facts["providers"] == ["CPUExecutionProvider"] and facts["threads"] == 1
    with pytest.raises(EngineError, match="closed"):
        engine.infer(feed())


def test_feed_checks_name_dtype_rank_shape(model_path):
    engine = open_engine("onnxruntime", model_path)
    with pytest.raises(EngineError, match="missing \\['input'\\], unexpected \\['x'\\]"):
        engine.check_feed({"x": np.zeros((1, 3, SIZE, SIZE), np.float32)})
    with pytest.raises(EngineError, match="dtype uint8 but the model wants float32"):
        engine.check_feed(feed(dtype=np.uint8))
    with pytest.raises(EngineError, match="rank 3 .* wants rank 4"):
        engine.check_feed(feed(shape=(3, SIZE, SIZE)))
    with pytest.raises(EngineError, match="axis 2"):
        engine.check_feed(feed(shape=(1, 3, SIZE + 1, SIZE)))
    with pytest.raises(EngineError, match="numpy array"):
        engine.check_feed({"input": [[1.0]]})
    with pytest.raises(EngineError, match="dtype uint8"):
        engine.infer(feed(dtype=np.uint8))  # the first infer checks
    engine.infer(feed(shape=(2, 3, SIZE, SIZE)))  # a dynamic batch axis accepts any size
    engine.close()


def test_engine_options_and_providers(model_path):
    with pytest.raises(EngineError, match="options \\['thread'\\] are unknown"):
        open_engine("onnxruntime", model_path, {"thread": 2})
    with pytest.raises(EngineError, match="providers \\['NoSuchExecutionProvider'\\] are not available"):
        open_engine("onnxruntime", model_path, {"providers": ["NoSuchExecutionProvider"]})
    with pytest.raises(EngineError, match="graph_optimization 'max'"):
        open_engine("onnxruntime", model_path, {"graph_optimization": "max"})
    with open_engine("onnxruntime", model_path, {"graph_optimization": "disable", "inter_op_threads": 1}) as engine:
        assert engine.facts()["graph_optimization"] == "disable"


def test_each_engine_refuses_an_unknown_option_naming_the_known_ones(model_path):
    from edgekit.runtime.engines.coreml import CoreMLEngine
    from edgekit.runtime.engines.tflite import TfliteEngine

    for engine, known in [
        (TfliteEngine, ["threads", "delegate", "delegate_options"]),
        (CoreMLEngine, ["threads", "compute_units"]),
    ]:
        with pytest.raises(EngineError) as refused:
            engine(model_path, {"deleget": "gpu"})
        message = str(refused.value)
        assert message.startswith(f"{engine.name} engine options ['deleget'] are unknown; known: threads [")
        assert all(f"{name} [" in message for name in known)
    with pytest.raises(EngineError, match=r"known: threads \[.*graph_optimization \[all, extended, basic or disable\]"):
        open_engine("onnxruntime", model_path, {"optimization": "all"})
    # null means "not given": the default applies
    assert TfliteEngine(model_path, {"delegate": None, "threads": None}).config.delegate == "xnnpack"
    with pytest.raises(EngineError, match="threads must be an integer"):
        TfliteEngine(model_path, {"threads": "four"})


def test_tflite_delegate_options_are_checked(model_path):
    from edgekit.runtime.engines.tflite import TfliteEngine

    with pytest.raises(EngineError, match="delegate_options must be an object"):
        TfliteEngine(model_path, {"delegate": "gpu", "delegate_options": ["precision"]})
    with pytest.raises(EngineError, match="delegate xnnpack takes none"):
        TfliteEngine(model_path, {"delegate_options": {"num_threads": 2}})
    engine = TfliteEngine(model_path, {"delegate": "/opt/vendor/libdelegate.so", "delegate_options": {"cache": 1}})
    assert engine.config.delegate_options == {"cache": 1}


def test_the_registry_imports_an_engine_module_when_it_is_needed():
    import subprocess

    code = (
        "import sys\nfrom edgekit.runtime import engines\nnames = engines.known_engines()\n"
        "print(sorted(m for m in sys.modules if m.startswith('edgekit.runtime.engines.')), names)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['edgekit.runtime.engines.base'] ['coreml', 'onnxruntime', 'openvino', 'tensorrt', 'tflite']"


def test_corrupt_model_names_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"this is not protobuf at all")
    with pytest.raises(EngineError, match="cannot load model file .*broken.onnx.*corrupt"):
        open_engine("onnxruntime", str(path))


def test_unknown_and_missing_engines(model_path):
    with pytest.raises(EngineUnavailable, match="unknown engine 'snpe'; this agent knows .*onnxruntime"):
        open_engine("snpe", model_path)
    if importlib.util.find_spec("tflite_runtime") or importlib.util.find_spec("ai_edge_litert"):
        pytest.skip("a TFLite runtime is installed here")
    with pytest.raises(EngineUnavailable) as info:
        open_engine("tflite", model_path)
    message = str(info.value)
    assert "tflite-runtime or ai-edge-litert" in message
    assert "install tflite-runtime or ai-edge-litert on the device, or build the artifact for a target" in message


def test_placeholder_with_package_installed_says_not_implemented(model_path):
    from edgekit.runtime import engines

    engines.register_placeholder("numpy-engine", "numpy", ("numpy",))
    try:
        with pytest.raises(EngineUnavailable, match="not implemented in this version of the agent"):
            open_engine("numpy-engine", model_path)
    finally:
        engines._REGISTRY.pop("numpy-engine")


# -- postprocess ---------------------------------------------------------------------------------------


def test_classification_topk_and_accuracy():
    post = Classification(top_k=2)
    logits = np.array([[0.1, 0.7, 0.5, -1.0]], np.float32)
    top = post.process([logits], 1, 0)
    assert top.tolist() == [1, 2]
    post.process([logits], 2, 1)  # top-2 hit, top-1 miss
    post.process([logits], 3, 2)  # miss
    post.process([logits], None, 3)  # unlabelled: not counted
    post.process([logits], 3, 4, record=False)  # warm-up: not counted
    summary = post.summary()
    assert summary == {"kind": "classification", "count": 3, "top1": 1 / 3, "top2": 2 / 3, "top_k": 2}
    assert Classification().summary() is None
    # trailing 1x1 axes and k larger than the classes
    assert Classification(top_k=10).process([np.array([[[[0.0]], [[2.0]]]])], 1, 0).tolist() == [1, 0]


def test_label_outside_classes_message():
    with pytest.raises(PostprocessError, match="label 12 but the model has 4 classes: check --labels / class_names"):
        Classification().process([np.zeros((1, 4))], 12, 0)


def test_raw_comparison_against_reference(tmp_path):
    outputs = [np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), np.array([[0.0, 2.0, 3.0, 4.0]], np.float32)]
    ref = tmp_path / "ref.npz"
    np.savez(ref, output_0=np.stack([outputs[0][0], outputs[0][0] * 1.1]), output_1=np.stack([outputs[1][0]] * 2))
    post = make_postprocessor({"kind": "raw", "keep_outputs": False}, ["features", "relu"], reference_path=str(ref))
    assert isinstance(post, RawComparison)
    post.process(outputs, None, 0)
    post.process(outputs, None, 1)
    summary = post.summary()
    assert summary["kind"] == "raw" and summary["count"] == 2
    assert [o["name"] for o in summary["outputs"]] == ["features", "relu"]
    assert summary["outputs"][1]["sqnr_db"] == 999.0 and summary["outputs"][1]["cosine"] == 1.0
    assert summary["sqnr_db"] == summary["outputs"][0]["sqnr_db"] < 30.0  # the worst output
    assert summary["max_abs_error"] == pytest.approx(0.4, rel=1e-5)
    with pytest.raises(PostprocessError, match="has 2 rows but the source has more frames \\(frame 3\\)"):
        post.process(outputs, None, 2)
    with pytest.raises(PostprocessError, match="output 'features' vs reference row 0: shape mismatch"):
        post.process([np.zeros((1, 5)), outputs[1]], None, 0)


def test_raw_reference_file_errors(tmp_path):
    with pytest.raises(PostprocessError, match="reference file .* does not exist"):
        RawComparison(str(tmp_path / "none.npz"), ["a"])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"junk")
    with pytest.raises(PostprocessError, match="cannot read reference file"):
        RawComparison(str(bad), ["a"])
    partial = tmp_path / "partial.npz"
    np.savez(partial, output_0=np.zeros((2, 4)))
    with pytest.raises(PostprocessError, match="lacks output_1"):
        RawComparison(str(partial), ["a", "b"])
    assert RawComparison(None, ["a"]).summary() is None
    with pytest.raises(PostprocessError, match="task 'boxes' is not one of classify, detect"):
        make_postprocessor({"kind": "boxes"}, ["a"])
    with pytest.raises(PostprocessError, match="task raw has no setting 'top_k'"):
        make_postprocessor({"kind": "raw", "top_k": 3}, ["a"])


def test_classification_is_the_classify_task():
    post = make_postprocessor({"kind": "classification", "top_k": 2, "keep_outputs": True}, ["logits"])
    assert isinstance(post, Classification) and post.top_k == 2
    assert isinstance(make_postprocessor({"task": "classify"}, ["logits"]), Classification)
    post.check_outputs([[1, 10]])
    with pytest.raises(PostprocessError, match="no outputs"):
        post.check_outputs([])
    assert post.task_output() is None


def test_two_output_model_runs(tmp_path):
    path = tmp_path / "two.onnx"
    path.write_bytes(two_output_model().SerializeToString())
    with open_engine("onnxruntime", str(path)) as engine:
        features, relu = engine.infer(feed(0.5))
    assert features.shape == (1, 4) and np.all(relu == np.maximum(features, 0))


@pytest.mark.skipif(sys.platform == "darwin", reason="checks a platform-bound engine away from its platform")
def test_an_engine_bound_to_another_platform_is_never_available():
    # coremltools installs on Linux (the coreml extra) but predicts only on macOS
    assert "coreml" in known_engines() and "coreml" not in available_engines()
