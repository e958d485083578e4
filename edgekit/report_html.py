"""The HTML report: one self-contained page laid out for a 1280-1440 px screen.

Runs are grouped by model, then device; each row carries what ran where (target/precision, mode), a stacked
bar of its per-stage latency, latency, throughput, the task's metric, power, memory and cold start; runs that
timed nothing are listed apart, each with its first error. Every string from a device, a manifest or a plan is
escaped: device text is text, never markup.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from itertools import groupby
from typing import Any

import numpy as np

from edgekit.console_text import printable
from edgekit.report import (
    first_error,
    mode_label,
    model_name,
    ordered,
    run_row,
    short_id,
    task_metrics,
    task_name,
    task_summary,
)
from edgekit.store import StoredRun

# the stages a frame passes through, in order, with their bar colours; end_to_end is their sum (sequential)
BAR_STAGES = (
    ("capture", "#8da0cb"),
    ("preprocess", "#66c2a5"),
    ("inference", "#3b7dd8"),
    ("postprocess", "#fc8d62"),
)
BAR_WIDTH = 150  # px of the longest stacked bar in a model's table

_STYLE = """
*{box-sizing:border-box}
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;margin:0;background:#fff}
main{max-width:1400px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px}h3{font-size:13px;margin:12px 0 4px}
.sub{color:#59636e;margin:0 0 10px}.task{font-weight:normal;color:#59636e;margin-left:6px}
table{border-collapse:collapse;width:100%}
th,td{padding:3px 6px;border-bottom:1px solid #e4e7eb;text-align:right;white-space:nowrap;vertical-align:top}
th{font-weight:600;color:#3d444d;background:#f6f8fa;white-space:normal;vertical-align:bottom;font-size:12px}
td.l,th.l{text-align:left}
td.dev{max-width:200px;white-space:normal;overflow-wrap:anywhere;font-weight:600}
td.msg{white-space:normal;overflow-wrap:anywhere;text-align:left;width:45%}
.id{white-space:nowrap;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.ok{color:#1a7f37}.partial{color:#9a6700}.error{color:#cf222e}
.mode{font-size:11px;padding:0 4px;border-radius:3px;background:#eef1f4}
.mode.pipelined{background:#fff1d6}.q{color:#9a6700;margin-left:1px}
.bar{display:flex;height:12px;margin-top:3px;background:#f0f2f4}
.bar span{display:block;height:12px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px;vertical-align:-1px}
.note{color:#59636e}
details{border-top:1px solid #e4e7eb;padding:4px 0}summary{cursor:pointer}
.charts{display:flex;flex-wrap:wrap;gap:8px 24px}
.stages{width:auto}
figure{display:inline-block;margin:0 12px 12px 0}
"""

# (header, row key, format) of the figure columns; a column no run of a model measured is left out
_FIGURES: tuple[tuple[str, str, str], ...] = (
    ("infer p50", "inference_p50_ms", "ms"),
    ("e2e p50", "end_to_end_p50_ms", "ms"),
    ("e2e p99", "end_to_end_p99_ms", "ms"),
    ("fps", "throughput_fps", "fps"),
    ("top-1", "top1", "pct"),
    ("mAP", "map", "num"),
    ("mAP50", "map50", "num"),
    ("ref mAP50", "ref_map50", "num"),
    ("mIoU", "miou", "num"),
    ("det/ frame", "detections_per_frame", "num"),
    ("SQNR dB", "sqnr_db", "num"),
    ("power W", "power_w", "num"),
    ("mJ/ inf", "energy_per_inference_mj", "num"),
    ("peak RSS MiB", "peak_rss_mb", "int"),
    ("load ms", "model_load_ms", "ms"),
    ("1st inf ms", "first_inference_ms", "ms"),
)
_TITLES = {
    "e2e p50": "end to end, capture start to postprocess end; pipelined runs include time waiting in queues",
    "ref mAP50": "mAP@0.5 against the FP32 reference model's own detections",
    "peak RSS MiB": "peak resident memory of the agent process on the device (getrusage)",
    "load ms": "the engine opening the model",
    "1st inf ms": "the model's first inference (cold)",
}


def _e(value: Any) -> str:
    # device text: markup escaped, control characters (a terminal's escape sequences) shown as \xNN
    return html.escape(printable(str(value)), quote=True)


def _cell(value: Any, kind: str) -> str:
    """A measured figure, or '-' when it was not measured (never a made-up zero)."""
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "fps" or (kind == "ms" and value >= 100):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return f"{value:.3g}"


def _queued(mode: str, key: str) -> str:
    """A mark on a pipelined run's end-to-end figures: they include time waiting in queues."""
    return "<span class='q'>*</span>" if mode == "pipelined" and key.startswith("end_to_end") else ""


def _stage_bar(run: StoredRun, scale: float) -> str:
    """The run's p50 of each stage as one stacked bar, `scale` ms per px; its title spells the numbers out."""
    latency = run.result.get("latency_ms") or {}
    parts, words = [], []
    for stage, colour in BAR_STAGES:
        p50 = (latency.get(stage) or {}).get("p50")
        if p50 is None:
            continue
        parts.append(f'<span style="width:{p50 / scale:.1f}px;background:{colour}"></span>')
        words.append(f"{stage} {p50:.3g} ms")
    if not parts:
        return "-"
    return f'<div class="bar" style="width:{BAR_WIDTH}px" title="{_e(", ".join(words))}">{"".join(parts)}</div>'


def _bar_scale(runs: list[StoredRun]) -> float:
    totals = [
        sum((run.result.get("latency_ms", {}).get(stage) or {}).get("p50") or 0.0 for stage, _ in BAR_STAGES)
        for run in runs
    ]
    return max([*totals, 1e-9]) / BAR_WIDTH


def _model_table(runs: list[StoredRun]) -> str:
    """One model's runs, a row each, grouped by device (the device cell spans its runs)."""
    rows = {run.run_id: {**run_row(run), **task_metrics(run)} for run in runs}
    figures = [f for f in _FIGURES if any(rows[r.run_id].get(f[1]) is not None for r in runs)]
    scale = _bar_scale(runs)
    head = "".join(f'<th class="l">{h}</th>' for h in ("device", "target", "mode", "run", "frames"))
    head += '<th class="l">stage p50 (ms)</th>'
    head += "".join(f'<th title="{_e(_TITLES.get(h, h))}">{_e(h)}</th>' for h, _, _ in figures)
    body = []
    for device, group in groupby(runs, key=lambda r: r.device):
        group = list(group)
        for index, run in enumerate(group):
            row = rows[run.run_id]
            device_cell = f'<td class="l dev" rowspan="{len(group)}">{_e(device)}</td>' if index == 0 else ""
            mode = row["mode"]
            body.append(
                f"<tr>{device_cell}<td class='l'>{_e(row['target'])}/{_e(row['precision'])}</td>"
                f"<td class='l'><span class='mode {_e(mode)}'>{_e(mode)}</span></td>"
                f"<td class='l'><span class='id {_e(run.status)}' title='{_e(run.run_id)} ({_e(run.status)})'>"
                f"{_e(short_id(run.run_id))}</span></td><td>{_cell(row['frames'], 'int')}</td>"
                f"<td class='l'>{_stage_bar(run, scale)}</td>"
                + "".join(f"<td>{_cell(row.get(key), kind)}{_queued(mode, key)}</td>" for _, key, kind in figures)
                + "</tr>"
            )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _model_sections(runs: list[StoredRun]) -> str:
    sections = []
    for name, group in groupby(ordered(runs), key=model_name):
        group = list(group)
        tasks = sorted({task_name(r) or "-" for r in group})
        devices = len({r.device for r in group})
        pipelined = any(r.result.get("mode") == "pipelined" for r in group)
        sections.append(
            f"<section><h2>{_e(name)}<span class='task'>{_e(', '.join(tasks))}</span></h2>"
            f"<p class='sub'>{len(group)} run(s) on {devices} device(s)"
            + ("; * pipelined end-to-end includes time waiting in queues" if pipelined else "")
            + f"</p>{_model_table(group)}</section>"
        )
    return "".join(sections)


def _failed_section(failed: list[StoredRun]) -> str:
    if not failed:
        return ""
    rows = []
    for run in ordered(failed):
        stage, message = first_error(run)
        rows.append(
            f"<tr><td class='l'><span class='id error' title='{_e(run.run_id)}'>{_e(short_id(run.run_id))}</span></td>"
            f"<td class='l'>{_e(model_name(run))}</td><td class='l dev'>{_e(run.device)}</td>"
            f"<td class='l'>{_e(run.target)}/{_e(run.precision)}</td><td class='l'>{_e(stage)}</td>"
            f"<td class='msg'>{_e(message)}</td></tr>"
        )
    head = "".join(f"<th class='l'>{h}</th>" for h in ("run", "model", "device", "target", "stage", "error"))
    return (
        f"<section><h2>Runs that failed ({len(failed)})</h2><p class='sub'>nothing was timed; the first error of each"
        f"</p><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _histogram_svg(samples: list[float], *, width: int = 520, height: int = 170, bins: int = 40) -> str:
    """An inline SVG histogram; hand-written so reports need no plotting library."""
    if not samples:
        return "<p class='note'>no samples kept</p>"
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


def _stage_table(run: StoredRun) -> str:
    keys = ("mean", "p50", "p90", "p99", "std", "count")
    rows = "".join(
        f"<tr><td class='l'>{_e(stage)}</td>"
        + "".join(f"<td>{'-' if summary.get(k) is None else _e(f'{summary[k]:.4g}')}</td>" for k in keys)
        + "</tr>"
        for stage in ("capture", "preprocess", "inference", "postprocess", "end_to_end")
        if (summary := run.result.get("latency_ms", {}).get(stage))
    )
    head = "<th class='l'>stage (ms)</th>" + "".join(f"<th>{k}</th>" for k in keys)
    return f"<table class='stages'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _details(run: StoredRun, frames_html: Callable[[StoredRun], str]) -> str:
    """A run's own figures, folded: per-stage summary, latency histograms, task scores, frames with boxes,
    errors and warnings."""
    device = run.result.get("device") or {}
    samples = run.result.get("samples_ms") or {}
    facts = " · ".join(
        _e(v)
        for v in (device.get("cpu"), device.get("python") and f"Python {device['python']}", run.artifact_id[:12])
        if v
    )
    lines = "".join(f"<p>{_e(line)}</p>" for line in task_summary(run.result))
    errors = run.result.get("errors", [])
    problems = "".join(f"<p class='error'>{_e(e.get('stage', '?'))}: {_e(e.get('message', ''))}</p>" for e in errors)
    problems += "".join(f"<p class='partial'>warning: {_e(w)}</p>" for w in run.result.get("warnings", []))
    return (
        f"<details><summary><span class='id'>{_e(short_id(run.run_id))}</span> {_e(model_name(run))} on "
        f"{_e(run.device)}, {_e(run.target)}/{_e(run.precision)}, {_e(mode_label(run.result.get('mode')))}</summary>"
        f"<p class='note'>run {_e(run.run_id)} · {facts}</p>{_stage_table(run)}<div class='charts'>"
        f"<div><h3>end-to-end latency per frame</h3>{_histogram_svg(samples.get('end_to_end', []))}</div>"
        f"<div><h3>inference latency per frame</h3>{_histogram_svg(samples.get('inference', []))}</div></div>"
        f"{'<h3>task metrics</h3>' + lines if lines else ''}{frames_html(run)}{problems}</details>"
    )


def to_html(runs: list[StoredRun]) -> str:
    """The whole page for `runs`: the runs that measured something by model and device, then the failed ones,
    then each run's details folded."""
    from edgekit.evaluate.draw import detection_frames_html

    measured = [r for r in runs if r.status not in ("error", "cancelled")]
    failed = [r for r in runs if r.status in ("error", "cancelled")]
    models = len({model_name(r) for r in measured})
    devices = len({r.device for r in measured})
    legend = "".join(f"<span style='background:{c}'></span>{s}" for s, c in BAR_STAGES)
    summary = (
        f"{len(measured)} measured run(s) of {models} model(s) on {devices} device(s)"
        + (f", {len(failed)} failed" if failed else "")
        + "; latencies in ms, p50 unless named; '-' was not measured."
    )
    details = "".join(_details(r, detection_frames_html) for r in ordered(measured))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'><title>edgekit report</title>"
        f"<style>{_STYLE}</style></head><body><main><h1>edgekit report</h1><p class='sub'>{summary}</p>"
        f"<p class='sub legend'>stage bars:{legend}</p>{_model_sections(measured)}{_failed_section(failed)}"
        + (f"<h2>Run details</h2>{details}" if details else "")
        + "</main></body></html>"
    )
