"""Results from a device are rebuilt field by field; nothing from the device is trusted as is."""

from __future__ import annotations

import re

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


# -- task_output and the task accuracy keys ------------------------------------------------------------

DETECT_OUTPUT = {
    "kind": "detect",
    "frames": [
        {"frame": 0, "size": [480, 640], "boxes": [[10.5, 20.0, 110.25, 220.0, 0.91, 0], [0, 0, 5, 5, 0.3, 17]]},
        {"frame": 3, "size": [480, 640], "boxes": []},
    ],
    "count": 2,
    "truncated": False,
}


def test_task_output_of_each_task_passes_clean():
    clean = validate_result(good_result(task_output={**DETECT_OUTPUT, "evil": 1}), run_id="r1")["task_output"]
    assert clean == DETECT_OUTPUT
    text = {
        "kind": "text-detect",
        "frames": [{"frame": 0, "size": [32, 64], "polygons": [[[[1, 2], [30, 2], [30, 9], [1, 9]], 0.8]]}],
        "count": 1,
        "truncated": True,
    }
    assert validate_result(good_result(task_output=text), run_id="r1")["task_output"] == text
    segment = {"kind": "segment", "frames": [{"frame": 5, "size": [4, 4], "pixels": {"0": 12, "3": 4}}]}
    clean = validate_result(good_result(task_output=segment), run_id="r1")["task_output"]
    assert clean == {**segment, "count": 1, "truncated": False}
    assert validate_result(good_result(), run_id="r1")["task_output"] is None
    # a frame whose size the agent did not know
    unknown = {"kind": "detect", "frames": [{"frame": 0, "size": None, "boxes": []}], "count": 0}
    assert validate_result(good_result(task_output=unknown), run_id="r1")["task_output"]["frames"][0]["size"] is None


def detect_frame(**changes):
    frame = {"frame": 0, "size": [480, 640], "boxes": [[1, 2, 3, 4, 0.5, 1]]}
    frame.update(changes)
    return {"kind": "detect", "frames": [frame], "count": 1, "truncated": False}


@pytest.mark.parametrize(
    ("task_output", "message"),
    [
        ("boxes", "task_output is not an object"),
        ({"kind": "classify", "frames": []}, "task_output.kind is 'classify', not one of detect, segment, text-detect"),
        ({"kind": ["detect"], "frames": []}, "task_output.kind"),
        ({"kind": "detect", "frames": {}}, "task_output.frames is not a list"),
        ({"kind": "detect"}, "task_output.frames is not a list"),
        ({"kind": "detect", "frames": [[]]}, r"task_output.frames[0] is not an object"),
        ({"kind": "detect", "frames": [{"frame": 0}]}, r"task_output.frames[0] has no 'boxes'"),
        (detect_frame(frame=-1), r"task_output.frames[0].frame"),
        (detect_frame(frame=1.5), r"task_output.frames[0].frame"),
        (detect_frame(size=[480]), r"task_output.frames[0].size is not a list of 2"),
        (detect_frame(size=[480, "640"]), r"task_output.frames[0].size"),
        (detect_frame(size=[0, 640]), r"task_output.frames[0].size"),
        (detect_frame(boxes="none"), r"task_output.frames[0].boxes is not a list"),
        (detect_frame(boxes=[[1, 2, 3, 4, 0.5]]), r"task_output.frames[0].boxes[0] is not a list of 6"),
        (detect_frame(boxes=[[1, 2, 3, float("inf"), 0.5, 1]]), r"task_output.frames[0].boxes[0] is inf"),
        (detect_frame(boxes=[[1, 2, 3, [4], 0.5, 1]]), r"task_output.frames[0].boxes[0] is [4]"),
        (detect_frame(boxes=[[1, 2, 3, 4, 0.5, -1]]), r"task_output.frames[0].boxes[0] class"),
        (detect_frame(boxes=[[1, 2, 3, 4, 0.5, 1.0]]), r"task_output.frames[0].boxes[0] class"),
        (detect_frame(boxes=[[1, 2, 3, 4, True, 1]]), r"task_output.frames[0].boxes[0] is True"),
        ({**detect_frame(), "truncated": "no"}, "task_output.truncated"),
        ({**detect_frame(), "count": -3}, "task_output.count"),
        (
            {"kind": "text-detect", "frames": [{"frame": 0, "size": None, "polygons": [[[[1, 2]] * 3, 0.5]]}]},
            r"task_output.frames[0].polygons[0] points is not a list of 4",
        ),
        (
            {"kind": "text-detect", "frames": [{"frame": 0, "size": None, "polygons": [[[[1, 2, 3]] * 4, 0.5]]}]},
            r"task_output.frames[0].polygons[0] points is not a list of 2",
        ),
        (
            {"kind": "text-detect", "frames": [{"frame": 0, "size": None, "polygons": [[[[1, 2]] * 4, "hi"]]}]},
            r"task_output.frames[0].polygons[0] score",
        ),
        (
            {"kind": "segment", "frames": [{"frame": 0, "size": None, "pixels": {"cat": 3}}]},
            r"task_output.frames[0].pixels has key 'cat', not a class index",
        ),
        (
            {"kind": "segment", "frames": [{"frame": 0, "size": None, "pixels": {"1": -3}}]},
            r"task_output.frames[0].pixels.1",
        ),
        (
            {"kind": "segment", "frames": [{"frame": 0, "size": None, "pixels": [1, 2]}]},
            r"task_output.frames[0].pixels is not an object",
        ),
    ],
)
def test_bad_task_output_is_refused_naming_the_field(task_output, message):
    with pytest.raises(RunError, match=re.escape(message)):
        validate_result(good_result(task_output=task_output), run_id="r1")


def test_task_output_caps_the_detections():
    row = [1.0, 2.0, 3.0, 4.0, 0.5, 0]
    frames = [{"frame": i, "size": [8, 8], "boxes": [row] * 1000} for i in range(200)]
    output = {"kind": "detect", "frames": frames, "count": 200_000, "truncated": True}
    assert validate_result(good_result(task_output=output), run_id="r1")["task_output"]["count"] == 200_000
    frames.append({"frame": 200, "size": [8, 8], "boxes": [row]})
    with pytest.raises(RunError, match="task_output holds more than 200000 detections"):
        validate_result(good_result(task_output=output), run_id="r1")


def test_task_accuracy_keys():
    segment = {
        "kind": "segment",
        "count": 3,
        "miou": 0.5,
        "pixel_accuracy": 0.75,
        "per_class_iou": {"0": 0.75, "2": 0.25},
    }
    assert validate_result(good_result(accuracy=segment), run_id="r1")["accuracy"] == segment
    detect = {"kind": "detect", "count": 4, "detections": 6, "per_frame_mean": 1.5}
    assert validate_result(good_result(accuracy=detect), run_id="r1")["accuracy"] == detect
    empty = {"kind": "segment", "count": 0, "miou": None, "pixel_accuracy": None, "per_class_iou": {}}
    assert validate_result(good_result(accuracy=empty), run_id="r1")["accuracy"] == empty
    for bad, message in (
        ({**segment, "per_class_iou": {"0": "high"}}, "accuracy.per_class_iou.0"),
        ({**segment, "per_class_iou": {"road": 0.5}}, "accuracy.per_class_iou has key 'road'"),
        ({**segment, "per_class_iou": [0.5]}, "accuracy.per_class_iou is not an object"),
        ({**detect, "detections": 2.5}, "accuracy.detections"),
        ({**detect, "per_frame_mean": "many"}, "accuracy.per_frame_mean"),
    ):
        with pytest.raises(RunError, match=re.escape(message)):
            validate_result(good_result(accuracy=bad), run_id="r1")


def test_an_ok_result_without_task_output_is_kept_with_evaluate_errors(tmp_path):
    """A stand-in for a broken or hostile device (the real agent always returns task_output when the plan
    asks): an "ok" result with no task_output passes validation, and the host's scoring then stores why it
    could not score instead of scores."""
    import cv2
    import numpy as np
    from test_evaluate import labels_for, write_coco

    from edgekit.evaluate.host import HostEvaluation, evaluation_errors, finish

    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(folder / name), np.zeros((48, 64, 3), np.uint8))
    saved = tmp_path / "dets.jsonl"
    evaluation = HostEvaluation(labels=labels_for(folder, write_coco(tmp_path / "coco.json")), save_detections=saved)
    device_accuracy = {"kind": "detect", "count": 3}
    result = validate_result(good_result(accuracy=device_accuracy), run_id="r1")
    assert result["task_output"] is None
    finished = finish(result, evaluation, {"kind": "detect"})
    labels_error, save_error = evaluation_errors(finished)
    assert labels_error.startswith("the agent returned no per-frame detections (task_output): the run needs")
    assert "no per-frame detections (task_output) to save" in save_error
    assert finished["status"] == "ok" and finished["accuracy"] == result["accuracy"] and not saved.exists()


def test_memory_and_cold_start_of_version_2_are_read_and_version_1_has_neither():
    v2 = good_result(
        version=2,
        memory={"peak_rss_mb": 181.5, "measured_by": "getrusage", "extra": "dropped"},
        cold_start_ms={"model_load": 42.0, "first_inference": None},
    )
    clean = validate_result(v2, run_id="r1")
    assert clean["memory"] == {"peak_rss_mb": 181.5, "measured_by": "getrusage"}
    assert clean["cold_start_ms"] == {"model_load": 42.0, "first_inference": None}
    old = validate_result(good_result(), run_id="r1")
    assert old["version"] == 1 and old["memory"] is None and old["cold_start_ms"] is None
    with pytest.raises(RunError, match="memory.peak_rss_mb"):
        validate_result(good_result(version=2, memory={"peak_rss_mb": "lots"}), run_id="r1")
    with pytest.raises(RunError, match="cold_start_ms.model_load"):
        validate_result(good_result(version=2, cold_start_ms={"model_load": float("nan")}), run_id="r1")


def test_peak_rss_is_read_in_mib():
    from edgekit.runtime.facts import peak_rss_mb

    peak = peak_rss_mb()
    assert peak is not None and 10 < peak < 64_000  # this test process: at least the interpreter and numpy
