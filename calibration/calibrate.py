"""Calibration: one ONNX Runtime pass over the data feeds every activation to its streaming observer.

Memory stays flat in the number of samples: each batch's intermediate tensors are folded into the
observers and dropped before the next batch runs (ONNX Runtime's own calibrators keep them all).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from edgekit.calibration.canonical import canonicalize, remove_identities
from edgekit.calibration.data import CalibrationDataError, load_calibration_data, warn_skipped
from edgekit.calibration.equalize import apply_transforms, bias_corrections, compute_equalization
from edgekit.calibration.graph import (
    QuantPlan,
    constants_to_initializers,
    fold_batchnorm,
    node_names,
    plan_quantization,
    session_with_outputs,
)
from edgekit.calibration.mixed_range import (
    DEFAULT_FACTOR,
    DEFAULT_POLICY,
    apply_policy,
    check_policy,
    find_mixed_range_concats,
)
from edgekit.calibration.output_tail import DEFAULT_POLICY as DEFAULT_TAIL_POLICY
from edgekit.calibration.output_tail import apply_policy as apply_tail_policy
from edgekit.calibration.output_tail import check_policy as check_tail_policy
from edgekit.calibration.output_tail import find_output_tail
from edgekit.calibration.progress import Progress, pass_progress
from edgekit.calibration.quant_spec import QuantSpec, TensorQuant
from edgekit.calibration.schemes import (
    activation_qparams,
    activation_scheme,
    per_tensor_variant,
    quantize_weight,
    weight_per_channel,
)
from edgekit.errors import CalibrationError
from edgekit.onnx_toolbox import default_opset

if TYPE_CHECKING:
    from edgekit.model import Model

MIN_OPSET = 13
ROUNDINGS = ("nearest", "adaround")


def prepare_float_model(proto: onnx.ModelProto, spec: QuantSpec | None = None) -> onnx.ModelProto:
    """The float graph quantization works on: opset >= 13, constants as initializers, Identity nodes gone,
    BatchNorm and bias Adds folded into their Conv (calibration/canonical.py), every node named, and the
    spec's recorded weight transforms (equalization, bias correction) replayed."""
    opset = default_opset(proto, 0)
    if opset < MIN_OPSET:
        proto = onnx.version_converter.convert_version(proto, MIN_OPSET)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    prepared = fold_batchnorm(remove_identities(constants_to_initializers(copy)))
    prepared = node_names(canonicalize(prepared))
    if spec is not None and spec.transforms:
        apply_transforms(prepared, spec.transforms)
    return prepared


@dataclass
class Calibration:
    """What calibration produced: the prepared float graph, the plan, the spec, and the observers."""

    float_model: onnx.ModelProto
    plan: QuantPlan
    spec: QuantSpec
    observers: dict[str, Any]
    samples: int
    rounding: list[Any] = field(default_factory=list)  # AdaRound's per-layer outcomes (adaround.LayerRounding)
    # the float model before AdaRound or bias correction changed its weights (None: float_model is it)
    reference: onnx.ModelProto | None = None


def calibrate(
    model: Model,
    data: str | Path | np.ndarray | Iterable[Any],
    *,
    observer: str = "minmax",
    observer_settings: dict[str, Any] | None = None,
    activations: str = "uint8_asym",
    weights: str = "int8_per_channel",
    float_nodes: Iterable[str] = (),
    limit: int | None = None,
    batch: int = 1,
    threads: int | None = None,
    progress: Progress = True,
    equalize: bool = False,
    bias_correction: bool = False,
    bias_samples: int = 16,
    mixed_range_factor: float = DEFAULT_FACTOR,
    mixed_range_policy: str = DEFAULT_POLICY,
    output_tail: str = DEFAULT_TAIL_POLICY,
    rounding: str = "nearest",
    rounding_samples: int = 8,
) -> Calibration:
    """Observe every activation the QDQ model will quantize and write the QuantSpec.

    `equalize` runs cross-layer equalization first; `bias_correction` then corrects each quantized
    Conv/Gemm bias by the mean output shift measured on `bias_samples` calibration samples. A Concat
    feeding an output whose inputs' ranges differ by more than `mixed_range_factor` (a detection head's
    boxes and scores) is handled by `mixed_range_policy` (calibration/mixed_range.py: float, branches, report).
    The output tail (a detector's decoding after its last learned layers) follows `output_tail`
    (calibration/output_tail.py: float, int8). `rounding` "adaround" learns each weight's rounding on
    `rounding_samples` calibration samples (calibration/adaround.py) before any bias correction.
    """
    from edgekit.calibration.observers import get_observer

    if rounding not in ROUNDINGS:
        raise CalibrationError(f"unknown rounding {rounding!r}; use one of {', '.join(ROUNDINGS)}")
    check_policy(mixed_range_policy)
    check_tail_policy(output_tail)
    float_model = prepare_float_model(model.proto)
    tail = find_output_tail(float_model)
    scheme = activation_scheme(activations)
    transforms: list[dict[str, Any]] = []
    if equalize:
        transforms.append({"kind": "equalize", "pairs": compute_equalization(float_model)})
    plan = plan_quantization(float_model, float_nodes=set(float_nodes), per_channel=weight_per_channel(weights))
    if not plan.nodes:
        raise CalibrationError(
            "the model has no quantizable op (Conv, Gemm, MatMul, Add, ...); there is nothing to quantize"
        )
    input_name = model.inputs[0].name
    feeds = load_calibration_data(data, spec=model.preprocess, input_name=input_name, limit=limit, batch=batch)
    observed = plan.activations + [o for o in plan.outputs if o not in plan.activations]
    # every observed tensor is a graph output of this session, which ORT's fusions never hide: full optimisation
    # (fused Conv+Relu, NCHWc kernels) runs calibration about a fifth faster than basic on PP-OCR det
    graph_inputs = {i.name for i in float_model.graph.input}
    session = session_with_outputs(
        float_model, [t for t in observed if t not in graph_inputs], optimization="all", threads=threads
    )
    output_names = [o.name for o in session.get_outputs()]
    input_names = {i.name for i in session.get_inputs()}
    # A model input keeps its whole observed range whatever the observer: clipping there throws away what no
    # later layer can recover (the entropy search cut digits' strokes off at +0.43 and left 10 % top-1), and
    # preprocessing already bounds an input, so it carries no outliers worth clipping. So does what a float
    # output tail reads: its rare large values are the detections (output_tail.py).
    whole_range = {name: "minmax (model input)" for name in input_names}
    if output_tail == "float":
        whole_range.update({name: "minmax (read by the output tail)" for name in tail.inputs})
    observers = {
        name: get_observer("minmax") if name in whole_range else get_observer(observer, **(observer_settings or {}))
        for name in observed
    }
    for name, obs in observers.items():
        obs.name = name
    samples = 0
    workers = max(1, min(threads or os.cpu_count() or 1, 8))
    with pass_progress("calibration samples", feeds.count, progress) as bar, ThreadPoolExecutor(workers) as pool:
        pending: list[Any] = []
        for feed in feeds.feeds:
            missing = input_names - set(feed)
            if missing:
                raise CalibrationDataError(f"calibration sample lacks input(s) {sorted(missing)}")
            # ORT runs this sample while the observers still fold in the previous one (both release the GIL);
            # then that one's activations go, so at most two samples' activations are ever held
            values = dict(zip(output_names, session.run(output_names, feed), strict=True))
            _wait(pending)
            pending = [pool.submit(obs.update, feed[n] if n in feed else values[n]) for n, obs in observers.items()]
            del values
            samples += 1
            bar.advance()
        _wait(pending)
    warn_skipped(feeds.skipped)
    if samples == 0:
        raise CalibrationDataError(f"calibration data ({feeds.description}) gave no samples")
    nonfinite = {name: obs.nonfinite for name, obs in observers.items() if obs.nonfinite}
    if nonfinite:
        worst = ", ".join(f"{n} ({c} values)" for n, c in list(nonfinite.items())[:5])
        raise CalibrationError(
            f"NaN/Inf activations during calibration in {len(nonfinite)} tensor(s): {worst}; check the model "
            "and that the calibration data is preprocessed as the model expects"
        )
    spec = _make_spec(
        model, float_model, plan, observers, scheme, weights, observer, samples, feeds.description, whole_range
    )
    spec.transforms = transforms
    found = find_mixed_range_concats(float_model, spec, mixed_range_factor)
    apply_policy(spec, found, mixed_range_policy, mixed_range_factor)
    apply_tail_policy(spec, tail, output_tail)
    unrounded, outcomes = _copy(float_model) if bias_correction or rounding != "nearest" else None, []
    if rounding == "adaround":
        from edgekit.calibration.adaround import adaround

        again = load_calibration_data(data, spec=model.preprocess, input_name=input_name, limit=rounding_samples)
        transform, outcomes = adaround(float_model, spec, list(again.feeds), progress=progress)  # snaps in place
        spec.transforms.append(transform)
    if bias_correction:
        again = load_calibration_data(data, spec=model.preprocess, input_name=input_name, limit=bias_samples)
        deltas = bias_corrections(float_model, spec, list(again.feeds), unrounded)  # corrects float_model in place
        spec.transforms.append({"kind": "bias_correction", "biases": deltas})
    return Calibration(float_model, plan, spec, observers, samples, outcomes, unrounded)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _wait(updates: list[Any]) -> None:
    for update in updates:
        update.result()


def _make_spec(
    model, float_model, plan, observers, scheme, weights, observer, samples, description, whole_range
) -> QuantSpec:
    spec = QuantSpec(
        source_model_sha256=model.sha256,
        scheme={"activations": scheme.name, "weights": weights},
        calibration={
            "observer": observer,
            "settings": next((o.settings() for n, o in observers.items() if n not in whole_range), {}),
            "samples": samples,
            "data": description,
        },
    )

    def clip_range(obs: Any) -> tuple[float, float]:
        return obs.compute_range(symmetric=scheme.symmetric, unsigned=scheme.dtype == "uint8")

    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 8))) as pool:  # KL/MSE searches are numpy-heavy
        ranges = dict(zip(observers, pool.map(clip_range, observers.values()), strict=True))
    for name, obs in observers.items():
        lo, hi = ranges[name]
        scale, zero_point = activation_qparams(lo, hi, scheme)
        kind = "activation" if name in plan.activations else "output"
        spec.tensors[name] = TensorQuant(
            kind,
            scheme.dtype,
            float(scale),
            int(zero_point),
            settings=obs.settings(),
            observer=whole_range.get(name, observer),
            range=(float(lo), float(hi)),
            observed=tuple(float(v) for v in obs.observed_range),
        )
    _share_scales(spec, plan.shared)
    inits = {init.name: init for init in float_model.graph.initializer}
    weight_scales: dict[str, np.ndarray] = {}
    for entry in plan.weights:
        if entry.name in weight_scales:
            continue
        values = onnx.numpy_helper.to_array(inits[entry.name])
        scheme_here = weights if entry.axis is not None else per_tensor_variant(weights)
        _, scale = quantize_weight(values, scheme_here, entry.axis or 0)
        weight_scales[entry.name] = scale
        per_channel = entry.axis is not None and scale.ndim == 1
        spec.tensors[entry.name] = TensorQuant(
            "weight",
            "int8",
            [float(s) for s in scale] if per_channel else float(scale),
            [0] * len(scale) if per_channel else 0,
            axis=entry.axis if per_channel else None,
            observer="minmax",
            range=(float(values.min()), float(values.max())),
        )
    for name in plan.constants:
        values = onnx.numpy_helper.to_array(inits[name])
        lo, hi = float(values.min()), float(values.max())
        scale, zero_point = activation_qparams(lo, hi, scheme)
        spec.tensors[name] = TensorQuant(
            "constant", scheme.dtype, float(scale), int(zero_point), observer="minmax", range=(lo, hi)
        )
    for entry in plan.biases:
        act = spec.tensors.get(entry.input_tensor)
        if act is None or entry.weight not in weight_scales:
            continue
        scale = (np.float32(act.scale) * weight_scales[entry.weight]).astype(np.float32)
        per_channel = scale.ndim == 1
        spec.tensors[entry.name] = TensorQuant(
            "bias",
            "int32",
            [float(s) for s in scale] if per_channel else float(scale),
            [0] * len(scale) if per_channel else 0,
            axis=0 if per_channel else None,
        )
    return spec


def _share_scales(spec: QuantSpec, shared: dict[str, str]) -> None:
    """Outputs of data-movement ops take their input's scale, zero point and range (graph.SHARED_SCALE_OPS)."""
    for out, source in shared.items():
        if out in spec.tensors and source in spec.tensors:
            entry = spec.tensors[source]
            spec.tensors[out] = replace(
                spec.tensors[out], scale=entry.scale, zero_point=entry.zero_point, range=entry.range,
                observer=f"shared with {source}", settings={},
            )  # fmt: skip
