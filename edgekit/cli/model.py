"""Commands on a model: inspect, targets, observers, quantize, build."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import (
    build_option_values,
    build_options_option,
    fail_cleanly,
    make_console,
    parse_json_object,
    parse_key_values,
    preprocess_option,
    task_options,
    with_preprocess,
)

rounding_option = click.option(
    "--rounding",
    type=click.Choice(["nearest", "adaround"]),
    default="nearest",
    show_default=True,
    help="Weight rounding: round-to-nearest, or AdaRound (learned per layer on a few calibration samples; "
    "needs edgekit[torch]; minutes on a CPU).",
)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=D0,D1,..",
    help="Fix a dynamic input's shape for MAC counts, e.g. --shape x=1,3,640,640 (repeatable).",
)
@click.option("--max-rows", type=int, default=None, help="Show at most this many layers in the table.")
@click.option(
    "-t",
    "--target",
    "targets",
    multiple=True,
    metavar="NAME",
    help="Check only this target (repeatable) and show its accelerator report, e.g. -t ios-coreml for "
    "the ops and shapes known to leave the Neural Engine, each with its source.",
)
@build_options_option(
    "A build option of the targets named with -t, so the refusals are those of that build, e.g. "
    "-t jetson-trt -O trt_version=10.3 (repeatable; `edgekit targets --options NAME` lists them)."
)
@preprocess_option
@fail_cleanly
def inspect(
    model: str,
    as_json: bool,
    shapes: tuple[str, ...],
    max_rows: int | None,
    targets: tuple[str, ...],
    option_items: tuple[str, ...],
    preprocess_json: str | None,
) -> None:
    """Per-layer table of MODEL (op, output shape, parameters, MACs), totals, size, opset, the ops each
    registered target cannot run (with -t: every node its build would refuse, and why) and the ops an
    accelerator (NNAPI, Neural Engine) hands back; the preprocessing key by key with where each value came
    from (the model's metadata, an exporter's, its input, --preprocess, or the default).

    \b
    Examples:
      edgekit inspect model.onnx --shape images=1,3,640,640
      edgekit inspect model.onnx -t ios-coreml          Neural Engine readiness, rule by rule
      edgekit inspect vit.onnx -t jetson-trt -O trt_version=10.3   what TensorRT 10.3 (JetPack 6.1+) refuses"""
    from edgekit.inspect import inspect_model, render_table
    from edgekit.model import Model

    input_shapes = _input_shapes(shapes)
    options = build_option_values(option_items, example="-O trt_version=10.3")
    if options and not targets:
        raise click.UsageError("-O sets build options of the targets named with -t; name one, e.g. -t jetson-trt")
    report = inspect_model(
        with_preprocess(Model.load(model), preprocess_json),
        input_shapes=input_shapes or None,
        targets=list(targets) or None,
        options=options,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render_table(report, make_console(), max_rows=max_rows)


def _input_shapes(items: tuple[str, ...]) -> dict[str, list[int]]:
    """--shape NAME=D0,D1,.. items as {input name: dims}."""
    from edgekit.errors import EdgekitError

    shapes = {}
    for name, dims in parse_key_values(items, option_name="--shape", example="--shape x=1,3,640,640").items():
        try:
            shapes[name] = [int(d) for d in str(dims).split(",")]
        except ValueError as exc:
            raise EdgekitError(f"--shape {name}={dims}: write NAME=D0,D1,... with integer dims") from exc
    return shapes


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option(
    "--options",
    "options_of",
    metavar="NAME",
    default=None,
    help="List the build options of target NAME (`edgekit build -O KEY=VALUE`).",
)
@fail_cleanly
def targets(as_json: bool, options_of: str | None) -> None:
    """List the registered targets and what each supports; with --options NAME, the build options of one.

    \b
    Examples:
      edgekit targets
      edgekit targets --options jetson-trt     then: edgekit build ... -t jetson-trt -O dla_core=0"""
    from edgekit.targets import get_target, list_targets

    if options_of is not None:
        _print_target_options(get_target(options_of).describe(), as_json)
        return
    described = [t.describe() for t in list_targets()]
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    from rich.table import Table

    table = Table(title="targets", title_justify="left")
    for column in ("name", "device", "engine", "precisions", "options (-O)", "description"):
        table.add_column(column)
    for t in described:
        options = ", ".join(o["name"] for o in t["options"]) or "-"
        table.add_row(t["name"], t["device"], t["engine"], ", ".join(t["precisions"]), options, t["description"])
    make_console().print(table)


def _print_target_options(described: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(described["options"], indent=2))
        return
    if not described["options"]:
        click.echo(f"target {described['name']} takes no build options")
        return
    from rich.table import Table

    from edgekit.targets.base import as_text

    table = Table(title=f"{described['name']} build options: edgekit build -O KEY=VALUE", title_justify="left")
    for column in ("option", "type", "default", "example", "help"):
        table.add_column(column)
    for option in described["options"]:
        example = f"-O {option['name']}={option['example']}"
        table.add_row(option["name"], option["type"], as_text(option["default"]), example, option["help"])
    make_console().print(table)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-t", "--target", default="x86-ort", show_default=True, help="Target name (see `edgekit targets`).")
@click.option(
    "-p", "--precision", default="fp32", show_default=True, help="fp32, fp16, int8, ... as the target allows."
)
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Artifact folder to write.")
@preprocess_option
@task_options
@click.option(
    "--calib",
    type=click.Path(exists=True),
    help="Calibration data for int8: image folder, video, .npy; with --spec, only the validation's probes.",
)
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, exists=True), help="A quant_spec.json to use.")
@click.option("--observer", default="minmax", show_default=True, help="Observer for --calib (see `edgekit observers`).")
@rounding_option
@build_options_option(
    "A build option of the target (repeatable), e.g. -O dla_core=0 for jetson-trt; "
    "`edgekit targets --options NAME` lists a target's options."
)
# the flags of the options before -O, kept as hidden aliases that feed the same options
@click.option("--dla", "dla_core", type=int, default=None, hidden=True)
@click.option("--sparsity", default=None, hidden=True)
@click.option("--max-batch", type=int, default=None, hidden=True)
@click.option("--int8-io", is_flag=True, default=None, hidden=True)
@click.option("--shapes", default=None, hidden=True)
@fail_cleanly
def build(
    model: str,
    target: str,
    precision: str,
    out: str,
    preprocess_json: str | None,
    task: str | None,
    postprocess_json: str | None,
    calib: str | None,
    spec_path: str | None,
    observer: str,
    rounding: str,
    option_items: tuple[str, ...],
    dla_core: int | None,
    sparsity: str | None,
    max_batch: int | None,
    int8_io: bool | None,
    shapes: str | None,
) -> None:
    """Build an artifact of MODEL for a target: the model file(s) and manifest.json, whose sha256 is the
    artifact id (building twice gives the same id). int8 takes its scales from --spec (from `edgekit
    quantize`) or calibrates on --calib. -O KEY=VALUE sets a build option of the target (`edgekit targets
    --options NAME` lists them); a target refuses an option it does not take, naming the ones it does.
    The model's task (read from its metadata: edgekit's, Ultralytics', ...; see `edgekit inspect`) goes into
    the artifact; --task and --postprocess replace it or change its settings.

    \b
    Examples:
      edgekit build model.onnx --target android-tflite -p int8 --calib imgs/ --observer percentile -o art
      edgekit build yolov8n.onnx -o art --postprocess '{"conf": 0.3, "iou": 0.5}'
      edgekit build unet.onnx -o art --task segment
      edgekit build model.onnx --target jetson-trt -p int8 --calib imgs/ -O dla_core=0 -o art
      edgekit build model.onnx --target ios-coreml -p w8a8 --calib imgs/ -O shapes=320x320 -o art"""
    from edgekit.api import build as build_artifact
    from edgekit.console_text import styled
    from edgekit.model import Model

    loaded = Model.load(model)
    with_preprocess(loaded, preprocess_json)
    aliases = {"dla_core": dla_core, "sparsity": sparsity, "max_batch": max_batch, "int8_io": int8_io or None}
    options: dict[str, Any] = {**aliases, "shapes": shapes}
    options.update(build_option_values(option_items, example="-O dla_core=0"))
    postprocess = parse_json_object(postprocess_json, option_name="--postprocess") if postprocess_json else None
    console = make_console()
    artifact = build_artifact(
        loaded,
        target,
        out,
        precision=precision,
        quant_spec=spec_path,
        calib=calib,
        observer=observer,
        rounding=rounding,
        progress=True,
        options=options,
        task=task,
        postprocess=postprocess,
    )
    where = f" ({target}/{precision}) written to {artifact.path}"
    console.print(styled("artifact ", (artifact.id[:16], "bold"), where))
    built_task = artifact.manifest.get("task")
    if built_task:
        source = "given" if task or postprocess else loaded.task_source
        console.print(f"task {built_task['task']} ({source}): {json.dumps(built_task)}")
    quantization = artifact.manifest.get("quantization") or {}
    for line in [*quantization.get("mixed_range", []), *quantization.get("output_tail", [])]:
        console.print(styled((line, "yellow")))
    for note in artifact.manifest.get("not_honoured", []):
        console.print(styled(("not honoured:", "yellow"), f" {note['what']}: {note['why']}"))
    _print_validation(console, artifact.manifest.get("validation"))
    from edgekit.targets import get_target

    _print_latency_check(console, get_target(target).latency_check(loaded, artifact))


@contextlib.contextmanager
def _device_timer(fleet: str | None, name: str | None) -> Iterator[Any]:
    """A DeviceTimer on fleet device `name` for the latency plan (None: time here), open for the whole search."""
    if name is None:
        yield None
        return
    if fleet is None:
        raise click.UsageError("--latency-device needs --fleet FILE (the fleet file that names the device)")
    from edgekit.device.ssh import SshTransport
    from edgekit.device.timing import DeviceTimer
    from edgekit.fleet.inventory import load_fleet, select

    [device] = select(load_fleet(fleet), names=[name])
    with DeviceTimer(SshTransport(device)) as timer:
        yield timer


def _latency_timer(target: str) -> Any:
    """The target's `timed_model` for --latency-plan, or a usage error for targets whose engine is not here."""
    from edgekit.targets import Target, get_target

    chosen = get_target(target)
    if type(chosen).timed_model is Target.timed_model:
        raise click.UsageError(
            f"--latency-plan times the artifact with ONNX Runtime on this machine; {target}'s engine does not run "
            "here. Use -t x86-ort (on the device itself), or --max-drop/--min-sqnr alone."
        )
    return chosen.timed_model


def _print_latency_check(console: Any, block: dict[str, Any] | None) -> None:
    """INT8 vs FP32 latency measured by the build (x86-ort), loud when INT8 is slower."""
    from edgekit.console_text import styled

    if not block:
        return
    ratio = block["int8_over_fp32"]
    line = f"latency here: fp32 {block['fp32_ms']:.2f} ms, int8 {block['int8_ms']:.2f} ms ({ratio:.2f}x, 1 thread)"
    console.print(line)
    if ratio > 1.0:
        console.print(
            styled(
                ("warning:", "bold red"),
                " this INT8 build is SLOWER than FP32 on this machine; run `edgekit quantize --latency-plan` on the "
                "device to keep float where INT8 does not pay, or ship fp32",
            )
        )


def _print_validation(console: Any, block: dict[str, Any] | None) -> None:
    """The manifest's validation figures, and a warning when a quantized build is outside its budget."""
    from edgekit.console_text import styled
    from edgekit.targets.validation import summary_lines

    for line in summary_lines(block):
        console.print(line)
    if block and block.get("skipped"):
        console.print(styled(("validation skipped:", "yellow"), f" {block['skipped']}"))
    if block and block.get("passed") is False:
        console.print(
            styled(
                ("warning:", "bold yellow"),
                f" this {block.get('precision')} build is outside its accuracy budget against the FP32 model "
                "(figures above); calibrate on more representative data or with `--observer percentile`, keep the "
                "most sensitive layers float (`edgekit quantize --min-sqnr DB` or `--max-drop POINTS`; its "
                "per-layer error table shows them) or build a float precision",
            )
        )
    quantized = bool(block) and block.get("precision") not in (None, "fp32") and "outputs" in block
    if quantized and "calibration samples" not in block["probes"]["source"]:
        # built from a QuantSpec alone: the figures above come from probes that are not the user's images
        console.print(
            styled(
                ("note:", "yellow"),
                " these probes are not your data; pass `--calib DIR` (images like those the model sees) to "
                "validate this build on them",
            )
        )


@click.command()
@fail_cleanly
def observers() -> None:
    """List the calibration observers and their settings."""
    from rich.table import Table

    from edgekit.calibration.observers import list_observers

    table = Table(title="observers (edgekit quantize --observer NAME)", title_justify="left")
    for column in ("name", "what it does", "settings"):
        table.add_column(column)
    for info in list_observers():
        table.add_row(info.name, info.description, json.dumps(info.settings))
    make_console().print(table)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--calib",
    required=True,
    type=click.Path(exists=True),
    help="Calibration data: image folder (searched recursively), video file, .npy or .npz.",
)
@click.option("--observer", default="minmax", show_default=True, help="minmax, percentile, entropy or mse.")
@click.option(
    "--setting",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Observer setting, e.g. --setting percentile=99.9 (repeatable).",
)
@click.option(
    "-t",
    "--target",
    default="x86-ort",
    show_default=True,
    help="Target whose quantization scheme to use (x86-ort: uint8 activations).",
)
@click.option("--activations", default=None, help="Override the scheme: uint8_asym, int8_sym or int8_asym.")
@click.option(
    "--weights",
    default=None,
    help="Override the weight scheme: int8_per_channel, int7_per_channel (x86 without VNNI), int8_per_tensor, "
    "int7_per_tensor. Default: the target's; for x86-ort 8-bit on a CPU with VNNI/AMX, else 7-bit.",
)
@click.option("--limit", type=int, default=None, help="Use at most this many calibration samples.")
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(exists=True),
    help="Labelled data: image folder with class sub-folders, or a video with --labels.",
)
@click.option("--labels", type=click.Path(dir_okay=False, exists=True), help="Per-frame labels of an --eval video.")
@click.option("--max-drop", type=float, default=None, help="Accuracy budget: top-1 may fall at most this many points.")
@click.option("--min-sqnr", type=float, default=None, help="Accuracy budget: output SQNR at least this many dB.")
@click.option("--keep-float", multiple=True, metavar="NODE", help="Keep this node in float (repeatable).")
@click.option(
    "--latency-plan",
    is_flag=True,
    help="Time regions of the INT8 model on this machine (ONNX Runtime, one thread: run it on the device) and keep "
    "float where INT8 does not pay, then where --max-drop/--min-sqnr need it; prints the latency vs accuracy front. "
    "Targets whose engine runs here (x86-ort).",
)
@click.option(
    "--latency-device",
    metavar="NAME",
    help="With --fleet: time the latency plan's candidates on this fleet device (the agent over SSH, ONNX "
    "Runtime, one thread) instead of here; implies --latency-plan.",
)
@click.option("--fleet", type=click.Path(dir_okay=False, exists=True), help="The fleet file of --latency-device.")
@click.option("--equalize", is_flag=True, help="Cross-layer equalization first (Conv-ReLU-Conv chains, depthwise too).")
@click.option("--bias-correction", is_flag=True, help="Correct each quantized Conv/Gemm bias by its mean output shift.")
@rounding_option
@click.option(
    "--mixed-range",
    "mixed_range",
    type=click.Choice(["float", "branches", "report"]),
    default="float",
    show_default=True,
    help="Concats at the outputs whose inputs' ranges differ (a detector's boxes 0..640 and scores 0..1): keep "
    "them float, quantize each input on its own grid before a float concat, or only report them.",
)
@click.option(
    "--mixed-range-factor",
    type=float,
    default=16.0,
    show_default=True,
    help="Inputs whose range widths differ by more than this factor make a concat mixed-range.",
)
@click.option(
    "--output-tail",
    type=click.Choice(["float", "int8"]),
    default="float",
    show_default=True,
    help="The cheap ops between the last learned layers and the outputs (a detector's box decoding: DFL "
    "softmax, sigmoid, anchor arithmetic, concats): keep them float (no speed lost, boxes and scores kept "
    "exact) or quantize them too.",
)
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Also write the report as an HTML page.")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder for model.onnx (QDQ), quant_spec.json and report.json.",
)
@preprocess_option
@fail_cleanly
def quantize(
    model: str,
    calib: str,
    observer: str,
    settings: tuple[str, ...],
    target: str,
    activations: str | None,
    weights: str | None,
    limit: int | None,
    eval_data: str | None,
    labels: str | None,
    max_drop: float | None,
    min_sqnr: float | None,
    keep_float: tuple[str, ...],
    latency_plan: bool,
    latency_device: str | None,
    fleet: str | None,
    equalize: bool,
    bias_correction: bool,
    rounding: str,
    mixed_range: str,
    mixed_range_factor: float,
    output_tail: str,
    html_file: str | None,
    out: str,
    preprocess_json: str | None,
) -> None:
    """Post-training quantization of MODEL: one streaming calibration pass, a QuantSpec, a QDQ model, and
    a per-tensor error report. With --max-drop or --min-sqnr the most sensitive layers stay float until
    the budget is met.

    \b
    Examples:
      edgekit quantize m.onnx --calib images/ -o q
      edgekit quantize m.onnx --calib images/ --observer percentile --setting percentile=99.9 -o q
      edgekit quantize m.onnx --calib images/ --eval labelled/ --max-drop 0.5 -o q
      edgekit quantize yolo.onnx --calib photos/ --preprocess '{"resize": [640, 640], "resize_mode": "letterbox"}' -o q
    """
    from edgekit.calibration.data import load_labelled
    from edgekit.calibration.error_report import print_error_table, print_head_notes
    from edgekit.calibration.quantize import quantize as run_quantize
    from edgekit.calibration.quantize import save_quantized
    from edgekit.device.plan import read_labels
    from edgekit.model import Model
    from edgekit.targets import get_target
    from edgekit.targets.tensorrt_cache import CACHE_FILE_NAME, write_trt_cache

    loaded = with_preprocess(Model.load(model), preprocess_json)
    artifact_of = _latency_timer(target) if latency_plan or latency_device else None
    observer_settings = parse_key_values(settings, option_name="--setting", example="--setting percentile=99.9")
    eval_feeds = eval_labels = None
    if eval_data:
        eval_feeds, eval_labels = load_labelled(
            eval_data,
            spec=loaded.preprocess,
            input_name=loaded.inputs[0].name,
            labels=read_labels(labels) if labels else None,
            class_names=loaded.class_names,
        )
    with _device_timer(fleet, latency_device) as timer:
        result = run_quantize(
            loaded,
            calib,
            observer=observer,
            observer_settings=observer_settings,
            activations=activations or get_target(target).calibration_schemes()[0],
            weights=weights or get_target(target).calibration_schemes()[1],
            float_nodes=keep_float,
            limit=limit,
            eval_feeds=eval_feeds,
            eval_labels=eval_labels,
            max_drop=max_drop,
            min_sqnr=min_sqnr,
            equalize=equalize,
            bias_correction=bias_correction,
            rounding=rounding,
            mixed_range_factor=mixed_range_factor,
            mixed_range_policy=mixed_range,
            output_tail=output_tail,
            latency_plan=artifact_of,
            latency_timer=timer,
        )
    folder = save_quantized(result, out)
    # for implicit INT8 on older JetPacks; tensors the QDQ model leaves float get no scale
    write_trt_cache(result.spec, folder / CACHE_FILE_NAME, model=result.float_model)
    if html_file:
        from edgekit.calibration.error_report import report_html

        Path(html_file).write_text(report_html(result.report()))
    console = make_console()
    console.print(result.spec.summary())
    print_error_table(result.errors, console)
    print_head_notes(result.spec, console)
    if result.accuracy:
        console.print("top-1: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in result.accuracy.items()))
    if result.precision_plan is not None:
        from edgekit.calibration.latency_plan import print_precision_plan

        print_precision_plan(result.precision_plan, console)
    if result.budget is not None:
        console.print(
            f"budget met with {len(result.budget.float_nodes)} node(s) kept float: "
            f"{', '.join(result.budget.float_nodes) or 'none'}"
        )
    console.print(
        f"calibration {result.timings_s['calibration']:.2f} s; wrote {folder}/model.onnx, quant_spec.json, report.json"
    )
