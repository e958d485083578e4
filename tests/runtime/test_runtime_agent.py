"""The agent end to end through `agent.main`: real plans, artifacts, videos and folders, and every failure
still writes a result file."""

import hashlib
import json
import os
import signal
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
from runtime_testkit import (
    CLASS_NAMES,
    classifier_model,
    make_artifact,
    make_plan,
    preprocess_dict,
    run_agent,
    two_output_model,
    write_image_folder,
    write_video,
)

from edgekit.runtime import agent
from edgekit.runtime.agent import main, run_plan, summary_line
from edgekit.runtime.plan import Plan
from edgekit.runtime.preprocess import PreprocessSpec, preprocess
from edgekit.runtime.sources import open_source

RESULT_KEYS = {
    "schema",
    "version",
    "run_id",
    "artifact_id",
    "status",
    "started_at",
    "finished_at",
    "mode",
    "source",
    "frames",
    "latency_ms",
    "samples_ms",
    "throughput_fps",
    "wall_s",
    "accuracy",
    "task_output",
    "power",
    "memory",
    "cold_start_ms",
    "device",
    "engine",
    "errors",
    "warnings",
}
STAGES = ("capture", "preprocess", "inference", "postprocess", "end_to_end")


def check_ok(code, result, frames):
    assert set(result) == RESULT_KEYS
    assert result["errors"] == [], result["errors"]
    assert code == 0 and result["status"] == "ok"
    assert result["schema"] == "edgekit.result" and result["version"] == 2 and result["run_id"] == "test-run"
    assert result["frames"]["timed"] == frames
    for stage in STAGES:
        assert result["latency_ms"][stage]["count"] == frames
        assert result["latency_ms"][stage]["p50"] > 0
        if result["samples_ms"] is not None:
            assert len(result["samples_ms"][stage]) == frames
    assert result["throughput_fps"] > 0 and result["wall_s"] > 0
    assert result["engine"]["name"] == "onnxruntime" and result["engine"]["threads"] == 1
    assert result["device"]["cpu_count"] >= 1 and result["device"]["python"]
    assert result["started_at"].endswith("Z") and result["finished_at"].endswith("Z")
    # measured by the agent itself: the process's peak RSS, the engine's load, the model's first inference
    assert result["memory"]["measured_by"] == "getrusage" and 10 < result["memory"]["peak_rss_mb"] < 64_000
    assert result["cold_start_ms"]["model_load"] > 0 and result["cold_start_ms"]["first_inference"] > 0


def check_error(code, result, stage, *fragments):
    assert code == 1 and result["status"] == "error", result
    assert result["frames"]["timed"] == 0
    assert (result["cold_start_ms"] or {}).get("first_inference") is None  # nothing ran: nothing claimed
    error = result["errors"][0]
    assert error["stage"] == stage, error
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_video_with_labels(tmp_path, artifact, colour_video, mode):
    path, labels = colour_video
    code, result = run_agent(
        tmp_path, make_plan(artifact, {"kind": "video", "uri": str(path)}, labels=labels, mode=mode)
    )
    check_ok(code, result, 12)
    assert result["mode"] == mode and result["frames"] == {"timed": 12, "warmup": 2, "dropped": 0}
    assert result["accuracy"] == {"kind": "classification", "count": 12, "top1": 1.0, "top2": 1.0, "top_k": 2}
    manifest = json.loads((artifact / "manifest.json").read_text())
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert result["artifact_id"] == hashlib.sha256(canonical).hexdigest()
    assert result["source"] == {"kind": "video", "uri": str(path), "loop": False}


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_image_folder_labels_itself(tmp_path, artifact, mode):
    root = write_image_folder(tmp_path / "imgs", by_class={"red": 2, "green": 2, "blue": 1, "3": 2})
    plan = make_plan(artifact, {"kind": "images", "uri": str(root)}, mode=mode, queue_size=1)
    code, result = run_agent(tmp_path, plan)
    check_ok(code, result, 7)
    assert result["accuracy"]["count"] == 7 and result["accuracy"]["top1"] == 1.0


def test_loop_frames_and_no_samples(tmp_path, artifact, colour_video):
    path, labels = colour_video
    plan = make_plan(
        artifact, {"kind": "video", "uri": str(path), "loop": True}, labels=labels, frames=30, keep_samples=False
    )
    code, result = run_agent(tmp_path, plan)
    check_ok(code, result, 30)
    assert result["samples_ms"] is None and result["accuracy"]["count"] == 30


def test_engine_threads_default_and_power_probe_warning(tmp_path, artifact, colour_video):
    path, _ = colour_video
    plan = make_plan(
        artifact,
        {"kind": "video", "uri": str(path)},
        engine={"name": None, "threads": None, "options": {}},  # the manifest's engine, ORT's threads
        power={"probe": "jetson-ina3221"},
    )
    code, result = run_agent(tmp_path, plan)
    assert code == 0 and result["status"] == "ok" and result["accuracy"] is None
    assert result["engine"]["name"] == "onnxruntime" and result["engine"]["threads"] is None
    assert result["power"] is None and "power probe jetson-ina3221 found no sensor under /" in result["warnings"][0]


def test_raw_outputs_against_reference(tmp_path):
    artifact = make_artifact(
        tmp_path / "raw", model=two_output_model(), class_names=None, outputs=[{"name": "features"}, {"name": "relu"}]
    )
    root = write_image_folder(tmp_path / "imgs", flat=["red", "green", "blue", "black"])
    # the reference: the same preprocessing and model, run directly with ONNX Runtime
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    spec = PreprocessSpec.from_dict(preprocess_dict())
    rows = [session.run(None, {"input": preprocess(frame, spec)}) for frame, _ in open_source("images", str(root))]
    np.savez(
        tmp_path / "ref.npz",
        output_0=np.concatenate([r[0] for r in rows]),
        output_1=np.concatenate([r[1] for r in rows]),
    )
    plan = make_plan(
        artifact, {"kind": "images", "uri": str(root)}, postprocess={"kind": "raw"}, reference=str(tmp_path / "ref.npz")
    )
    code, result = run_agent(tmp_path, plan)
    check_ok(code, result, 4)
    accuracy = result["accuracy"]
    assert accuracy["kind"] == "raw" and accuracy["count"] == 4
    assert accuracy["sqnr_db"] == 999.0 and accuracy["cosine"] == 1.0 and accuracy["max_abs_error"] == 0.0
    assert [o["name"] for o in accuracy["outputs"]] == ["features", "relu"]
    assert "SQNR 999.0 dB" in summary_line(result)


def test_corrupt_model(tmp_path):
    artifact = make_artifact(tmp_path / "a", model_bytes=b"\x08\x07garbage that is not an onnx graph")
    root = write_image_folder(tmp_path / "imgs", flat=["red"])
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "images", "uri": str(root)}))
    check_error(code, result, "engine", "cannot load model file", "model.onnx", "re-push")
    assert len(result["artifact_id"]) == 64 and result["device"]["hostname"]
    assert result["engine"] == {"name": "onnxruntime"}  # which engine failed, though it never loaded


def test_artifact_hash_mismatch(tmp_path, artifact):
    (artifact / "model.onnx").write_bytes(classifier_model(classes=5).SerializeToString())
    root = write_image_folder(tmp_path / "imgs", flat=["red"])
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "images", "uri": str(root)}))
    check_error(code, result, "manifest", "has sha256", "re-push the artifact")


def test_unreadable_and_missing_video(tmp_path, artifact):
    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(b"not a video" * 50)
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "video", "uri": str(garbage)}))
    check_error(code, result, "source", "clip.mp4", "mp4v", "MJPG", "H.264")
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "video", "uri": str(tmp_path / "none.mp4")}))
    check_error(code, result, "source", "none.mp4 does not exist")


def test_empty_image_folder(tmp_path, artifact):
    (tmp_path / "empty").mkdir()
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "images", "uri": str(tmp_path / "empty")}))
    check_error(code, result, "source", "holds no images")


def test_labels_that_do_not_fit_the_model(tmp_path, artifact, colour_video):
    path, labels = colour_video
    bad = list(labels)
    bad[5] = 12
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "video", "uri": str(path)}, labels=bad))
    assert code == 1 and result["status"] == "partial" and result["frames"]["timed"] == 5
    assert result["errors"] == [
        {
            "stage": "postprocess",
            "frame": 5,
            "message": "label 12 but the model has 4 classes: check --labels / class_names",
        }
    ]
    assert result["accuracy"]["count"] == 5


def test_fewer_labels_than_frames(tmp_path, artifact, colour_video):
    path, labels = colour_video
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "video", "uri": str(path)}, labels=labels[:8]))
    assert result["status"] == "partial" and result["frames"]["timed"] == 8
    assert (
        "more frames than the 8 labels" in result["errors"][0]["message"] and result["errors"][0]["stage"] == "capture"
    )


def test_engine_not_installed(tmp_path, colour_video):
    import importlib.util

    if importlib.util.find_spec("tflite_runtime") or importlib.util.find_spec("ai_edge_litert"):
        pytest.skip("a TFLite runtime is installed here")
    artifact = make_artifact(tmp_path / "tfl", engine="tflite", target="android-tflite")
    path, _ = colour_video
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "video", "uri": str(path)}, engine=None))
    check_error(code, result, "engine", "'tflite'", "tflite-runtime or ai-edge-litert", "install", "build the artifact")


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_corrupt_fifth_image_keeps_first_four(tmp_path, artifact, mode):
    root = write_image_folder(tmp_path / "imgs", flat=[CLASS_NAMES[i % 4] for i in range(8)])
    (root / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "images", "uri": str(root)}, mode=mode))
    assert code == 1 and result["status"] == "partial"
    assert result["frames"]["timed"] == 4 and result["latency_ms"]["inference"]["count"] == 4
    error = result["errors"][0]
    assert error["stage"] == "capture" and error["frame"] == 4 and "004.png" in error["message"]
    assert "partial" in summary_line(result)


def test_live_camera_that_does_not_exist(tmp_path, artifact):
    start = time.perf_counter()
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "camera", "uri": 97}, frames=10))
    check_error(code, result, "source", "cannot open camera 97")
    assert time.perf_counter() - start < 10
    assert result["source"]["kind"] == "camera"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{broken json", "not valid JSON"),
        (
            json.dumps({"schema": "edgekit.plan", "version": 1, "run_id": "r9", "artifact_dir": "/x", "sorce": {}}),
            "'sorce'",
        ),
        (json.dumps({"schema": "edgekit.plan", "version": 7, "run_id": "r9"}), "version 7 is newer"),
    ],
)
def test_invalid_plan_still_writes_a_result(tmp_path, text, fragment):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(text)
    result_path = tmp_path / "out" / "nested" / "result.json"  # folders are created
    code = main(["--plan", str(plan_path), "--result", str(result_path)])
    result = json.loads(result_path.read_text())
    assert code == 1 and result["status"] == "error" and result["errors"][0]["stage"] == "plan"
    assert fragment in result["errors"][0]["message"]
    assert result["schema"] == "edgekit.result" and result["device"]["hostname"]
    if "r9" in text:
        assert result["run_id"] == "r9"


def test_missing_plan_file_and_unwritable_result(tmp_path, capsys):
    code = main(["--plan", str(tmp_path / "none.json"), "--result", str(tmp_path / "r.json")])
    assert (
        code == 1 and "cannot read plan file" in json.loads((tmp_path / "r.json").read_text())["errors"][0]["message"]
    )
    (tmp_path / "file").write_text("x")
    code = main(["--plan", str(tmp_path / "none.json"), "--result", str(tmp_path / "file" / "r.json")])
    assert code == 1 and "cannot write result" in capsys.readouterr().err


def test_run_plan_api_with_missing_artifact(tmp_path):
    plan = Plan.from_dict(make_plan(tmp_path / "nowhere", {"kind": "video", "uri": "/x.mp4"}))
    result = run_plan(plan)
    assert result["status"] == "error" and result["errors"][0]["stage"] == "manifest"
    assert "does not exist" in result["errors"][0]["message"] and result["artifact_id"] == ""
    assert result["engine"] == {} and result["mode"] == "sequential"


def test_manifest_input_name_must_match_model(tmp_path, colour_video):
    artifact = make_artifact(tmp_path / "a", inputs=[{"name": "image"}])
    path, _ = colour_video
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "video", "uri": str(path)}))
    check_error(code, result, "engine", "declares input 'image'", "model's input is 'input'")


def test_rtsp_credentials_never_reach_the_result(tmp_path, artifact):
    plan = make_plan(artifact, {"kind": "rtsp", "uri": "rtsp://user:pw123@127.0.0.1:1/s"}, frames=3)
    code, result = run_agent(tmp_path, plan)
    assert result["status"] == "error" and "pw123" not in json.dumps(result)


def test_video_written_as_mjpg_runs(tmp_path, artifact):
    path = write_video(tmp_path / "clip.avi", ["blue", "green"], fourcc="MJPG")
    code, result = run_agent(
        tmp_path, make_plan(artifact, {"kind": "video", "uri": str(path)}, labels=[2, 1], warmup=0)
    )
    check_ok(code, result, 2)
    assert result["accuracy"]["top1"] == 1.0 and result["frames"]["warmup"] == 0


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_sigterm_keeps_the_frames_measured(tmp_path, artifact, mode):
    root = write_image_folder(tmp_path / "imgs", flat=["red", "green"])
    plan = make_plan(artifact, {"kind": "images", "uri": str(root), "loop": True}, frames=10_000_000, mode=mode)
    timed_frames = []

    def send_sigterm_once_timing():
        # the run is timing frames once the engine has run warm-up and the frame count grows
        deadline = time.time() + 30
        while time.time() < deadline and not _agent_is_timing():
            time.sleep(0.01)
        time.sleep(0.2)
        timed_frames.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=send_sigterm_once_timing)
    killer.start()
    code, result = run_agent(tmp_path, plan)
    killer.join()
    assert timed_frames and code == 1 and result["status"] == "partial" and result["frames"]["timed"] > 10
    assert result["errors"] == [
        {"stage": "run", "frame": None, "message": "interrupted; the frames measured so far are kept"}
    ]
    assert signal.getsignal(signal.SIGTERM) is not agent._raise_interrupt  # the handler is restored


def _agent_is_timing():
    import gc

    from edgekit.runtime.harness import Measurement

    return any(isinstance(o, Measurement) and o.timed > 0 for o in gc.get_objects())


def test_every_kind_of_result_passes_the_host_validator(tmp_path, artifact, colour_video):
    """The host rebuilds each device result field by field (edgekit.device.results); ok, partial and every
    kind of error result must survive it with its message intact."""
    from edgekit.device.results import validate_result

    path, labels = colour_video
    bad_labels = list(labels)
    bad_labels[3] = 40
    plans = [
        make_plan(artifact, {"kind": "video", "uri": str(path)}, labels=labels),
        make_plan(artifact, {"kind": "video", "uri": str(path)}, labels=bad_labels, mode="pipelined"),
        make_plan(tmp_path / "missing", {"kind": "video", "uri": str(path)}),
        make_plan(artifact, {"kind": "video", "uri": str(tmp_path / "none.mp4")}),
        make_plan(artifact, {"kind": "video", "uri": str(path)}, engine={"name": "tensorrt"}),
        make_plan(artifact, {"kind": "video", "uri": str(path)}, mode="turbo"),
    ]
    for index, plan in enumerate(plans):
        folder = tmp_path / str(index)
        folder.mkdir()
        _, result = run_agent(folder, plan)
        clean = validate_result(result, run_id="test-run")
        assert clean["status"] == result["status"]
        assert [e["message"] for e in clean["errors"]] == [e["message"] for e in result["errors"]]
