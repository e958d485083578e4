"""Post-training quantization end to end: calibrate, optionally meet an accuracy budget, write QDQ.

`quantize(model, data, ...)` returns the QDQ model, the QuantSpec and a report; `save_quantized`
writes `model.onnx`, `quant_spec.json` and `report.json` together (staged, then moved in place, so
a failed run never leaves a half-written result that looks finished).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from edgekit.calibration.calibrate import calibrate
from edgekit.calibration.error_report import TensorError, tensor_errors
from edgekit.calibration.mixed_precision import BudgetResult, Evaluator, layer_sensitivity, meet_budget
from edgekit.calibration.mixed_range import DEFAULT_FACTOR, DEFAULT_POLICY
from edgekit.calibration.output_tail import DEFAULT_POLICY as DEFAULT_TAIL_POLICY
from edgekit.calibration.progress import Progress
from edgekit.calibration.qdq import write_qdq
from edgekit.calibration.quant_spec import QuantSpec
from edgekit.errors import EdgekitError
from edgekit.staging import staged_folder

if TYPE_CHECKING:
    from edgekit.calibration.latency_plan import PrecisionPlan
    from edgekit.model import Model


@dataclass
class QuantizeResult:
    qdq_model: onnx.ModelProto
    spec: QuantSpec
    float_model: onnx.ModelProto
    errors: list[TensorError] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    budget: BudgetResult | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    precision_plan: PrecisionPlan | None = None

    def report(self) -> dict[str, Any]:
        budget = None
        if self.budget is not None:
            budget = {
                "met": self.budget.met,
                "score": self.budget.score,
                "float_nodes": self.budget.float_nodes,
                "history": self.budget.history,
            }
        return {
            "schema": "edgekit.quantize_report",
            "version": 1,
            "quant_spec_sha256": self.spec.sha256,
            "calibration": self.spec.calibration,
            "scheme": self.spec.scheme,
            "accuracy": self.accuracy,
            "tensor_errors": [e.to_dict() for e in self.errors],
            "sensitivity": [{"node": n, "score": s} for n, s in self.sensitivity],
            "budget": budget,
            "kept_float": sorted(self.spec.float_nodes),
            "mixed_range": self.spec.calibration.get("mixed_range"),
            "output_tail": self.spec.calibration.get("output_tail"),
            "timings_s": self.timings_s,
            "precision_plan": self.precision_plan.to_dict() if self.precision_plan else None,
        }


def quantize(
    model: Model,
    data: Any,
    *,
    observer: str = "minmax",
    observer_settings: dict[str, Any] | None = None,
    activations: str = "uint8_asym",
    weights: str = "int8_per_channel",
    float_nodes: Iterable[str] = (),
    limit: int | None = None,
    eval_feeds: list[dict[str, np.ndarray]] | None = None,
    eval_labels: list[int] | None = None,
    max_drop: float | None = None,
    min_sqnr: float | None = None,
    error_samples: int = 16,
    progress: Progress = True,
    equalize: bool = False,
    bias_correction: bool = False,
    mixed_range_factor: float = DEFAULT_FACTOR,
    mixed_range_policy: str = DEFAULT_POLICY,
    output_tail: str = DEFAULT_TAIL_POLICY,
    latency_plan: Callable[[onnx.ModelProto, QuantSpec], onnx.ModelProto] | None = None,
    latency_timer: Callable[[onnx.ModelProto, dict[str, np.ndarray]], float] | None = None,
    rounding: str = "nearest",
    rounding_samples: int = 8,
) -> QuantizeResult:
    """Quantize `model` with calibration `data`.

    With `max_drop` (top-1 points, needs `eval_feeds` + `eval_labels`) or `min_sqnr` (dB on the outputs,
    measured on `eval_feeds` or on calibration samples), the most sensitive nodes stay float until the
    budget is met. The output tail (a detector's decoding) follows `output_tail`; mixed-range concats at
    the outputs (detection heads) follow `mixed_range_policy` (calibration/mixed_range.py). `latency_plan`
    (a target's `timed_model(float_model, spec)`) instead times regions of the artifact on this machine and
    keeps float where INT8 does not pay, then where the budget needs it (calibration/latency_plan.py);
    `latency_timer(model, feed)` times there instead (a DeviceTimer: on a fleet device; its `name` is recorded).
    `rounding` "adaround" learns the weights' rounding (calibration/adaround.py). `progress` shows every pass
    (True: a bar on a terminal; or a callback `progress(pass_name, done, total)`: calibration/progress.py).
    """
    if max_drop is not None and (eval_feeds is None or eval_labels is None):
        raise EdgekitError("--max-drop needs labelled evaluation data: pass --eval DATA (and --labels for a video)")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    calibration = calibrate(
        model,
        data,
        observer=observer,
        observer_settings=observer_settings,
        activations=activations,
        weights=weights,
        float_nodes=float_nodes,
        limit=limit,
        progress=progress,
        equalize=equalize,
        bias_correction=bias_correction,
        mixed_range_factor=mixed_range_factor,
        mixed_range_policy=mixed_range_policy,
        output_tail=output_tail,
        rounding=rounding,
        rounding_samples=rounding_samples,
    )
    timings["calibration"] = time.perf_counter() - start
    float_model, spec = calibration.float_model, calibration.spec
    # accuracy is measured against the float weights, not the ones AdaRound or bias correction changed
    reference = float_model if calibration.reference is None else calibration.reference
    if eval_feeds is None:
        eval_feeds = _sample_feeds(model, data, error_samples)
    result = QuantizeResult(write_qdq(float_model, spec), spec, float_model, timings_s=timings)

    if latency_plan is not None:
        start = time.perf_counter()
        budget = (eval_labels, max_drop, min_sqnr)
        _plan_latency(result, calibration.plan.nodes, latency_plan, latency_timer, eval_feeds, budget, progress)
        timings["latency_plan"] = time.perf_counter() - start
    elif max_drop is not None or min_sqnr is not None:
        start = time.perf_counter()
        if max_drop is not None:
            evaluator = Evaluator.for_top1(eval_feeds, eval_labels or [])
            baseline = evaluator(reference)
            target = baseline - max_drop / 100.0
            result.accuracy["float_top1"] = baseline
        else:
            evaluator = Evaluator.for_sqnr(reference, eval_feeds)
            target = float(min_sqnr)  # type: ignore[arg-type]
        fully_quantized = evaluator(result.qdq_model)
        if fully_quantized >= target:  # no sensitivity sweep needed
            history = [{"float_nodes": 0, "score": fully_quantized}]
            result.budget = BudgetResult(spec, [], fully_quantized, True, history)
        else:
            quantized = [n for n in calibration.plan.nodes if n not in spec.float_nodes]  # not a kept-float head
            result.sensitivity = layer_sensitivity(float_model, spec, quantized, evaluator, progress)
            result.budget = meet_budget(float_model, spec, result.sensitivity, evaluator, target, progress)
        result.spec = spec = result.budget.spec
        result.qdq_model = write_qdq(float_model, spec)
        timings["budget"] = time.perf_counter() - start
        if not result.budget.met:
            raise EdgekitError(
                f"no mix of float and int8 layers meets the budget (best {result.budget.score:.4g} vs target "
                f"{target:.4g}); loosen --max-drop / --min-sqnr or calibrate with another observer"
            )
    if eval_labels is not None and eval_feeds:
        evaluator = Evaluator.for_top1(eval_feeds, eval_labels)
        result.accuracy.setdefault("float_top1", evaluator(reference))
        result.accuracy["quantized_top1"] = evaluator(result.qdq_model)
    start = time.perf_counter()
    result.errors = tensor_errors(
        reference,
        result.qdq_model,
        eval_feeds[:error_samples],
        [t for t, q in spec.tensors.items() if q.kind == "activation"],
        progress,
    )
    timings["error_report"] = time.perf_counter() - start
    return result


def _budget(
    result: QuantizeResult, feeds: list[dict[str, np.ndarray]], labels, max_drop: float | None, min_sqnr: float | None
) -> tuple[Evaluator, float | None]:
    """The evaluator for the budget and its target score (None: no budget; SQNR is still measured)."""
    if max_drop is not None:
        evaluator = Evaluator.for_top1(feeds, labels or [])
        result.accuracy["float_top1"] = evaluator(result.float_model)
        return evaluator, result.accuracy["float_top1"] - max_drop / 100.0
    return Evaluator.for_sqnr(result.float_model, feeds), min_sqnr


def _plan_latency(result, nodes, artifact_of, timer, feeds, budget, progress) -> None:
    from edgekit.calibration.latency_plan import plan_precision, with_float_regions

    evaluator, target = _budget(result, feeds, *budget)
    plan = plan_precision(
        result.float_model, result.spec, nodes, evaluator, lambda spec: artifact_of(result.float_model, spec), feeds[0],
        target=target,
        metric=evaluator.metric,
        timer=timer,
        progress=progress,
    )  # fmt: skip
    plan.timed_on = getattr(timer, "name", plan.timed_on)
    result.precision_plan = plan
    result.spec = with_float_regions(result.spec, plan.regions, plan.chosen.float_regions)
    result.spec.calibration["precision_plan"] = {
        "chosen": plan.chosen.label, "latency_ms": plan.chosen.latency_ms, "fp32_latency_ms": plan.fp32.latency_ms,
        "score": plan.chosen.score, "metric": plan.metric, "slower_than_fp32": plan.slower_than_fp32,
        "timed_on": plan.timed_on,
    }  # fmt: skip
    result.qdq_model = write_qdq(result.float_model, result.spec)
    if not plan.met:
        raise EdgekitError(
            f"no mix of float and int8 regions meets the budget (best {plan.chosen.score:.4g} vs target "
            f"{target:.4g}); loosen --max-drop / --min-sqnr or calibrate with another observer"
        )


def _sample_feeds(model: Model, data: Any, count: int) -> list[dict[str, np.ndarray]]:
    from edgekit.calibration.data import load_calibration_data

    if not isinstance(data, (str, Path, np.ndarray)):
        raise EdgekitError("pass eval_feeds when calibrating from an iterable (it can only be read once)")
    feeds = load_calibration_data(data, spec=model.preprocess, input_name=model.inputs[0].name, limit=count)
    return list(feeds.feeds)


def save_quantized(result: QuantizeResult, out_dir: str | Path) -> Path:
    """Write model.onnx (QDQ), quant_spec.json and report.json into `out_dir`, all or nothing.

    Files one target wants (TensorRT's calibration cache) are written by that target's module, not here."""
    out_dir = Path(out_dir)
    with staged_folder(out_dir, marker="quant_spec.json", what="an earlier quantize result") as staging:
        onnx.save(result.qdq_model, staging / "model.onnx")
        result.spec.save(staging / "quant_spec.json")
        (staging / "report.json").write_text(json.dumps(result.report(), indent=1, allow_nan=False) + "\n")
    return out_dir
