"""Quantization-aware training: fake quantization with a straight-through estimator, matching the core's schemes.

`prepare_qat(model, example_input)` returns a copy of the model in which every Conv2d and Linear
fake-quantizes its weight (per output channel, symmetric, qmax from `weight_qmax(scheme)`: 63 for
x86-ort's default `int7_per_channel`) and its input activation (per tensor, uint8 asymmetric by
default, or int8 symmetric). Train it with the user's own loop, then `export_qat` writes the QDQ ONNX
and turns it into (float Model, QuantSpec) with `quant_spec_from_qdq`, which every target builds from
exactly as it builds from a calibration result.

Design choices:
- BatchNorm is folded before training (`torch.nn.utils.fusion.fuse_conv_bn_eval`, eval-mode running
  statistics) into the Conv2d registered just before it in the same parent (true for nn.Sequential and
  for the usual `self.conv`, `self.bn` layout); the fold is checked against the unfused model on the
  example input. Training then updates the folded weights: BN statistics stop moving, which is what
  QAT fine-tuning of a trained model wants.
- Activation scales start from a QuantSpec computed by the calibration core (`init`, or `calibrate()`
  run here on `calib_batches`). ONNX tensors are mapped to modules through the exported graph: the
  Conv/Gemm nodes, in graph order, against the wrapped modules in the order they run on the example
  input, and each module gets the spec's entry for its node's input tensor. Where that mapping does not
  hold (different counts, or a tensor the spec lacks), the module's input range is observed (min/max)
  over `calib_batches` (or the example input) instead.
- Weight scales are max|w| / qmax per channel, recomputed every forward (the core's min-max weights),
  or learned (LSQ, `learnable=True`, which learns activation scales as well).
- int7 weights cannot be exported as such (ONNX fake-quant export accepts only the 8-bit ranges), so
  `export_qat` first snaps each weight to its grid (clamp(round(w/s), -qmax, qmax) * s) and exports the
  8-bit Q/DQ, which then reproduces those values exactly.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.calibration.quant_spec import QuantSpec
from edgekit.calibration.schemes import activation_qparams, activation_scheme, weight_per_channel, weight_qmax
from edgekit.errors import CompressError

DEFAULT_WEIGHT_SCHEME = "int7_per_channel"  # x86-ort's scheme
DEFAULT_ACTIVATION_SCHEME = "uint8_asym"


def _exporting() -> bool:
    return bool(torch.onnx.is_in_onnx_export())


class ActivationFakeQuant(nn.Module):
    """Per-tensor fake quantization of an activation (STE gradients; exports to QuantizeLinear/DequantizeLinear)."""

    def __init__(self, scheme: str = DEFAULT_ACTIVATION_SCHEME, *, learnable: bool = False) -> None:
        super().__init__()
        self.scheme = activation_scheme(scheme)
        self.qmin, self.qmax = self.scheme.qmin, self.scheme.qmax
        self.learnable = learnable
        scale = torch.ones(1)
        if learnable:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def set_range(self, lo: float, hi: float) -> None:
        scale, zero_point = activation_qparams(lo, hi, self.scheme)
        self.set_qparams(scale, zero_point)

    def set_qparams(self, scale: float, zero_point: int) -> None:
        with torch.no_grad():
            self.scale.fill_(float(scale))
            self.zero_point.fill_(int(zero_point))
            self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):  # no range given: take it from the first batch
            self.set_range(float(x.detach().min()), float(x.detach().max()))
        if _exporting():
            # Python constants: a scalar scale and a zero point of the scheme's dtype in the ONNX graph
            return torch.fake_quantize_per_tensor_affine(
                x, float(self.scale.detach().abs().reshape(-1)[0]), int(self.zero_point[0]), self.qmin, self.qmax
            )
        if self.learnable:
            grad_factor = 1.0 / float(np.sqrt(max(x[0].numel(), 1) * self.qmax))
            scale = self.scale.abs().clamp_min(1e-8)
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, scale, self.zero_point.float(), self.qmin, self.qmax, grad_factor
            )
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"{self.scheme.name}, scale={float(self.scale.detach().abs()[0]):.4g}, zp={int(self.zero_point[0])}"


class WeightFakeQuant(nn.Module):
    """Symmetric weight fake quantization, per output channel (axis 0) or per tensor."""

    def __init__(self, weight: torch.Tensor, scheme: str = DEFAULT_WEIGHT_SCHEME, *, learnable: bool = False) -> None:
        super().__init__()
        self.scheme = scheme
        self.qmax = weight_qmax(scheme)
        self.per_channel = weight_per_channel(scheme)
        self.learnable = learnable
        channels = weight.shape[0] if self.per_channel else 1
        scale = self._minmax_scale(weight.detach()).reshape(channels)
        if learnable:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int32))

    def _minmax_scale(self, weight: torch.Tensor) -> torch.Tensor:
        bound = weight.abs().reshape(weight.shape[0], -1).amax(dim=1) if self.per_channel else weight.abs().amax()
        return torch.where(bound > 0, bound / self.qmax, torch.ones_like(bound)).float().reshape(-1)

    def refresh(self, weight: torch.Tensor) -> None:
        """Min-max scales from the current weight (what every forward does unless the scales are learned)."""
        if not self.learnable:
            with torch.no_grad():
                self.scale.copy_(self._minmax_scale(weight.detach()))

    def effective_scale(self) -> torch.Tensor:
        return self.scale.detach().abs().clamp_min(1e-12)

    def snap(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight on its integer grid: what the quantized model stores, as floats."""
        scale = self.effective_scale().reshape(-1, *([1] * (weight.dim() - 1)) if self.per_channel else [])
        return torch.clamp(torch.round(weight / scale), -self.qmax, self.qmax) * scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if _exporting():
            # export_qat snapped the weight to its grid and made the scales positive; the 8-bit Q/DQ the
            # exporter accepts reproduces the snapped weight exactly
            if self.per_channel:
                return torch.fake_quantize_per_channel_affine(weight, self.scale, self.zero_point, 0, -128, 127)
            return torch.fake_quantize_per_tensor_affine(weight, float(self.scale[0]), 0, -128, 127)
        if self.learnable:
            scale = self.scale.abs().clamp_min(1e-12)
            grad_factor = 1.0 / float(np.sqrt(weight[0].numel() * self.qmax))
            if self.per_channel:
                return torch._fake_quantize_learnable_per_channel_affine(
                    weight, scale, self.zero_point.float(), 0, -self.qmax, self.qmax, grad_factor
                )
            return torch._fake_quantize_learnable_per_tensor_affine(
                weight, scale, self.zero_point.float(), -self.qmax, self.qmax, grad_factor
            )
        self.refresh(weight)
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(weight, self.scale, self.zero_point, 0, -self.qmax, self.qmax)
        return torch.fake_quantize_per_tensor_affine(weight, self.scale, self.zero_point, -self.qmax, self.qmax)


class QuantWrapper(nn.Module):
    """A Conv2d or Linear whose input activation and weight are fake-quantized."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, *, scheme: str, activations: str, learnable: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.input_quant = ActivationFakeQuant(activations, learnable=learnable)
        self.weight_quant = WeightFakeQuant(layer.weight, scheme, learnable=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        weight = self.weight_quant(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, self.layer.bias)
        return F.linear(x, weight, self.layer.bias)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with each BatchNorm2d folded into the Conv2d registered just before it (eval-mode statistics)."""
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        names = list(parent._modules)
        for before, after in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[before], parent._modules[after]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                parent._modules[before] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                parent._modules[after] = nn.Identity()
    return folded


def _examples(example_input: Any) -> tuple:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _wrapped_in_run_order(model: nn.Module, example_input: Any) -> list[QuantWrapper]:
    order: list[QuantWrapper] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, _: order.append(mod))
        for m in model.modules()
        if isinstance(m, QuantWrapper)
    ]
    try:
        with torch.no_grad():
            model(*_examples(example_input))
    finally:
        for hook in hooks:
            hook.remove()
    seen: set[int] = set()
    return [m for m in order if not (id(m) in seen or seen.add(id(m)))]  # type: ignore[func-returns-value]


def _spec_input_qparams(
    candidates: list[nn.Module], example_input: Any, spec: QuantSpec
) -> list[tuple[float, int] | None]:
    """Per Conv/Gemm node of the exported float model, in graph order: the spec's (scale, zero point) of its input."""
    from edgekit.calibration.calibrate import prepare_float_model
    from edgekit.model import Model

    for module in candidates:
        model = Model.from_torch(module, example_input)
        if model.sha256 == spec.source_model_sha256 or module is candidates[-1]:
            break
    spec.check_model(model.sha256, label="the model prepared for QAT")
    prepared = prepare_float_model(model.proto, spec)
    inits = {init.name for init in prepared.graph.initializer}
    result: list[tuple[float, int] | None] = []
    for node in prepared.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            entry = spec.tensors.get(node.input[0])
            ok = entry is not None and entry.kind == "activation"
            result.append((float(entry.scale), int(entry.zero_point)) if ok else None)  # type: ignore[union-attr,arg-type]
    return result


def _observe_ranges(model: nn.Module, wrappers: list[QuantWrapper], batches: Iterable[Any]) -> dict[int, list[float]]:
    ranges: dict[int, list[float]] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        lo, hi = float(x.min()), float(x.max())
        old = ranges.setdefault(id(module), [lo, hi])
        old[0], old[1] = min(old[0], lo), max(old[1], hi)

    # observe the float layers: the quantizers are not initialised yet
    handles = [w.register_forward_pre_hook(hook) for w in wrappers]
    runner = _Unquantized(model)
    try:
        with torch.no_grad():
            for batch in batches:
                runner(*_examples(batch if torch.is_tensor(batch) else torch.as_tensor(np.asarray(batch))))
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def prepare_qat(
    model: nn.Module,
    example_input: Any,
    *,
    init: QuantSpec | None = None,
    calib_batches: Iterable[Any] | None = None,
    scheme: str = DEFAULT_WEIGHT_SCHEME,
    activations: str | None = None,
    learnable: bool = False,
) -> nn.Module:
    """A training-ready copy of `model`: BatchNorm folded, every Conv2d/Linear fake-quantized.

    Activation scales come from `init` (a QuantSpec the calibration core computed for this model,
    folded or not), else from `calibrate()` run on `calib_batches`, else from min/max observation of
    the example input. `activations` defaults to the init spec's scheme, else uint8_asym.
    """
    if activations is None:
        activations = init.scheme.get("activations", DEFAULT_ACTIVATION_SCHEME) if init else DEFAULT_ACTIVATION_SCHEME
    activation_scheme(activations)
    weight_qmax(scheme)  # validates the scheme
    was_training = model.training
    folded = fold_batchnorm(model)
    with torch.no_grad():
        model.eval()
        try:
            reference = model(*_examples(example_input))
        finally:
            model.train(was_training)
        got = folded(*_examples(example_input))
    if torch.is_tensor(reference) and not torch.allclose(reference, got, rtol=1e-3, atol=1e-4):
        raise CompressError(
            "folding BatchNorm into the preceding Conv2d changed the model's output: a BatchNorm2d is registered "
            "after a Conv2d it does not follow; fuse Conv+BN yourself (torch.nn.utils.fusion.fuse_conv_bn_eval)"
        )
    batches = list(calib_batches) if calib_batches is not None else None
    float_copy = copy.deepcopy(folded)
    if init is None and batches:
        from edgekit.model import Model

        init = _calibrate_batches(Model.from_torch(float_copy, example_input), batches, activations, scheme)
    _replace_layers(folded, scheme=scheme, activations=activations, learnable=learnable)
    wrappers = _wrapped_in_run_order(_Unquantized(folded), example_input)
    qparams: list[tuple[float, int] | None] = [None] * len(wrappers)
    if init is not None:
        from_spec = _spec_input_qparams([float_copy, copy.deepcopy(model)], example_input, init)
        if len(from_spec) == len(wrappers):
            qparams = from_spec
    missing = [w for w, q in zip(wrappers, qparams, strict=True) if q is None]
    ranges = _observe_ranges(folded, missing, batches or [example_input]) if missing else {}
    for wrapper, q in zip(wrappers, qparams, strict=True):
        if q is not None:
            wrapper.input_quant.set_qparams(*q)
        else:
            wrapper.input_quant.set_range(*ranges[id(wrapper)])
    folded.train(was_training)
    return folded


class _Unquantized(nn.Module):
    """Runs a prepared model once without touching its (uninitialised) quantizers, to record call order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Any:
        wrappers = [m for m in self.model.modules() if isinstance(m, QuantWrapper)]
        for w in wrappers:
            w.input_quant.forward = lambda x: x  # type: ignore[method-assign]
            w.weight_quant.forward = lambda weight: weight  # type: ignore[method-assign]
        try:
            return self.model(*args)
        finally:
            for w in wrappers:
                del w.input_quant.forward, w.weight_quant.forward


def _replace_layers(module: nn.Module, **options: Any) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d | nn.Linear):
            setattr(module, name, QuantWrapper(child, **options))
        elif not isinstance(child, QuantWrapper):
            _replace_layers(child, **options)


def _calibrate_batches(model: Any, batches: list[Any], activations: str, weights: str) -> QuantSpec:
    """The calibration core's (min-max) QuantSpec of `model` over the given batches (tensors or arrays)."""
    from edgekit.calibration.calibrate import calibrate

    data = np.concatenate([np.asarray(b.detach() if torch.is_tensor(b) else b, dtype=np.float32) for b in batches])
    return calibrate(
        model, data, activations=activations, weights=weights, batch=max(1, len(batches[0])), progress=False
    ).spec


def _complete_spec(spec: QuantSpec, float_model: Any, calib_batches: Iterable[Any]) -> None:
    """Add calibrated (min-max) entries for the activations a PTQ plan quantizes and QAT did not learn."""
    batches = list(calib_batches)
    if not batches:
        raise CompressError("calib_batches is empty: pass the batches used for calibration, or None")
    calibrated = _calibrate_batches(float_model, batches, spec.scheme["activations"], spec.scheme["weights"])
    added = sorted(
        name
        for name, entry in calibrated.tensors.items()
        if entry.kind in ("activation", "output") and name not in spec.tensors
    )
    for name in added:
        spec.tensors[name] = calibrated.tensors[name]
    spec.calibration["completed_by_calibration"] = added


def export_qat(
    qat_model: nn.Module,
    example_input: Any,
    out_dir: str | Path,
    *,
    preprocess: Any = None,
    class_names: list[str] | None = None,
    calib_batches: Iterable[Any] | None = None,
) -> tuple[Any, QuantSpec]:
    """Export the trained QAT model: `model.onnx` (QDQ), `model_float.onnx` and `quant_spec.json` in `out_dir`.

    Returns the float Model (whose sha256 the spec records) and the learned QuantSpec (created_by "qat"),
    ready for `get_target(...).build(float_model, dir, precision="int8", quant_spec=spec)`.

    QAT learns the scales of Conv/Linear inputs only. With `calib_batches` the spec is completed by the
    calibration core (min-max on those batches) for every other tensor a PTQ spec quantizes — conv outputs
    feeding residual adds, pooling, the logits — so targets can run the whole graph in integer (ONNX
    Runtime fuses DQ→Conv→Q only when the conv output is quantized; TFLite full-integer needs every tensor).
    The completed tensors are listed under ``calibration["completed_by_calibration"]``.
    """
    from edgekit.calibration.qdq_import import quant_spec_from_qdq
    from edgekit.model import Model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exported = copy.deepcopy(qat_model).eval()
    for parameter in exported.parameters():
        parameter.requires_grad_(False)  # learned (LSQ) scales are plain constants in the export
    wrappers = [m for m in exported.modules() if isinstance(m, QuantWrapper)]
    schemes = {(w.weight_quant.scheme, w.input_quant.scheme.name) for w in wrappers}
    with torch.no_grad():
        for w in wrappers:
            w.weight_quant.refresh(w.layer.weight)
            w.layer.weight.copy_(w.weight_quant.snap(w.layer.weight))
            w.weight_quant.scale.copy_(w.weight_quant.effective_scale())
    qdq = Model.from_torch(exported, example_input, opset=17, preprocess=preprocess, class_names=class_names)
    scheme = None
    if len(schemes) == 1:
        weights, acts = next(iter(schemes))
        scheme = {"activations": acts, "weights": weights}
    float_proto, _ = quant_spec_from_qdq(qdq.proto, scheme=scheme)
    float_model = Model(float_proto, preprocess=preprocess, class_names=class_names)
    float_model.check(label="the float model of the QAT export")
    float_proto, spec = quant_spec_from_qdq(qdq.proto, source_model_sha256=float_model.sha256, scheme=scheme)
    if calib_batches is not None:
        _complete_spec(spec, float_model, calib_batches)
        from edgekit.calibration.calibrate import prepare_float_model
        from edgekit.calibration.qdq import write_qdq

        qdq = Model(
            write_qdq(prepare_float_model(float_model.proto, spec), spec),
            preprocess=preprocess,
            class_names=class_names,
        )
    qdq.save(out_dir / "model.onnx")
    float_model.save(out_dir / "model_float.onnx")
    spec.save(out_dir / "quant_spec.json")
    (out_dir / "qat.json").write_text(json.dumps({"layers": len(wrappers), "scheme": scheme}) + "\n")
    return float_model, spec
