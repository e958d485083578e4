"""Sensitivity analysis and accuracy-budgeted mixed precision.

Sensitivity: quantize one node at a time (everything else float) and measure the model's outputs
against the float model. Mixed precision: keep the most sensitive nodes in float, the fewest that
meet the user's budget (a minimum output SQNR, or a maximum top-1 drop on labelled data).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from edgekit.calibration.progress import Progress, pass_progress
from edgekit.calibration.qdq import write_qdq
from edgekit.calibration.quant_spec import QuantSpec
from edgekit.errors import CalibrationDataError
from edgekit.runtime.compare import ErrorAccumulator


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    session = _session(model)
    return [session.run(None, feed) for feed in feeds]


@dataclass
class Evaluator:
    """Scores a candidate model: output SQNR against the float model (dB), or top-1 accuracy (0..1)."""

    metric: str  # "sqnr" | "top1"
    feeds: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]] = field(default_factory=list)
    labels: list[int] | None = None

    @classmethod
    def for_sqnr(cls, float_model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> Evaluator:
        return cls("sqnr", feeds, run_outputs(float_model, feeds))

    @classmethod
    def for_top1(cls, feeds: list[dict[str, np.ndarray]], labels: list[int]) -> Evaluator:
        if len(feeds) != len(labels):
            raise CalibrationDataError(f"{len(feeds)} labelled samples but {len(labels)} labels")
        return cls("top1", feeds, labels=list(labels))

    def __call__(self, model: onnx.ModelProto) -> float:
        outputs = run_outputs(model, self.feeds)
        if self.metric == "top1":
            predictions = [int(np.argmax(out[0].reshape(-1))) for out in outputs]
            return float(np.mean([p == y for p, y in zip(predictions, self.labels or [], strict=True)]))
        worst = float("inf")
        for index in range(len(outputs[0])):
            accumulator = ErrorAccumulator()
            for ref, test in zip(self.reference, outputs, strict=True):
                accumulator.update(ref[index], test[index])
            sqnr = accumulator.summary()["sqnr_db"]
            worst = min(worst, sqnr if sqnr is not None else float("-inf"))
        return worst


def _only(spec: QuantSpec, node: str, quantized: list[str]) -> QuantSpec:
    single = copy.deepcopy(spec)
    for other in quantized:
        if other != node:
            single.keep_float(other, "sensitivity probe")
    return single


def layer_sensitivity(
    float_model: onnx.ModelProto,
    spec: QuantSpec,
    quantized_nodes: list[str],
    evaluator: Evaluator,
    progress: Progress = None,
) -> list[tuple[str, float]]:
    """(node, score with only that node quantized), most sensitive first."""
    scores = []
    probed = [node for node in quantized_nodes if node not in spec.float_nodes]
    with pass_progress("sensitivity: one layer int8 at a time", len(probed), progress) as bar:
        for node in probed:
            scores.append((node, evaluator(write_qdq(float_model, _only(spec, node, quantized_nodes)))))
            bar.advance()
    return sorted(scores, key=lambda item: item[1])


@dataclass
class BudgetResult:
    spec: QuantSpec
    float_nodes: list[str]
    score: float
    met: bool
    history: list[dict[str, Any]]


def meet_budget(
    float_model: onnx.ModelProto,
    spec: QuantSpec,
    ranking: list[tuple[str, float]],
    evaluator: Evaluator,
    target: float,
    progress: Progress = None,
) -> BudgetResult:
    """The fewest most-sensitive nodes kept float so that the score reaches `target`.

    Scores are treated as growing with the number of float nodes: grow k by doubling until the
    budget is met, then bisect between the last failing and first passing k. `progress` counts the
    models evaluated (calibration/progress.py); their number is known only at the end.
    """
    with pass_progress("accuracy budget: layers kept float", None, progress) as bar:
        return _search(float_model, spec, ranking, evaluator, target, bar.advance)


def _search(
    float_model: onnx.ModelProto,
    spec: QuantSpec,
    ranking: list[tuple[str, float]],
    evaluator: Evaluator,
    target: float,
    evaluated: Callable[[], None],
) -> BudgetResult:
    order = [node for node, _ in ranking]
    history: list[dict[str, Any]] = []
    cache: dict[int, float] = {}

    def score(k: int) -> float:
        if k not in cache:
            trial = copy.deepcopy(spec)
            for node in order[:k]:
                trial.keep_float(node, "accuracy budget")
            cache[k] = evaluator(write_qdq(float_model, trial))
            evaluated()
            history.append({"float_nodes": k, "score": cache[k]})
        return cache[k]

    if score(0) >= target:
        best = 0
    else:
        low, high = 0, 1
        while high < len(order) and score(high) < target:
            low, high = high, min(high * 2, len(order))
        if score(high) < target:
            best = len(order)
        else:
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if score(middle) < target else (low, middle)
            best = high
    final = copy.deepcopy(spec)
    for node in order[:best]:
        final.keep_float(node, "accuracy budget")
    return BudgetResult(final, order[:best], score(best), score(best) >= target, history)
