"""A latency-aware precision plan: where INT8 pays on this machine, joined with the accuracy budget.

The quantized nodes are cut into contiguous regions (graph order). Each region is tried in float with the rest
INT8, timed in ONNX Runtime on this machine (the device, when the CLI runs on it: the artifact's own graph,
what the target writes, at one thread by default) and scored against the float model. A region whose float
version is faster keeps float: INT8 does not pay there. When the result misses the accuracy budget, the
regions that gain most accuracy go float next, one at a time, until it is met. Every configuration measured is
a point of the latency vs accuracy front; the chosen one is the fastest that meets the budget. When even that is
slower than FP32, the plan falls back to FP32 (every region float) and the CLI says to ship the fp32 artifact.

Cost: 2 x regions + a few more model timings and evaluations (about a minute on PP-OCR det at 320x320),
against one evaluation per node for the per-layer sensitivity sweep.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from edgekit.calibration.progress import PassTracker, Progress, pass_progress
from edgekit.calibration.quant_spec import QuantSpec

REASON = "latency plan"


@dataclass
class Point:
    """One configuration measured: the regions kept float, its median latency and its accuracy score."""

    label: str
    float_regions: tuple[int, ...]
    latency_ms: float
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "float_regions": list(self.float_regions),
            "latency_ms": self.latency_ms,
            "score": self.score,
        }


@dataclass
class PrecisionPlan:
    regions: list[list[str]]
    fp32: Point
    int8: Point
    points: list[Point]
    chosen: Point
    metric: str
    target: float | None
    seconds: float
    front: list[Point] = field(default_factory=list)
    timed_on: str = "this machine"  # or the fleet device whose agent timed the candidates

    @property
    def float_nodes(self) -> list[str]:
        return [node for r in self.chosen.float_regions for node in self.regions[r]]

    @property
    def slower_than_fp32(self) -> bool:
        """True only when the budget forced a slower plan: without one, the plan falls back to FP32."""
        return self.chosen is not self.fp32 and self.chosen.latency_ms > self.fp32.latency_ms

    @property
    def int8_does_not_pay(self) -> bool:
        return self.chosen is self.fp32

    @property
    def met(self) -> bool:
        return self.target is None or self.chosen.score >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "target": self.target,
            "regions": [len(r) for r in self.regions],
            "fp32": self.fp32.to_dict(),
            "int8": self.int8.to_dict(),
            "chosen": self.chosen.to_dict(),
            "front": [p.to_dict() for p in self.front],
            "points": [p.to_dict() for p in self.points],
            "float_nodes": self.float_nodes,
            "slower_than_fp32": self.slower_than_fp32,
            "int8_does_not_pay": self.int8_does_not_pay,
            "met": self.met,
            "seconds": self.seconds,
            "timed_on": self.timed_on,
        }


def split_regions(nodes: list[str], count: int) -> list[list[str]]:
    """`nodes` (graph order) in at most `count` contiguous regions of near-equal size."""
    count = max(1, min(count, len(nodes)))
    bounds = np.linspace(0, len(nodes), count + 1).round().astype(int)
    return [nodes[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def median_latency_ms(model: onnx.ModelProto, feed: dict[str, np.ndarray], runs: int, threads: int) -> float:
    """Median wall time of one inference in ONNX Runtime (all graph optimisations, as the agent runs it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    from edgekit.runtime.timing import median_call_ms

    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return median_call_ms(lambda: session.run(None, feed), runs)


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats on both latency and score, fastest first."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.latency_ms, -p.score)):
        if not front or point.score > front[-1].score:
            front.append(point)
    return front


def plan_precision(
    float_model: onnx.ModelProto,
    spec: QuantSpec,
    nodes: list[str],
    evaluate: Callable[[onnx.ModelProto], float],
    artifact_of: Callable[[QuantSpec], onnx.ModelProto],
    feed: dict[str, np.ndarray],
    *,
    target: float | None = None,
    regions: int = 8,
    runs: int = 15,
    threads: int = 1,
    metric: str = "sqnr",
    progress: Progress = None,
    timer: Callable[[onnx.ModelProto, dict[str, np.ndarray]], float] | None = None,
) -> PrecisionPlan:
    """Measure and choose (see the module doc). `artifact_of(spec)` is the model the target would ship for a
    spec (its QDQ graph and rewrites); `evaluate(model)` scores a model against the float one (higher is better).
    `timer(model, feed)` gives a model's median latency in ms: by default ONNX Runtime here at `threads`; the
    CLI passes edgekit.device.timing.DeviceTimer to time on the fleet device that will run the artifact.
    `progress` counts the configurations measured (calibration/progress.py): FP32, INT8 and one per region; the
    float-where-INT8-does-not-pay mix and accuracy steps, when needed, raise the total."""
    if timer is None:
        timer = lambda model, feed: median_latency_ms(model, feed, runs, threads)  # noqa: E731
    cut = split_regions([n for n in nodes if n not in spec.float_nodes], regions)
    with pass_progress("latency plan: configurations timed", len(cut) + 2, progress) as bar:
        return _measure_plan(float_model, spec, cut, evaluate, artifact_of, feed, target, timer, metric, bar)


def _measure_plan(
    float_model: onnx.ModelProto,
    spec: QuantSpec,
    cut: list[list[str]],
    evaluate: Callable[[onnx.ModelProto], float],
    artifact_of: Callable[[QuantSpec], onnx.ModelProto],
    feed: dict[str, np.ndarray],
    target: float | None,
    timer: Callable[[onnx.ModelProto, dict[str, np.ndarray]], float],
    metric: str,
    bar: PassTracker,
) -> PrecisionPlan:
    start = time.perf_counter()
    cache: dict[tuple[int, ...], Point] = {}

    def measure(float_regions: tuple[int, ...], label: str) -> Point:
        key = tuple(sorted(set(float_regions)))
        if key not in cache:
            model = artifact_of(with_float_regions(spec, cut, key))
            cache[key] = Point(label, key, timer(model, feed), evaluate(model))
            bar.total = max(bar.total or 0, bar.done + 1)
            bar.advance()
        return cache[key]

    fp32 = Point("fp32", tuple(range(len(cut))), timer(float_model, feed), float("inf"))
    fp32.score = evaluate(float_model)
    bar.advance()
    int8 = measure((), "int8")
    singles = [measure((r,), f"region {r + 1} float") for r in range(len(cut))]
    slower = tuple(r for r, point in enumerate(singles) if point.latency_ms < int8.latency_ms * 0.97)
    current = measure(slower, "float where int8 does not pay") if slower else int8
    if target is not None and current.score < target:
        bar.total = bar.done + len(cut) - len(current.float_regions)  # at most one more region each
        gains = sorted(range(len(cut)), key=lambda r: singles[r].score - int8.score, reverse=True)
        for r in gains:
            if r in current.float_regions:
                continue
            current = measure((*current.float_regions, r), f"+ region {r + 1} float for accuracy")
            if current.score >= target:
                break
    meeting = [p for p in cache.values() if target is None or p.score >= target]
    chosen = min(meeting, key=lambda p: p.latency_ms) if meeting else max(cache.values(), key=lambda p: p.score)
    if chosen.latency_ms > fp32.latency_ms:  # INT8 does not pay here at all: fall back to the float model
        chosen = fp32
    points = [fp32, *cache.values()]
    return PrecisionPlan(
        cut, fp32, int8, points, chosen, metric, target, time.perf_counter() - start, front=pareto_front(points)
    )


def with_float_regions(spec: QuantSpec, regions: list[list[str]], chosen: tuple[int, ...]) -> QuantSpec:
    """A copy of `spec` with the nodes of the `chosen` regions kept float."""
    trial = copy.deepcopy(spec)
    for r in chosen:
        for node in regions[r]:
            trial.keep_float(node, REASON)
    return trial


def print_precision_plan(plan: PrecisionPlan, console: Any) -> None:
    """The measured points (front marked, chosen in bold) and a loud line when the choice is slower than FP32."""
    from rich.table import Table

    unit = "top-1 %" if plan.metric == "top1" else "SQNR dB"
    title = f"latency plan: {len(plan.regions)} regions, {plan.seconds:.0f} s, timed on {plan.timed_on}"
    table = Table(title=title, title_justify="left")
    for column in ("configuration", "float regions", "latency ms", "/ FP32", unit, "front"):
        table.add_column(column)
    front = {id(p) for p in plan.front}
    for point in sorted(plan.points, key=lambda p: p.latency_ms):
        score = f"{point.score * 100:.2f}" if plan.metric == "top1" else f"{point.score:.2f}"
        if point is plan.fp32 and plan.metric != "top1":
            score = "reference"
        style = "bold" if point is plan.chosen else None
        regions = "all" if point is plan.fp32 else (", ".join(str(r + 1) for r in point.float_regions) or "-")
        table.add_row(
            point.label + (" (chosen)" if point is plan.chosen else ""),
            regions,
            f"{point.latency_ms:.2f}",
            f"{point.latency_ms / plan.fp32.latency_ms:.2f}x",
            score,
            "*" if id(point) in front else "",
            style=style,
        )
    console.print(table)
    if plan.int8_does_not_pay:
        console.print(
            f"[bold yellow]INT8 does not pay on {plan.timed_on}:[/] every INT8 plan measured ran slower than FP32; "
            "the plan keeps every region float: ship the fp32 artifact"
        )
    if plan.slower_than_fp32:
        console.print(
            f"[bold red]warning:[/] the chosen INT8 plan runs at {plan.chosen.latency_ms:.2f} ms, slower than FP32 "
            f"({plan.fp32.latency_ms:.2f} ms) on {plan.timed_on}: ship FP32 there, or check the device's CPU "
            "(`edgekit devices check`)"
        )
