"""The x86 target: ONNX Runtime on the CPU (FP32 now; INT8 QDQ slots in with the calibration core)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from edgekit.targets import register_target
from edgekit.targets.base import Target

if TYPE_CHECKING:
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
    precisions = ("fp32",)

    def supported_ops(self) -> set[tuple[str, str]]:
        # Constant has no kernel: ONNX Runtime turns Constant nodes into initializers when it loads a model.
        return set(ort_cpu_ops()) | {("ai.onnx", "Constant")}

    def _build_impl(self, model: Model, precision: str, quant_spec: Any) -> tuple[dict[str, bytes], dict]:
        # The artifact keeps the graph as given; ONNX Runtime optimises it when the session starts on
        # the device, since ORT's fully optimised graphs are tied to the CPU that optimised them.
        return {"model.onnx": model.to_bytes()}, {"model_file": "model.onnx"}

    def tool_versions(self) -> dict[str, str]:
        import onnxruntime

        return {**super().tool_versions(), "onnxruntime": onnxruntime.__version__}
