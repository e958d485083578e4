"""Reports over stored runs: what each run measured, as rows (terminal table, CSV, JSON); the HTML page is
edgekit.report_html."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from edgekit.console_text import as_text, plain_console, styled
from edgekit.device.results import STAGES
from edgekit.store import StoredRun

# which runs `edgekit report` shows: by default the runs that measured something; error runs are listed apart
STATUS_CHOICES = ("ok", "partial", "error", "all")
DEFAULT_STATUSES = ("ok", "partial")


def statuses_for(choice: str | None) -> tuple[str, ...]:
    """The stored statuses a `--status` choice selects (None: ok and partial)."""
    if choice is None:
        return DEFAULT_STATUSES
    if choice == "all":
        return ("ok", "partial", "error", "cancelled")
    return (choice,)


def model_name(run: StoredRun) -> str:
    """What the run measured: the manifest's model_name, else the source model's short hash (artifacts built
    before manifests named their model), else "-" (a run whose artifact was never read)."""
    name = run.manifest.get("model_name")
    if isinstance(name, str) and name:
        return name
    digest = run.manifest.get("source_model_sha256")
    return f"model {digest[:8]}" if isinstance(digest, str) and digest else "-"


def task_name(run: StoredRun) -> str | None:
    """The run's task: what its accuracy says, else its plan's postprocessing, else the artifact's."""
    kind = (run.result.get("accuracy") or {}).get("kind") or (run.plan.get("postprocess") or {}).get("kind")
    if not kind:
        task = run.manifest.get("task")
        kind = task.get("task") if isinstance(task, dict) else None
    return "classify" if kind == "classification" else kind


def short_id(run_id: str) -> str:
    """A run id short enough for one table cell: the last 8 hex digits of its random part (which `edgekit
    report` also accepts), or the id itself when it is short already."""
    return run_id if len(run_id) <= 12 else run_id[-8:]


def mode_label(mode: Any) -> str:
    """sequential or pipelined; pipelined end-to-end latency includes time waiting in queues."""
    return mode if mode in ("sequential", "pipelined") else "-"


def ordered(runs: list[StoredRun]) -> list[StoredRun]:
    """Runs grouped by model, then device, oldest first within each (the table and page order)."""
    return sorted(runs, key=lambda r: (model_name(r).lower(), r.device.lower(), r.created_at))


def run_row(run: StoredRun) -> dict[str, Any]:
    """One flat row per run: what was measured (model, task, device, target, mode) and the figures people
    compare across devices and targets; None where a figure was not measured."""
    result = run.result
    latency = result.get("latency_ms", {})
    accuracy = result.get("accuracy") or {}
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "started_at": run.created_at,
        "model": model_name(run),
        "task": task_name(run),
        "device": run.device,
        "target": run.target,
        "precision": run.precision,
        "mode": mode_label(result.get("mode")),
        "status": run.status,
        "frames": result.get("frames", {}).get("timed"),
        "dropped": result.get("frames", {}).get("dropped"),
    }
    for stage in STAGES:
        row[f"{stage}_p50_ms"] = latency.get(stage, {}).get("p50")
    row["end_to_end_p99_ms"] = latency.get("end_to_end", {}).get("p99")
    row["throughput_fps"] = result.get("throughput_fps")
    power = result.get("power") or {}
    row["power_w"] = power.get("avg_w")
    row["energy_per_inference_mj"] = power.get("energy_per_inference_mj")
    row["peak_rss_mb"] = (result.get("memory") or {}).get("peak_rss_mb")
    cold = result.get("cold_start_ms") or {}
    row["model_load_ms"] = cold.get("model_load")
    row["first_inference_ms"] = cold.get("first_inference")
    row["top1"] = accuracy.get("top1")
    row["sqnr_db"] = accuracy.get("sqnr_db")
    row["errors"] = "; ".join(str(e.get("message", "")) for e in result.get("errors", []))
    return row


# task metrics: (table header, row key); a column shows when any run has a value for it
TASK_COLUMNS = (
    ("mAP", "map"),
    ("mAP50", "map50"),
    ("ref\nmAP50", "ref_map50"),
    ("ref\nIoU", "ref_iou"),
    ("mIoU", "miou"),
    ("det/\nframe", "detections_per_frame"),
)


def task_metrics(run: StoredRun) -> dict[str, Any]:
    """The task and its figures: mAP against labels and against the FP32 reference (host-made), the
    device's segmentation mIoU, detections per frame."""
    result = run.result
    accuracy = result.get("accuracy") or {}
    labels = accuracy.get("labels") or {}
    reference = accuracy.get("reference") or {}
    return {
        "map": labels.get("map"),
        "map50": labels.get("map50"),
        "ar100": labels.get("ar100"),
        "ref_map": reference.get("map"),
        "ref_map50": reference.get("map50"),
        "ref_iou": reference.get("miou"),
        "miou": accuracy.get("miou"),
        "detections_per_frame": _detections_per_frame(result, labels, reference),
    }


def _detections_per_frame(result: dict[str, Any], labels: dict[str, Any], reference: dict[str, Any]) -> float | None:
    if reference.get("detections_per_frame") is not None:
        return reference["detections_per_frame"]
    if labels.get("detections_per_frame") is not None:
        return labels["detections_per_frame"]
    output = result.get("task_output") or {}
    frames = [f for f in output.get("frames") or [] if isinstance(f, dict)]
    if output.get("kind") not in ("detect", "text-detect") or not frames:
        return None
    return sum(len(f.get("boxes") or f.get("polygons") or []) for f in frames) / len(frames)


def _has_task_metrics(runs: list[StoredRun]) -> bool:
    return any(task_metrics(r)[key] is not None for r in runs for _, key in TASK_COLUMNS)


def report_rows(runs: list[StoredRun]) -> list[dict[str, Any]]:
    """`run_row` of each run, with the task metrics when any run has them (CSV and HTML columns)."""
    with_task = _has_task_metrics(runs)
    return [{**run_row(r), **(task_metrics(r) if with_task else {})} for r in runs]


def task_summary(result: dict[str, Any]) -> list[str]:
    """One line per host-made score of a run, for the terminal."""
    accuracy = result.get("accuracy") or {}
    lines = []
    labels = accuracy.get("labels")
    if labels:
        lines.append(
            f"mAP@0.5:0.95 {_fmt(labels.get('map'))}, mAP@0.5 {_fmt(labels.get('map50'))}, "
            f"AR@100 {_fmt(labels.get('ar100'))} on {labels.get('images')} labelled images "
            f"({labels.get('boxes')} boxes); {_fmt(labels.get('detections_per_frame'))} detections per frame"
        )
    reference = accuracy.get("reference")
    if reference:
        lines.append(
            f"vs the FP32 reference (run {reference.get('run_id')}): mAP@0.5 {_fmt(reference.get('map50'))}, "
            f"mAP@0.5:0.95 {_fmt(reference.get('map'))}, matched IoU {_fmt(reference.get('miou'))}; detections "
            f"per frame {_fmt(reference.get('detections_per_frame'))} (reference "
            f"{_fmt(reference.get('reference_detections_per_frame'))})"
        )
    return lines


def to_json(runs: list[StoredRun]) -> str:
    """Each run whole (plan, result, manifest) with what it measured named at the top."""
    return json.dumps(
        [
            {
                "run_id": r.run_id,
                "model": model_name(r),
                "task": task_name(r),
                "device": r.device,
                "target": r.target,
                "precision": r.precision,
                "mode": mode_label(r.result.get("mode")),
                "status": r.status,
                "plan": r.plan,
                "result": r.result,
                "manifest": r.manifest,
            }
            for r in runs
        ],
        indent=2,
    )


def to_csv(runs: list[StoredRun]) -> str:
    rows = report_rows(runs)
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def headline_metric(row: dict[str, Any]) -> str:
    """The task's own figure in a few characters: top-1, mAP (against labels, else against the FP32 reference),
    mIoU, SQNR, else detections per frame; "-" when none was measured."""
    for label, key, percent in (
        ("top-1", "top1", True),
        ("mAP", "map", False),
        ("ref mAP50", "ref_map50", False),
        ("mIoU", "miou", False),
        ("SQNR dB", "sqnr_db", False),
        ("det/frame", "detections_per_frame", False),
    ):
        if row.get(key) is not None:
            return f"{label} {row[key] * 100:.1f}%" if percent else f"{label} {_fmt(row[key])}"
    return "-"


def _metric_cell(value: Any, key: str) -> str:
    if key == "metric":
        return str(value)
    if value is None:
        return "-"
    if key == "top1":
        return f"{value * 100:.1f}%"
    return _fmt(value, 4) if key == "throughput_fps" else _fmt(value)


def _table_columns(runs: list[StoredRun], metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(header, row key) of the columns this set of runs fills; a column nobody measured is left out, so
    the table never holds a column of dashes."""
    rows = [run_row(r) for r in runs]

    def some(key: str) -> bool:
        return any(row[key] is not None for row in rows)

    return [
        ("infer\np50", "inference_p50_ms"),
        ("e2e\np50", "end_to_end_p50_ms"),
        ("e2e\np99", "end_to_end_p99_ms"),
        ("fps", "throughput_fps"),
        *([("power\nW", "power_w"), ("mJ per\ninference", "energy_per_inference_mj")] if some("power_w") else []),
        *([("peak\nRSS MiB", "peak_rss_mb")] if some("peak_rss_mb") else []),
        *([("load\nms", "model_load_ms")] if some("model_load_ms") else []),
        ("metric", "metric"),
    ]


def metric_row(run: StoredRun, metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    row = {**run_row(run), **metrics[run.run_id]}
    return {**row, "metric": headline_metric(row)}


def print_runs_table(runs: list[StoredRun], console: Any = None) -> None:
    """The runs that measured something, one line each, grouped by model then device: what ran where
    (model, task, device, target/precision, mode), latency, throughput, power, memory and the task's metric.
    Runs with status `error` are left to `print_error_runs`; the per-stage breakdown of one run is
    `print_stage_table` (`edgekit report RUN`)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    console = console or plain_console()
    runs = ordered([r for r in runs if r.status != "error"])
    if not runs:
        return
    table = Table(
        title="edgekit runs (latency in ms)", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False
    )
    metrics = {run.run_id: task_metrics(run) for run in runs}
    figures = _table_columns(runs, metrics)
    # only the device's name folds onto a second line in a narrow terminal; an ellipsis would hide a number
    width = {c: max(len(c), *(len(str(run_row(r)[c] or "-")) for r in runs)) for c in ("model", "task")}
    for column in ("run", "model", "task", "device", "target", "mode"):  # frame counts: CSV, HTML, RUN
        folds = column == "device"
        table.add_column(
            column,
            justify="right" if column == "frames" else "left",
            no_wrap=not folds,
            overflow="fold" if folds else "ellipsis",
            min_width=12 if folds else width.get(column, len(column)),
            max_width=22 if folds else None,
        )
    for header, key in figures:
        widest = max(len(_metric_cell(metric_row(r, metrics).get(key), key)) for r in runs)
        table.add_column(header, justify="right", no_wrap=True, min_width=max(widest, 4))
    colours = {"ok": "green", "partial": "yellow"}
    for run in runs:
        row = metric_row(run, metrics)
        cells: list[Any] = [
            Text(short_id(run.run_id), style=colours.get(run.status, "red")),
            row["model"],
            row["task"] or "-",
            row["device"],
            f"{row['target']}/{row['precision']}",
            {"sequential": "seq", "pipelined": "pipe*"}.get(row["mode"], "-"),
            *(_metric_cell(row[key], key) for _, key in figures),
        ]
        table.add_row(*(as_text(c) if isinstance(c, str) else c for c in cells))  # device text is never markup
    console.print(table)
    notes: list[str | tuple[str, str]] = ["run colour: ", ("ok", "green"), " ", ("partial", "yellow")]
    if any(run.result.get("mode") == "pipelined" for run in runs):
        notes.append("; pipe*: pipelined, its end-to-end includes time waiting in queues (not comparable to seq)")
    console.print(styled(*notes))
    for run in runs:
        for error in run.result.get("errors", []):
            where = f"{short_id(run.run_id)} {error.get('stage', '?')}:"
            console.print(styled((where, "red"), " ", str(error.get("message", ""))))


def first_error(run: StoredRun) -> tuple[str, str]:
    """(stage, message) of a run's first error, or ("?", "no message")."""
    errors = run.result.get("errors") or [{}]
    return str(errors[0].get("stage", "?")), str(errors[0].get("message", "no message"))


def print_error_runs(runs: list[StoredRun], console: Any = None) -> None:
    """Runs that timed nothing, one line each: what was to run where, and the first error (the reason)."""
    from rich import box
    from rich.table import Table

    console = console or plain_console()
    failed = ordered([r for r in runs if r.status in ("error", "cancelled")])
    if not failed:
        return
    table = Table(
        title="edgekit runs that failed (nothing was timed)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for column in ("run", "model", "device", "target", "stage"):
        table.add_column(column, no_wrap=True, style="red" if column == "run" else None)
    table.add_column("error", overflow="fold")
    for run in failed:
        stage, message = first_error(run)
        cells = (short_id(run.run_id), model_name(run), run.device, f"{run.target}/{run.precision}", stage, message)
        table.add_row(*(as_text(c) for c in cells))
    console.print(table)


def hidden_runs_note(hidden: int, status: str = "error") -> str:
    """The one line saying how many runs the table leaves out and how to see them."""
    runs = "run" if hidden == 1 else "runs"
    return f"{hidden} {status} {runs} not shown: edgekit report --status {status}"


def print_stage_table(run: StoredRun, console: Any = None) -> None:
    """Per-stage latency summary of one run (mean, p50, p90, p99, std); nothing for a run that timed nothing
    (its errors say why, and a table of dashes would not)."""
    from rich.table import Table

    latency = run.result.get("latency_ms", {})
    timed = [stage for stage in STAGES if (latency.get(stage) or {}).get("count")]
    if not timed:
        return
    console = console or plain_console()
    title = f"run {run.run_id}: {model_name(run)} on {run.device}, {run.target}/{run.precision}, "
    title += f"{mode_label(run.result.get('mode'))}: latency per stage (ms)"
    table = Table(title=as_text(title), title_justify="left")  # the device's name is text, never markup
    table.add_column("stage")
    for column in ("mean", "p50", "p90", "p99", "std", "count"):
        table.add_column(column, justify="right")
    for stage in timed:
        table.add_row(stage, *(_fmt(latency[stage].get(k)) for k in ("mean", "p50", "p90", "p99", "std", "count")))
    console.print(table)


def to_html(runs: list[StoredRun]) -> str:
    """The HTML page (edgekit.report_html): runs grouped by model then device, error runs apart."""
    from edgekit.report_html import to_html as page

    return page(runs)
