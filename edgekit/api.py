"""The Python API behind the CLI: build an artifact, run it on a device, store the result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.artifact import Artifact
from edgekit.fleet.plan import Source, check_labels, make_plan, read_labels
from edgekit.model import Model
from edgekit.store import ResultsStore
from edgekit.targets import get_target


def build(
    model: Model | str | Path,
    target: str = "x86-ort",
    out: str | Path = "artifact",
    *,
    precision: str = "fp32",
    quant_spec: Any = None,
    calib: Any = None,
    observer: str = "minmax",
    progress: bool = False,
) -> Artifact:
    """Turn a model into an artifact for `target` in the folder `out`.

    Quantized precisions take their scales from `quant_spec` (a QuantSpec or its JSON path), or from
    calibrating on `calib` with `observer` in the scheme the target wants.
    """
    if not isinstance(model, Model):
        model = Model.load(model)
    chosen = get_target(target)
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
    return chosen.build(model, out, precision=precision, quant_spec=quant_spec)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    device: str
    artifact: Artifact
    plan: dict[str, Any]
    result: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.result["status"] == "ok"


def run(
    artifact: Artifact | str | Path,
    source: str | Path | int,
    *,
    labels: list[int] | str | Path | None = None,
    frames: int | None = None,
    warmup: int = 10,
    pipelined: bool = False,
    threads: int | None = None,
    loop: bool = False,
    timeout_s: float = 3600.0,
    store: ResultsStore | None = None,
    save: bool = True,
) -> RunRecord:
    """Run an artifact on this machine as the device, through the agent, and store the result."""
    from edgekit.fleet.local import LocalTransport

    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    if isinstance(labels, (str, Path)):
        labels_path: str | Path = labels
        labels = read_labels(labels)
    else:
        labels_path = "labels"
    if labels is not None:
        check_labels(labels, artifact.manifest, labels_path)
    plan = make_plan(
        str(artifact.path.resolve()),
        Source.parse(source, loop=loop),
        frames=frames,
        warmup=warmup,
        pipelined=pipelined,
        engine=artifact.manifest["engine"],
        threads=threads,
        labels=labels,
    )
    transport = LocalTransport()
    result = transport.run(artifact, plan, timeout_s=timeout_s)
    if save:
        (store or ResultsStore()).add(
            device=transport.name, plan=plan, result=result, manifest=artifact.manifest, artifact_id=artifact.id
        )
    return RunRecord(plan["run_id"], transport.name, artifact, plan, result)
