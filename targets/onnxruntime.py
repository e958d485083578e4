"""The x86 target: an ONNX model for ONNX Runtime's CPU execution provider.

fp32 ships the model as given. int8 ships a QDQ model written from the QuantSpec (calibrate for this
target: uint8 activations, 7-bit per-channel weights); a spec with other activations is built too and
noted in `not_honoured`, since ORT then runs Conv+Relu in float. The graph stays as written: ONNX Runtime
optimises it when the session starts on the device. Ops are checked against ORT's CPU kernels (and the
ONNX function ops ORT expands into them). Every build is validated against ONNX Runtime FP32 on the source
model (`edgekit.targets.validation`). Option `isa` picks 8-bit (VNNI/AMX CPUs) or 7-bit weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from edgekit.onnx_toolbox import default_opset
from edgekit.runtime.isa import WEIGHTS_7BIT, WEIGHTS_8BIT, cpu_flags, is_x86, x86_weight_scheme
from edgekit.targets import register_target
from edgekit.targets.base import DEFAULTS, BuildAt, BuildError, Target, TargetOptions

if TYPE_CHECKING:
    import onnx

    from edgekit.artifact import Artifact
    from edgekit.calibration.quant_spec import QuantSpec
    from edgekit.model import Model
    from edgekit.op_support import Refusal


@cache
def ort_cpu_ops() -> frozenset[tuple[str, str]]:
    """(domain, op) pairs that ONNX Runtime's CPU execution provider has kernels for, read from ORT itself."""
    from onnxruntime.capi import _pybind_state as ort_state

    return frozenset(
        (kernel.domain or "ai.onnx", kernel.op_name)
        for kernel in ort_state.get_all_opkernel_def()
        if kernel.provider == "CPUExecutionProvider"
    )


@cache
def onnx_function_ops(opset: int) -> frozenset[str]:
    """Default-domain ONNX ops that are functions at `opset` (a body of other ONNX ops, fixed or built from the
    node's context): ONNX Runtime expands such a node into its body when it has no kernel for it, so it runs
    wherever the body's ops do (HardSwish at any opset, Mish from 18: none has a CPU kernel)."""
    import onnx.defs

    names = {schema.name for schema in onnx.defs.get_all_schemas_with_history() if schema.domain == ""}
    found = set()
    for name in names:
        try:
            schema = onnx.defs.get_schema(name, opset, "")
        except onnx.defs.SchemaError:  # not defined yet at this opset
            continue
        if schema.has_function or schema.has_context_dependent_function:
            found.add(name)
    return frozenset(found)


ISA_CHOICES = ("auto", "vnni", "avx2")


@dataclass(frozen=True)
class OnnxRuntimeOptions(TargetOptions):
    isa: str = field(
        default="auto",
        metadata={
            "help": "the devices' CPU class, which decides the INT8 weights: vnni (AVX512-VNNI, AVX-VNNI or AMX: "
            "8-bit), avx2 (no VNNI: 7-bit, as 8-bit can saturate there) or auto (this machine's CPU)",
            "example": "avx2",
        },
    )

    def check(self, precision: str) -> None:
        if self.isa not in ISA_CHOICES:
            raise BuildError(f"{self.label('isa', self.isa)}: use one of {', '.join(ISA_CHOICES)}")


def weight_scheme_for(isa: str) -> str:
    """8-bit weights for VNNI CPUs, 7-bit for the others; `auto` reads this machine's CPU."""
    if isa == "auto":
        return x86_weight_scheme(cpu_flags()) if is_x86() else WEIGHTS_7BIT
    return WEIGHTS_8BIT if isa == "vnni" else WEIGHTS_7BIT


@register_target
class OnnxRuntimeX86Target(Target):
    name = "x86-ort"
    description = "x86-64 CPU with ONNX Runtime (CPUExecutionProvider)"
    device = "x86-64 box"
    engine = "onnxruntime"
    precisions = ("fp32", "int8")
    quantized_precisions = ("int8",)
    Options = OnnxRuntimeOptions
    # u8 activations with s8 weights hit ORT's VNNI kernels and let Relu fold into the quantizer;
    # int8 activations leave Conv+Relu in float.
    activation_scheme = "uint8_asym"
    # 7-bit weights unless the CPU sums u8 x s8 in 32 bits (VNNI/AMX): `-O isa` and runtime/isa.py say which.
    weight_scheme = WEIGHTS_7BIT

    def calibration_schemes(self, options: TargetOptions | None = None) -> tuple[str, str]:
        isa = getattr(options, "isa", "auto")
        return self.activation_scheme, weight_scheme_for(isa)

    def accelerator_report(self, proto: onnx.ModelProto) -> dict[str, Any] | None:
        """Which INT8 weights this machine's CPU takes (runtime/isa.py); `edgekit devices check` says it per device."""
        from edgekit.runtime.isa import isa_facts

        facts = isa_facts()
        if facts is None:
            return None
        bits = "8-bit" if facts["x86_weights"] == WEIGHTS_8BIT else "7-bit"
        why = f"this CPU has {facts['vnni']}" if facts["vnni"] else "this CPU has no VNNI/AMX"
        line = f"INT8 weights {bits} ({facts['x86_weights']}): {why}; -O isa=vnni|avx2 builds for other CPUs"
        return {"accelerator": "cpu int8", **facts, "lines": [line]}

    def latency_check(self, model: Model, artifact: Artifact) -> dict[str, Any] | None:
        if artifact.precision != "int8":
            return None
        import onnx as onnx_module

        return latency_check(model, onnx_module.load(artifact.model_path))

    def timed_model(self, float_model: onnx.ModelProto, spec: QuantSpec) -> onnx.ModelProto:
        from edgekit.calibration.qdq import write_qdq
        from edgekit.targets.onnxruntime_graph import fuse_for_ort

        qdq = write_qdq(float_model, spec)
        fuse_for_ort(qdq)  # ORT cannot fuse GELU/LayerNorm between quantizers itself (targets/onnxruntime_graph.py)
        return qdq

    def supported_ops(self) -> set[tuple[str, str]]:
        # Constant has no kernel: ONNX Runtime turns Constant nodes into initializers when it loads a model.
        return set(ort_cpu_ops()) | {("ai.onnx", "Constant")}

    def refusals(self, proto: onnx.ModelProto, at: BuildAt = DEFAULTS) -> list[Refusal]:
        """The base check against ORT's kernels, less the ONNX function ops (at the model's opset) that ORT
        expands into ops it has kernels for."""
        opset = default_opset(proto, 0)
        functions = onnx_function_ops(opset) if opset else frozenset()
        return [r for r in super().refusals(proto, at) if r.op not in functions]

    def _build_impl(
        self, model: Model, precision: str, spec: QuantSpec | None, options: TargetOptions
    ) -> tuple[dict[str, bytes], dict]:
        # The artifact keeps the graph as given (QDQ for int8); ONNX Runtime optimises it when the session
        # starts on the device, since ORT's fully optimised graphs are tied to the CPU that optimised them.
        if precision == "fp32":
            data = model.to_bytes()
            return {"model.onnx": data}, {"model_file": "model.onnx", "validation": _validation(model, precision, data)}
        from edgekit.calibration.calibrate import prepare_float_model
        from edgekit.model import Model as ModelClass

        qdq = self.timed_model(prepare_float_model(model.proto, spec), spec)
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
        isa = getattr(options, "isa", "auto")
        if spec.scheme.get("weights", "").startswith("int8") and weight_scheme_for(isa) == WEIGHTS_7BIT:
            not_honoured.append(
                {
                    "what": f"weights {spec.scheme.get('weights')} for -O isa={isa}",
                    "why": "CPUs without VNNI/AMX sum u8 x s8 products in int16, where 8-bit weights can saturate; "
                    "calibrate with int7_per_channel weights (the x86-ort default there) for these devices.",
                }
            )
        data = packaged.to_bytes()
        extra = {
            "model_file": "model.onnx",
            "quantization": _quantization_summary(spec),
            "validation": _validation(model, precision, data, spec),
        }
        return {"model.onnx": data}, {**extra, "not_honoured": not_honoured}

    def tool_versions(self) -> dict[str, str]:
        import onnxruntime

        return {**super().tool_versions(), "onnxruntime": onnxruntime.__version__}


LATENCY_RUNS = 10


def latency_check(model: Model, int8_proto: onnx.ModelProto) -> dict[str, Any] | None:
    """FP32 and INT8 median latency on this machine (one thread, interleaved rounds), for `edgekit build` to say
    when INT8 made the model slower. Not in the manifest: the artifact's id is its content, and timings vary."""
    from edgekit.calibration.latency_plan import median_latency_ms
    from edgekit.runtime.facts import device_facts
    from edgekit.targets.validation import probe_inputs, probe_shapes

    shapes = probe_shapes(model)
    if isinstance(shapes, str):  # no fixed input shape to time at (the validation block says why)
        return None
    feed = probe_inputs(model, shapes, count=1).feeds[0]
    fp32, int8 = [], []
    for _ in range(3):  # interleaved rounds, so a busy moment hits both
        fp32.append(median_latency_ms(model.proto, feed, LATENCY_RUNS, 1))
        int8.append(median_latency_ms(int8_proto, feed, LATENCY_RUNS, 1))
    fp32_ms, int8_ms = float(sorted(fp32)[1]), float(sorted(int8)[1])
    return {
        "fp32_ms": fp32_ms,
        "int8_ms": int8_ms,
        "int8_over_fp32": int8_ms / fp32_ms if fp32_ms > 0 else 0.0,
        "cpu": device_facts().get("cpu"),
        "threads": 1,
        "runs": 3 * LATENCY_RUNS,
    }


def _validation(model: Model, precision: str, data: bytes, spec: QuantSpec | None = None) -> dict[str, Any]:
    """The artifact's model in ONNX Runtime as the device opens it (graph optimisations on) vs the source FP32."""
    from edgekit.targets.validation import RAN_ORT, RAN_ORT_QDQ, OrtRunner, validate_build

    ran = RAN_ORT if precision == "fp32" else RAN_ORT_QDQ
    return validate_build(model, precision, OrtRunner(data), ran=ran, spec=spec)


def _quantization_summary(spec: QuantSpec) -> dict[str, Any]:
    from edgekit.calibration.spec_summary import quantization_summary

    return quantization_summary(spec)
