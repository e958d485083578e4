"""The result document (docs/contracts.md): assembled from a Measurement and the run's facts, JSON-safe."""

import datetime
import json
import math
import os
from typing import Any, Dict, List, Optional

from .manifest import artifact_id
from .stats import summarize

RESULT_SCHEMA = "edgekit.result"
RESULT_VERSION = 2  # 2: memory and cold_start_ms (version 1 results have neither; hosts read both)
RESULT_STATUSES = ("ok", "partial", "error")  # partial: frames were timed but something went wrong; error: none
_SAMPLE_DECIMALS = 4  # 0.1 microsecond: far below perf_counter jitter, and keeps the file small


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_safe(value: Any) -> Any:
    """Plain JSON types only: numpy scalars/arrays become Python ones, NaN and +-inf become None."""
    if isinstance(value, dict):
        return dict((str(k), json_safe(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy scalar or array
        return json_safe(value.tolist())
    return str(value)


def empty_result(run_id: Optional[str] = None, started_at: Optional[str] = None) -> Dict[str, Any]:
    """A result with nothing measured: the shape every result has, even one for a plan that failed to load.

    Text fields that are not known yet are "" and fact blocks are {} (not null), so a host reading the
    result can rely on their types whatever went wrong.
    """
    stages = ("capture", "preprocess", "inference", "postprocess", "end_to_end")
    return {
        "schema": RESULT_SCHEMA,
        "version": RESULT_VERSION,
        "run_id": run_id,
        "artifact_id": "",
        "status": "error",
        "started_at": started_at or utc_now(),
        "finished_at": "",
        "mode": "",
        "source": None,
        "frames": {"timed": 0, "warmup": 0, "dropped": 0},
        "latency_ms": dict((s, summarize([])) for s in stages),
        "samples_ms": None,
        "throughput_fps": None,
        "wall_s": None,
        "accuracy": None,
        # per-frame detections, polygons or class histograms in frame pixels (docs/contracts.md), when kept
        "task_output": None,
        "power": None,
        # the agent process's peak RSS and what the first use of the model cost; null when not measured
        "memory": None,
        "cold_start_ms": None,
        "device": {},
        "engine": {},
        "errors": [],
        "warnings": [],
    }


def add_error(result: Dict[str, Any], stage: str, message: str, frame: Optional[int] = None) -> None:
    result["errors"].append({"stage": stage, "frame": frame, "message": message})


def fill_measurement(result: Dict[str, Any], measurement: Any, keep_samples: bool = True) -> None:
    """Copy what the harness measured into the result."""
    samples: Dict[str, List[float]] = measurement.samples
    result["mode"] = measurement.mode
    result["frames"] = {"timed": measurement.timed, "warmup": measurement.warmup, "dropped": measurement.dropped}
    result["latency_ms"] = dict((stage, summarize(values)) for stage, values in samples.items())
    result["samples_ms"] = (
        dict((stage, [round(v, _SAMPLE_DECIMALS) for v in values]) for stage, values in samples.items())
        if keep_samples
        else None
    )
    result["throughput_fps"] = measurement.throughput_fps
    result["wall_s"] = measurement.wall_s if measurement.timed else None
    result["errors"].extend(measurement.errors)
    result["warnings"].extend(measurement.warnings)
    first = measurement.first_inference_ms
    if first is None and samples.get("inference"):
        first = samples["inference"][0]  # no warm-up: the first timed frame was the model's first inference
    set_cold_start(result, first_inference_ms=first)


def set_cold_start(
    result: Dict[str, Any], model_load_ms: Optional[float] = None, first_inference_ms: Optional[float] = None
) -> None:
    """Record the engine's load time and the model's first inference (ms); a value not given stays as it was."""
    cold = result.get("cold_start_ms") or {"model_load": None, "first_inference": None}
    if model_load_ms is not None:
        cold["model_load"] = round(model_load_ms, 3)
    if first_inference_ms is not None:
        cold["first_inference"] = round(first_inference_ms, 3)
    result["cold_start_ms"] = cold


def set_memory(result: Dict[str, Any], peak_rss_mb: Optional[float]) -> None:
    """The agent process's peak RSS in MiB, measured by getrusage; None leaves the block null (not measured)."""
    if peak_rss_mb is not None:
        result["memory"] = {"peak_rss_mb": peak_rss_mb, "measured_by": "getrusage"}


def set_manifest(result: Dict[str, Any], manifest_data: Dict[str, Any]) -> None:
    result["artifact_id"] = artifact_id(manifest_data)


def finish(result: Dict[str, Any], timed: int) -> Dict[str, Any]:
    """Set status and finish time; returns the JSON-safe document."""
    if timed == 0:
        result["status"] = "error"
        if not result["errors"]:
            add_error(result, "run", "nothing was timed")
    else:
        result["status"] = "partial" if result["errors"] else "ok"
    result["finished_at"] = utc_now()
    return json_safe(result)


def write_result(result: Dict[str, Any], path: str) -> None:
    """Write atomically (temp file + rename), so the host never fetches half a result."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory)
    temp = path + ".tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(json_safe(result), handle, indent=1, sort_keys=False, allow_nan=False)
        handle.write("\n")
    os.replace(temp, path)
