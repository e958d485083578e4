"""Engine-reported GPU time, the artifact's build section, engine warnings and layer times, through the
harness and the agent, with a small engine registered here: ONNX Runtime underneath, reporting a GPU
time the way the TensorRT engine does (`last_gpu_ms` after each inference)."""

import json

import pytest
from runtime_testkit import make_artifact, make_plan, run_agent

from edgekit.device.results import validate_result
from edgekit.runtime import engines
from edgekit.runtime.engines import register_engine
from edgekit.runtime.engines.onnxruntime import OnnxRuntimeEngine

ENGINE = "fake-gpu"


class FakeGpuEngine(OnnxRuntimeEngine):
    """ONNX Runtime that reports a made-up GPU time per inference (1, 2, 3, ... ms) and layer times."""

    name = ENGINE
    opened_with = []  # the options of every engine opened, newest last

    def __init__(self, model_path, options=None):
        options = dict(options or {})
        self.gpu_options = dict((k, options.pop(k)) for k in list(options) if k not in ("threads",))
        FakeGpuEngine.opened_with.append(dict(self.gpu_options))
        OnnxRuntimeEngine.__init__(self, model_path, options)
        self.last_gpu_ms = None
        self.calls = 0

    def _infer_impl(self, feed):
        outputs = OnnxRuntimeEngine._infer_impl(self, feed)
        self.calls += 1
        self.last_gpu_ms = float(self.calls)
        return outputs

    def layer_times_ms(self):
        return {"conv": 0.25, "gemm": 0.5} if self.gpu_options.get("layer_profile") else {}

    def facts(self):
        facts = OnnxRuntimeEngine.facts(self)
        facts["name"] = ENGINE
        facts["warnings"] = ["cached engine rebuilt"]
        return facts


@pytest.fixture
def fake_engine():
    register_engine(ENGINE, package="numpy", modules=("numpy",))(FakeGpuEngine)
    FakeGpuEngine.opened_with = []
    try:
        yield FakeGpuEngine
    finally:
        engines._REGISTRY.pop(ENGINE)


BUILD = {"precision": "fp16", "dla_core": None, "profile_shapes": {"input": [[1, 3, 32, 32]] * 3}}


def _plan(artifact, video, **overrides):
    path, labels = video
    engine = overrides.pop("engine", {"name": None, "threads": 1, "options": {}})
    return make_plan(artifact, {"kind": "video", "uri": str(path)}, labels=labels, engine=engine, **overrides)


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_gpu_time_is_a_series_of_its_own_without_warm_up(fake_engine, tmp_path, colour_video, mode):
    artifact = make_artifact(tmp_path / "art", engine=ENGINE, build=BUILD)
    code, result = run_agent(tmp_path, _plan(artifact, colour_video, warmup=3, mode=mode))
    assert code == 0, result["errors"]
    timed = result["frames"]["timed"]
    assert timed == 12 and result["frames"]["warmup"] == 3
    # the engine counted warm-up calls too; the series starts after them and has one value per timed frame
    assert result["samples_ms"]["inference_gpu"] == [float(i) for i in range(4, 4 + timed)]
    summary = result["latency_ms"]["inference_gpu"]
    assert summary["count"] == timed and summary["min"] == 4.0 and summary["max"] == 15.0
    # the agent passed the manifest's build section as the engine's options, and its warnings through
    assert fake_engine.opened_with[-1] == BUILD
    assert "cached engine rebuilt" in result["warnings"]
    assert "layer_times_ms" not in result  # the engine profiled nothing
    clean = validate_result(result, run_id="test-run")
    assert clean["latency_ms"]["inference_gpu"]["count"] == timed
    assert clean["samples_ms"]["inference_gpu"][0] == 4.0


def test_plan_options_override_the_build_section_and_layer_times_are_kept(fake_engine, tmp_path, colour_video):
    artifact = make_artifact(tmp_path / "art", engine=ENGINE, build=BUILD)
    engine = {"name": None, "threads": None, "options": {"precision": "fp32", "layer_profile": True}}
    code, result = run_agent(tmp_path, _plan(artifact, colour_video, engine=engine))
    assert code == 0, result["errors"]
    assert fake_engine.opened_with[-1] == dict(BUILD, precision="fp32", layer_profile=True)
    assert result["layer_times_ms"] == {"conv": 0.25, "gemm": 0.5}
    assert validate_result(result, run_id="test-run")["layer_times_ms"] == {"conv": 0.25, "gemm": 0.5}


def test_engines_without_gpu_time_have_no_such_series(tmp_path, colour_video):
    # an x86 artifact on ONNX Runtime: no build section, no last_gpu_ms
    artifact = make_artifact(tmp_path / "art")
    code, result = run_agent(tmp_path, _plan(artifact, colour_video, engine={"name": None, "threads": 1}))
    assert code == 0, result["errors"]
    assert "inference_gpu" not in result["latency_ms"] and "inference_gpu" not in result["samples_ms"]
    assert "layer_times_ms" not in result


def test_build_section_is_not_passed_to_another_engine(fake_engine, tmp_path, colour_video):
    # the plan runs a jetson-style artifact on ONNX Runtime: TensorRT's build options must not reach it
    artifact = make_artifact(tmp_path / "art", engine=ENGINE, build=BUILD)
    code, result = run_agent(tmp_path, _plan(artifact, colour_video, engine={"name": "onnxruntime", "threads": 1}))
    assert code == 0, result["errors"]
    assert result["engine"]["name"] == "onnxruntime" and fake_engine.opened_with == []


@pytest.mark.parametrize("bad", [["1.0"], [float("nan")], [True]])
def test_host_checks_gpu_samples_are_numbers(bad):
    result = {
        "schema": "edgekit.result",
        "version": 1,
        "run_id": "r",
        "status": "ok",
        "samples_ms": {"inference_gpu": bad},
    }
    with pytest.raises(Exception, match="samples_ms.inference_gpu"):
        validate_result(json.loads(json.dumps(result)), run_id="r")
