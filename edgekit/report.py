"""Reports over stored runs: a terminal table, JSON, CSV, and an HTML page with latency histograms."""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

import numpy as np

from edgekit.console_text import as_text, plain_console, styled
from edgekit.device.results import STAGES
from edgekit.store import StoredRun


def run_row(run: StoredRun) -> dict[str, Any]:
    """One flat row per run: the figures people compare across devices and targets."""
    result = run.result
    latency = result.get("latency_ms", {})
    accuracy = result.get("accuracy") or {}
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "started_at": run.created_at,
        "device": run.device,
        "target": run.target,
        "precision": run.precision,
        "mode": result.get("mode"),
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
        "task": accuracy.get("kind") or (run.plan.get("postprocess") or {}).get("kind"),
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
    return json.dumps(
        [
            {"run_id": r.run_id, "device": r.device, "plan": r.plan, "result": r.result, "manifest": r.manifest}
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


def print_runs_table(runs: list[StoredRun], console: Any = None) -> None:
    """The runs, one line each: inference and end-to-end latency, throughput, accuracy.

    Compact enough for an 80-column terminal; the per-stage breakdown of a run is `print_stage_table`
    (`edgekit report RUN`)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    console = console or plain_console()
    devices = sorted({run.device for run in runs})
    table = Table(
        title="edgekit runs (latency in ms)", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False
    )
    with_power = any((run.result.get("power") or {}).get("avg_w") is not None for run in runs)
    metrics = {run.run_id: task_metrics(run) for run in runs}
    task_columns = [(h, k) for h, k in TASK_COLUMNS if any(m[k] is not None for m in metrics.values())]
    columns = [
        "run",
        *(["device"] if len(devices) > 1 else []),
        "target",
        "mode",
        "frames",
        "infer\np50",
        "e2e\np50",
        "e2e\np99",
        "fps",
        *(["power\nW", "mJ per\ninference"] if with_power else []),
        "top-1",
        *(["task"] if task_columns else []),
        *(header for header, _ in task_columns),
    ]
    for column in columns:
        left = column in ("run", "device", "target", "mode", "task")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    colours = {"ok": "green", "partial": "yellow", "error": "red"}
    for run in runs:
        row = run_row(run)
        top1 = row["top1"]
        cells: list[Any] = [Text(row["run_id"], style=colours.get(run.status, "red"))]
        if len(devices) > 1:
            cells.append(row["device"])
        cells += [
            f"{row['target']}/{row['precision']}",
            "pipe" if row["mode"] == "pipelined" else "seq",
            _fmt(row["frames"]),
            _fmt(row["inference_p50_ms"]),
            _fmt(row["end_to_end_p50_ms"]),
            _fmt(row["end_to_end_p99_ms"]),
            _fmt(row["throughput_fps"], 4),
            *([_fmt(row["power_w"]), _fmt(row["energy_per_inference_mj"])] if with_power else []),
            f"{top1 * 100:.1f}%" if top1 is not None else "-",
        ]
        if task_columns:
            cells += [_fmt(metrics[run.run_id]["task"]), *(_fmt(metrics[run.run_id][k]) for _, k in task_columns)]
        table.add_row(*(as_text(c) if isinstance(c, str) else c for c in cells))  # device text is never markup
    console.print(table)
    device = f"; device: {devices[0]}" if len(devices) == 1 else ""
    console.print(styled("run colour: ", ("ok", "green"), " ", ("partial", "yellow"), " ", ("error", "red"), device))
    for run in runs:
        for error in run.result.get("errors", []):
            where = f"{run.run_id} {error.get('stage', '?')}:"
            console.print(styled((where, "red"), " ", str(error.get("message", ""))))


def print_stage_table(run: StoredRun, console: Any = None) -> None:
    """Per-stage latency summary of one run (mean, p50, p90, p99, std)."""
    from rich.table import Table

    console = console or plain_console()
    table = Table(title=f"run {run.run_id} on {run.device}: latency per stage (ms)", title_justify="left")
    table.add_column("stage")
    for column in ("mean", "p50", "p90", "p99", "std", "count"):
        table.add_column(column, justify="right")
    for stage in STAGES:
        summary = run.result.get("latency_ms", {}).get(stage)
        if summary:
            table.add_row(stage, *(_fmt(summary.get(k)) for k in ("mean", "p50", "p90", "p99", "std", "count")))
    console.print(table)


# -- HTML -------------------------------------------------------------------------------------------


def _histogram_svg(samples: list[float], *, width: int = 520, height: int = 180, bins: int = 40) -> str:
    """An inline SVG histogram; hand-written so reports need no plotting library."""
    if not samples:
        return "<p>no samples</p>"
    values = np.asarray(samples, dtype=float)
    low, high = np.percentile(values, [0, 99.5])
    high = max(high, low + 1e-6)
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    pad, plot_w, plot_h = 36, width - 46, height - 40
    bar_w = plot_w / bins
    peak = counts.max() or 1
    bars = "".join(
        f'<rect x="{pad + i * bar_w:.1f}" y="{10 + plot_h * (1 - c / peak):.1f}" width="{max(bar_w - 1, 1):.1f}" '
        f'height="{plot_h * c / peak:.1f}" fill="#3b7dd8">'
        f"<title>{edges[i]:.3f}-{edges[i + 1]:.3f} ms: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    p50, p99 = np.percentile(values, [50, 99])
    marks = "".join(
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="10" y2="{10 + plot_h}" stroke="{color}" stroke-dasharray="4 3"/>'
        f'<text x="{x + 3:.1f}" y="22" font-size="11" fill="{color}">{name} {value:.3f}</text>'
        for name, value, color in (("p50", p50, "#1a7f37"), ("p99", p99, "#cf222e"))
        if low <= value <= high
        for x in [pad + plot_w * (value - low) / (high - low)]
    )
    axis = (
        f'<text x="{pad}" y="{height - 8}" font-size="11">{low:.3f} ms</text>'
        f'<text x="{pad + plot_w}" y="{height - 8}" font-size="11" text-anchor="end">{high:.3f} ms</text>'
        f'<text x="4" y="18" font-size="11">{peak}</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f'<line x1="{pad}" x2="{pad + plot_w}" y1="{10 + plot_h}" y2="{10 + plot_h}" stroke="#888"/>'
        f"{bars}{marks}{axis}</svg>"
    )


def _bars_svg(labels: list[str], values: list[float | None], unit: str, *, width: int = 640) -> str:
    """Horizontal bars, one per run, so devices and targets compare at a glance."""
    known = [v for v in values if v is not None]
    if not known:
        return "<p>not measured</p>"
    peak, row_h, left = max(known) or 1.0, 22, 260
    height = row_h * len(labels) + 10
    parts = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 5 + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y + 15}" font-size="12" text-anchor="end">{html.escape(label)}</text>')
        if value is None:
            parts.append(f'<text x="{left + 4}" y="{y + 15}" font-size="12">not measured</text>')
            continue
        w = (width - left - 90) * value / peak
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="#3b7dd8"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 15}" font-size="12">{value:.3g} {unit}</text>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{"".join(parts)}</svg>'


def _comparison(runs: list[StoredRun]) -> str:
    rows = report_rows(runs)
    labels = [f"{r['device']} {r['target']}/{r['precision']} {r['run_id'][-4:]}" for r in rows]
    charts = [
        ("end-to-end latency p50", "end_to_end_p50_ms", "ms"),
        ("end-to-end latency p99", "end_to_end_p99_ms", "ms"),
        ("throughput", "throughput_fps", "fps"),
        ("average power", "power_w", "W"),
        ("energy per inference", "energy_per_inference_mj", "mJ"),
        ("top-1 accuracy", "top1", ""),
        ("mAP@0.5:0.95 against labels", "map", ""),
        ("mAP@0.5 against the FP32 reference", "ref_map50", ""),
        ("segmentation mIoU", "miou", ""),
        ("detections per frame", "detections_per_frame", ""),
    ]
    return "".join(
        f"<h3>{title}</h3>{_bars_svg(labels, [r.get(key) for r in rows], unit)}"
        for title, key, unit in charts
        if any(r.get(key) is not None for r in rows)
    )


def to_html(runs: list[StoredRun]) -> str:
    from edgekit.evaluate.draw import detection_frames_html

    rows = report_rows(runs)
    columns = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(row[c]))}</td>" for c in columns) + "</tr>" for row in rows)
    sections = []
    for run in runs:
        samples = run.result.get("samples_ms", {})
        stage_rows = "".join(
            f"<tr><td>{stage}</td>"
            + "".join(f"<td>{_fmt(summary.get(k))}</td>" for k in ("mean", "p50", "p90", "p99", "std", "count"))
            + "</tr>"
            for stage in STAGES
            if (summary := run.result.get("latency_ms", {}).get(stage))
        )
        device = run.result.get("device", {})
        sections.append(
            f"<section><h2>{html.escape(run.run_id)} — {html.escape(run.device)}, "
            f"{html.escape(run.target)}/{html.escape(run.precision)}</h2>"
            f"<p>{html.escape(str(device.get('cpu', '')))} · Python {html.escape(str(device.get('python', '')))} · "
            f"artifact {html.escape(run.artifact_id[:12])}</p>"
            "<table><tr><th>stage</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>std</th><th>count</th></tr>"
            f"{stage_rows}</table>"
            "<h3>end-to-end latency per frame</h3>"
            f"{_histogram_svg(samples.get('end_to_end', []))}"
            "<h3>inference latency per frame</h3>"
            f"{_histogram_svg(samples.get('inference', []))}{_task_html(run)}{detection_frames_html(run)}</section>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}"
        "section{margin-top:2em}figure{display:inline-block;margin:0 1em 1em 0}.note{color:#666}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>edgekit report</title><style>{style}</style>"
        f"</head><body><h1>edgekit report</h1><p>{len(runs)} run(s); latencies in ms.</p>"
        f"<table><tr>{head}</tr>{body}</table><h2>Side by side</h2>{_comparison(runs)}{''.join(sections)}"
        "</body></html>"
    )


def _task_html(run: StoredRun) -> str:
    lines = task_summary(run.result)
    return "<h3>task metrics</h3>" + "".join(f"<p>{html.escape(line)}</p>" for line in lines) if lines else ""
