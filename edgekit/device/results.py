"""Check a result that came back from a device before anything on the host uses it.

A device is not trusted: its JSON may be malformed, huge, or hostile. `validate_result` rebuilds a
clean result from the fields the contract defines (docs/contracts.md), with types and sizes checked,
and drops everything else. The schema name, version, statuses and stage names are the agent's own
(`edgekit.runtime`), so host and device cannot drift apart. `failed_result` is the result of a run
that produced none (a transport failure), stored and reported like any other.
"""

from __future__ import annotations

import math
from typing import Any

from edgekit.errors import RunError
from edgekit.runtime.harness import GPU_KEY, SAMPLE_KEYS
from edgekit.runtime.plan import POSTPROCESS_KINDS
from edgekit.runtime.result import RESULT_SCHEMA as SCHEMA
from edgekit.runtime.result import RESULT_STATUSES as STATUSES
from edgekit.runtime.result import RESULT_VERSION as VERSION
from edgekit.runtime.stats import SUMMARY_KEYS as _AGENT_SUMMARY_KEYS

STAGES = SAMPLE_KEYS  # capture, preprocess, inference, postprocess, end_to_end
# series only some engines report: the engine's own GPU time per inference (TensorRT's CUDA events)
OPTIONAL_STAGES = (GPU_KEY,)
SUMMARY_KEYS = tuple(key for key in _AGENT_SUMMARY_KEYS if key != "count")  # statistics; count is checked apart
MAX_SAMPLES = 1_000_000
MAX_TEXT = 4000
MAX_ERRORS = 100
MAX_FACTS = 64
MAX_LAYERS = 10_000
MAX_DETECTIONS = 200_000  # boxes or polygons in one result's task_output: the agent's own cap
MAX_CLASSES = 65_536  # classes in a segmentation histogram or per-class IoU
# the per-frame entry of each task that keeps outputs (docs/contracts.md)
TASK_OUTPUT_KEYS = {"detect": "boxes", "text-detect": "polygons", "segment": "pixels"}
# the top-level fields validate_result reads; a reader may drop every other field unparsed
RESULT_FIELDS = (
    *("schema", "version", "run_id", "artifact_id", "status", "started_at", "finished_at", "mode", "frames"),
    *("latency_ms", "samples_ms", "throughput_fps", "wall_s", "accuracy", "task_output", "power", "device"),
    *("engine", "errors", "warnings", "layer_times_ms", "memory", "cold_start_ms"),
)


def _number(value: Any, where: str, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RunError(f"device result field {where} is {value!r}, not a finite number")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RunError(f"device result field {where} is {value!r}, not a count")
    return value


def _text(value: Any, where: str, *, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise RunError(f"device result field {where} is not a string")
    return value[:limit]


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise RunError(f"device result field {where} is not an object")
    return value


def _summary(value: Any, where: str) -> dict[str, Any]:
    value = _mapping(value, where)
    clean: dict[str, Any] = {key: _number(value.get(key), f"{where}.{key}") for key in SUMMARY_KEYS}
    clean["count"] = _count(value.get("count", 0), f"{where}.count")
    return clean


def _samples(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or len(value) > MAX_SAMPLES:
        raise RunError(f"device result field {where} is not a list of at most {MAX_SAMPLES} samples")
    return [_number(v, where, allow_none=False) for v in value]  # type: ignore[misc]


def _layer_times(value: Any) -> dict[str, float]:
    """Per-layer mean milliseconds (TensorRT's layer profile): names to finite numbers."""
    value = _mapping(value, "layer_times_ms")
    if len(value) > MAX_LAYERS:
        raise RunError(f"device result field layer_times_ms has more than {MAX_LAYERS} layers")
    return {
        _text(k, "layer_times_ms", limit=256): _number(v, f"layer_times_ms.{str(k)[:64]}", allow_none=False)
        for k, v in value.items()
    }  # type: ignore[misc]


def _facts(value: Any, where: str, *, text_limit: int = 512) -> dict[str, Any]:
    """Flat facts (device, engine, an error): short keys, scalar or short-list values, strings up to
    `text_limit` characters."""
    value = _mapping(value, where)
    clean: dict[str, Any] = {}
    for key, item in list(value.items())[:MAX_FACTS]:
        key = _text(key, where, limit=64)
        if isinstance(item, (bool, int)) or item is None:
            clean[key] = item
        elif isinstance(item, float):
            clean[key] = _number(item, f"{where}.{key}")
        elif isinstance(item, str):
            clean[key] = item[:text_limit]
        elif isinstance(item, list):
            clean[key] = [str(v)[:128] for v in item[:32]]
        elif isinstance(item, dict):
            clean[key] = {str(k)[:64]: str(v)[:256] for k, v in list(item.items())[:MAX_FACTS]}
    return clean


def _class_index(key: Any, where: str) -> str:
    """A class index as JSON writes an object key: decimal digits."""
    if not isinstance(key, str) or not key.isdigit() or len(key) > 6:
        raise RunError(f"device result field {where} has key {str(key)[:32]!r}, not a class index")
    return str(int(key))


def _per_class(value: Any, where: str, read: Any) -> dict[str, Any]:
    value = _mapping(value, where)
    if len(value) > MAX_CLASSES:
        raise RunError(f"device result field {where} has more than {MAX_CLASSES} classes")
    return {_class_index(k, where): read(v, f"{where}.{str(k)[:16]}") for k, v in value.items()}


def _accuracy(value: Any) -> dict[str, Any]:
    """Accuracy figures: a kind, counts and finite numbers; for raw outputs, one entry per output; for
    segmentation the IoU of each class."""
    value = _mapping(value, "accuracy")
    clean: dict[str, Any] = {}
    if "kind" in value:
        clean["kind"] = _text(value["kind"], "accuracy.kind", limit=32)
    for key, item in list(value.items())[:MAX_FACTS]:
        key = _text(key, "accuracy", limit=64)
        if key == "outputs":
            if not isinstance(item, list):
                raise RunError("device result field accuracy.outputs is not a list")
            clean["outputs"] = [_accuracy(entry) for entry in item[:MAX_FACTS]]
        elif key == "name":
            clean["name"] = _text(item, "accuracy.name", limit=256)
        elif key in ("count", "top_k", "detections"):
            clean[key] = _count(item, f"accuracy.{key}")
        elif key == "per_class_iou":
            clean[key] = _per_class(item, "accuracy.per_class_iou", _number)
        elif key != "kind":
            clean[key] = _number(item, f"accuracy.{key}")  # top1, sqnr_db, miou, pixel_accuracy, per_frame_mean
    return clean


def _list(value: Any, where: str, *, length: int | None = None, limit: int = MAX_SAMPLES) -> list:
    if not isinstance(value, list) or (length is not None and len(value) != length) or len(value) > limit:
        shape = f"of {length} items" if length is not None else f"of at most {limit} items"
        raise RunError(f"device result field {where} is not a list {shape}")
    return value


def _finite(value: Any, where: str) -> float:
    return _number(value, where, allow_none=False)  # type: ignore[return-value]


def _box(row: Any, where: str) -> list[Any]:
    """[x1, y1, x2, y2, score, class]: five finite numbers and a class index."""
    row = _list(row, where, length=6)
    return [_finite(v, where) for v in row[:5]] + [_count(row[5], f"{where} class")]


def _polygon(row: Any, where: str) -> list[Any]:
    """[[[x, y] x 4], score]."""
    points, score = _list(row, where, length=2)
    corners = _list(points, f"{where} points", length=4)
    return [[[_finite(v, f"{where} points") for v in _list(p, f"{where} points", length=2)] for p in corners]] + [
        _finite(score, f"{where} score")
    ]


def _frame_size(value: Any, where: str) -> list[int] | None:
    """[height, width] in pixels, or null when the agent did not know the frame's size."""
    if value is None:
        return None
    size = _list(value, where, length=2)
    if any(isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 1_000_000 for v in size):
        raise RunError(f"device result field {where} is {str(value)[:64]}, not [height, width] in pixels")
    return list(size)


class _TaskOutputReader:
    """Rebuilds task_output frame by frame, counting boxes and polygons against MAX_DETECTIONS."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.key = TASK_OUTPUT_KEYS[kind]
        self.detections = 0

    def frame(self, value: Any, where: str) -> dict[str, Any]:
        value = _mapping(value, where)
        if self.key not in value:
            raise RunError(f"device result field {where} has no {self.key!r}")
        return {
            "frame": _count(value.get("frame"), f"{where}.frame"),
            "size": _frame_size(value.get("size"), f"{where}.size"),
            self.key: self.outputs(value[self.key], f"{where}.{self.key}"),
        }

    def outputs(self, value: Any, where: str) -> Any:
        if self.key == "pixels":
            return _per_class(value, where, _count)
        rows = _list(value, where, limit=MAX_DETECTIONS)
        self.detections += len(rows)
        if self.detections > MAX_DETECTIONS:
            raise RunError(f"device result field task_output holds more than {MAX_DETECTIONS} detections")
        read = _box if self.key == "boxes" else _polygon
        return [read(row, f"{where}[{index}]") for index, row in enumerate(rows)]


def _task_output(value: Any) -> dict[str, Any]:
    """Per-frame detections, text polygons or class histograms, in frame pixels: every number checked,
    at most MAX_DETECTIONS boxes or polygons, the field named when anything is off."""
    value = _mapping(value, "task_output")
    kind = value.get("kind")
    if not isinstance(kind, str) or kind not in TASK_OUTPUT_KEYS:
        known = ", ".join(k for k in POSTPROCESS_KINDS if k in TASK_OUTPUT_KEYS)
        raise RunError(f"device result field task_output.kind is {str(kind)[:32]!r}, not one of {known}")
    reader = _TaskOutputReader(kind)
    frames = _list(value.get("frames"), "task_output.frames")
    clean = [reader.frame(entry, f"task_output.frames[{index}]") for index, entry in enumerate(frames)]
    truncated = value.get("truncated", False)
    if not isinstance(truncated, bool):
        raise RunError("device result field task_output.truncated is not true or false")
    count = _count(value.get("count", reader.detections if kind != "segment" else len(clean)), "task_output.count")
    return {"kind": kind, "frames": clean, "count": count, "truncated": truncated}


def _power(value: Any) -> dict[str, Any]:
    """Power figures: probe and rail names, finite numbers, and per-rail averages in watts."""
    value = _mapping(value, "power")
    clean: dict[str, Any] = {}
    for key, item in list(value.items())[:MAX_FACTS]:
        key = _text(key, "power", limit=64)
        if key in ("probe", "rail"):
            clean[key] = _text(item, f"power.{key}", limit=128)
        elif key == "rails_avg_w":
            rails = _mapping(item, "power.rails_avg_w")
            clean[key] = {
                _text(k, "power.rails_avg_w", limit=64): _number(v, f"power.rails_avg_w.{k}")
                for k, v in list(rails.items())[:MAX_FACTS]
            }
        elif key == "samples":
            clean[key] = _count(item, "power.samples")
        else:
            clean[key] = _number(item, f"power.{key}")
    return clean


def _memory(value: Any) -> dict[str, Any] | None:
    """Peak RSS of the agent process in MiB and how it was measured (result version 2); None when not measured."""
    value = _mapping(value, "memory")
    peak = _number(value.get("peak_rss_mb"), "memory.peak_rss_mb")
    if peak is None:
        return None
    return {"peak_rss_mb": peak, "measured_by": _text(value.get("measured_by", ""), "memory.measured_by", limit=64)}


def _cold_start(value: Any) -> dict[str, Any]:
    """The engine's model load and the first inference in ms (result version 2); each null when not measured."""
    value = _mapping(value, "cold_start_ms")
    return {key: _number(value.get(key), f"cold_start_ms.{key}") for key in ("model_load", "first_inference")}


def validate_result(data: Any, *, run_id: str) -> dict[str, Any]:
    """A clean copy of a device's result, or RunError saying which field is wrong."""
    data = _mapping(data, "(top level)")
    if data.get("schema") != SCHEMA:
        raise RunError(f"device answered with schema {data.get('schema')!r}, expected {SCHEMA!r}")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise RunError(f"device result version {data.get('version')!r} is not one this edgekit reads ({VERSION})")
    if data.get("run_id") != run_id:
        raise RunError(f"device result is for run {data.get('run_id')!r}, not {run_id!r}")
    status = data.get("status")
    if status not in STATUSES:
        raise RunError(f"device result status {status!r} is not one of {STATUSES}")
    latency = _mapping(data.get("latency_ms", {}), "latency_ms")
    samples = _mapping(data.get("samples_ms", {}) or {}, "samples_ms")
    frames = _mapping(data.get("frames", {}), "frames")
    errors = data.get("errors") or []
    if not isinstance(errors, list):
        raise RunError("device result field errors is not a list")
    warnings = data.get("warnings") or []
    if not isinstance(warnings, list):
        raise RunError("device result field warnings is not a list")
    clean: dict[str, Any] = {
        "schema": SCHEMA,
        "version": data["version"],
        "run_id": run_id,
        "artifact_id": _text(data.get("artifact_id", ""), "artifact_id", limit=64),
        "status": status,
        "started_at": _text(data.get("started_at", ""), "started_at", limit=64),
        "finished_at": _text(data.get("finished_at", ""), "finished_at", limit=64),
        "mode": _text(data.get("mode", ""), "mode", limit=32),
        "frames": {key: _count(frames.get(key, 0), f"frames.{key}") for key in ("timed", "warmup", "dropped")},
        "latency_ms": {s: _summary(latency[s], f"latency_ms.{s}") for s in STAGES + OPTIONAL_STAGES if s in latency},
        "samples_ms": {s: _samples(samples[s], f"samples_ms.{s}") for s in STAGES + OPTIONAL_STAGES if s in samples},
        "throughput_fps": _number(data.get("throughput_fps"), "throughput_fps"),
        "wall_s": _number(data.get("wall_s"), "wall_s"),
        "accuracy": _accuracy(data["accuracy"]) if data.get("accuracy") else None,
        "task_output": _task_output(data["task_output"]) if data.get("task_output") else None,
        "power": _power(data["power"]) if data.get("power") else None,
        # version 1 results have neither: null, which every report shows as not measured
        "memory": _memory(data["memory"]) if data.get("memory") else None,
        "cold_start_ms": _cold_start(data["cold_start_ms"]) if data.get("cold_start_ms") else None,
        "device": _facts(data.get("device", {}), "device"),
        "engine": _facts(data.get("engine", {}), "engine"),
        "errors": [_facts(e, "errors[]", text_limit=MAX_TEXT) for e in errors[:MAX_ERRORS]],  # whole advice kept
        # what the agent noticed but ran through (a delegate that fell back to the CPU, a charging battery)
        "warnings": [_text(w, "warnings[]") for w in warnings[:MAX_ERRORS]],
    }
    if data.get("layer_times_ms"):
        clean["layer_times_ms"] = _layer_times(data["layer_times_ms"])
    return clean


HOST_STATUSES = (*STATUSES, "cancelled")  # cancelled: the host stopped the run before its agent started


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_text(returncode: int | None) -> str:
    """How a process ended, in words: 'exited with code 1', 'was killed by SIGKILL' (a negative code)."""
    if returncode is None:
        return "did not exit"
    if returncode < 0:
        return f"was killed by {signal_name(-returncode)}"
    return f"exited with code {returncode}"


def interrupted_result(
    plan: dict[str, Any], result: dict[str, Any] | None, signum: int, *, started: bool = True
) -> dict[str, Any]:
    """`result` (what the stopped agent wrote, or None) marked as stopped by `signum` on the host: `partial`
    (or `error`) with the interruption as its first error; `cancelled` when the agent never started."""
    name = signal_name(signum)
    if not started:
        cancelled = failed_result(plan, f"interrupted by {name} on the host before the agent started")
        cancelled["status"] = "cancelled"
        return cancelled
    if result is None:
        return failed_result(plan, f"interrupted by {name} on the host; the agent was stopped before it wrote a result")
    first = {"stage": "transport", "message": f"interrupted by {name} on the host; the agent was stopped"}
    result = dict(result, errors=[first, *result.get("errors", [])])
    if result["status"] == "ok":
        result["status"] = "partial"
    return result


def failed_result(plan: dict[str, Any], message: str) -> dict[str, Any]:
    """A result for a run that produced none, so the failure is stored and reported like any run."""
    return validate_result(
        {
            "schema": SCHEMA,
            "version": VERSION,
            "run_id": plan["run_id"],
            "status": "error",
            "mode": plan.get("mode", ""),
            "errors": [{"stage": "transport", "message": message}],
        },
        run_id=plan["run_id"],
    )
