"""The Python API behind the CLI: build an artifact, run it on a device, store the result."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.artifact import Artifact
from edgekit.device.plan import Source, check_labels_cover, make_plan, resolve_labels
from edgekit.device.settings import RunSettings
from edgekit.errors import ModelError, RunInterrupted
from edgekit.fleet.runner import FleetRecord as RunRecord
from edgekit.model import Model
from edgekit.store import ResultsStore
from edgekit.targets import get_target
from edgekit.tasks import apply_overrides, overrides, run_task

if TYPE_CHECKING:
    from edgekit.calibration.quant_spec import QuantSpec
    from edgekit.targets import TargetOptions


def build(
    model: Model | str | Path,
    target: str = "x86-ort",
    out: str | Path = "artifact",
    *,
    precision: str = "fp32",
    quant_spec: QuantSpec | str | Path | None = None,
    calib: Any = None,
    observer: str = "minmax",
    calib_limit: int | None = None,
    rounding: str = "nearest",
    progress: bool = False,
    options: Mapping[str, Any] | TargetOptions | None = None,
    task: str | None = None,
    postprocess: Mapping[str, Any] | None = None,
) -> Artifact:
    """Turn a model into an artifact for `target` in the folder `out`.

    Quantized precisions take their scales from `quant_spec` (a QuantSpec or its JSON path), or from
    calibrating on `calib` with `observer` in the scheme the target wants (`rounding` "adaround" learns the
    weights' rounding on a few of those samples: calibration/adaround.py). `options` are the target's
    build options (its `Options` dataclass, or a dict: None values are dropped, text is parsed by the
    option types), e.g. for jetson-trt `{"dla_core": 0, "sparsity": "2:4", "max_batch": 8}`; `edgekit
    targets --options NAME` lists them. A key the target does not take is refused by name, before any
    calibration.

    `task` (classify, detect, segment, text-detect, raw) and `postprocess` (its settings, e.g. {"conf":
    0.3}) override the model's task for this artifact (the manifest's "task"); the Model given is left as it is.
    """
    if not isinstance(model, Model):
        model = Model.load(model)
    model = _with_task(model, task, postprocess)
    chosen = get_target(target)
    if precision in chosen.precisions:  # else build() names the precisions the target has
        options = chosen.make_options(options, precision)
    if isinstance(quant_spec, (str, Path)):
        from edgekit.calibration.quant_spec import QuantSpec

        quant_spec = QuantSpec.load(quant_spec)
    if quant_spec is None and calib is not None and precision in chosen.quantized_precisions:
        from edgekit.calibration.calibrate import calibrate

        chosen.check_buildable(model, precision, options)  # a model the target refuses is not calibrated first

        activations, weights = chosen.calibration_schemes(options)
        quant_spec = calibrate(
            model,
            calib,
            observer=observer,
            activations=activations,
            weights=weights,
            limit=calib_limit,
            progress=progress,
            rounding=rounding,
        ).spec
    if isinstance(calib, (str, Path)) or hasattr(calib, "__array_interface__"):  # a stream would be spent
        model = _with_validation_feeds(model, calib, calib_limit)
    return chosen.build(model, out, precision=precision, quant_spec=quant_spec, options=options)


def _with_validation_feeds(model: Model, calib: Any, limit: int | None) -> Model:
    """A copy of `model` carrying the first few of the user's calibration samples, which the build's validation
    uses as its probe inputs (they are the user's own images, at the size the preprocessing makes). Only those
    few are read again: a folder of a thousand photos is not decoded twice."""
    from edgekit.calibration.data import load_calibration_data
    from edgekit.targets.validation import PROBES

    if not model.inputs:
        return model
    count = PROBES if limit is None else min(limit, PROBES)
    data = load_calibration_data(calib, spec=model.preprocess, input_name=model.inputs[0].name, limit=count)
    changed = copy.copy(model)
    changed.validation_feeds = list(data.feeds)
    return changed


def _with_task(model: Model, task: str | None, postprocess: Mapping[str, Any] | None) -> Model:
    """`model`, or a copy of it whose task has `task` and `postprocess` laid over it."""
    given = overrides(task, postprocess, error=ModelError)
    if given is None:
        return model
    changed = copy.copy(model)  # a shallow copy: the graph is shared, the metadata attributes are its own
    changed.task = apply_overrides(model.task, given, where="--task/--postprocess", error=ModelError)
    return changed


def _checked(settings: RunSettings, artifact: Artifact) -> RunSettings:
    """The settings with their labels read (when a file) and checked against the model's classes, and the
    run's task: the artifact's with `settings.task` laid over it, checked before anything runs."""
    return dataclasses.replace(
        settings,
        labels=resolve_labels(settings.labels, artifact.manifest),
        task=run_task(artifact.manifest, _task_overrides(settings)),
    )


def _task_overrides(settings: RunSettings) -> Mapping[str, Any] | str | None:
    """`settings.task`, or what the older fields say: postprocess "raw" is the raw task, a top_k other than
    the default is a top_k setting (of classify)."""
    if settings.task is not None:
        return settings.task
    if settings.postprocess == "raw":
        return {"task": "raw"}
    if settings.top_k != RunSettings.top_k:
        return {"top_k": settings.top_k}
    return None


def _split_reference(settings: RunSettings, reference: Any) -> tuple[RunSettings, Any]:
    """A `reference` ending in .npz is the raw task's reference outputs (a run setting); anything else is the
    FP32 model or artifact whose detections the run's are scored against (on the host)."""
    if isinstance(reference, (str, Path)) and str(reference).endswith(".npz"):
        return dataclasses.replace(settings, reference=str(reference)), None
    return settings, reference


def run_fleet(
    artifact: Artifact | str | Path,
    fleet: str | Path,
    source: str,
    settings: RunSettings | None = None,
    *,
    tags: list[str] = (),
    names: list[str] = (),
    source_on_device: bool = False,
    trust_on_first_use: bool = False,
    store: ResultsStore | None = None,
    on_done: Any = None,
    progress_for: Any = None,
    frames_for: Any = None,
    annotations: str | Path | None = None,
    reference: Any = None,
    save_detections: str | Path | None = None,
    **fields: Any,
) -> list[RunRecord]:
    """Run an artifact on every device of a fleet file (filtered by tags/names) in parallel over SSH.

    `settings` (or `RunSettings` field names as keywords, e.g. `frames=300, power_probe="auto"`) say how
    to run. A host file source is pushed to each device by content; `source_on_device` names a camera or
    a file that is already on the devices. `engine_options` go to the device's engine (e.g.
    {"compute_units": "CPU_AND_NE"} for Core ML, {"delegate": "nnapi"} for TFLite). Each device's result
    is stored as it arrives, scored as in `run` (`save_detections` gets the device name before its suffix).
    `progress_for(device)` gives a `(sent, total)` callback for its pushes, `frames_for(device)` one that
    sees each RunProgress of its agent (phase, frames, fps, time left).
    """
    from edgekit.device.ssh import SshTransport
    from edgekit.evaluate.host import HostEvaluation, finish
    from edgekit.fleet.inventory import load_fleet, select
    from edgekit.fleet.runner import run_fleet as fan_out

    settings, reference = _split_reference(RunSettings.merged(settings, fields, caller="run_fleet"), reference)
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    devices = select(load_fleet(fleet), tags=tags, names=names)
    loop = settings.loop
    parsed = Source.on_device(source, loop=loop) if source_on_device else Source.parse(source, loop=loop)
    settings = _checked(settings, artifact)
    check_labels_cover(settings.labels, parsed, settings.frames)
    store = store or ResultsStore()
    evaluation: HostEvaluation | None = None  # set below, once a plan says what the task is

    def plan_for(device: Any, run_id: str) -> dict[str, Any]:
        plan = make_plan(
            str(artifact.path.resolve()), parsed, settings, run_id=run_id, engine=artifact.manifest["engine"]
        )
        return evaluation.keep_outputs(plan) if evaluation else plan

    evaluation = HostEvaluation.prepare(
        artifact,
        parsed,
        plan_for(None, "check"),
        annotations=annotations,
        reference=reference,
        save_detections=save_detections,
        source_on_host=not source_on_device,
        per_device=True,
    )
    if evaluation:
        evaluation.run_reference(parsed, settings, plan_for(None, "reference"), store)

    def transport_for(device: Any) -> SshTransport:
        return SshTransport(device, trust_on_first_use=trust_on_first_use)

    return fan_out(
        artifact,
        devices,
        plan_for,
        transport_for,
        timeout_s=settings.timeout_s,
        store=store,
        on_done=on_done,
        progress_for=progress_for,
        finish=lambda device, plan, result: finish(result, evaluation, plan["postprocess"], device.name),
        watch_for=lambda device: settings.watch(frames_for(device) if frames_for else None),
    )


def check_devices(
    fleet: str | Path, *, tags: list[str] = (), names: list[str] = (), trust_on_first_use: bool = False
) -> list[dict[str, Any]]:
    """Connect to each device (in parallel) and gather its facts; an unreachable device says why."""
    from concurrent.futures import ThreadPoolExecutor

    from edgekit.device.ssh import SshTransport
    from edgekit.fleet.inventory import load_fleet, select

    devices = select(load_fleet(fleet), tags=tags, names=names)

    def one(device: Any) -> dict[str, Any]:
        entry = {"name": device.name, "reachable": False, "target": device.target}
        try:
            with SshTransport(device, trust_on_first_use=trust_on_first_use) as transport:
                entry["reachable"] = True
                return {**entry, **transport.facts()}
        except Exception as exc:  # each device reports its own failure (reachable, yet facts may fail: full disk)
            return {**entry, "error": str(exc)}

    with ThreadPoolExecutor(max(1, len(devices))) as pool:
        return list(pool.map(one, devices))


def run(
    artifact: Artifact | str | Path,
    source: str | Path | int,
    settings: RunSettings | None = None,
    *,
    store: ResultsStore | None = None,
    save: bool = True,
    annotations: str | Path | None = None,
    reference: Any = None,
    save_detections: str | Path | None = None,
    on_progress: Any = None,
    **fields: Any,
) -> RunRecord:
    """Run an artifact on this machine as the device, through the agent, and store the result.

    `settings`, or `RunSettings` field names as keywords (`edgekit.run(artifact, "video.mp4",
    pipelined=True)`), say how; a keyword that is no setting is a TypeError listing those that are.
    `engine_options` go to the engine (see `run_fleet`).

    For a detect or text-detect task the host scores the detections: `annotations` (a COCO JSON file for
    the source, checked before the run) give `accuracy.labels` (mAP@0.5:0.95, mAP@0.5, AR@100);
    `reference` (the FP32 .onnx model, built once for x86-ort and cached, or an artifact folder) is run
    here on the same frames, stored as its own run, and gives `accuracy.reference` (mAP with its boxes as
    ground truth, matched IoU, detections per frame); `save_detections` writes one JSON line per frame.
    A `reference` ending in .npz is the raw task's reference outputs instead.
    `task` lays a task, or settings, over the artifact's for this run (`task={"conf": 0.4}`,
    `task={"task": "raw"}`); an artifact with no task that is not a classifier needs one, and is refused
    before the run without it. `on_progress` sees each RunProgress of the agent (phase, frames, fps, time
    left); a run with no finished frame for `stall_s` seconds is stopped as hung (its frames kept).
    """
    from edgekit.device.local import LocalTransport
    from edgekit.evaluate.host import HostEvaluation, finish

    settings, reference = _split_reference(RunSettings.merged(settings, fields, caller="run"), reference)
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    settings = _checked(settings, artifact)
    parsed = Source.parse(source, loop=settings.loop)
    check_labels_cover(settings.labels, parsed, settings.frames)
    plan = make_plan(str(artifact.path.resolve()), parsed, settings, engine=artifact.manifest["engine"])
    evaluation = HostEvaluation.prepare(
        artifact, parsed, plan, annotations=annotations, reference=reference, save_detections=save_detections
    )
    store = (store or ResultsStore()) if save else None
    if evaluation:
        plan = evaluation.keep_outputs(plan)
        evaluation.run_reference(parsed, settings, plan, store)
    transport = LocalTransport()
    try:
        watch = settings.watch(on_progress)
        result = finish(
            transport.run(artifact, plan, timeout_s=settings.timeout_s, watch=watch), evaluation, plan["postprocess"]
        )
    except RunInterrupted as exc:  # the agent was stopped: what it measured is stored, then the signal goes on
        record = RunRecord(transport.name, plan["run_id"], plan, exc.result or {})
        if store is not None and exc.result is not None:
            store.add(device=transport.name, plan=plan, result=exc.result, **_artifact_fields(artifact))
        exc.records = [record]
        raise
    if store is not None:
        store.add(device=transport.name, plan=plan, result=result, **_artifact_fields(artifact))
    return RunRecord(transport.name, plan["run_id"], plan, result)


def _artifact_fields(artifact: Artifact) -> dict[str, Any]:
    return {"manifest": artifact.manifest, "artifact_id": artifact.id}
