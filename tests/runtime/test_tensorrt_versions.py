"""The TensorRT engine against each release it builds with, up to the hardware line: trtexec command lines use only
the options that release's trtexec parses (tables from its sampleOptions.cpp), and the Python builder, run against a
strict stand-in of TensorRT 8.5 and 10.3, reads a calibration cache written for another release, leaves the
calibrator off for a Q/DQ network, and sets the workspace the way each release allows."""

import os
import stat

import numpy as np
import onnx
import pytest
from fake_tensorrt import make_tensorrt
from onnx import TensorProto, helper, numpy_helper
from runtime_testkit import classifier_model
from trtexec_options import TRTEXEC_OPTIONS

from edgekit.runtime.engines import EngineError
from edgekit.runtime.engines.tensorrt import build_plan, trtexec_command, trtexec_flags, validate_options
from edgekit.runtime.engines.tensorrt.builder import _make_cache_calibrator, cache_for_this_tensorrt, make_logger

# the releases, as the device's bindings report them (JetPack 5.1, 6.0, 6.1), and the option table of each
RELEASES = {"8.5.2.2": "8.5", "8.6.2.3": "8.6", "10.3.0.30": "10.3"}


def every_option(tmp_path, precision="int8"):
    (tmp_path / "calib.cache").write_bytes(b"TRT-8502-EntropyCalibration2\n")
    shapes = {"input": [[1, 3, 32, 32], [1, 3, 32, 32], [4, 3, 32, 32]]}
    return validate_options(
        {
            "precision": precision,
            "calibration_cache": "calib.cache" if precision == "int8" else None,
            "dla_core": 0,
            "gpu_fallback": True,
            "sparsity": True,
            "workspace_mb": 256,
            "profile_shapes": shapes,
        },
        str(tmp_path),
    )


def option_names(cmd):
    return [arg.split("=", 1)[0] for arg in cmd[1:]]


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_the_trtexec_command_uses_only_options_its_release_has(tmp_path, version):
    cmd = trtexec_command("trtexec", "m.onnx", "m.engine", every_option(tmp_path), version)
    known = TRTEXEC_OPTIONS[RELEASES[version]]
    assert [name for name in option_names(cmd) if name not in known] == []
    assert "--int8" in cmd and "--memPoolSize=workspace:256" in cmd  # MiB without a unit in all three


def test_build_only_is_spelled_per_release(tmp_path):
    spelled = {v: trtexec_command("t", "m", "e", every_option(tmp_path), v)[3] for v in RELEASES}
    assert spelled == {"8.5.2.2": "--buildOnly", "8.6.2.3": "--skipInference", "10.3.0.30": "--skipInference"}
    assert "--skipInference" not in TRTEXEC_OPTIONS["8.5"] and "--buildOnly" not in TRTEXEC_OPTIONS["10.3"]
    assert trtexec_flags("9.3.0") == trtexec_flags("8.6.1") and trtexec_flags("10.7.0") == trtexec_flags("10.0.1")
    with pytest.raises(EngineError, match="older than 8.5"):
        trtexec_flags("8.4.1")


def strict_trtexec(tmp_path, release):
    """A trtexec stand-in that, like the real one, refuses an option its release does not parse, then saves a
    plan."""
    known = " ".join(sorted(TRTEXEC_OPTIONS[release]))
    path = tmp_path / "bin" / "trtexec"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        f"#!/bin/sh\nknown=' {known} '\n"
        + 'for a in "$@"; do name="${a%%=*}"\n'
        + '  case "$known" in *" $name "*) ;; *) echo "[E] Unknown option: $a"; exit 1;; esac\n'
        + '  case "$a" in --saveEngine=*) printf PLAN > "${a#--saveEngine=}";; esac\ndone\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_use_trtexec_always_builds_with_the_devices_trtexec(tmp_path, monkeypatch, version):
    path = strict_trtexec(tmp_path, RELEASES[version])
    monkeypatch.setenv("PATH", str(path.parent))
    model = tmp_path / "m.onnx"
    model.write_bytes(classifier_model().SerializeToString())
    trt = make_tensorrt(version)
    opts = dict(every_option(tmp_path), use_trtexec="always")
    assert build_plan(trt, make_logger(trt), str(model), opts) == (b"PLAN", "trtexec")
    if RELEASES[version] == "8.5":  # the command every release used to get: JetPack 5's trtexec refuses it
        cmd = trtexec_command(str(path), str(model), str(tmp_path / "e"), opts, "10.3.0")
        assert os.system(" ".join(cmd) + " > /dev/null") != 0


# -- the Python builder on a strict TensorRT 8.5 and 10.3 ---------------------------------------------------------


def qdq_model():
    """input -> QuantizeLinear -> DequantizeLinear -> Relu: an explicit Q/DQ network."""
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
        helper.make_node("Relu", ["dq"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def write_cache(path, trt_version):
    """A cache as `edgekit quantize` writes it for TensorRT `trt_version`."""
    from edgekit.calibration.quant_spec import QuantSpec, TensorQuant
    from edgekit.targets.tensorrt_cache import write_trt_cache

    spec = QuantSpec(
        source_model_sha256="0" * 64,
        scheme={"activations": "int8_sym", "weights": "int8_per_channel"},
        tensors={"input": TensorQuant("activation", "int8", 1.0 / 127, 0, range=(-1.0, 1.0))},
        calibration={"observer": "minmax"},
    )
    return str(write_trt_cache(spec, path, trt_version=trt_version))


def python_build(tmp_path, trt, proto, **options):
    model = tmp_path / "m.onnx"
    model.write_bytes(proto.SerializeToString())
    opts = validate_options(dict(options, use_trtexec="never"), str(tmp_path))
    warnings = []
    data, used = build_plan(trt, make_logger(trt), str(model), opts, warnings)
    assert used == "python"
    return data, warnings


@pytest.mark.parametrize("device, written", [("8.5.2.2", "8.5.2"), ("10.3.0.30", "10.3.0"), ("10.3.0.30", "8.5")])
def test_a_calibration_cache_is_read_by_the_devices_tensorrt(tmp_path, device, written):
    trt = make_tensorrt(device)
    cache = write_cache(tmp_path / "calib.cache", written)
    data, warnings = python_build(tmp_path, trt, classifier_model(), precision="int8", calibration_cache=cache)
    assert data == b"PLAN" and "built" in trt.log
    header = f"TRT-{'8502' if device.startswith('8.5') else '100300'}-EntropyCalibration2"
    assert f"read calibration cache {header!r}" in trt.log and not any("skipped" in line for line in trt.log)
    if written.startswith(device[:3]):
        assert warnings == []
    else:  # edgekit's scales do not depend on the TensorRT reading them: re-headed, and said
        assert warnings == [
            "calibration cache header TRT-8502-EntropyCalibration2 is not this TensorRT's "
            "(10.3.0.30): read as TRT-100300-EntropyCalibration2"
        ]


def test_the_strict_tensorrt_skips_a_foreign_header_as_the_real_one_does(tmp_path):
    """Without the re-heading, TensorRT 10 skips an 8.5 cache and calibration fails for want of batches."""
    trt = make_tensorrt("10.3.0.30")
    with open(write_cache(tmp_path / "c.cache", "8.5.2"), "rb") as handle:
        calibrator = _make_cache_calibrator(trt, handle.read())
    config = trt.Builder(None).create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    assert trt.Builder(None).build_serialized_network(trt.Builder(None).create_network(), config) is None
    assert "skipped calibration cache 'TRT-8502-EntropyCalibration2'" in trt.log
    assert cache_for_this_tensorrt(b"TRT-100300-EntropyCalibration2\nx: 3c010a14\n", "10.3.0") == (
        b"TRT-100300-EntropyCalibration2\nx: 3c010a14\n",
        [],
    )
    with pytest.raises(EngineError, match="header"):
        cache_for_this_tensorrt(b"input: 3c010a14\n", "10.3.0")


@pytest.mark.parametrize("device", ["8.5.2.2", "10.3.0.30"])
def test_a_qdq_network_gets_no_calibrator(tmp_path, device):
    trt = make_tensorrt(device)
    cache = write_cache(tmp_path / "calib.cache", device)
    data, warnings = python_build(tmp_path, trt, qdq_model(), precision="int8", calibration_cache=cache)
    assert data == b"PLAN" and not any("calibrat" in line for line in trt.log)
    assert len(warnings) == 1 and "has Q/DQ layers" in warnings[0]
    # and without a cache, Q/DQ alone is enough for int8
    assert python_build(tmp_path, make_tensorrt(device), qdq_model(), precision="int8") == (b"PLAN", [])


@pytest.mark.parametrize("device", ["8.5.2.2", "10.3.0.30"])
def test_workspace_and_batch_mode_as_each_release_takes_them(tmp_path, device):
    trt = make_tensorrt(device)
    python_build(tmp_path, trt, classifier_model(), precision="fp16", workspace_mb=64)
    assert not any(line.startswith(("ERROR", "WARNING")) for line in trt.log)
    if device.startswith("10"):
        with pytest.raises(AttributeError):  # TensorRT 10 has no max_workspace_size: the fake is strict
            trt.Builder(None).create_builder_config().max_workspace_size = 1
    assert onnx.load(str(tmp_path / "m.onnx")).graph.node
