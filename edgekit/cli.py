"""The `edgekit` command line: a thin shell over the Python API.

Every heavy import happens inside the command that needs it, so `edgekit --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import click


def _fail_cleanly(func: Any) -> Any:
    """Show an EdgekitError as one clear line (exit 2) instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from edgekit.errors import EdgekitError
        from edgekit.runtime.preprocess import PreprocessError

        try:
            return func(*args, **kwargs)
        except (EdgekitError, PreprocessError) as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)

    return wrapper


def _console() -> Any:
    from rich.console import Console

    # Piped output has no terminal to wrap it: give tables room instead of rich's 80-column default.
    return Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", 0)) or 140)


def _store(db: str | None) -> Any:
    from edgekit.store import ResultsStore

    return ResultsStore(db)


LAST_GOOD = "last_good.pt"  # where prune/distill/qat keep the last good weights when the loss turns NaN

_DB_OPTION = click.option(
    "--db", type=click.Path(dir_okay=False), default=None, help="Results database (default: $EDGEKIT_DB or "
    "~/.local/share/edgekit/results.db).",
)  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgekit")
def main() -> None:
    """Take a trained vision model to edge devices and measure it there.

    \b
    The usual path:
      edgekit inspect model.onnx                      what is in the model, what each target cannot run
      edgekit quantize model.onnx --calib imgs/ -o q  INT8: QuantSpec, QDQ model, per-tensor error report
      edgekit build model.onnx -t x86-ort -o art      an artifact: model + manifest, addressed by content
      edgekit run art --source video.mp4              latency per stage, throughput, accuracy (this machine)
      edgekit run art --fleet lab.toml --source v     the same on every device of a fleet, over SSH
      edgekit report                                  every stored run, as a table, JSON, CSV or HTML
    Try it end to end with `edgekit demo` (add --int8 for the quantized model beside it).
    """


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option(
    "--shape", "shapes", multiple=True, metavar="NAME=D0,D1,..",
    help="Fix a dynamic input's shape for MAC counts, e.g. --shape x=1,3,640,640 (repeatable).",
)  # fmt: skip
@click.option("--max-rows", type=int, default=None, help="Show at most this many layers in the table.")
@click.option("-t", "--target", "targets", multiple=True, metavar="NAME",
              help="Check only this target (repeatable) and show its accelerator report, e.g. -t ios-coreml for "
              "the ops and shapes known to leave the Neural Engine, each with its source.")  # fmt: skip
@_fail_cleanly
def inspect(model: str, as_json: bool, shapes: tuple[str, ...], max_rows: int | None, targets: tuple[str, ...]) -> None:
    """Per-layer table of MODEL (op, output shape, parameters, MACs), totals, size, opset, the ops each
    registered target cannot run and the ops an accelerator (NNAPI, Neural Engine) hands back.

    \b
    Examples:
      edgekit inspect model.onnx --shape images=1,3,640,640
      edgekit inspect model.onnx -t ios-coreml          Neural Engine readiness, rule by rule"""
    from edgekit.errors import EdgekitError
    from edgekit.inspect import inspect_model, render_table
    from edgekit.model import Model

    input_shapes = {}
    for item in shapes:
        name, _, dims = item.partition("=")
        try:
            input_shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError as exc:
            raise EdgekitError(f"--shape {item!r}: write NAME=D0,D1,... with integer dims") from exc
    report = inspect_model(Model.load(model), input_shapes=input_shapes or None, targets=list(targets) or None)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render_table(report, _console(), max_rows=max_rows)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_fail_cleanly
def targets(as_json: bool) -> None:
    """List the registered targets and what each supports."""
    from edgekit.targets import list_targets

    described = [t.describe() for t in list_targets()]
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    from rich.table import Table

    table = Table(title="targets", title_justify="left")
    for column in ("name", "device", "engine", "precisions", "description"):
        table.add_column(column)
    for t in described:
        table.add_row(t["name"], t["device"], t["engine"], ", ".join(t["precisions"]), t["description"])
    _console().print(table)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-t", "--target", default="x86-ort", show_default=True, help="Target name (see `edgekit targets`).")
@click.option(
    "-p", "--precision", default="fp32", show_default=True, help="fp32, fp16, int8, ... as the target allows."
)
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Artifact folder to write.")
@click.option(
    "--preprocess", "preprocess_json", default=None, metavar="JSON",
    help='Override the preprocessing spec, e.g. \'{"resize": [224, 224], "color": "RGB", "mean": [0.485, 0.456, '
    '0.406], "std": [0.229, 0.224, 0.225]}\'. Keys left out take their defaults.',
)  # fmt: skip
@click.option("--calib", type=click.Path(exists=True), help="Calibration data for int8: image folder, video, .npy.")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, exists=True), help="A quant_spec.json to use.")
@click.option("--observer", default="minmax", show_default=True, help="Observer for --calib (see `edgekit observers`).")
@click.option("--dla", "dla_core", type=int, default=None, help="jetson-trt: run on DLA core N (0 or 1), GPU fallback.")
@click.option("--sparsity", default=None, metavar="2:4", help="jetson-trt: let TensorRT use 2:4 sparse kernels.")
@click.option("--max-batch", type=int, default=None, help="jetson-trt: largest batch of the optimization profile.")
@click.option("--int8-io", is_flag=True, default=None, help="android-tflite int8: int8 input/output tensors.")
@click.option(
    "--shapes",
    default=None,
    metavar="HxW,..",
    help="ios-coreml: enumerated input sizes besides the preprocess size, e.g. --shapes 256x256,320x320.",
)
@_fail_cleanly
def build(model: str, target: str, precision: str, out: str, preprocess_json: str | None, calib: str | None,
          spec_path: str | None, observer: str, dla_core: int | None, sparsity: str | None,
          max_batch: int | None, int8_io: bool | None, shapes: str | None) -> None:  # fmt: skip
    """Build an artifact of MODEL for a target: the model file(s) and manifest.json, whose sha256 is the
    artifact id (building twice gives the same id). int8 takes its scales from --spec (from `edgekit
    quantize`) or calibrates on --calib. --dla, --sparsity and --max-batch are jetson-trt options,
    --int8-io an android-tflite one, --shapes an ios-coreml one; other targets refuse them.

    \b
    Examples:
      edgekit build model.onnx --target android-tflite -p int8 --calib imgs/ --observer percentile -o art
      edgekit build model.onnx --target jetson-trt -p int8 --calib imgs/ --dla 0 -o art
      edgekit build model.onnx --target ios-coreml -p w8a8 --calib imgs/ --shapes 320x320 -o art"""
    from edgekit.api import build as build_artifact
    from edgekit.errors import EdgekitError
    from edgekit.model import Model

    loaded = Model.load(model)
    if preprocess_json:
        try:
            loaded.preprocess = json.loads(preprocess_json)
        except json.JSONDecodeError as exc:
            raise EdgekitError(f"--preprocess is not valid JSON: {exc}") from exc
    console = _console()
    artifact = build_artifact(
        loaded, target, out, precision=precision, quant_spec=spec_path, calib=calib, observer=observer, progress=True,
        options={"dla_core": dla_core, "sparsity": sparsity, "max_batch": max_batch, "int8_io": int8_io or None,
                 "shapes": shapes},
    )  # fmt: skip
    console.print(f"artifact [bold]{artifact.id[:16]}[/bold] ({target}/{precision}) written to {artifact.path}")
    for note in artifact.manifest.get("not_honoured", []):
        console.print(f"[yellow]not honoured:[/yellow] {note['what']}: {note['why']}")


@main.command()
def observers() -> None:
    """List the calibration observers and their settings."""
    from rich.table import Table

    from edgekit.calibration.observers import list_observers

    table = Table(title="observers (edgekit quantize --observer NAME)", title_justify="left")
    for column in ("name", "what it does", "settings"):
        table.add_column(column)
    for info in list_observers():
        table.add_row(info.name, info.description, json.dumps(info.settings))
    _console().print(table)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", required=True, type=click.Path(exists=True),
              help="Calibration data: image folder (searched recursively), video file, .npy or .npz.")  # fmt: skip
@click.option("--observer", default="minmax", show_default=True, help="minmax, percentile, entropy or mse.")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="Observer setting, e.g. --setting percentile=99.9 (repeatable).")  # fmt: skip
@click.option("-t", "--target", default="x86-ort", show_default=True,
              help="Target whose quantization scheme to use (x86-ort: uint8 activations).")  # fmt: skip
@click.option("--activations", default=None, help="Override the scheme: uint8_asym, int8_sym or int8_asym.")
@click.option("--weights", default=None, help="Override the weight scheme: int8_per_channel, int7_per_channel "
              "(x86 without VNNI), int8_per_tensor, int7_per_tensor.")  # fmt: skip
@click.option("--limit", type=int, default=None, help="Use at most this many calibration samples.")
@click.option("--eval", "eval_data", type=click.Path(exists=True),
              help="Labelled data: image folder with class sub-folders, or a video with --labels.")  # fmt: skip
@click.option("--labels", type=click.Path(dir_okay=False, exists=True), help="Per-frame labels of an --eval video.")
@click.option("--max-drop", type=float, default=None, help="Accuracy budget: top-1 may fall at most this many points.")
@click.option("--min-sqnr", type=float, default=None, help="Accuracy budget: output SQNR at least this many dB.")
@click.option("--keep-float", multiple=True, metavar="NODE", help="Keep this node in float (repeatable).")
@click.option("--equalize", is_flag=True, help="Cross-layer equalization first (Conv-ReLU-Conv chains, depthwise too).")
@click.option("--bias-correction", is_flag=True, help="Correct each quantized Conv/Gemm bias by its mean output shift.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Also write the report as an HTML page.")
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True,
              help="Folder for model.onnx (QDQ), quant_spec.json and report.json.")  # fmt: skip
@_fail_cleanly
def quantize(model: str, calib: str, observer: str, settings: tuple[str, ...], target: str, activations: str | None,
             weights: str | None, limit: int | None, eval_data: str | None, labels: str | None, max_drop: float | None,
             min_sqnr: float | None, keep_float: tuple[str, ...], equalize: bool, bias_correction: bool,
             html_file: str | None, out: str) -> None:  # fmt: skip
    """Post-training quantization of MODEL: one streaming calibration pass, a QuantSpec, a QDQ model, and
    a per-tensor error report. With --max-drop or --min-sqnr the most sensitive layers stay float until
    the budget is met.

    \b
    Examples:
      edgekit quantize m.onnx --calib images/ -o q
      edgekit quantize m.onnx --calib images/ --observer percentile --setting percentile=99.9 -o q
      edgekit quantize m.onnx --calib images/ --eval labelled/ --max-drop 0.5 -o q
    """
    from edgekit.calibration.data import load_labelled
    from edgekit.calibration.error_report import print_error_table
    from edgekit.calibration.quantize import quantize as run_quantize
    from edgekit.calibration.quantize import save_quantized
    from edgekit.fleet.plan import read_labels
    from edgekit.model import Model
    from edgekit.targets import get_target
    from edgekit.targets.tensorrt_cache import CACHE_FILE_NAME, write_trt_cache

    loaded = Model.load(model)
    observer_settings = {}
    for item in settings:
        key, _, value = item.partition("=")
        observer_settings[key] = json.loads(value) if value.strip() else value
    eval_feeds = eval_labels = None
    if eval_data:
        eval_feeds, eval_labels = load_labelled(
            eval_data, spec=loaded.preprocess, input_name=loaded.inputs[0].name,
            labels=read_labels(labels) if labels else None, class_names=loaded.class_names,
        )  # fmt: skip
    result = run_quantize(
        loaded, calib, observer=observer, observer_settings=observer_settings,
        activations=activations or get_target(target).activation_scheme,
        weights=weights or get_target(target).weight_scheme, float_nodes=keep_float, limit=limit,
        eval_feeds=eval_feeds, eval_labels=eval_labels, max_drop=max_drop, min_sqnr=min_sqnr, equalize=equalize,
        bias_correction=bias_correction,
    )  # fmt: skip
    folder = save_quantized(result, out)
    write_trt_cache(result.spec, folder / CACHE_FILE_NAME)  # for implicit INT8 on older JetPacks
    if html_file:
        from edgekit.calibration.error_report import report_html

        Path(html_file).write_text(report_html(result.report()))
    console = _console()
    console.print(result.spec.summary())
    print_error_table(result.errors, console)
    if result.accuracy:
        console.print("top-1: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in result.accuracy.items()))
    if result.budget is not None:
        console.print(f"budget met with {len(result.budget.float_nodes)} node(s) kept float: "
                      f"{', '.join(result.budget.float_nodes) or 'none'}")  # fmt: skip
    console.print(f"calibration {result.timings_s['calibration']:.2f} s; wrote {folder}/model.onnx, "
                  "quant_spec.json, report.json")  # fmt: skip


@main.command()
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option(
    "-s", "--source", required=True,
    help="Video file, image folder (class sub-folders give labels), camera index, rtsp:// URL or GStreamer pipeline.",
)  # fmt: skip
@click.option("--labels", type=click.Path(dir_okay=False), help="Per-frame class indices: JSON list or one per line.")
@click.option("--frames", type=int, default=None, help="Frames to time after warm-up (default: the whole file).")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed frames run first.")
@click.option("--pipelined", is_flag=True, help="Run capture, preprocess, inference, postprocess in threads.")
@click.option("--threads", type=int, default=None, help="Engine threads (default: the engine's own choice).")
@click.option("-e", "--engine-option", "engine_option_items", multiple=True, metavar="KEY=VALUE",
              help="Engine option (repeatable): compute_units=CPU_AND_NE (coreml: ALL, CPU_ONLY, CPU_AND_GPU, "
              "CPU_AND_NE), delegate=nnapi (tflite: xnnpack, none, gpu, nnapi), ...")  # fmt: skip
@click.option("--loop", is_flag=True, help="Restart a file source at its end until --frames are done.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds before the run is stopped.")
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
@_DB_OPTION
@_fail_cleanly
def run(artifact: str, source: str, labels: str | None, frames: int | None, warmup: int, pipelined: bool,
        threads: int | None, engine_option_items: tuple[str, ...], loop: bool, timeout: float, fleet: str | None,
        tags: tuple[str, ...], names: tuple[str, ...], source_on_device: bool, power_probe: str | None,
        trust_on_first_use: bool, db: str | None) -> None:  # fmt: skip
    """Run ARTIFACT on this machine as the device (the agent in a subprocess), or with --fleet on every
    device of a fleet file in parallel over SSH; print latency per stage, throughput, accuracy and power,
    and store every run.

    \b
    Examples:
      edgekit run art --source clip.mp4 --labels clip.labels.json
      edgekit run art --fleet lab.toml --tags jetson --source clip.mp4 --power auto
      edgekit run art --fleet lab.toml --source 0 --source-on-device --frames 300
      edgekit run art --fleet lab.toml --tags mac --source clip.mp4 -e compute_units=CPU_AND_NE
    """
    from edgekit.api import run as run_artifact

    engine_options = _engine_options(engine_option_items)
    store = _store(db)
    console = _console()
    if fleet:
        _run_fleet(artifact, fleet, source, store, console, tags=list(tags), names=list(names),
                   source_on_device=source_on_device, labels=labels, frames=frames, warmup=warmup,
                   pipelined=pipelined, threads=threads, engine_options=engine_options, loop=loop,
                   power_probe=power_probe, timeout_s=timeout,
                   trust_on_first_use=trust_on_first_use)  # fmt: skip
        return
    with console.status(f"running {artifact} on this machine"):
        record = run_artifact(
            artifact, source, labels=labels, frames=frames, warmup=warmup, pipelined=pipelined, threads=threads,
            engine_options=engine_options, loop=loop, timeout_s=timeout, store=store,
        )  # fmt: skip
    _print_run(record.run_id, store, console)
    if record.result["status"] != "ok":
        sys.exit(1)


def _engine_options(items: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; a value that reads as JSON (a number, true/false) is taken as that, otherwise as text."""
    from edgekit.errors import EdgekitError

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EdgekitError(f"--engine-option {item!r}: write KEY=VALUE, e.g. -e compute_units=CPU_AND_NE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _run_fleet(artifact: str, fleet: str, source: str, store: Any, console: Any, **options: Any) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from edgekit.api import run_fleet
    from edgekit.report import print_runs_table

    bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console, transient=True)
    tasks: dict[str, Any] = {}

    def progress_for(device: Any) -> Any:
        tasks[device.name] = bars.add_task(f"{device.name}: push", total=None)

        def update(sent: int, total: int) -> None:
            bars.update(tasks[device.name], completed=sent, total=total, description=f"{device.name}: push")

        return update

    def on_done(record: Any) -> None:
        if record.device in tasks:
            bars.update(tasks[record.device], description=f"{record.device}: {record.result['status']}")
        colour = "green" if record.ok else "red"
        console.print(f"[{colour}]{record.device}: {record.result['status']}[/] (run {record.run_id})")

    with bars:
        records = run_fleet(artifact, fleet, source, store=store, on_done=on_done, progress_for=progress_for,
                            **options)  # fmt: skip
    stored = store.get([r.run_id for r in records])
    print_runs_table(stored, console)
    if not all(r.ok for r in records):
        sys.exit(1)


@main.group()
def devices() -> None:
    """Devices of a fleet file."""


@devices.command("check")
@click.option("--fleet", type=click.Path(dir_okay=False, exists=True), required=True, help="The fleet file (TOML).")
@click.option("--tags", multiple=True, help="Only devices carrying this tag (repeatable).")
@click.option("--device", "names", multiple=True, help="Only this device (repeatable).")
@click.option("--trust-on-first-use", is_flag=True, help="Accept and save unknown SSH host keys (never changed ones).")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@_fail_cleanly
def devices_check(fleet: str, tags: tuple[str, ...], names: tuple[str, ...], trust_on_first_use: bool,
                  as_json: bool) -> None:  # fmt: skip
    """Connect to each device and report: reachable, Python, engines, CPU, GPU, free disk, power probe."""
    from rich.table import Table

    from edgekit.api import check_devices

    console = _console()
    with console.status(f"checking the devices of {fleet}"):
        facts = check_devices(fleet, tags=list(tags), names=list(names), trust_on_first_use=trust_on_first_use)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        table = Table(title=f"devices in {fleet}", title_justify="left")
        for column in ("device", "reachable", "python", "engines", "cpu", "gpu", "free disk", "power probe"):
            table.add_column(column)
        for f in facts:
            free = f.get("disk.free_bytes")
            table.add_row(
                f["name"], _reachability(f), str(f.get("python", "-")),
                ", ".join(f.get("engines") or []) or "-", str(f.get("cpu", "-")),
                ", ".join(f.get("gpu.names") or []) or "-",
                f"{free / 1e9:.1f} GB" if isinstance(free, (int, float)) else "-", str(f.get("power_probe") or "-"),
            )  # fmt: skip
        console.print(table)
    if not all(f["reachable"] and not f.get("error") for f in facts):
        sys.exit(1)


def _reachability(facts: dict[str, Any]) -> str:
    if not facts["reachable"]:
        return f"[red]no[/]: {facts.get('error', '')}"
    return f"[yellow]yes, but[/]: {facts['error']}" if facts.get("error") else "yes"


def _print_run(run_id: str, store: Any, console: Any) -> None:
    from edgekit.report import print_stage_table

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
    console.print(line)
    for error in result.get("errors", []):
        console.print(f"[red]{error.get('stage', '?')} error:[/red] {error.get('message', '')}")
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"run [bold]{run_id}[/bold] ({result['status']}) stored in {store.path}")


@main.command()
@click.argument("runs", nargs=-1)
@click.option("--last", type=int, default=20, show_default=True, help="With no RUN ids: the latest N runs.")
@click.option("--json", "as_json", is_flag=True, help="Print plans, results and manifests as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per run.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Write an HTML report with histograms.")
@_DB_OPTION
@_fail_cleanly
def report(
    runs: tuple[str, ...], last: int, as_json: bool, as_csv: bool, html_file: str | None, db: str | None
) -> None:
    """Show stored runs (by id or id prefix; default the latest) as a table, JSON, CSV or HTML."""
    from edgekit import report as reports

    store = _store(db)
    stored = store.get(list(runs) or None, last=last)
    if as_json:
        click.echo(reports.to_json(stored))
    elif as_csv:
        click.echo(reports.to_csv(stored), nl=False)
    else:
        if not stored:
            click.echo(f"no runs stored in {store.path} yet; try `edgekit demo`")
            return
        console = _console()
        reports.print_runs_table(stored, console)
        if len(runs) == 1:
            reports.print_stage_table(stored[0], console)
    if html_file:
        Path(html_file).write_text(reports.to_html(stored))
        click.echo(f"HTML report written to {html_file}", err=True)


@main.command()
@click.option(
    "--workdir", type=click.Path(file_okay=False), default=None, help="Where to write the video and artifact."
)
@click.option("--frames", type=int, default=None, help="Frames to time (default: all held-out digits).")
@click.option("--pipelined", is_flag=True, help="Run the pipeline with a thread per stage.")
@click.option("--int8", is_flag=True, help="Also quantize (calibrating on the video) and run INT8 beside FP32.")
@_DB_OPTION
@_fail_cleanly
def demo(workdir: str | None, frames: int | None, pipelined: bool, int8: bool, db: str | None) -> None:
    """The main job end to end on real data: a CNN trained on real handwritten digits, held-out digits
    rendered into a video, an x86-ort artifact, the camera pipeline run on this machine."""
    from edgekit.demo import run_demo

    store = _store(db)
    console = _console()
    records = run_demo(workdir=workdir, frames=frames, pipelined=pipelined, store=store, console=console, int8=int8)
    for record in records:
        _print_run(record.run_id, store, console)
    if len(records) > 1:
        from edgekit.report import print_runs_table

        print_runs_table(store.get([r.run_id for r in records]), console)
    if any(r.result["status"] != "ok" for r in records):
        sys.exit(1)


# -- compression on torch models: prune, distill, qat -------------------------------------------------------


def _model_options(func: Any) -> Any:
    """The options every compression command shares: which model, which data, how long to train."""
    options = [
        click.option("--model", "model_path", metavar="MODULE:ATTR", default=None,
                     help="A torch nn.Module (or a zero-argument factory of one) by import path, e.g. "
                     "mypkg.nets:trained_net. Its weights are taken as they are (trained).",),
        click.option("--demo", is_flag=True, help="Use the demo's digit CNN instead, trained here from scratch "
                     "on the demo digits for --demo-epochs."),
        click.option("--demo-epochs", type=click.IntRange(min=0), default=5, show_default=True,
                     help="Training epochs of the --demo model before compressing it."),
        click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
                     help="Labelled image folder (one sub-folder per class), split 80/20 train/eval. "
                     "Default: the 1,000 demo digits shipped with edgekit (800 train, 200 eval)."),
        click.option("--preprocess", "preprocess_json", default=None, metavar="JSON",
                     help="Preprocessing spec for --data images (default: the digits' 28x28 gray spec)."),
        click.option("--epochs", type=click.IntRange(min=0), default=3, show_default=True,
                     help="Training epochs of the compression step."),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("-o", "--out", type=click.Path(file_okay=False), required=True,
                     help="Output folder (model.onnx, ...)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _compress_setup(model_path: str | None, demo: bool, data: str | None, preprocess_json: str | None,
                    batch_size: int, demo_epochs: int, *, need_model: bool = True) -> dict[str, Any]:  # fmt: skip
    """Load the data (loaders, eval arrays, spec, class names) and the model of a compression command."""
    from edgekit.compress import fit as fitting
    from edgekit.errors import EdgekitError

    spec: dict[str, Any] = dict(fitting.DIGITS_PREPROCESS)
    if preprocess_json:
        try:
            spec.update(json.loads(preprocess_json))
        except json.JSONDecodeError as exc:
            raise EdgekitError(f"--preprocess is not valid JSON: {exc}") from exc
    if data:
        train, held, classes = fitting.folder_loaders(data, spec, batch_size)
    else:
        train, held = fitting.digits_loaders(batch_size)
        classes = list(fitting.DIGIT_CLASSES)
    setup: dict[str, Any] = {"train": train, "eval": held, "spec": spec, "classes": classes}
    setup["example"] = next(iter(train))[0][:1].clone()
    setup["eval_arrays"] = fitting.loader_arrays(held)
    if not need_model:
        return setup
    if bool(model_path) == bool(demo):
        raise click.UsageError("give exactly one of --model MODULE:ATTR or --demo")
    if demo:
        module = fitting.train_demo_model(train, epochs=demo_epochs, classes=len(classes))
    else:
        module = fitting.load_torch_model(str(model_path))
    _check_classes(module, setup, "the model")
    setup["model"] = module.eval()
    return setup


def _output_classes(module: Any, example: Any) -> int:
    import torch

    with torch.no_grad():
        out = module(example)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return int(out.shape[-1])


def _check_classes(run: Any, setup: dict[str, Any], label: str, *, mismatch: str = "but the data has") -> int:
    """How many classes `run` (a module or teacher callable) predicts on the data's input; an input it
    cannot take, or a class count that differs from the data's, is a clear error."""
    from edgekit.errors import EdgekitError

    try:
        n = _output_classes(run.eval() if hasattr(run, "eval") else run, setup["example"])
    except Exception as exc:  # the user's model (or ORT) may raise anything on an input it does not take
        raise EdgekitError(
            f"{label} does not run on the data's input of shape {list(setup['example'].shape)} "
            f"({type(exc).__name__}: {exc}); pass --data/--preprocess that match it"
        ) from exc
    if n != len(setup["classes"]):
        raise EdgekitError(
            f"{label} outputs {n} classes {mismatch} {len(setup['classes'])} ({', '.join(setup['classes'])})"
        )
    return n


def _export(module: Any, setup: dict[str, Any]) -> Any:
    from edgekit.model import Model

    return Model.from_torch(module, setup["example"], preprocess=setup["spec"], class_names=setup["classes"])


def _print_table(before: Any, after: Any, setup: dict[str, Any], names: tuple[str, str], console: Any) -> None:
    from edgekit.compress.compare import before_after, ort_top1, print_before_after

    eval_fn = ort_top1(*setup["eval_arrays"])
    rows = before_after(before, after, eval_fn, names=names)
    print_before_after(
        rows, console, title=f"{names[0]} vs {names[1]} (ONNX Runtime, {len(setup['eval_arrays'][1])} eval images)"
    )


def _library_errors() -> tuple[type[Exception], ...]:
    from edgekit.compress.structured import ChannelPruneError

    return (ValueError, ChannelPruneError)


def _prune_structured(work: Any, original: Any, setup: dict[str, Any], console: Any, *, out: str, ratio: float,
                      criterion: str, multiple_of: int, target_macs: float | None, rounds: int,
                      max_drop: float | None, epochs: int, lr: float, distill: bool, coupled: str) -> Any:  # fmt: skip
    """Channel pruning for `edgekit prune --structured`: one cut by --ratio, or rounds toward --target-macs."""
    from edgekit.compress import fit as fitting
    from edgekit.compress.channel_schedule import prune_channels_iteratively
    from edgekit.compress.structured import prune_channels

    def fine_tune(model: Any) -> None:
        fitting.fit(
            model,
            setup["train"],
            epochs=epochs,
            lr=lr,
            description="fine-tuning",
            checkpoint=Path(out) / LAST_GOOD,
            loss_fn=_teacher_loss(model, original) if distill else None,
        )

    if target_macs is None:
        result = prune_channels(work, setup["example"], ratio=ratio, criterion=criterion, multiple_of=multiple_of,
                                coupled=coupled)  # type: ignore[arg-type]  # fmt: skip
        for name, reason in result.report.skipped.items():
            console.print(f"[yellow]{name} not pruned:[/yellow] {reason}")
        fine_tune(result.model)
        return result.model

    def top1(model: Any) -> float:
        return fitting.evaluate(model, setup["eval"]) * 100

    scheduled = prune_channels_iteratively(
        work, setup["example"], fine_tune, top1, target_macs=target_macs, steps=rounds, max_drop=max_drop,
        criterion=criterion, multiple_of=multiple_of, coupled=coupled,  # type: ignore[arg-type]
    )  # fmt: skip
    for step in scheduled.rounds:
        verdict = "kept" if step.accepted else f"undone (more than {max_drop} pts below {scheduled.baseline:.2f}%)"
        console.print(f"round {step.round}: {step.macs_fraction:.0%} of the MACs, top-1 {step.metric:.2f}%, {verdict}")
    if all(step.accepted for step in scheduled.rounds) and not scheduled.reached_target:
        console.print(
            f"[yellow]{scheduled.macs_fraction:.0%} of the MACs is as far as channels in multiples of "
            f"{multiple_of} go on this model (target {target_macs:.0%}): lower --multiple-of[/yellow]"
        )
    return scheduled.model


def _teacher_loss(student: Any, teacher: Any) -> Any:
    """Knowledge distillation from `teacher` (a frozen copy) into `student`: the loss for `fit`."""
    import copy

    from edgekit.compress.distill import Distiller

    return Distiller(student, copy.deepcopy(teacher).eval(), temperature=4.0, alpha=0.5).loss


@main.command()
@_model_options
@click.option("--structured", is_flag=True, help="Remove whole conv channels (a smaller, faster network).")
@click.option("--ratio", type=float, default=0.5, show_default=True, help="--structured: fraction of channels removed.")
@click.option("--criterion", type=click.Choice(["l1", "l2", "bn_gamma"]), default="l1", show_default=True,
              help="--structured: how channels are scored.")  # fmt: skip
@click.option("--multiple-of", type=click.IntRange(min=1), default=8, show_default=True,
              help="--structured: keep channel counts a multiple of N (fast kernels want 8; 1 = exact).")  # fmt: skip
@click.option(
    "--sparsity", type=float, default=0.8, show_default=True, help="Unstructured: fraction of weights zeroed."
)
@click.option("--schedule", type=click.Choice(["cubic", "oneshot"]), default="cubic", show_default=True,
              help="Unstructured: reach --sparsity gradually over the first half of training, or at once.")  # fmt: skip
@click.option(
    "--target-macs",
    type=float,
    default=None,
    metavar="F",
    help="--structured: prune until this fraction of the MACs remains (instead of --ratio), e.g. 0.5.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="--structured --target-macs: reach it in N cut + fine-tune rounds of --epochs each.",
)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    metavar="PTS",
    help="--structured --target-macs: stop at the last round whose top-1 is within PTS points of the original's.",
)
@click.option(
    "--keep-residual",
    is_flag=True,
    help="--structured: leave channel groups joined by residual additions whole and prune inside the blocks "
    "(MobileNetV2-style nets: more speed for the same MACs).",
)
@click.option("--distill", is_flag=True,
              help="Fine-tune with the unpruned model as the teacher (Hinton KD, T=4, alpha=0.5): recovers more "
              "accuracy per epoch, at the cost of a teacher forward pass per step.")  # fmt: skip
@_fail_cleanly
def prune(model_path: str | None, demo: bool, demo_epochs: int, data: str | None, preprocess_json: str | None,
          epochs: int, lr: float, batch_size: int, out: str, structured: bool, ratio: float, criterion: str,
          multiple_of: int, sparsity: float, schedule: str, target_macs: float | None, rounds: int,
          max_drop: float | None, keep_residual: bool, distill: bool) -> None:  # fmt: skip
    """Prune a torch model, fine-tune it, export it and compare before/after.

    \b
    Structured pruning removes whole conv channels (fewer params, MACs and ms on any runtime);
    unstructured magnitude pruning zeroes single weights (smaller only once compressed, faster only on
    sparse kernels). Writes OUT/model.onnx.
    \b
    Examples:
      edgekit prune --demo --structured --ratio 0.5 --distill -o pruned
      edgekit prune --demo --structured --target-macs 0.5 --rounds 3 --epochs 2 --distill -o pruned
      edgekit prune --model mypkg.nets:mobilenet --data imgs/ --structured --target-macs 0.5 --keep-residual -o out
      edgekit prune --demo --sparsity 0.8 --schedule cubic --epochs 5 -o sparse
      edgekit prune --model mypkg.nets:trained_net --data imgs/ --structured --criterion bn_gamma -o out
    """
    import copy

    import torch

    from edgekit.compress import fit as fitting
    from edgekit.errors import EdgekitError

    if target_macs is not None and not (structured and 0.0 < target_macs < 1.0):
        raise click.BadParameter(f"{target_macs}: a fraction in (0, 1), with --structured", param_hint="--target-macs")
    if (rounds > 1 or max_drop is not None) and target_macs is None:
        raise click.UsageError("--rounds and --max-drop go with --structured --target-macs")
    if structured and not 0.0 < ratio < 1.0:
        raise click.BadParameter(
            f"{ratio} must be in (0, 1): a ratio of 1 would remove every channel", param_hint="--ratio"
        )
    if not structured and not 0.0 < sparsity < 1.0:
        raise click.BadParameter(f"{sparsity} must be in (0, 1)", param_hint="--sparsity")
    console = _console()
    setup = _compress_setup(model_path, demo, data, preprocess_json, batch_size, demo_epochs)
    original = setup["model"]
    before = _export(copy.deepcopy(original), setup)
    work = copy.deepcopy(original)
    try:
        if structured:
            work = _prune_structured(work, original, setup, console, out=out, ratio=ratio, criterion=criterion,
                                     multiple_of=multiple_of, target_macs=target_macs, rounds=rounds,
                                     max_drop=max_drop, epochs=epochs, lr=lr, distill=distill,
                                     coupled="keep" if keep_residual else "prune")  # fmt: skip
        else:
            from edgekit.compress.pruning import CubicSchedule, MagnitudePruner, OneShotSchedule

            steps = max(1, epochs * len(setup["train"]))
            chosen = (
                CubicSchedule(0.0, sparsity, 0, max(1, steps // 2))
                if schedule == "cubic"
                else OneShotSchedule(sparsity)
            )
            pruner = MagnitudePruner(work, chosen)
            fitting.fit(
                work,
                setup["train"],
                epochs=epochs,
                lr=lr,
                on_step=pruner.step,
                description="pruning",
                checkpoint=Path(out) / LAST_GOOD,
                loss_fn=_teacher_loss(work, original) if distill else None,
            )
            pruner.apply(sparsity)  # the target, even when training was too short to reach it
            pruner.remove()
            with torch.no_grad():
                zeros = sum(int((m.weight == 0).sum()) for m in pruner.layers.values())
                total = sum(m.weight.numel() for m in pruner.layers.values())
            console.print(f"{zeros}/{total} prunable weights are zero ({zeros / total * 100:.1f}%)")
    except _library_errors() as exc:
        raise EdgekitError(str(exc)) from exc
    after = _export(work.eval(), setup)
    Path(out).mkdir(parents=True, exist_ok=True)
    after.save(Path(out) / "model.onnx")
    _print_table(before, after, setup, ("original", "pruned"), console)
    console.print(f"pruned model written to {Path(out) / 'model.onnx'}")


@main.command()
@_model_options
@click.option("--teacher", required=True, metavar="T.onnx|MODULE:ATTR",
              help="The teacher: an .onnx file (run by ONNX Runtime) or a torch module by import path.")  # fmt: skip
@click.option("--student", "student_path", metavar="MODULE:ATTR", default=None,
              help="The student to train: a torch module or zero-argument factory by import path.")  # fmt: skip
@click.option("--demo-student", is_flag=True, help="Use a half-width demo digit CNN (from scratch) as the student.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="Softmax temperature of the distillation term.")  # fmt: skip
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of the distillation term (1 - alpha weights the hard labels).")  # fmt: skip
@_fail_cleanly
def distill(model_path: str | None, demo: bool, demo_epochs: int, data: str | None, preprocess_json: str | None,
            epochs: int, lr: float, batch_size: int, out: str, teacher: str, student_path: str | None,
            demo_student: bool, temperature: float, alpha: float) -> None:  # fmt: skip
    """Train a small student to mimic a teacher (knowledge distillation), export it, compare the two.

    \b
    The teacher's softened outputs (--temperature) and the true labels (weighted by --alpha) train the
    student for --epochs. Writes OUT/model.onnx (the student). --model/--demo are not used here.
    \b
    Examples:
      edgekit distill --teacher edgekit/assets/digits_cnn.onnx --demo-student --epochs 5 -o student
      edgekit distill --teacher big.onnx --student mypkg.nets:small_net --data imgs/ -o student
    """
    from edgekit.compress import fit as fitting
    from edgekit.compress.distill import Distiller, OnnxTeacher
    from edgekit.errors import EdgekitError
    from edgekit.model import Model

    if bool(student_path) == bool(demo_student):
        raise click.UsageError("give exactly one of --student MODULE:ATTR or --demo-student")
    console = _console()
    setup = _compress_setup(None, False, data, preprocess_json, batch_size, demo_epochs, need_model=False)
    if teacher.endswith(".onnx") or Path(teacher).is_file():
        teacher_model = Model.load(teacher)
        teacher_fn: Any = OnnxTeacher(teacher_model)
    else:
        module = fitting.load_torch_model(teacher, role="--teacher").eval()
        teacher_model = _export(module, setup)
        teacher_fn = module
    _check_teacher(teacher_fn, setup, teacher)
    if demo_student:
        import torch

        torch.manual_seed(0)
        student = fitting.DigitsCNN(width=4, classes=len(setup["classes"]), size=int(setup["example"].shape[-1]))
    else:
        student = fitting.load_torch_model(str(student_path), role="--student")
    _check_classes(student, setup, "the student")
    try:
        distiller = Distiller(student, teacher_fn, temperature=temperature, alpha=alpha)
    except ValueError as exc:
        raise EdgekitError(str(exc)) from exc
    fitting.fit(
        student,
        setup["train"],
        epochs=epochs,
        lr=lr,
        loss_fn=distiller.loss,
        description="distilling",
        checkpoint=Path(out) / LAST_GOOD,
    )
    after = _export(student.eval(), setup)
    Path(out).mkdir(parents=True, exist_ok=True)
    after.save(Path(out) / "model.onnx")
    _print_table(teacher_model, after, setup, ("teacher", "student"), console)
    console.print(f"student written to {Path(out) / 'model.onnx'}")


def _check_teacher(teacher_fn: Any, setup: dict[str, Any], label: str) -> None:
    _check_classes(teacher_fn, setup, f"the teacher {label}",
                   mismatch="but the student learns")  # fmt: skip


@main.command()
@_model_options
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Start activation scales from this quant_spec.json (default: calibrate).")  # fmt: skip
@click.option("--learnable", is_flag=True, help="Learn the quantization scales too (LSQ).")
@_fail_cleanly
def qat(model_path: str | None, demo: bool, demo_epochs: int, data: str | None, preprocess_json: str | None,
        epochs: int, lr: float, batch_size: int, out: str, spec_path: str | None, learnable: bool) -> None:  # fmt: skip
    """Quantization-aware training: fine-tune with int8 fake quantization, export, compare FP32 vs int8.

    \b
    BatchNorm is folded, every Conv2d/Linear fake-quantizes its weights (x86-ort's int7 per channel)
    and inputs (uint8), the model trains for --epochs, then OUT/ gets model.onnx (QDQ), model_float.onnx,
    quant_spec.json (for `edgekit build -p int8 --spec`) and x86-ort-int8/ (the built int8 artifact).
    \b
    Examples:
      edgekit qat --demo --epochs 2 -o qat
      edgekit qat --model mypkg.nets:trained_net --data imgs/ --learnable -o qat
      edgekit build qat/model_float.onnx -p int8 --spec qat/quant_spec.json -o art
    """
    import copy

    from edgekit.api import build as build_artifact
    from edgekit.compress import fit as fitting
    from edgekit.compress.qat import export_qat, prepare_qat
    from edgekit.errors import EdgekitError
    from edgekit.model import Model

    console = _console()
    setup = _compress_setup(model_path, demo, data, preprocess_json, batch_size, demo_epochs)
    original = setup["model"]
    before = _export(copy.deepcopy(original), setup)
    init = None
    if spec_path:
        from edgekit.calibration.quant_spec import QuantSpec

        init = QuantSpec.load(spec_path)
    calib = [x for x, _ in list(setup["train"])[:4]]
    try:
        prepared = prepare_qat(copy.deepcopy(original), setup["example"], init=init,
                               calib_batches=None if init else calib, learnable=learnable)  # fmt: skip
    except ValueError as exc:
        raise EdgekitError(str(exc)) from exc
    fitting.fit(prepared, setup["train"], epochs=epochs, lr=lr, description="QAT", checkpoint=Path(out) / LAST_GOOD)
    # the calibration batches also complete the learned spec (conv outputs, pooling, logits) for full-integer targets
    float_model, spec = export_qat(prepared.eval(), setup["example"], out, preprocess=setup["spec"],
                                   class_names=setup["classes"], calib_batches=calib)  # fmt: skip
    artifact = build_artifact(float_model, "x86-ort", Path(out) / "x86-ort-int8", precision="int8", quant_spec=spec)
    int8 = Model.load(artifact.model_path)
    _print_table(before, int8, setup, ("fp32", "qat int8 (x86-ort)"), console)
    console.print(f"QAT export written to {out} (model.onnx, model_float.onnx, quant_spec.json); "
                  f"int8 artifact {artifact.id[:16]} in {artifact.path}")  # fmt: skip


if __name__ == "__main__":
    main()
