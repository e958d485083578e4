"""The android-tflite artifacts run over SSH like any other: FP32, FP16 and full-integer INT8 on real digits."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorflow", reason="needs the tflite extra (pip install 'edgekit[tflite]')")
pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (pip install 'edgekit[tflite]')")

from edgekit.device.plan import Source, make_plan
from edgekit.device.settings import RunSettings
from edgekit.device.ssh import SshTransport


@pytest.fixture(scope="module")
def tflite_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from edgekit.api import build
    from edgekit.demo_data import digits_model_path, preprocessed_heldout_digits

    calib, _ = preprocessed_heldout_digits(128)
    out = tmp_path_factory.mktemp("tflite")
    return {
        precision: build(
            digits_model_path(),
            "android-tflite",
            out / precision,
            precision=precision,
            calib=calib if precision == "int8" else None,
        )
        for precision in ("fp32", "fp16", "int8")
    }


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tflite_artifact_runs_over_ssh(sshd, tmp_path, tflite_artifacts, digits_video, precision):
    video, labels = digits_video
    device = sshd.device(tmp_path, target="android-tflite", tags=("android",))
    with SshTransport(device) as ssh:
        settings = RunSettings(labels=labels, warmup=2, threads=1, engine_options={"delegate": "xnnpack"})
        plan = make_plan("set by the transport", Source.parse(video), settings, engine="tflite")
        result = ssh.run(tflite_artifacts[precision], plan, timeout_s=120)
    assert result["status"] == "ok", result["errors"]
    assert result["engine"]["name"] == "tflite"
    assert result["frames"]["timed"] == len(labels) and result["accuracy"]["top1"] >= 0.9
