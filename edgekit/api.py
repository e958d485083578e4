"""The Python API behind the CLI: build an artifact, run it on a device, store the result."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.artifact import Artifact
from edgekit.fleet.plan import Source, check_labels, make_plan, read_labels
from edgekit.fleet.runner import FleetRecord as RunRecord
from edgekit.model import Model
from edgekit.store import ResultsStore
from edgekit.targets import get_target

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
    progress: bool = False,
    options: Mapping[str, Any] | TargetOptions | None = None,
) -> Artifact:
    """Turn a model into an artifact for `target` in the folder `out`.

    Quantized precisions take their scales from `quant_spec` (a QuantSpec or its JSON path), or from
    calibrating on `calib` with `observer` in the scheme the target wants. `options` are the target's
    build options (its `Options` dataclass, or a dict: None values are dropped, text is parsed by the
    option types), e.g. for jetson-trt `{"dla_core": 0, "sparsity": "2:4", "max_batch": 8}`; `edgekit
    targets --options NAME` lists them. A key the target does not take is refused by name, before any
    calibration.
    """
    if not isinstance(model, Model):
        model = Model.load(model)
    chosen = get_target(target)
    if precision in chosen.precisions:  # else build() names the precisions the target has
        options = chosen.make_options(options, precision)
    if isinstance(quant_spec, (str, Path)):
        from edgekit.calibration.quant_spec import QuantSpec

        quant_spec = QuantSpec.load(quant_spec)
    if quant_spec is None and calib is not None and precision in chosen.quantized_precisions:
        from edgekit.calibration.calibrate import calibrate

        quant_spec = calibrate(
            model,
            calib,
            observer=observer,
            activations=chosen.activation_scheme,
            weights=chosen.weight_scheme,
            progress=progress,
        ).spec
    return chosen.build(model, out, precision=precision, quant_spec=quant_spec, options=options)


def _labels(labels: list[int] | str | Path | None, artifact: Artifact) -> list[int] | None:
    if isinstance(labels, (str, Path)):
        path = labels
        labels = read_labels(labels)
        check_labels(labels, artifact.manifest, path)
    elif labels is not None:
        check_labels(labels, artifact.manifest)
    return labels


def run_fleet(
    artifact: Artifact | str | Path,
    fleet: str | Path,
    source: str,
    *,
    tags: list[str] = (),
    names: list[str] = (),
    source_on_device: bool = False,
    labels: list[int] | str | Path | None = None,
    frames: int | None = None,
    warmup: int = 10,
    pipelined: bool = False,
    threads: int | None = None,
    engine_options: dict[str, Any] | None = None,
    loop: bool = False,
    power_probe: str | None = None,
    timeout_s: float = 3600.0,
    trust_on_first_use: bool = False,
    store: ResultsStore | None = None,
    on_done: Any = None,
    progress_for: Any = None,
) -> list[Any]:
    """Run an artifact on every device of a fleet file (filtered by tags/names) in parallel over SSH.

    A host file source is pushed to each device by content; `source_on_device` names a camera or a
    file that is already on the devices. `engine_options` go to the device's engine (e.g. {"compute_units":
    "CPU_AND_NE"} for Core ML, {"delegate": "nnapi"} for TFLite). Each device's result is stored as it arrives.
    """
    from edgekit.fleet.inventory import load_fleet, select
    from edgekit.fleet.runner import run_fleet as fan_out
    from edgekit.fleet.ssh import SshTransport

    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    devices = select(load_fleet(fleet), tags=tags, names=names)
    parsed = Source.on_device(source, loop=loop) if source_on_device else Source.parse(source, loop=loop)
    labels = _labels(labels, artifact)

    def plan_for(device: Any, run_id: str) -> dict[str, Any]:
        return make_plan(
            str(artifact.path.resolve()), parsed, run_id=run_id, frames=frames, warmup=warmup, pipelined=pipelined,
            engine=artifact.manifest["engine"], threads=threads, engine_options=engine_options, labels=labels,
            power_probe=power_probe,
        )  # fmt: skip

    def transport_for(device: Any) -> SshTransport:
        return SshTransport(device, trust_on_first_use=trust_on_first_use)

    return fan_out(artifact, devices, plan_for, transport_for, timeout_s=timeout_s, store=store or ResultsStore(),
                   on_done=on_done, progress_for=progress_for)  # fmt: skip


def check_devices(
    fleet: str | Path, *, tags: list[str] = (), names: list[str] = (), trust_on_first_use: bool = False
) -> list[dict[str, Any]]:
    """Connect to each device (in parallel) and gather its facts; an unreachable device says why."""
    from concurrent.futures import ThreadPoolExecutor

    from edgekit.fleet.inventory import load_fleet, select
    from edgekit.fleet.ssh import SshTransport

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
    *,
    labels: list[int] | str | Path | None = None,
    frames: int | None = None,
    warmup: int = 10,
    pipelined: bool = False,
    threads: int | None = None,
    engine_options: dict[str, Any] | None = None,
    loop: bool = False,
    timeout_s: float = 3600.0,
    store: ResultsStore | None = None,
    save: bool = True,
) -> RunRecord:
    """Run an artifact on this machine as the device, through the agent, and store the result. `engine_options`
    go to the engine (see `run_fleet`)."""
    from edgekit.fleet.local import LocalTransport

    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    labels = _labels(labels, artifact)
    plan = make_plan(
        str(artifact.path.resolve()),
        Source.parse(source, loop=loop),
        frames=frames,
        warmup=warmup,
        pipelined=pipelined,
        engine=artifact.manifest["engine"],
        threads=threads,
        engine_options=engine_options,
        labels=labels,
    )
    transport = LocalTransport()
    result = transport.run(artifact, plan, timeout_s=timeout_s)
    if save:
        (store or ResultsStore()).add(
            device=transport.name, plan=plan, result=result, manifest=artifact.manifest, artifact_id=artifact.id
        )
    return RunRecord(transport.name, plan["run_id"], plan, result)
