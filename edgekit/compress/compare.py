"""Before/after comparison of two ONNX models: size, parameters, MACs, ONNX Runtime latency and accuracy.

Every number is measured on the exported ONNX model, the thing that ships:

- size: bytes of the serialised ONNX (with edgekit's metadata);
- params and MACs: ``edgekit.inspect.inspect_model`` with every input's batch fixed to 1;
- latency: ONNX Runtime on the CPU, one thread (intra and inter op), batch 1, after ``warmup`` runs, the
  median of ``runs`` timed runs on a fixed random input;
- accuracy: top-1 from ``eval_fn(model)`` (``ort_top1(images, labels)`` builds one that runs ORT on data).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgekit.model import Model

__all__ = ["CompareRow", "before_after", "measure", "ort_session", "ort_top1", "print_before_after"]

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


@dataclass
class CompareRow:
    """One model's measurements; `top1` is None without an eval function, `macs` None when not all known."""

    name: str
    size_bytes: int
    params: int
    macs: int | None
    latency_ms: float
    top1: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ort_session(model: Model, *, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session on `model` with `threads` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.to_bytes(), options, providers=["CPUExecutionProvider"])


def _batch1_shapes(model: Model) -> dict[str, list[int]]:
    shapes = {}
    for tensor in model.inputs:
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in tensor.shape]
        shapes[tensor.name] = dims
    return shapes


def _latency_ms(model: Model, runs: int, warmup: int) -> float:
    session = ort_session(model)
    rng = np.random.default_rng(0)
    shapes = _batch1_shapes(model)
    feed = {}
    for spec in session.get_inputs():
        dtype = _NUMPY_TYPES.get(spec.type, np.float32)
        shape = shapes.get(spec.name) or [d if isinstance(d, int) else 1 for d in spec.shape]
        if np.issubdtype(dtype, np.integer):
            feed[spec.name] = rng.integers(0, 100, size=shape).astype(dtype)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(
    model: Model, name: str, eval_fn: Callable[[Model], float] | None = None, *, runs: int = 50, warmup: int = 5
) -> CompareRow:
    """Measure one model (see the module docstring for how)."""
    from edgekit.inspect import inspect_model

    report = inspect_model(model, input_shapes=_batch1_shapes(model))
    return CompareRow(
        name=name,
        size_bytes=len(model.to_bytes()),
        params=int(report.totals.params),
        macs=None if report.totals.macs is None else int(report.totals.macs),
        latency_ms=_latency_ms(model, runs, warmup),
        top1=None if eval_fn is None else float(eval_fn(model)),
    )


def before_after(
    before: Model,
    after: Model,
    eval_fn: Callable[[Model], float] | None = None,
    *,
    names: tuple[str, str] = ("before", "after"),
    runs: int = 50,
    warmup: int = 5,
) -> list[CompareRow]:
    """Rows for `before` and `after` (in that order), measured the same way."""
    return [
        measure(before, names[0], eval_fn, runs=runs, warmup=warmup),
        measure(after, names[1], eval_fn, runs=runs, warmup=warmup),
    ]


def ort_top1(images: np.ndarray, labels: np.ndarray, *, batch: int = 256) -> Callable[[Model], float]:
    """An eval function: top-1 of a model's first output over (images, labels), run by ONNX Runtime."""

    def evaluate(model: Model) -> float:
        session = ort_session(model, threads=0)
        spec = session.get_inputs()[0]
        dtype = _NUMPY_TYPES.get(spec.type, np.float32)
        correct = 0
        for start in range(0, len(labels), batch):
            (logits, *_) = session.run(None, {spec.name: images[start : start + batch].astype(dtype, copy=False)})
            correct += int(
                (np.asarray(logits).reshape(len(logits), -1).argmax(axis=1) == labels[start : start + batch]).sum()
            )
        return correct / len(labels) if len(labels) else float("nan")

    return evaluate


def _change(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return ""
    return f" ({(value - base) / base * 100:+.0f}%)"


def print_before_after(rows: list[CompareRow], console: Any = None, *, title: str = "before / after") -> None:
    """Print the rows as a rich table; every row after the first shows its change against the first."""
    from rich.table import Table

    from edgekit.console_text import plain_console
    from edgekit.inspect import human_bytes, human_count

    console = console or plain_console()
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    for column in ("size", "params", "MACs", "latency ms (b1, 1 thread)", "top-1"):
        table.add_column(column, justify="right")
    base = rows[0] if rows else None
    for i, row in enumerate(rows):
        ref = base if i and base is not None else None
        top1 = "n/a" if row.top1 is None else f"{row.top1 * 100:.2f}%"
        if ref is not None and row.top1 is not None and ref.top1 is not None:
            top1 += f" ({(row.top1 - ref.top1) * 100:+.2f} pts)"
        table.add_row(
            row.name,
            human_bytes(row.size_bytes) + _change(row.size_bytes, ref and ref.size_bytes),
            human_count(row.params) + _change(row.params, ref and ref.params),
            human_count(row.macs) + _change(row.macs, ref and ref.macs),
            f"{row.latency_ms:.3f}" + _change(row.latency_ms, ref and ref.latency_ms),
            top1,
        )
    console.print(table)
