"""Per-tensor error of a quantized model against its float original: SQNR, cosine, max abs error.

Both models run on the same feeds with every quantized tensor exposed as an output; the quantized
side reads each tensor after its quantizer (the `_dequantized` copy), so the figure includes the
tensor's own rounding and clipping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import onnx

from edgekit.calibration import mixed_range, output_tail
from edgekit.calibration.graph import session_with_outputs
from edgekit.calibration.progress import Progress, pass_progress
from edgekit.runtime.compare import ErrorAccumulator

if TYPE_CHECKING:
    from edgekit.calibration.quant_spec import QuantSpec


@dataclass
class TensorError:
    name: str
    sqnr_db: float | None
    cosine: float | None
    max_abs_error: float | None
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sqnr_db": self.sqnr_db,
            "cosine": self.cosine,
            "max_abs_error": self.max_abs_error,
            "count": self.count,
        }


def tensor_errors(
    float_model: onnx.ModelProto,
    qdq_model: onnx.ModelProto,
    feeds: list[dict[str, Any]],
    tensors: list[str],
    progress: Progress = None,
) -> list[TensorError]:
    """Error of each tensor (and of each graph output) of the QDQ model, pooled over the feeds; `progress`
    counts the feeds (calibration/progress.py)."""
    qdq_names = {out for node in qdq_model.graph.node for out in node.output}
    outputs = [o.name for o in float_model.graph.output]
    wanted = [*tensors, *(o for o in outputs if o not in tensors)]
    quantized_name = {t: f"{t}_dequantized" if f"{t}_dequantized" in qdq_names else t for t in wanted}
    input_names = {i.name for i in float_model.graph.input}
    float_session = session_with_outputs(float_model, [t for t in wanted if t not in input_names])
    qdq_session = session_with_outputs(qdq_model, [quantized_name[t] for t in wanted])
    float_out_names = [o.name for o in float_session.get_outputs()]
    accumulators = {t: ErrorAccumulator() for t in wanted}
    with pass_progress("per-tensor error", len(feeds), progress) as bar:
        for feed in feeds:
            _compare_one(float_session, qdq_session, feed, float_out_names, quantized_name, accumulators)
            bar.advance()
    report = []
    for t, accumulator in accumulators.items():
        s = accumulator.summary()
        report.append(TensorError(t, s.get("sqnr_db"), s.get("cosine"), s.get("max_abs_error"), s.get("count", 0)))
    return report


def _compare_one(
    float_session: Any,
    qdq_session: Any,
    feed: dict[str, Any],
    float_out_names: list[str],
    quantized_name: dict[str, str],
    accumulators: dict[str, ErrorAccumulator],
) -> None:
    """Fold one feed's float and quantized tensors into their accumulators."""
    quantized = [quantized_name[t] for t in accumulators]
    reference = dict(zip(float_out_names, float_session.run(float_out_names, feed), strict=True))
    reference.update({k: v for k, v in feed.items() if k in accumulators})
    test = dict(zip(quantized, qdq_session.run(quantized, feed), strict=True))
    for t, accumulator in accumulators.items():
        accumulator.update(reference[t], test[quantized_name[t]])


def print_error_table(errors: list[TensorError], console: Any = None, *, worst: int | None = 15) -> None:
    """The tensors sorted by SQNR, worst first."""
    from rich.table import Table

    from edgekit.console_text import plain_console

    console = console or plain_console()
    ranked = sorted(errors, key=lambda e: e.sqnr_db if e.sqnr_db is not None else -1e9)
    shown = ranked[:worst] if worst else ranked
    table = Table(
        title=f"per-tensor error, FP32 vs quantized ({len(shown)} worst of {len(errors)})", title_justify="left"
    )
    for column in ("tensor", "SQNR dB", "cosine", "max abs err"):
        table.add_column(column, justify="left" if column == "tensor" else "right")
    for e in shown:
        exact = e.sqnr_db is not None and e.sqnr_db >= 999.0  # not quantized (kept float) or bit-exact
        table.add_row(
            e.name,
            "exact" if exact else f"{e.sqnr_db:.1f}" if e.sqnr_db is not None else "-",
            f"{e.cosine:.5f}" if e.cosine is not None else "-",
            f"{e.max_abs_error:.4g}" if e.max_abs_error is not None else "-",
        )
    console.print(table)


def print_head_notes(spec: QuantSpec, console: Any = None) -> None:
    """A line per mixed-range concat at the outputs (calibration/mixed_range.py) and one for the output tail
    (calibration/output_tail.py): what was found and what was done."""
    from edgekit.calibration.spec_summary import head_lines
    from edgekit.console_text import plain_console, styled

    console = console or plain_console()
    for line in head_lines(spec):
        console.print(styled((line, "yellow")))


def report_html(report: dict[str, Any]) -> str:
    """The quantize report as an HTML page: scheme, accuracy, budget, and every tensor's error."""
    import html

    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = "exact" if value >= 999.0 else f"{value:.4g}"
        return f"<td>{html.escape(str(value if value is not None else '-'))}</td>"

    errors = sorted(report["tensor_errors"], key=lambda e: e["sqnr_db"] if e["sqnr_db"] is not None else -1e9)
    rows = "".join(
        "<tr>" + "".join(cell(e[k]) for k in ("name", "sqnr_db", "cosine", "max_abs_error")) + "</tr>" for e in errors
    )
    sensitivity = "".join(f"<tr>{cell(s['node'])}{cell(s['score'])}</tr>" for s in report["sensitivity"])
    facts = {
        "scheme": report["scheme"],
        "observer": report["calibration"].get("observer"),
        "samples": report["calibration"].get("samples"),
        "accuracy": report["accuracy"],
        "kept float": report["kept_float"] or "none",
        "timings (s)": {k: round(v, 3) for k, v in report["timings_s"].items()},
    }
    facts_html = "".join(f"<tr><th>{html.escape(k)}</th>{cell(v)}</tr>" for k, v in facts.items())
    head = mixed_range.report_lines(report.get("mixed_range")) + output_tail.report_lines(report.get("output_tail"))
    mixed = "".join(f"<li>{html.escape(line)}</li>" for line in head)
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>edgekit quantize report</title>"
        f"<style>{style}</style></head><body><h1>Quantization report</h1><table>{facts_html}</table>"
        + (f"<h2>Detection heads: mixed-range concats and the output tail</h2><ul>{mixed}</ul>" if mixed else "")
        + "<h2>Per-tensor error, FP32 vs quantized (worst first)</h2>"
        f"<table><tr><th>tensor</th><th>SQNR dB</th><th>cosine</th><th>max abs error</th></tr>{rows}</table>"
        + (
            f"<h2>Sensitivity (score with only this node quantized)</h2><table>{sensitivity}</table>"
            if sensitivity
            else ""
        )
        + "</body></html>"
    )
