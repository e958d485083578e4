"""A results store laid out like a team's: several models on several devices, both modes, a run with power,
an old (version 1) result without memory figures, and runs that failed. The figures are made up but shaped
like real ones; the device names and errors include markup and control characters, as devices send."""

from __future__ import annotations

from pathlib import Path

from edgekit.device.results import failed_result, validate_result
from edgekit.store import ResultsStore

HOSTILE_DEVICE = "<b>lab</b> [red]jetson[/] \x1b[31m"


def _stage(p50: float, count: int) -> dict:
    return {"mean": p50, "p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.6, "std": p50 / 10, "min": p50 * 0.9,
            "max": p50 * 2, "count": count}  # fmt: skip


def make_result(run_id: str, second: int, stages: tuple[float, float, float, float], **extra: object) -> dict:
    """A version 2 result: per-stage p50s (capture, preprocess, inference, postprocess) and whatever `extra`
    sets (mode, accuracy, power, memory, cold_start_ms, version)."""
    capture, pre, infer, post = stages
    total = sum(stages)
    mode = extra.pop("mode", "sequential")
    e2e = total * (2.4 if mode == "pipelined" else 1.0)  # pipelined end-to-end waits in queues
    frames = 300
    result = {
        "schema": "edgekit.result",
        "version": 2,
        "run_id": run_id,
        "artifact_id": "ab" * 32,
        "status": "ok",
        "started_at": f"2026-11-27T12:00:{second:02d}Z",
        "mode": mode,
        "frames": {"timed": frames, "warmup": 10, "dropped": 0},
        "latency_ms": {
            "capture": _stage(capture, frames),
            "preprocess": _stage(pre, frames),
            "inference": _stage(infer, frames),
            "postprocess": _stage(post, frames),
            "end_to_end": _stage(e2e, frames),
        },
        "samples_ms": {
            "inference": [infer * (1 + (i % 7) / 20) for i in range(frames)],
            "end_to_end": [e2e * (1 + (i % 9) / 15) for i in range(frames)],
        },
        "throughput_fps": 1000 / (infer if mode == "pipelined" else total),
        "wall_s": frames * total / 1000,
        "memory": {"peak_rss_mb": 180.0 + infer * 3, "measured_by": "getrusage"},
        "cold_start_ms": {"model_load": 40 + infer * 9, "first_inference": infer * 4},
        "device": {"cpu": "ARMv8 Processor rev 1 (v8l)", "python": "3.8.10"},
        "engine": {"name": "onnxruntime"},
        "errors": [],
        "warnings": [],
    }
    accuracy = extra.pop("accuracy", None)  # the host adds label scores (mAP) after validating
    result.update(extra)
    clean = validate_result(result, run_id=run_id)
    clean["accuracy"] = accuracy
    return clean


def _manifest(name: str, target: str, precision: str, task: str) -> dict:
    return {"model_name": name, "target": target, "precision": precision, "task": {"task": task}}


def fill_team_store(path: Path) -> ResultsStore:
    """Nine runs: three models (a classifier, a detector, a segmenter), three devices, both modes, two failures."""
    store = ResultsStore(path)
    top1 = {"kind": "classification", "count": 300, "top1": 0.981}
    detect = {"kind": "detect", "count": 300, "detections": 912, "per_frame_mean": 3.04,
              "labels": {"map": 0.412, "map50": 0.633, "ar100": 0.51, "images": 300, "boxes": 930}}  # fmt: skip
    seg = {"kind": "segment", "count": 300, "miou": 0.712, "pixel_accuracy": 0.93}
    power = {"probe": "jetson-ina3221", "rail": "VDD_IN", "avg_w": 7.9, "energy_per_inference_mj": 41.3}
    mnv3, lraspp = "mobilenetv3_small", "lraspp_mobilenet"
    runs = [
        ("261127-120001-4f1c9a2be0d3c711", "x86-box-1", _manifest(mnv3, "x86-ort", "int8", "classify"),
         make_result("261127-120001-4f1c9a2be0d3c711", 1, (0.4, 0.9, 2.1, 0.05), accuracy=top1)),
        ("261127-120002-9ab04c1d22e7f310", "x86-box-1", _manifest(mnv3, "x86-ort", "fp32", "classify"),
         make_result("261127-120002-9ab04c1d22e7f310", 2, (0.4, 0.9, 4.6, 0.05), accuracy=dict(top1, top1=0.984),
                     mode="pipelined")),
        ("261127-120003-77e1a0c9d3b25a06", HOSTILE_DEVICE, _manifest(mnv3, "jetson-trt", "fp16", "classify"),
         make_result("261127-120003-77e1a0c9d3b25a06", 3, (1.1, 1.6, 1.3, 0.08), accuracy=top1, power=power)),
        ("261127-120004-c0ffee12aa34bb56", "pixel-8", _manifest("yolov8n", "android-tflite", "int8", "detect"),
         make_result("261127-120004-c0ffee12aa34bb56", 4, (3.2, 2.4, 18.5, 1.9), accuracy=detect)),
        ("261127-120005-1234abcd5678ef90", "x86-box-1", _manifest("yolov8n", "x86-ort", "fp32", "detect"),
         make_result("261127-120005-1234abcd5678ef90", 5, (2.1, 1.8, 31.0, 1.7), accuracy=detect, version=1,
                     memory=None, cold_start_ms=None)),
        ("261127-120006-5eed5eed5eed5eed", "pixel-8", _manifest(lraspp, "android-tflite", "fp16", "segment"),
         make_result("261127-120006-5eed5eed5eed5eed", 6, (3.0, 2.2, 44.0, 6.5), accuracy=seg)),
    ]  # fmt: skip
    for run_id, device, manifest, result in runs:
        store.add(device=device, plan={"run_id": run_id}, result=result, manifest=manifest, artifact_id="ab" * 32)
    failures = [
        ("261127-120007-dead0000beef0001", "pixel-8", _manifest("yolov8n", "android-tflite", "int8", "detect"),
         "source: clip.mp4 is a truncated MP4 (the mdat box runs past the end of the file): copy it again"),
        ("261127-120008-dead0000beef0002", HOSTILE_DEVICE, _manifest("yolov8n", "jetson-trt", "int8", "detect"),
         "engine: engine 'tensorrt' needs the Python package tensorrt, which is not installed on this device <b>"),
    ]  # fmt: skip
    for run_id, device, manifest, message in failures:
        result = failed_result({"run_id": run_id, "mode": "sequential"}, message)
        store.add(device=device, plan={"run_id": run_id}, result=result, manifest=manifest, artifact_id="cd" * 32)
    return store
