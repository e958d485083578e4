"""The rich table `edgekit inspect` prints: one row per layer, then a summary panel. rich is imported inside
the functions, so importing `edgekit.inspect` stays light."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from edgekit.inspect.report import UNKNOWN_DYNAMIC, InspectReport, Shape

Row = tuple[str, str, str | None]  # (key, value, rich style or None) of one summary line


def human_count(value: int | None) -> str:
    """3_512_000 -> "3.5 M"; small numbers stay exact; None -> "?"."""
    if value is None:
        return "?"
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.1f} {unit}"
    return str(int(value))


def human_bytes(value: int) -> str:
    """14_012_345 -> "14.0 MB" (decimal units)."""
    for factor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{int(value)} B"


def format_shape(shape: Shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join(str(d) for d in shape) + "]"


def render_table(report: InspectReport, console: Any = None, *, max_rows: int | None = None) -> None:
    """Print the per-layer table (at most `max_rows` rows; default all) and the summary to a rich Console."""
    from rich.table import Table
    from rich.text import Text

    from edgekit.console_text import plain_console

    console = console or plain_console()
    shown = report.layers if max_rows is None else report.layers[: max(0, max_rows)]
    table = Table(title=f"{report.path or 'model'}: {report.totals.nodes} layers", title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("name", overflow="fold", max_width=48)
    table.add_column("op")
    table.add_column("output shape", overflow="fold")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for layer in shown:
        op = layer.op_type if not layer.domain else f"{layer.domain}::{layer.op_type}"
        shapes = "; ".join(format_shape(s) for s in layer.output_shapes)
        macs = Text(human_count(layer.macs)) if layer.macs is not None else Text("?", style="yellow")
        table.add_row(
            str(layer.index),
            Text(layer.name),
            Text(op),
            Text(shapes),
            Text(human_count(layer.params) if layer.params else "-"),
            macs,
        )
    hidden = len(report.layers) - len(shown)
    if hidden > 0:
        more = Text(f"{hidden} more layers (all of them: no max_rows / --max-rows, or --json)", style="dim")
        table.add_row("…", more, "", "", "", "")
    console.print(table)
    console.print(_summary(report))


def _summary(report: InspectReport) -> Any:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows = [*_model_rows(report), *_count_rows(report), *_target_rows(report)]
    rows += [("note", note, "dim") for note in report.notes]
    for key, value, style in rows:
        grid.add_row(key, Text(value, style=style or ""))
    return Panel(grid, title="summary", title_align="left", expand=False)


def _model_rows(report: InspectReport) -> list[Row]:
    """File size, opsets, IR version, producer, inputs, outputs and the preprocessing."""
    rows: list[Row] = [
        ("file size", f"{human_bytes(report.file_size_bytes)} ({report.file_size_bytes} bytes serialized)", None),
        ("opset", ", ".join(f"{domain} {v}" for domain, v in report.opsets.items()), None),
        ("IR version", str(report.ir_version), None),
        ("producer", report.producer or "unknown", None),
    ]
    for key, tensors in (("inputs", report.inputs), ("outputs", report.outputs)):
        rows.append((key, "; ".join(f"{t['name']} {t['dtype']} {format_shape(t['shape'])}" for t in tensors), None))
    rows += _preprocess_rows(report.preprocess, report.preprocess_sources)
    return [*rows, *_task_rows(report)]


def _task_rows(report: InspectReport) -> list[Row]:
    """The task and its settings, the class names, each with where it came from, and the metadata notes."""
    if report.task:
        settings = ", ".join(f"{key} {json.dumps(value)}" for key, value in report.task.items() if key != "task")
        task = f"{report.task['task']} ({report.task_source})" + (f": {settings}" if settings else "")
        rows: list[Row] = [("task", task, None)]
    else:
        rows = [("task", "none: give one with --task (classify, detect, segment, text-detect, raw)", "yellow")]
    if report.class_names:
        names = ", ".join(report.class_names[:5]) + (", …" if len(report.class_names) > 5 else "")
        rows.append(("class names", f"{len(report.class_names)} ({report.class_names_source}): {names}", None))
    else:
        rows.append(("class names", "none", None))
    rows += [("metadata", note, "yellow") for note in report.metadata_notes]
    return rows


def _preprocess_rows(p: dict[str, Any] | None, sources: dict[str, str]) -> list[Row]:
    """The preprocessing, one row per key with where its value came from; defaults in yellow, since the model
    did not say them and a wrong one (a stretch for a letterbox model) costs accuracy silently."""
    from edgekit.preprocess_sources import DEFAULT, source_text

    if not p:
        return [("preprocess", "none: the input is not an image; give one with --preprocess", "yellow")]
    rows: list[Row] = [("preprocess", "key by key, with where each value came from:", None)]
    for key, value in p.items():
        source = sources.get(key, DEFAULT)
        rows.append(
            (f"  {key}", f"{_value_text(key, value)} ({source_text(source)})", "yellow" if source == DEFAULT else None)
        )
    return rows


def _value_text(key: str, value: Any) -> str:
    if value is None:
        return "none: frames keep their size (a dynamic input)" if key == "resize" else "none"
    if key in ("resize", "crop") and isinstance(value, list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if key == "scale":
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, list) else str(value)


def _count_rows(report: InspectReport) -> list[Row]:
    """Layers (the ten most used op types), parameters and MACs."""
    totals = report.totals
    top = list(totals.op_histogram.items())
    ops = ", ".join(f"{op} ×{n}" for op, n in top[:10])
    if len(top) > 10:
        ops += f", … {len(top) - 10} more op types"
    return [
        ("layers", f"{totals.nodes} nodes: {ops}", None),
        ("params", f"{human_count(totals.params)} params ({human_bytes(totals.param_bytes)} of weights)", None),
        _macs_row(report),
    ]


def _macs_row(report: InspectReport) -> Row:
    totals = report.totals
    at = "; ".join(f"{name} {format_shape(shape)}" for name, shape in report.macs_input_shapes.items())
    if totals.macs is not None:
        return "MACs", f"{human_count(totals.macs)} MACs at {at}", None
    why = Counter(layer.macs_note for layer in report.layers if layer.macs is None)
    reasons = ", ".join(f"{n} {note}" for note, n in why.items())
    hint = "; fix the dynamic dims with input_shapes / --shape NAME=D0,D1,.." if UNKNOWN_DYNAMIC in why else ""
    return (
        "MACs",
        f"unknown for {totals.macs_unknown_layers} layers ({reasons}); {human_count(totals.macs_known)} MACs in "
        f"the known ones at {at}{hint}",
        "yellow",
    )


def _target_rows(report: InspectReport) -> list[Row]:
    """Per target: the ops it cannot run, those its accelerators hand back, its accelerator report, and the
    targets that could not be checked."""
    rows: list[Row] = []
    for target, ops_missing in report.unsupported.items():
        if ops_missing:
            rows.append((target, f"cannot run: {_op_counts(ops_missing)}", "red"))
            rows += [(target, _refusal_line(r), "red") for r in report.refusals.get(target, [])[:SHOWN_REFUSALS]]
            hidden = len(report.refusals.get(target, [])) - SHOWN_REFUSALS
            if hidden > 0:
                rows.append((target, f"  ... and {hidden} more node(s) (--json lists them all)", "red"))
        else:
            rows.append((target, "unsupported ops: none", "green"))
    for target, by_accelerator in report.fallbacks.items():
        for accelerator, ops in by_accelerator.items():
            if ops:
                rows.append((f"{target} ({accelerator})", f"runs on the CPU instead: {_op_counts(ops)}", "yellow"))
    for target, detail in report.accelerator_reports.items():
        for line in detail.get("lines", []):
            style = "yellow" if line.startswith(("falls", "slows")) else "green"
            rows.append((f"{target} ({detail.get('accelerator')})", line, style))
    rows += [(target, f"build: {note}", "yellow") for target, found in report.build_notes.items() for note in found]
    rows += [(target, f"not checked: {error}", "yellow") for target, error in report.target_errors.items()]
    return rows


SHOWN_REFUSALS = 12  # refused nodes listed per target; --json has them all


def _refusal_line(refusal: dict[str, str]) -> str:
    return f"  {refusal['op']} node {refusal['node']!r}: {refusal['reason']}"


def _op_counts(ops: dict[str, int]) -> str:
    return ", ".join(f"{op} ×{n}" for op, n in ops.items())
