"""Results from a device are rebuilt field by field; nothing from the device is trusted as is."""

from __future__ import annotations

import pytest

from edgekit.device.results import validate_result
from edgekit.errors import RunError


def good_result(**changes):
    result = {
        "schema": "edgekit.result",
        "version": 1,
        "run_id": "r1",
        "artifact_id": "abc",
        "status": "ok",
        "mode": "sequential",
        "frames": {"timed": 2, "warmup": 1, "dropped": 0},
        "latency_ms": {
            "inference": {
                "mean": 1.0,
                "p50": 1.0,
                "p90": 1.0,
                "p99": 1.0,
                "std": 0.0,
                "min": 1.0,
                "max": 1.0,
                "count": 2,
            }
        },
        "samples_ms": {"inference": [1.0, 1.0]},
        "throughput_fps": 900.0,
        "wall_s": 0.002,
        "accuracy": {"kind": "classification", "count": 2, "top1": 1.0},
        "device": {"hostname": "box", "cpu_count": 2},
        "engine": {"name": "onnxruntime", "providers": ["CPUExecutionProvider"]},
        "errors": [],
    }
    result.update(changes)
    return result


def test_good_result_passes_and_unknown_fields_are_dropped():
    clean = validate_result(good_result(evil="rm -rf /"), run_id="r1")
    assert "evil" not in clean
    assert clean["latency_ms"]["inference"]["p50"] == 1.0
    assert clean["engine"]["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema": "other"}, "schema"),
        ({"version": 99}, "version"),
        ({"run_id": "someone-else"}, "run"),
        ({"status": "great"}, "status"),
        ({"throughput_fps": float("nan")}, "throughput_fps"),
        ({"throughput_fps": "fast"}, "throughput_fps"),
        ({"frames": {"timed": -1}}, "frames.timed"),
        ({"samples_ms": {"inference": ["1"]}}, "samples_ms.inference"),
        ({"latency_ms": {"inference": {"p50": True}}}, "latency_ms.inference.p50"),
        ({"errors": "oops"}, "errors"),
        ({"warnings": "oops"}, "warnings"),
        ({"warnings": [{"not": "text"}]}, r"warnings\[\]"),
    ],
)
def test_bad_fields_are_named(changes, message):
    with pytest.raises(RunError, match=message.replace(".", r"\.")):
        validate_result(good_result(**changes), run_id="r1")


def test_warnings_come_through_as_short_text():
    warned = ["delegate 'nnapi' did not load; ran on XNNPACK (CPU)", "y" * 10_000]
    clean = validate_result(good_result(warnings=warned), run_id="r1")
    assert clean["warnings"][0] == warned[0] and len(clean["warnings"][1]) == 4000
    assert validate_result(good_result(), run_id="r1")["warnings"] == []


def test_oversized_text_is_truncated():
    clean = validate_result(good_result(device={"hostname": "x" * 10_000}), run_id="r1")
    assert len(clean["device"]["hostname"]) == 512


def test_raw_accuracy_keeps_numbers_per_output():
    figures = {"count": 3, "sqnr_db": 41.5, "cosine": 0.999, "max_abs_error": 0.01}
    accuracy = {"kind": "raw", **figures, "outputs": [{"name": "logits", **figures}]}
    clean = validate_result(good_result(accuracy=accuracy), run_id="r1")
    assert clean["accuracy"]["outputs"][0] == accuracy["outputs"][0]
    with pytest.raises(RunError, match="accuracy.top1"):
        validate_result(good_result(accuracy={"kind": "classification", "top1": "all of them"}), run_id="r1")


def test_power_keeps_numbers_per_rail():
    power = {
        "probe": "jetson-ina3221",
        "rail": "VDD_IN",
        "avg_w": 5.2,
        "idle_w": 3.1,
        "active_w": 2.1,
        "energy_j": 1.3,
        "energy_per_inference_mj": 13.0,
        "duration_s": 0.25,
        "samples": 5,
        "rails_avg_w": {"VDD_IN": 5.2, "VDD_SOC": 1.1},
    }
    clean = validate_result(good_result(power=power), run_id="r1")
    assert clean["power"] == power
    with pytest.raises(RunError, match="power.avg_w"):
        validate_result(good_result(power={**power, "avg_w": float("inf")}), run_id="r1")
