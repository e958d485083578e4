"""The x86 target: an ONNX model for ONNX Runtime's CPU execution provider.

fp32 ships the model as given. int8 ships a QDQ model written from the QuantSpec (calibrate for this
target: uint8 activations, 7-bit per-channel weights); a spec with other activations is built too and
noted in `not_honoured`, since ORT then runs Conv+Relu in float. The graph stays as written: ONNX Runtime
optimises it when the session starts on the device. Ops are checked against ORT's CPU kernels. No build
options.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from edgekit.targets import register_target
from edgekit.targets.base import Target, TargetOptions

if TYPE_CHECKING:
    from edgekit.calibration.quant_spec import QuantSpec
    from edgekit.model import Model


@cache
def ort_cpu_ops() -> frozenset[tuple[str, str]]:
    """(domain, op) pairs that ONNX Runtime's CPU execution provider has kernels for, read from ORT itself."""
    from onnxruntime.capi import _pybind_state as ort_state

    return frozenset(
        (kernel.domain or "ai.onnx", kernel.op_name)
        for kernel in ort_state.get_all_opkernel_def()
        if kernel.provider == "CPUExecutionProvider"
    )


@register_target
class OnnxRuntimeX86Target(Target):
    name = "x86-ort"
    description = "x86-64 CPU with ONNX Runtime (CPUExecutionProvider)"
    device = "x86-64 box"
    engine = "onnxruntime"
    precisions = ("fp32", "int8")
    quantized_precisions = ("int8",)
    # u8 activations with s8 weights hit ORT's VNNI kernels and let Relu fold into the quantizer;
    # int8 activations leave Conv+Relu in float.
    activation_scheme = "uint8_asym"
    # 7-bit weights: without VNNI (AVX2 CPUs, this machine's EPYC) u8 x s8 pairs saturate int16 in ORT's
    # kernels; int8_per_channel is safe only on VNNI CPUs (edgekit quantize --weights int8_per_channel).
    weight_scheme = "int7_per_channel"

    def supported_ops(self) -> set[tuple[str, str]]:
        # Constant has no kernel: ONNX Runtime turns Constant nodes into initializers when it loads a model.
        return set(ort_cpu_ops()) | {("ai.onnx", "Constant")}

    def _build_impl(
        self, model: Model, precision: str, spec: QuantSpec | None, options: TargetOptions
    ) -> tuple[dict[str, bytes], dict]:
        # The artifact keeps the graph as given (QDQ for int8); ONNX Runtime optimises it when the session
        # starts on the device, since ORT's fully optimised graphs are tied to the CPU that optimised them.
        if precision == "fp32":
            return {"model.onnx": model.to_bytes()}, {"model_file": "model.onnx"}
        from edgekit.calibration.calibrate import prepare_float_model
        from edgekit.calibration.qdq import write_qdq
        from edgekit.model import Model as ModelClass

        qdq = write_qdq(prepare_float_model(model.proto, spec), spec)
        packaged = ModelClass(qdq, preprocess=model.preprocess, class_names=model.class_names)
        not_honoured = []
        if spec.scheme.get("activations") != self.activation_scheme:
            not_honoured.append(
                {
                    "what": f"activations {spec.scheme.get('activations')}",
                    "why": "ONNX Runtime's CPU kernels fuse Conv+Relu only with uint8 activations; such convolutions "
                    "run in float. Calibrate for x86-ort (uint8_asym) for full integer speed.",
                }
            )
        extra = {"model_file": "model.onnx", "quantization": _quantization_summary(spec)}
        return {"model.onnx": packaged.to_bytes()}, {**extra, "not_honoured": not_honoured}

    def tool_versions(self) -> dict[str, str]:
        import onnxruntime

        return {**super().tool_versions(), "onnxruntime": onnxruntime.__version__}


def _quantization_summary(spec: QuantSpec) -> dict[str, Any]:
    from edgekit.calibration.spec_summary import quantization_summary

    return quantization_summary(spec)
