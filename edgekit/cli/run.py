"""Commands that run artifacts and show the stored runs: run, report, demo."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import (
    db_option,
    fail_cleanly,
    make_console,
    open_store,
    parse_json_object,
    parse_key_values,
    stops_on_signals,
    task_options,
)
from edgekit.device.watch import LOAD_S, STALL_S


@click.command()
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option(
    "-s",
    "--source",
    required=True,
    help="Video file, image folder (class sub-folders give labels), camera index, rtsp:// URL or GStreamer pipeline.",
)
@click.option("--labels", type=click.Path(dir_okay=False), help="Per-frame class indices: JSON list or one per line.")
@task_options
@click.option("--frames", type=int, default=None, help="Frames to time after warm-up (default: the whole file).")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed frames run first.")
@click.option("--pipelined", is_flag=True, help="Run capture, preprocess, inference, postprocess in threads.")
@click.option("--threads", type=int, default=None, help="Engine threads (default: the engine's own choice).")
@click.option(
    "-e",
    "--engine-option",
    "engine_option_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="Engine option (repeatable): compute_units=CPU_AND_NE (coreml: ALL, CPU_ONLY, CPU_AND_GPU, "
    "CPU_AND_NE), delegate=nnapi (tflite: xnnpack, none, gpu, nnapi), ...",
)
@click.option("--loop", is_flag=True, help="Restart a file source at its end until --frames are done.")
@click.option(
    "--stall-timeout",
    type=float,
    default=STALL_S,
    show_default=True,
    help="Seconds without a finished frame before a run counts as hung and is stopped (its frames kept).",
)
@click.option(
    "--load-timeout",
    type=float,
    default=LOAD_S,
    show_default=True,
    help="Seconds the agent may take to start and load the engine (a TensorRT engine builds on the device).",
)
@click.option("--timeout", type=float, default=None, help="Seconds before the run is stopped whatever it is doing.")
@click.option("--fleet", type=click.Path(dir_okay=False, exists=True), help="Run on the devices of this fleet file.")
@click.option("--tags", multiple=True, help="With --fleet: only devices carrying this tag (repeatable).")
@click.option("--device", "names", multiple=True, help="With --fleet: only this device (repeatable).")
@click.option(
    "--source-on-device", is_flag=True, help="The source is on the devices (camera, file); nothing is pushed."
)
@click.option(
    "--power", "power_probe", default=None, help="Power probe on the device: auto, jetson-ina3221, x86-rapl, ..."
)
@click.option("--trust-on-first-use", is_flag=True, help="Accept and save unknown SSH host keys (never changed ones).")
@click.option(
    "--annotations",
    type=click.Path(dir_okay=False, exists=True),
    help="COCO-format boxes for the source's images or video frames: mAP@0.5:0.95 and mAP@0.5 on the host.",
)
@click.option(
    "--reference",
    metavar="MODEL",
    help="FP32 .onnx model (built for x86-ort once) or artifact folder: its detections on the same frames are "
    "the ground truth of a reference mAP. A .npz holds the raw task's reference outputs.",
)
@click.option("--save-detections", type=click.Path(dir_okay=False), help="Write the detections, a JSON line per frame.")
@click.option(
    "--label-masks",
    type=click.Path(file_okay=False),
    help="With --task segment: a folder of PNG masks named like the source's images (pixel = class, 255 = "
    "ignore); the device scores mIoU and pixel accuracy.",
)
@db_option
@fail_cleanly
@stops_on_signals
def run(
    artifact: str,
    source: str,
    labels: str | None,
    task: str | None,
    postprocess_json: str | None,
    frames: int | None,
    warmup: int,
    pipelined: bool,
    threads: int | None,
    engine_option_items: tuple[str, ...],
    loop: bool,
    stall_timeout: float,
    load_timeout: float,
    timeout: float | None,
    fleet: str | None,
    tags: tuple[str, ...],
    names: tuple[str, ...],
    source_on_device: bool,
    power_probe: str | None,
    trust_on_first_use: bool,
    annotations: str | None,
    reference: str | None,
    save_detections: str | None,
    label_masks: str | None,
    db: str | None,
) -> None:
    """Run ARTIFACT on this machine as the device (the agent in a subprocess), or with --fleet on every
    device of a fleet file in parallel over SSH; print latency per stage, throughput, accuracy and power,
    and store every run.

    \b
    Examples:
      edgekit run art --source clip.mp4 --labels clip.labels.json
      edgekit run art --fleet lab.toml --tags jetson --source clip.mp4 --power auto
      edgekit run art --fleet lab.toml --source 0 --source-on-device --frames 300
      edgekit run art --fleet lab.toml --tags mac --source clip.mp4 -e compute_units=CPU_AND_NE
      edgekit run int8-art --source photos/ --annotations photos.json --reference yolo.onnx
      edgekit run art --source clip.mp4 --postprocess '{"conf": 0.4}'     this run only; the artifact keeps its own
    """
    from edgekit.api import run as run_artifact
    from edgekit.device.settings import RunSettings
    from edgekit.errors import RunError
    from edgekit.tasks import overrides

    engine_options = parse_key_values(
        engine_option_items, option_name="--engine-option", example="-e compute_units=CPU_AND_NE"
    )
    postprocess = parse_json_object(postprocess_json, option_name="--postprocess") if postprocess_json else None
    settings = RunSettings(
        task=overrides(task, postprocess, error=RunError),
        frames=frames,
        warmup=warmup,
        pipelined=pipelined,
        threads=threads,
        engine_options=engine_options,
        loop=loop,
        labels=labels,
        power_probe=power_probe,
        timeout_s=timeout,
        stall_s=stall_timeout,
        load_s=load_timeout,
        label_masks=label_masks,
    )
    scoring = {"annotations": annotations, "reference": reference, "save_detections": save_detections}
    store = open_store(db)
    console = make_console()
    if fleet:
        _run_fleet(
            artifact,
            fleet,
            source,
            settings,
            store,
            console,
            tags=list(tags),
            names=list(names),
            source_on_device=source_on_device,
            trust_on_first_use=trust_on_first_use,
            **scoring,
        )
        return
    with _run_bar(console, f"{artifact} on this machine") as on_progress:
        record = run_artifact(artifact, source, settings, store=store, on_progress=on_progress, **scoring)
    _print_run(record.run_id, store, console)
    if _run_failure(record.result):
        sys.exit(1)


@contextlib.contextmanager
def _run_bar(console: Any, what: str) -> Iterator[Callable[[Any], None]]:
    """A progress bar for one local run (frames done of those asked for, fps, time left); yields the
    RunProgress listener that moves it. Quiet where the console is no terminal, as rich's bars are."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), console=console,
        transient=True, disable=not console.is_terminal,  # in logs a transient bar leaves only a blank line
    )  # fmt: skip
    task = bar.add_task(f"{what}: starting", total=None)

    def on_progress(progress: Any) -> None:
        bar.update(task, completed=progress.done, total=progress.total, description=f"{what}: {progress.describe()}")

    with bar:
        yield on_progress


def _run_fleet(artifact: str, fleet: str, source: str, settings: Any, store: Any, console: Any, **options: Any) -> None:
    from rich.progress import BarColumn, Progress, TextColumn

    from edgekit.api import run_fleet
    from edgekit.console_text import styled
    from edgekit.evaluate.host import evaluation_errors
    from edgekit.report import print_runs_table

    bars = Progress(
        BarColumn(bar_width=30),
        TextColumn("{task.description}", markup=False),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    tasks: dict[str, Any] = {}

    def progress_for(device: Any) -> Any:
        tasks[device.name] = bars.add_task(f"{device.name}: push", total=None)

        def update(sent: int, total: int) -> None:
            pushed = f"push {sent / 1e6:.1f}/{total / 1e6:.1f} MB"
            bars.update(tasks[device.name], completed=sent, total=total, description=f"{device.name}: {pushed}")

        return update

    def frames_for(device: Any) -> Any:
        def update(progress: Any) -> None:
            # the bar counts frames from here on (bytes while pushing)
            bars.update(tasks[device.name], completed=progress.done, total=progress.total,
                        description=f"{device.name}: {progress.describe()}")  # fmt: skip

        return update

    def on_done(record: Any) -> None:
        status = record.result["status"]
        if record.device in tasks:
            bars.update(tasks[record.device], description=f"{record.device}: {status}")
        scored = not evaluation_errors(record.result)
        colour = "green" if record.ok and scored else "red"
        state = status if scored else f"{status}, evaluation failed"
        console.print(styled((f"{record.device}: {state}", colour), f" (run {record.run_id})"))

    with bars:
        records = run_fleet(
            artifact,
            fleet,
            source,
            settings,
            store=store,
            on_done=on_done,
            progress_for=progress_for,
            frames_for=frames_for,
            **options,
        )
    stored = store.get([r.run_id for r in records])
    print_runs_table(stored, console)
    failed = {r.device: _run_failure(r.result) for r in records}
    failed = {device: why for device, why in failed.items() if why}
    if failed:
        listed = "; ".join(f"{device}: {why}" for device, why in failed.items())
        heading = f"failed on {len(failed)} of {len(records)} devices:"
        console.print(styled((heading, "red"), " ", listed), soft_wrap=True)
        sys.exit(1)


def _run_failure(result: dict[str, Any]) -> str | None:
    """What makes a run count as failed, in one phrase (None if it ran and every score asked for was made):
    a status other than ok, with its first error, or the host's evaluation errors (the run itself is kept)."""
    from edgekit.evaluate.host import evaluation_errors

    errors = result.get("errors") or []
    if result["status"] != "ok":
        first = errors[0] if errors else {}
        return f"run {result['status']} ({first.get('stage', '?')}: {first.get('message', 'no message')})"
    evaluation = evaluation_errors(result)
    return "evaluation failed (" + "; ".join(evaluation) + ")" if evaluation else None


def _print_run(run_id: str, store: Any, console: Any) -> None:
    from edgekit.console_text import styled
    from edgekit.report import print_stage_table, task_summary

    stored = store.get([run_id])[0]
    result = stored.result
    print_stage_table(stored, console)
    frames = result.get("frames", {})
    line = f"{frames.get('timed', 0)} frames timed ({frames.get('dropped', 0)} dropped)"
    if result.get("throughput_fps") is not None:
        line += f", throughput {result['throughput_fps']:.1f} frames/s"
    accuracy = result.get("accuracy") or {}
    if accuracy.get("top1") is not None:
        line += f", top-1 accuracy {accuracy['top1'] * 100:.2f}% on {accuracy.get('count')} labelled frames"
    if accuracy.get("sqnr_db") is not None:
        line += f", SQNR {accuracy['sqnr_db']:.1f} dB vs reference"
    if accuracy.get("miou") is not None:
        line += f", mIoU {accuracy['miou']:.3f} (pixel accuracy {accuracy.get('pixel_accuracy', 0):.3f}) vs label masks"
    console.print(line)
    for text in task_summary(result):
        console.print(text)
    for error in result.get("errors", []):
        console.print(styled((f"{error.get('stage', '?')} error:", "red"), " ", str(error.get("message", ""))))
    for warning in result.get("warnings", []):
        console.print(styled(("warning:", "yellow"), " ", str(warning)))
    console.print(styled("run ", (run_id, "bold"), f" ({result['status']}) stored in {store.path}"))


@click.command()
@click.argument("runs", nargs=-1)
@click.option("--last", type=int, default=20, show_default=True, help="With no RUN ids: the latest N runs.")
@click.option(
    "--status",
    type=click.Choice(["ok", "partial", "error", "all"]),
    default=None,
    help="With no RUN ids: which runs (default ok and partial; error runs are counted and listed apart).",
)
@click.option("--json", "as_json", is_flag=True, help="Print plans, results and manifests as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per run.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Write an HTML report (and its errors).")
@db_option
@fail_cleanly
def report(
    runs: tuple[str, ...],
    last: int,
    status: str | None,
    as_json: bool,
    as_csv: bool,
    html_file: str | None,
    db: str | None,
) -> None:
    """Show stored runs (by id, id prefix or short id; default the latest) as a table, JSON, CSV or HTML."""
    from edgekit import report as reports

    store = open_store(db)
    statuses = reports.statuses_for(status)
    stored = store.get(list(runs) or None, last=last, statuses=None if runs else statuses)
    hidden = 0 if runs or "error" in statuses else store.count(("error",))
    if as_json:
        click.echo(reports.to_json(stored))
    elif as_csv:
        click.echo(reports.to_csv(stored), nl=False)
    else:
        _print_report(runs, stored, hidden, store, status)
        if not runs and len(stored) == last and (total := store.count(statuses)) > last:
            click.echo(f"the latest {last} of {total} stored runs; `edgekit report --last {total}` shows them all")
    if html_file:
        # the page lists the latest failures apart, below the measured runs
        failed = [] if runs or not hidden else store.get(last=last, statuses=("error",))
        Path(html_file).write_text(reports.to_html(stored + failed))
        click.echo(f"HTML report written to {html_file}", err=True)


def _print_report(runs: tuple[str, ...], stored: list[Any], hidden: int, store: Any, status: str | None) -> None:
    """The terminal report: measured runs, failed runs apart, one line on the error runs left out."""
    from edgekit import report as reports
    from edgekit.console_text import styled

    if not stored:
        chosen = "" if status in (None, "all") else f"{status} "
        click.echo(f"no {chosen}runs stored in {store.path}" + ("" if hidden else " yet; try `edgekit demo`"))
    console = make_console()
    reports.print_runs_table(stored, console)
    reports.print_error_runs(stored, console)
    if hidden:
        console.print(styled((reports.hidden_runs_note(hidden), "red")))
    if len(runs) == 1:
        reports.print_stage_table(stored[0], console)
        for text in reports.task_summary(stored[0].result):  # mAP, reference mAP, detections per frame
            console.print(text)
        for warning in stored[0].result.get("warnings", []):
            console.print(styled(("warning:", "yellow"), " ", str(warning)))


@click.command()
@click.option(
    "--workdir", type=click.Path(file_okay=False), default=None, help="Where to write the video and artifact."
)
@click.option("--frames", type=int, default=None, help="Frames to time (default: the whole rendered video).")
@click.option("--pipelined", is_flag=True, help="Run the pipeline with a thread per stage.")
@click.option("--int8", is_flag=True, help="Also quantize (calibrating on the video) and run INT8 beside FP32.")
@click.option(
    "--task",
    type=click.Choice(["classify", "detect"]),
    default="classify",
    show_default=True,
    help="classify: one digit per frame, top-1; detect: 1-4 digits per frame with exact boxes, mAP.",
)
@db_option
@fail_cleanly
@stops_on_signals
def demo(workdir: str | None, frames: int | None, pipelined: bool, int8: bool, task: str, db: str | None) -> None:
    """The main job end to end on real data: a CNN trained on real handwritten digits (or, with --task detect,
    a detector trained on frames of them), held-out digits rendered into a video, an x86-ort artifact, the
    camera pipeline run on this machine."""
    from edgekit.demo import run_demo, run_detect_demo

    store = open_store(db)
    console = make_console()
    chosen = run_detect_demo if task == "detect" else run_demo
    records = chosen(workdir=workdir, frames=frames, pipelined=pipelined, store=store, console=console, int8=int8)
    for record in records:
        _print_run(record.run_id, store, console)
    if len(records) > 1:
        from edgekit.report import print_runs_table

        print_runs_table(store.get([r.run_id for r in records]), console)
    if any(r.result["status"] != "ok" for r in records):
        sys.exit(1)
