"""The TensorRT engine up to the hardware line: options, engine cache key and files, trtexec command lines and
output, the CUDA library choice, and the registry's message when TensorRT is missing. The class at the end
builds and runs real engines and needs TensorRT and an NVIDIA GPU (a Jetson)."""

import importlib.util
import os
import stat
import tempfile

import numpy as np
import pytest
from runtime_testkit import SIZE, classifier_model

from edgekit.runtime.engines import EngineError, EngineUnavailable, available_engines, known_engines, open_engine
from edgekit.runtime.engines import tensorrt as trt_engine
from edgekit.runtime.engines.tensorrt import (
    TensorRtEngine,
    build_options_for_key,
    build_with_trtexec,
    choose_cuda,
    engine_cache_key,
    engine_file_name,
    find_trtexec,
    load_or_build,
    parse_trtexec_output,
    trtexec_benchmark_command,
    trtexec_command,
    validate_options,
    write_atomic,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(classifier_model().SerializeToString())
    return str(path)


# -- registry ---------------------------------------------------------------------------------------------


def test_tensorrt_is_registered_but_not_available_without_the_library():
    assert "tensorrt" in known_engines()
    assert ("tensorrt" in available_engines()) == HAS_TENSORRT


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here: the message is for devices without it")
def test_open_engine_names_what_to_install(model_path):
    with pytest.raises(EngineUnavailable) as info:
        open_engine("tensorrt", model_path, {"precision": "fp16"})
    message = str(info.value)
    assert "engine 'tensorrt' needs the Python package tensorrt (JetPack's python3-libnvinfer)" in message
    assert "cuda-python or pycuda" in message and "not installed on this device" in message


def test_the_pure_modules_stay_on_this_side_of_the_hardware_line():
    """options, cache and trtexec import neither TensorRT, a CUDA library, nor the modules that need them."""
    import ast

    folder = os.path.dirname(trt_engine.__file__)
    hardware = {"tensorrt", "cuda", "pycuda", "builder", "engine"}
    for name in ("options", "cache", "trtexec"):
        with open(os.path.join(folder, name + ".py")) as handle:
            tree = ast.parse(handle.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & hardware, (name, sorted(imported & hardware))


# -- options ----------------------------------------------------------------------------------------------


def test_defaults_and_threads_accepted(tmp_path):
    opts = validate_options({"threads": 4}, str(tmp_path))
    assert opts["precision"] == "fp32" and opts["dla_core"] is None and opts["use_trtexec"] == "auto"
    assert opts["cache_dir"] == os.path.expanduser("~/.cache/edgekit/trt-engines")
    assert not (opts["gpu_fallback"] or opts["sparsity"] or opts["layer_profile"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"precison": "fp16"}, r"options \['precison'\] are unknown"),
        ({"precision": "int4"}, "precision 'int4': use one of fp32, fp16, int8"),
        ({"precision": "fp16", "dla_core": -1}, "dla_core must be null or a DLA core number"),
        ({"precision": "fp16", "dla_core": True}, "dla_core must be null or a DLA core number"),
        ({"dla_core": 0}, "dla_core needs precision fp16 or int8"),
        ({"gpu_fallback": True}, "gpu_fallback only applies with dla_core"),
        ({"sparsity": "yes"}, "sparsity must be true or false"),
        ({"workspace_mb": 0}, "workspace_mb must be a positive integer"),
        ({"use_trtexec": "sometimes"}, "use_trtexec 'sometimes': use one of auto, never, always"),
        (
            {"precision": "int8", "calibration_cache": "missing.cache"},
            "calibration_cache .*missing.cache does not exist",
        ),
        ({"profile_shapes": {"input": [[1, 3], [2, 3]]}}, r"profile_shapes\['input'\] must be three shapes"),
        ({"profile_shapes": {"input": [[1, 3], [2, 3], [4]]}}, r"must be three shapes of the same rank"),
        ({"profile_shapes": {"input": [[4, 3], [2, 3], [8, 3]]}}, "need min <= opt <= max"),
        ({"profile_shapes": []}, "profile_shapes must be an object"),
    ],
)
def test_bad_options_are_named(tmp_path, options, message):
    with pytest.raises(EngineError, match=message):
        validate_options(options, str(tmp_path))


def test_calibration_cache_is_relative_to_the_artifact_and_needs_int8(tmp_path, model_path):
    (tmp_path / "trt_calibration.cache").write_bytes(b"TRT-8501-EntropyCalibration2\ninput: 3c010a14\n")
    engine = TensorRtEngine(model_path, {"precision": "int8", "calibration_cache": "trt_calibration.cache"})
    assert engine.settings["calibration_cache"] == str(tmp_path / "trt_calibration.cache")
    with pytest.raises(EngineError, match="only used with precision int8"):
        TensorRtEngine(model_path, {"precision": "fp16", "calibration_cache": "trt_calibration.cache"})


# -- engine cache -----------------------------------------------------------------------------------------

BASE = dict(onnx_sha256="a" * 64, trt_version="8.5.2.2", gpu_name="Orin", compute_capability="8.7")


def key_for(tmp_path, **changes):
    args = dict(BASE)
    options = validate_options({"precision": "fp16"}, str(tmp_path))
    options.update(changes.pop("options", {}))
    args.update(changes)
    return engine_cache_key(build_options=build_options_for_key(options), **args)


def test_cache_key_is_stable_and_sensitive_to_every_input(tmp_path):
    key = key_for(tmp_path)
    assert key == key_for(tmp_path) and len(key) == 64
    calib = tmp_path / "a.cache"
    calib.write_bytes(b"one")
    variants = [
        key_for(tmp_path, onnx_sha256="b" * 64),
        key_for(tmp_path, trt_version="10.3.0"),
        key_for(tmp_path, gpu_name="Xavier"),
        key_for(tmp_path, compute_capability="7.2"),
        key_for(tmp_path, options={"precision": "fp32"}),
        key_for(tmp_path, options={"precision": "int8"}),
        key_for(tmp_path, options={"precision": "int8", "calibration_cache": str(calib)}),
        key_for(tmp_path, options={"dla_core": 0}),
        key_for(tmp_path, options={"dla_core": 1}),
        key_for(tmp_path, options={"dla_core": 0, "gpu_fallback": True}),
        key_for(tmp_path, options={"sparsity": True}),
        key_for(tmp_path, options={"workspace_mb": 512}),
        key_for(tmp_path, options={"profile_shapes": {"input": [[1, 3], [2, 3], [4, 3]]}}),
    ]
    assert len(set(variants + [key])) == len(variants) + 1
    # the calibration cache counts by content, not by path
    calib.write_bytes(b"two")
    assert key_for(tmp_path, options={"precision": "int8", "calibration_cache": str(calib)}) != variants[6]
    # where the cache lives, how it is built and run-time profiling do not change the plan
    same = {"cache_dir": "/elsewhere", "use_trtexec": "always", "layer_profile": True}
    assert key_for(tmp_path, options=same) == key


def test_engine_file_name_is_readable():
    name = engine_file_name("/art/My Model.onnx", "0123456789abcdef" * 4, "int8", 1, "8.5.2.2")
    assert name == "My_Model.int8.dla1.trt8.5.2.2.0123456789abcdef.engine"
    assert engine_file_name("/art/model.onnx", "f" * 64, "fp16", None, "10.3.0") == (
        "model.fp16.trt10.3.0.ffffffffffffffff.engine"
    )


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "cache" / "m.engine"
    write_atomic(str(path), b"first")
    write_atomic(str(path), b"second")
    assert path.read_bytes() == b"second" and os.listdir(path.parent) == ["m.engine"]


class FakePlans:
    """Stands in for TensorRT's builder and runtime in the cache logic: a plan deserializes when it starts
    with b"PLAN" (TensorRT returns None for a corrupt or foreign plan)."""

    def __init__(self, built=b"PLAN-1"):
        self.built = built
        self.builds = 0

    def build(self):
        self.builds += 1
        return self.built

    @staticmethod
    def deserialize(data):
        return ("engine", data) if data.startswith(b"PLAN") else None


def test_load_or_build_builds_once_then_uses_the_cache(tmp_path):
    path = str(tmp_path / "c" / "m.engine")
    plans = FakePlans()
    engine, info = load_or_build(path, plans.build, plans.deserialize)
    assert engine == ("engine", b"PLAN-1") and not info["from_cache"] and info["build_s"] is not None
    engine, info = load_or_build(path, plans.build, plans.deserialize)
    assert info["from_cache"] and plans.builds == 1 and info["build_s"] is None and not info["warnings"]


def test_a_corrupt_cached_engine_is_rebuilt_once_and_said(tmp_path):
    path = tmp_path / "m.engine"
    path.write_bytes(b"\x00garbage from a killed copy")
    plans = FakePlans()
    engine, info = load_or_build(str(path), plans.build, plans.deserialize)
    assert engine == ("engine", b"PLAN-1") and plans.builds == 1
    assert info["rebuilt_bad_cache"] and "could not be deserialized" in info["warnings"][0]
    assert path.read_bytes() == b"PLAN-1"


def test_a_build_that_does_not_deserialize_is_an_error(tmp_path):
    plans = FakePlans(built=b"not a plan")
    with pytest.raises(EngineError, match="cannot deserialize it"):
        load_or_build(str(tmp_path / "m.engine"), plans.build, plans.deserialize)


def test_a_failed_build_leaves_no_file(tmp_path):
    def fail():
        raise EngineError("TensorRT could not build")

    with pytest.raises(EngineError, match="could not build"):
        load_or_build(str(tmp_path / "m.engine"), fail, FakePlans.deserialize)
    assert os.listdir(tmp_path) == []


# -- trtexec ----------------------------------------------------------------------------------------------


def opts(tmp_path, **options):
    return validate_options(options, str(tmp_path))


def test_trtexec_command_fp32_is_minimal(tmp_path):
    cmd = trtexec_command("trtexec", "/a/m.onnx", "/c/m.engine", opts(tmp_path), "10.3.0.30")
    assert cmd == ["trtexec", "--onnx=/a/m.onnx", "--saveEngine=/c/m.engine", "--skipInference"]


def test_trtexec_command_with_every_build_option(tmp_path):
    shapes = {"input": [[1, 3, 224, 224], [4, 3, 224, 224], [8, 3, 224, 224]], "scale:0": [[1], [1], [2]]}
    options = opts(
        tmp_path,
        precision="fp16",
        dla_core=1,
        gpu_fallback=True,
        sparsity=True,
        workspace_mb=1024,
        profile_shapes=shapes,
    )
    cmd = trtexec_command("/usr/src/tensorrt/bin/trtexec", "m.onnx", "m.engine", options, "8.6.2.3")
    assert cmd[4:] == [
        "--fp16",
        "--useDLACore=1",
        "--allowGPUFallback",
        "--sparsity=enable",
        "--memPoolSize=workspace:1024",
        "--minShapes=input:1x3x224x224,'scale:0':1",
        "--optShapes=input:4x3x224x224,'scale:0':1",
        "--maxShapes=input:8x3x224x224,'scale:0':2",
    ]


def test_trtexec_command_int8_with_calibration_cache(tmp_path):
    (tmp_path / "calib.cache").write_bytes(b"TRT-8501-EntropyCalibration2\n")
    options = opts(tmp_path, precision="int8", calibration_cache="calib.cache")
    cmd = trtexec_command("trtexec", "m.onnx", "m.engine", options, "8.5.2.2")
    assert cmd[3] == "--buildOnly"  # TensorRT 8.5's trtexec has no --skipInference
    assert cmd[4:] == ["--fp16", "--int8", f"--calib={tmp_path / 'calib.cache'}"]
    assert trtexec_benchmark_command("trtexec", "m.engine", 0) == ["trtexec", "--loadEngine=m.engine", "--useDLACore=0"]


# A TensorRT 8.5 trtexec log (Orin, JetPack 5.1), trimmed: the performance summary is what matters.
TRTEXEC_LOG = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # /usr/src/tensorrt/bin/trtexec --loadEngine=m.engine
[03/14/2024-10:02:11] [I] === Model Options ===
[03/14/2024-10:02:11] [I] Format: *
[03/14/2024-10:02:14] [I] Engine loaded in 0.0213 sec.
[03/14/2024-10:02:17] [I] === Performance summary ===
[03/14/2024-10:02:17] [I] Throughput: 1021.83 qps
[03/14/2024-10:02:17] [I] Latency: min = 1.01709 ms, max = 1.60498 ms, mean = 1.03752 ms, median = 1.02979 ms, \
percentile(90%) = 1.05078 ms, percentile(95%) = 1.06445 ms, percentile(99%) = 1.12012 ms
[03/14/2024-10:02:17] [I] Enqueue Time: min = 0.282959 ms, max = 0.830811 ms, mean = 0.329504 ms, median = \
0.318848 ms, percentile(90%) = 0.363281 ms, percentile(95%) = 0.380615 ms, percentile(99%) = 0.460449 ms
[03/14/2024-10:02:17] [I] H2D Latency: min = 0.0102539 ms, max = 0.0522461 ms, mean = 0.0124327 ms, median = \
0.0119629 ms, percentile(90%) = 0.0136719 ms, percentile(95%) = 0.0146484 ms, percentile(99%) = 0.0195312 ms
[03/14/2024-10:02:17] [I] GPU Compute Time: min = 0.969971 ms, max = 1.54541 ms, mean = 0.97747 ms, median = \
0.972412 ms, percentile(90%) = 0.98877 ms, percentile(95%) = 1.00195 ms, percentile(99%) = 1.05347 ms
[03/14/2024-10:02:17] [I] D2H Latency: min = 0.00366211 ms, max = 0.0164795 ms, mean = 0.00494612 ms, median = \
0.00463867 ms, percentile(90%) = 0.00634766 ms, percentile(95%) = 0.00683594 ms, percentile(99%) = 0.00878906 ms
[03/14/2024-10:02:17] [I] Total Host Walltime: 3.00245 s
[03/14/2024-10:02:17] [I] Total GPU Compute Time: 2.99876 s
[03/14/2024-10:02:17] [I] Explanations of the performance metrics are printed in the verbose logs.
&&&& PASSED TensorRT.trtexec [TensorRT v8502] # /usr/src/tensorrt/bin/trtexec --loadEngine=m.engine
""".replace("\\\n", "")


def test_trtexec_performance_summary_is_parsed():
    parsed = parse_trtexec_output(TRTEXEC_LOG)
    assert parsed["throughput_qps"] == 1021.83 and parsed["passed"] is True
    assert parsed["gpu_compute_ms"] == {
        "min": 0.969971,
        "max": 1.54541,
        "mean": 0.97747,
        "median": 0.972412,
        "p90": 0.98877,
        "p95": 1.00195,
        "p99": 1.05347,
    }
    assert parsed["latency_ms"]["p99"] == 1.12012 and parsed["h2d_ms"]["mean"] == 0.0124327
    assert parsed["enqueue_ms"]["median"] == 0.318848 and parsed["d2h_ms"]["max"] == 0.0164795
    assert "host_latency_ms" not in parsed  # "H2D Latency" is not "Latency"


def test_older_trtexec_summary_and_e_notation():
    text = (
        "[07/25/2022-19:02:56] [I] Throughput: 2.54521e+06 qps\n"
        "[07/25/2022-19:02:56] [I] End-to-End Host Latency: min = 9.47876 ms, max = 51.4163 ms, mean = 16.5801 ms, "
        "median = 11.6239 ms, percentile(99%) = 47.6256 ms\n"
        "&&&& FAILED TensorRT.trtexec [TensorRT v8201]\n"
    )
    parsed = parse_trtexec_output(text)
    assert parsed["throughput_qps"] == 2.54521e06 and parsed["passed"] is False
    assert parsed["host_latency_ms"] == {
        "min": 9.47876,
        "max": 51.4163,
        "mean": 16.5801,
        "median": 11.6239,
        "p99": 47.6256,
    }
    assert parse_trtexec_output("no summary here") == {}


def stub_trtexec(tmp_path, body):
    """A stand-in for the trtexec binary (which cannot run without a GPU): a shell script."""
    path = tmp_path / "bin" / "trtexec"
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_build_with_trtexec_returns_the_saved_plan(tmp_path, model_path):
    trtexec = stub_trtexec(
        tmp_path,
        'for a in "$@"; do case "$a" in --saveEngine=*) printf PLAN-%s "$*" > "${a#--saveEngine=}";; esac; done\n'
        'echo "&&&& PASSED TensorRT.trtexec"\n',
    )
    data = build_with_trtexec(trtexec, model_path, opts(tmp_path, precision="fp16"), "10.3.0.30")
    assert data.startswith(b"PLAN-") and b"--fp16" in data and b"--skipInference" in data
    assert [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("edgekit-trtexec.")] == []


def test_find_trtexec_on_path_then_where_jetpack_puts_it(tmp_path, monkeypatch):
    trtexec = stub_trtexec(tmp_path, "exit 0\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_trtexec([str(tmp_path / "none"), trtexec]) == trtexec
    assert find_trtexec([str(tmp_path / "none")]) is None
    monkeypatch.setenv("PATH", os.path.dirname(trtexec))
    assert find_trtexec([]) == trtexec


def test_build_with_trtexec_failure_shows_the_log_tail(tmp_path, model_path):
    trtexec = stub_trtexec(tmp_path, 'echo "[E] [TRT] ModelImporter.cpp: No importer registered for op: Foo"\nexit 1\n')
    with pytest.raises(EngineError, match="(?s)trtexec could not build .*exit 1.*No importer registered for op: Foo"):
        build_with_trtexec(trtexec, model_path, opts(tmp_path), "8.6.2.3")


# -- CUDA library choice ----------------------------------------------------------------------------------


def importer(available):
    def load(name):
        if name not in available:
            raise ImportError(f"No module named {name!r}")
        return available[name]

    return load


def test_cuda_python_first_then_pycuda():
    both = {"cuda.bindings.runtime": "cudart", "cuda.cudart": "old-cudart", "pycuda.driver": "driver"}
    assert choose_cuda(importer(both)) == ("cuda-python", "cudart")
    assert choose_cuda(importer({"cuda.cudart": "old-cudart"})) == ("cuda-python", "old-cudart")
    assert choose_cuda(importer({"pycuda.driver": "driver"})) == ("pycuda", "driver")


def test_no_cuda_library_names_both():
    with pytest.raises(EngineUnavailable) as info:
        choose_cuda(importer({}))
    message = str(info.value)
    assert "cuda-python (cuda.bindings.runtime" in message and "pycuda (pycuda.driver" in message
    assert "pip install cuda-python" in message and "pip install pycuda" in message


# -- on the hardware --------------------------------------------------------------------------------------


def _has_gpu():
    if not HAS_TENSORRT:
        return False
    try:
        trt_engine.open_cuda().device()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _has_gpu(), reason="needs TensorRT and an NVIDIA GPU (Jetson)")
class TestOnTheDevice:
    def reference(self, model_path, data):
        import onnxruntime as ort

        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": data})[0]

    def test_fp32_matches_onnxruntime_and_is_cached(self, tmp_path, model_path):
        data = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
        options = {"cache_dir": str(tmp_path / "engines")}
        with open_engine("tensorrt", model_path, options) as engine:
            (logits,) = engine.infer({"input": data})
            facts = engine.facts()
            assert engine.last_gpu_ms is not None and engine.last_gpu_ms > 0
        np.testing.assert_allclose(logits, self.reference(model_path, data), rtol=1e-3, atol=1e-4)
        assert facts["from_cache"] is False and facts["builder"] == "python" and facts["build_s"] > 0
        with open_engine("tensorrt", model_path, options) as engine:
            assert engine.facts()["from_cache"] is True and engine.facts()["cache_key"] == facts["cache_key"]

    def test_dynamic_batch_and_fp16(self, tmp_path, model_path):
        shapes = {"input": [[1, 3, SIZE, SIZE], [2, 3, SIZE, SIZE], [4, 3, SIZE, SIZE]]}
        options = {"precision": "fp16", "profile_shapes": shapes, "cache_dir": str(tmp_path), "layer_profile": True}
        data = np.random.default_rng(1).random((3, 3, SIZE, SIZE), dtype=np.float32)
        with open_engine("tensorrt", model_path, options) as engine:
            (logits,) = engine.infer({"input": data})
            assert logits.shape == (3, 4) and engine.layer_times_ms()
            with pytest.raises(EngineError, match="larger than the engine's maximum"):
                engine.infer({"input": np.zeros((5, 3, SIZE, SIZE), np.float32)})
        np.testing.assert_allclose(logits, self.reference(model_path, data), rtol=2e-2, atol=2e-2)

    def test_corrupt_cache_is_rebuilt(self, tmp_path, model_path):
        options = {"cache_dir": str(tmp_path)}
        with open_engine("tensorrt", model_path, options) as engine:
            path = engine.facts()["engine_file"]
        with open(path, "r+b") as handle:
            handle.write(b"\x00" * 64)
        with open_engine("tensorrt", model_path, options) as engine:
            assert engine.facts()["rebuilt_bad_cache"] is True and engine.facts()["warnings"]

    def test_trtexec_builds_the_same_engine(self, tmp_path, model_path):
        if find_trtexec() is None:
            pytest.skip("needs trtexec (JetPack's /usr/src/tensorrt/bin/trtexec)")
        with open_engine("tensorrt", model_path, {"cache_dir": str(tmp_path), "use_trtexec": "always"}) as engine:
            assert engine.facts()["builder"] == "trtexec"
            engine.infer({"input": np.zeros((1, 3, SIZE, SIZE), np.float32)})
