"""ios-coreml's W8A8: the QuantSpec turned into the replay's fake quantizers (by ONNX tensor name), and the
quantize scales read back from the converted program checked against the spec's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import onnx

if TYPE_CHECKING:
    from edgekit.calibration.quant_spec import QuantSpec


@dataclass
class ReplayQuantizers:
    """What the w8a8 replay fake-quantizes (by ONNX tensor name), and the spec entries it cannot honour."""

    activations: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    notes: list[dict[str, str]] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)  # spec activations the QDQ model leaves float


def replay_quantizers(spec: QuantSpec, float_proto: onnx.ModelProto) -> ReplayQuantizers:
    """The spec's quantizers where the QDQ writer puts them: tensors and weights read only by float nodes (the
    QuantSpec's overrides, e.g. a detection head's concat) stay float. A quantizer acts on every reader of its
    tensor (the QDQ model can feed a float reader the unquantized tensor; the replay cannot)."""
    from edgekit.calibration.qdq import quantized_tensors
    from edgekit.targets.coreml_onnx import ActivationQuant, WeightQuant

    produced = {out for node in float_proto.graph.node for out in node.output} | {
        i.name for i in float_proto.graph.input
    }
    inits = {i.name for i in float_proto.graph.initializer}
    in_qdq = quantized_tensors(float_proto, spec)
    found = ReplayQuantizers()
    biases = 0
    for name, entry in sorted(spec.tensors.items()):
        if entry.kind == "bias":
            biases += 1
        elif entry.kind not in ("activation", "weight"):
            continue  # graph outputs: a QDQ model leaves them float
        elif name not in in_qdq and (name in produced or name in inits):
            if entry.kind == "activation":  # only float nodes read it
                found.kept_float.append(name)
        elif entry.kind == "activation":
            _activation_quantizer(name, entry, produced, found, ActivationQuant)
        else:
            _weight_quantizer(name, entry, inits, found, WeightQuant)
    if biases:
        found.notes.append(
            {
                "what": f"int32 biases ({biases} tensors)",
                "why": "Core ML has no integer bias: biases stay float16 and are added in the float16 accumulator",
            }
        )
    return found


def _weight_quantizer(name: str, entry: Any, inits: set[str], found: ReplayQuantizers, make: Any) -> None:
    zero = entry.zero_point if isinstance(entry.zero_point, list) else [entry.zero_point]
    if name not in inits:
        found.notes.append({"what": f"weight {name}", "why": "no such initializer in the prepared float graph"})
    elif entry.dtype != "int8" or any(z != 0 for z in zero):
        found.notes.append({"what": f"weight {name}", "why": "only symmetric int8 weights are written"})
    else:
        found.weights[name] = make(entry.scale, entry.zero_point, entry.axis)


def _activation_quantizer(name: str, entry: Any, produced: set[str], found: ReplayQuantizers, make: Any) -> None:
    if name not in produced:
        found.notes.append({"what": f"activation {name}", "why": "no such tensor in the prepared float graph"})
    elif entry.dtype not in ("int8", "uint8") or isinstance(entry.scale, list):
        found.notes.append(
            {
                "what": f"activation {name}",
                "why": f"{entry.dtype} per-channel activations: Core ML quantizes activations per tensor in int8/uint8",
            }
        )
    else:
        found.activations[name] = make(float(entry.scale), int(entry.zero_point), entry.dtype)


def check_scales(
    ops: list[tuple[str, str, dict]], spec: QuantSpec, quantizers: ReplayQuantizers
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Compare the program's quantize scales with the QuantSpec's activation scales (as float16 values)."""
    from edgekit.calibration.spec_summary import quantization_summary

    program_scales = sorted(float(v["scale"]) for t, _, v in ops if t == "quantize" and "scale" in v)
    wanted = {n: float(spec.tensors[n].scale) for n in quantizers.activations}
    notes = quantizers.notes
    remaining = list(program_scales)
    missing = []
    worst = 0.0
    for name, scale in sorted(wanted.items(), key=lambda item: item[1]):
        best = min(range(len(remaining)), key=lambda i: abs(remaining[i] - scale), default=None)
        if best is None or abs(remaining[best] - scale) > 1e-3 * scale:
            missing.append(name)
            continue
        worst = max(worst, abs(remaining.pop(best) - scale) / scale)
    notes = list(notes)
    for name in missing:
        why = "Core ML's converter removed its quantizer"
        if any(abs(wanted[name] - s) <= 1e-6 * s for s in program_scales):
            why += (
                " (it merges a quantize/dequantize pair with an equal-scale one next to it, e.g. around a "
                "reshape, so the values are the same)"
            )
        notes.append({"what": f"activation {name}", "why": why})
    summary = {
        **quantization_summary(spec),
        "activations_quantized": len(wanted) - len(missing),
        "activations_in_spec": sum(1 for e in spec.tensors.values() if e.kind == "activation"),
        "activations_kept_float": quantizers.kept_float,
        "weights_quantized": sum(1 for t, _, _ in ops if t == "constexpr_affine_dequantize"),
        "scale_max_relative_error": worst,  # scales are stored in float16 beside float16 activations
    }
    return summary, notes
