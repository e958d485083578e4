"""The device agent's entry point: plan in, result out (`--plan PATH --result PATH`), or `--facts`.

Loads the plan, the artifact manifest, the engine and the source, runs the harness, and ALWAYS writes
a result file, even when the plan is invalid or the engine is missing (status `error` with the reason).
Exit code 0 when the run is `ok`, 1 otherwise. `--facts` prints what the device has (one JSON object on
stdout) and exits 0. Python 3.8-compatible; imports nothing outside runtime/.
"""

import argparse
import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from .engines import EngineError, open_engine
from .facts import agent_facts, device_facts, peak_rss_mb
from .harness import Harness, Measurement, make_preprocessor
from .isa import saturation_warning
from .manifest import ManifestError, load_manifest
from .plan import POWER_AUTO, Plan, PlanError, load_plan
from .postprocess import PostprocessError, Postprocessor, make_postprocessor
from .power import PowerError, PowerSampler, available_probes, detect_probe, open_probe
from .progress import ProgressReporter, RunTracker
from .result import (
    add_error,
    empty_result,
    fill_measurement,
    finish,
    set_cold_start,
    set_manifest,
    set_memory,
    utc_now,
    write_result,
)
from .sources import SourceError, open_source, redact_uri

_EXPECTED = (PlanError, ManifestError, EngineError, SourceError, PostprocessError)


def _describe(exc: BaseException) -> str:
    # our errors carry their own advice; an unexpected one needs its type to be searchable
    return str(exc) if isinstance(exc, _EXPECTED) else "%s: %s" % (type(exc).__name__, exc)


def run_plan(plan: Plan, tracker: Optional[RunTracker] = None) -> Dict[str, Any]:
    """Run a validated plan and return the JSON-safe result document (never raises for run errors). A
    `tracker` is handed the harness, so a progress reporter can read its counters."""
    result = empty_result(plan.run_id, utc_now())
    result["mode"] = plan.mode
    source_info = plan.source.to_dict()
    if isinstance(source_info["uri"], str):
        source_info["uri"] = redact_uri(source_info["uri"])
    result["source"] = source_info
    _device_facts(result, plan.power_sysfs_root or "/")
    sampler = _open_power(plan, result["warnings"])
    stage = "manifest"
    measurement: Optional[Measurement] = None
    try:
        manifest = load_manifest(plan.artifact_dir)
        set_manifest(result, manifest.data)
        _isa_warning(manifest.data, result)
        stage = "engine"
        name = plan.engine_name or manifest.engine
        if not name:
            raise ManifestError("the manifest names no engine and the plan sets no engine.name: set one of them")
        options = _build_defaults(manifest, name)
        options.update(plan.engine_options)  # the plan's options override the artifact's build section
        if plan.engine_threads is not None:
            options["threads"] = plan.engine_threads
        result["engine"] = {"name": name}  # replaced by the full facts once it loads
        loading = time.perf_counter()
        with open_engine(name, manifest.model_path, options) as engine:
            set_cold_start(result, model_load_ms=(time.perf_counter() - loading) * 1e3)
            result["engine"] = engine.facts()
            result["warnings"].extend(str(w) for w in result["engine"].get("warnings") or [])
            _check_model_inputs(engine, manifest)
            stage = "postprocess"
            postprocessor = _open_postprocessor(plan, manifest, engine)
            stage = "source"
            with open_source(
                plan.source.kind, plan.source.uri, plan.source.loop, plan.labels, manifest.class_names
            ) as source:
                stage = "run"
                harness = Harness(
                    source,
                    engine,
                    make_preprocessor(manifest.preprocess),
                    postprocessor,
                    mode=plan.mode,
                    frames=plan.frames,
                    duration_s=plan.duration_s,
                    warmup=plan.warmup,
                    queue_size=plan.queue_size,
                    power=sampler,
                    power_idle_s=plan.power_idle_s,
                )
                if tracker is not None:
                    tracker.harness = harness
                measurement = harness.run()
            fill_measurement(result, measurement, plan.keep_samples)
            result["accuracy"] = postprocessor.summary()
            _task_output(result, postprocessor)
            _layer_times(result, engine)
    except Exception as exc:
        add_error(result, stage, _describe(exc))
    except KeyboardInterrupt:
        add_error(result, stage, "interrupted before the run started")
    if sampler is not None:
        _fill_power(result, sampler, measurement.timed if measurement is not None else 0)
    set_memory(result, peak_rss_mb())
    return finish(result, measurement.timed if measurement is not None else 0)


def _isa_warning(manifest: Dict[str, Any], result: Dict[str, Any]) -> None:
    """Say loudly when an artifact's 8-bit weights meet an x86 CPU whose int8 kernels can saturate."""
    quantization = manifest.get("quantization")
    scheme = quantization.get("scheme") if isinstance(quantization, dict) else None
    weights = scheme.get("weights") if isinstance(scheme, dict) else None
    warning = saturation_warning(weights, (result.get("device") or {}).get("isa"))
    if warning and manifest.get("engine") == "onnxruntime":
        result["warnings"].append(warning)


def _open_power(plan: Plan, warnings: List[str]) -> Optional[PowerSampler]:
    """The plan's power sampler, or None with a warning saying why power will not be measured."""
    name = plan.power_probe
    if name is None:
        return None
    if name == POWER_AUTO:
        name = detect_probe(plan.power_sysfs_root)
        if name is None:
            warnings.append(
                "power probe auto: no power sensor found under %s (this agent knows %s); power was not measured"
                % (plan.power_sysfs_root, ", ".join(available_probes()))
            )
            return None
    try:
        return PowerSampler(open_probe(name, plan.power_sysfs_root), plan.power_interval_s)
    except PowerError as exc:
        warnings.append("%s; power was not measured" % exc)
    except Exception as exc:  # an odd sensor must not cost the run
        warnings.append("power probe %s: %s: %s; power was not measured" % (name, type(exc).__name__, exc))
    return None


def _fill_power(result: Dict[str, Any], sampler: PowerSampler, timed: int) -> None:
    sampler.stop()  # already stopped by the harness, unless the run failed before its timed part
    result["warnings"].extend(sampler.warnings)
    if sampler.error:
        result["warnings"].append("%s; power was not measured" % sampler.error)
        return
    if timed:
        result["power"] = sampler.summary(timed)


def _open_postprocessor(plan: Plan, manifest: Any, engine: Any) -> Postprocessor:
    """The plan's postprocessor, with model-input pixels mapped back to each frame by the artifact's
    preprocessing; outputs that do not fit its task are refused here, before any frame runs."""
    spec = manifest.preprocess
    postprocessor = make_postprocessor(
        plan.postprocess,
        engine.output_names,
        reference_path=plan.reference,
        geometry=spec.geometry if spec is not None else None,
        label_masks=plan.label_masks,
    )
    postprocessor.check_outputs([list(output.shape) for output in engine.outputs])
    return postprocessor


def _task_output(result: Dict[str, Any], postprocessor: Postprocessor) -> None:
    """The per-frame detections, polygons or class histograms, when the postprocessor kept them."""
    try:
        output = postprocessor.task_output()
    except Exception as exc:  # the measured run is worth more than its per-frame outputs
        result["warnings"].append("task_output not read: %s: %s" % (type(exc).__name__, exc))
        return
    if output:
        result["task_output"] = output


def _build_defaults(manifest: Any, engine_name: str) -> Dict[str, Any]:
    """The manifest's `build` section (jetson-trt: precision, calibration cache, DLA, profiles) as the
    engine's default options, when the engine is the one the artifact was built for."""
    build = manifest.data.get("build")
    if not isinstance(build, dict) or engine_name != manifest.engine:
        return {}
    return dict(build)


def _layer_times(result: Dict[str, Any], engine: Any) -> None:
    """Per-layer mean times (TensorRT with layer_profile) into the result, when the engine has them."""
    read = getattr(engine, "layer_times_ms", None)
    if not callable(read):
        return
    try:
        times = read()
    except Exception as exc:  # a profiler that fails must not cost the measured run
        result["warnings"].append("layer times not read: %s: %s" % (type(exc).__name__, exc))
        return
    if isinstance(times, dict) and times:
        result["layer_times_ms"] = dict((str(k), float(v)) for k, v in times.items())


def _check_model_inputs(engine: Any, manifest: Any) -> None:
    if len(engine.inputs) != 1:
        raise EngineError(
            "model %s has %d inputs (%s); the agent feeds frames to single-input models"
            % (manifest.model_path, len(engine.inputs), ", ".join(engine.input_names))
        )
    declared = manifest.inputs[0].get("name")
    if declared != engine.input_names[0]:
        raise ManifestError(
            "the manifest declares input %r but the model's input is %r: the artifact is inconsistent; rebuild it"
            % (declared, engine.input_names[0])
        )


def _device_facts(result: Dict[str, Any], sysfs_root: str = "/") -> None:
    try:
        result["device"] = device_facts()
        # on a Jetson the power mode and clocks change every number: the result carries them
        from .jetson import is_jetson, jetson_facts

        if is_jetson(sysfs_root):
            result["device"]["jetson"] = jetson_facts(sysfs_root, warnings=result["warnings"])
    except Exception as exc:  # a fact we cannot read must not cost the run
        result["warnings"].append("device facts incomplete: %s" % _describe(exc))


def run_plan_file(plan_path: str, tracker: Optional[RunTracker] = None) -> Dict[str, Any]:
    """Load the plan at `plan_path` and run it; an unreadable or invalid plan gives an `error` result."""
    try:
        plan = load_plan(plan_path)
    except PlanError as exc:
        result = empty_result(_peek_run_id(plan_path), utc_now())
        _device_facts(result)
        add_error(result, "plan", str(exc))
        return finish(result, 0)
    return run_plan(plan, tracker)


def _peek_run_id(plan_path: str) -> Optional[str]:
    # an invalid plan's result should still be filed under its run id when the JSON has one
    try:
        with open(plan_path, "r", encoding="utf-8") as handle:
            run_id = json.load(handle).get("run_id")
        return run_id if isinstance(run_id, str) else None
    except Exception:
        return None


def summary_line(result: Dict[str, Any]) -> str:
    """One line for logs: status, frames, inference p50, throughput, accuracy or the first error."""
    parts = ["edgekit agent: %s" % result["status"]]
    frames = result.get("frames") or {}
    if frames.get("timed"):
        parts.append("%d frames" % frames["timed"])
        p50 = (result.get("latency_ms") or {}).get("inference", {}).get("p50")
        if p50 is not None:
            parts.append("inference p50 %.3f ms" % p50)
        if result.get("throughput_fps"):
            parts.append("%.1f fps" % result["throughput_fps"])
        if frames.get("dropped"):
            parts.append("%d dropped" % frames["dropped"])
    parts.extend(_accuracy_words(result.get("accuracy") or {}))
    if result.get("errors"):
        first = result["errors"][0]
        parts.append("%s error: %s" % (first["stage"], first["message"]))
    return ", ".join(parts)


def _accuracy_words(accuracy: Dict[str, Any]) -> List[str]:
    kind = accuracy.get("kind")
    if kind in ("classify", "classification") and accuracy.get("top1") is not None:
        return ["top1 %.4f" % accuracy["top1"]]
    if kind == "raw" and accuracy.get("sqnr_db") is not None:
        return ["SQNR %.1f dB" % accuracy["sqnr_db"]]
    if kind == "segment" and accuracy.get("miou") is not None:
        return ["mIoU %.4f" % accuracy["miou"]]
    if accuracy.get("per_frame_mean") is not None:  # detect, text-detect
        return ["%.2f detections/frame" % accuracy["per_frame_mean"]]
    return []


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the harness keeps what it measured and the result is still written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekit-agent", description="Run an edgekit plan on this device and write the result JSON."
    )
    parser.add_argument("--plan", help="plan JSON (docs/contracts.md)")
    parser.add_argument("--result", help="where to write the result JSON")
    parser.add_argument("--facts", action="store_true", help="print this device's facts as JSON and exit")
    parser.add_argument("--workdir", help="with --facts: report the free disk space of this folder")
    parser.add_argument("--sysfs-root", default="/", help="with --facts: where to look for power sensors")
    parser.add_argument("--progress", action="store_true", help="print progress lines on stdout (runtime/progress.py)")
    parser.add_argument("--time-model", help="time this model file with --engine and print the median (JSON)")
    parser.add_argument("--engine", help="with --time-model: the engine (onnxruntime, openvino, tflite, ...)")
    parser.add_argument("--runs", type=int, default=15, help="with --time-model: timed runs")
    parser.add_argument("--threads", type=int, default=1, help="with --time-model: engine threads")
    parser.add_argument("--inputs", help="with --time-model: an .npz of the inputs (default: seeded random)")
    return parser


def _print_json(data: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()


def _time_model(args: argparse.Namespace) -> int:
    from .timing import time_model

    try:
        _print_json(time_model(args.time_model, args.engine, args.runs, args.threads, args.inputs))
    except (EngineError, OSError, ValueError) as exc:
        sys.stderr.write("edgekit agent: cannot time %s: %s\n" % (args.time_model, _describe(exc)))
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: `--plan PATH --result PATH`; returns the exit code (0 ok, 1 partial/error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.facts:
        _print_json(agent_facts(args.workdir, args.sysfs_root))
        return 0
    if args.time_model:
        if not args.engine:
            parser.error("--time-model needs --engine")
        return _time_model(args)
    if not args.plan or not args.result:
        parser.error("--plan and --result are required (or --facts, or --time-model)")

    previous = None
    in_main_thread = _in_main_thread()
    if in_main_thread:
        # the host stops a run that overstays with SIGTERM; the frames measured so far must survive it
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        if previous is None:  # a handler installed from C: restore the default rather than nothing
            previous = signal.SIG_DFL
    try:
        if args.progress:
            tracker = RunTracker()
            with ProgressReporter(tracker.snapshot):
                result = run_plan_file(args.plan, tracker)
        else:
            result = run_plan_file(args.plan)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    try:
        write_result(result, args.result)
    except (OSError, ValueError) as exc:
        sys.stderr.write("edgekit agent: cannot write result %s: %s\n" % (args.result, exc))
        return 1
    sys.stderr.write(summary_line(result) + " -> " + os.path.abspath(args.result) + "\n")
    return 0 if result["status"] == "ok" else 1


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
