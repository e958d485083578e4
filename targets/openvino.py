"""The x86 OpenVINO target: an OpenVINO IR (model.xml + model.bin) for OpenVINO's CPU plugin (Intel CPUs).

fp32, fp16 and bf16 are the source graph converted by OpenVINO's ONNX frontend; what differs is the inference
precision hint the agent's `openvino` engine compiles with (the manifest's `build.inference_precision`: f32,
f16, bf16), and fp16 stores its weights as float16. fp32 and int8 always say f32: on CPUs with AMX or
avx512_bf16 OpenVINO otherwise runs an "FP32" model in bf16. int8 is the QDQ model x86-ort ships, written from
the same QuantSpec (`prepare_float_model` + `write_qdq`), converted by OpenVINO (each Q/DQ pair becomes a
FakeQuantize that its low-precision passes fold into integer kernels). A model with one input whose shape the
validation can fix (batch 1, the preprocessing size) is reshaped to it: static shapes compile to faster kernels.

The IR is made deterministic (building twice gives the same artifact id): the names OpenVINO generates from a
process-wide counter are replaced by names from the graph's order. Op support comes from OpenVINO itself: its
ONNX frontend's partial conversion names the ops it has no rule for or fails on, and the CPU plugin's
`query_model` the ones it cannot run. Every build is validated against ONNX Runtime FP32 on the source model
with OpenVINO on this machine; when this CPU cannot run the requested precision natively (OpenVINO's
OPTIMIZATION_CAPABILITIES lack FP16 or BF16) the manifest's `not_honoured` says so and the validation names
the precision that ran. No build options.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.targets import register_target
from edgekit.targets.base import DEFAULTS, BuildAt, BuildError, Target, TargetOptions

if TYPE_CHECKING:
    import onnx

    from edgekit.calibration.quant_spec import QuantSpec
    from edgekit.model import Model
    from edgekit.op_support import Refusal

# The inference precision hint each precision is built for (OpenVINO's INFERENCE_PRECISION_HINT values).
HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
# OPTIMIZATION_CAPABILITIES entries that say the CPU runs a hint natively.
_NATIVE = {"f16": "FP16", "bf16": "BF16"}
_STRUCTURAL = {"Parameter", "Result", "Constant"}
_FAILED = re.compile(r"^-- (\S+?)-\d+ with a message:\n(.*?)(?=^-- |^Summary:|\Z)", re.S | re.M)


@register_target
class OpenVinoX86Target(Target):
    name = "x86-openvino"
    description = "x86-64 CPU with OpenVINO (Intel CPUs): FP32, FP16/BF16 by inference-precision hint, INT8"
    device = "x86-64 box (Intel CPU)"
    engine = "openvino"
    precisions = ("fp32", "fp16", "bf16", "int8")
    quantized_precisions = ("int8",)
    # The same QuantSpec as x86-ort: u8 activations feed the VNNI u8 x s8 kernels; 7-bit weights stay clear of
    # int16 saturation on CPUs without VNNI.
    activation_scheme = "uint8_asym"
    weight_scheme = "int7_per_channel"

    def refusals(self, proto: onnx.ModelProto, at: BuildAt = DEFAULTS) -> list[Refusal]:
        """Nodes OpenVINO's ONNX frontend cannot convert, else ops its CPU plugin cannot run."""
        require_openvino()
        return openvino_refusals(proto)

    def _build_impl(
        self, model: Model, precision: str, spec: QuantSpec | None, options: TargetOptions
    ) -> tuple[dict[str, bytes], dict]:
        from edgekit.targets.validation import probe_shapes

        source = model.proto if precision != "int8" else _qdq_model(model, spec)
        shapes = probe_shapes(model)
        static = shapes if isinstance(shapes, dict) and len(shapes) == 1 else None
        xml, weights = convert_to_ir(source, static, compress_to_fp16=precision == "fp16")
        hint = HINTS[precision]
        validation, ran_hint = _validation(model, precision, xml, weights, hint, spec, static)
        extra: dict[str, Any] = {
            "model_file": "model.xml",
            "build": {"inference_precision": hint},
            "validation": validation,
            "not_honoured": _not_honoured(hint, ran_hint),
        }
        if static is not None:
            extra["inputs"] = [{**self._io_entry(model.inputs[0], model), "shape": list(next(iter(static.values())))}]
        if spec is not None:
            from edgekit.calibration.spec_summary import quantization_summary

            extra["quantization"] = quantization_summary(spec)
        return {"model.xml": xml, "model.bin": weights}, extra

    def tool_versions(self) -> dict[str, str]:
        import openvino

        return {**super().tool_versions(), "openvino": openvino.__version__}


def require_openvino() -> None:
    """BuildError with the install line when OpenVINO is not installed."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        raise BuildError(
            f"the x86-openvino target needs OpenVINO ({exc.name or exc} is missing): pip install 'edgekit[openvino]'"
        ) from exc


def _qdq_model(model: Model, spec: QuantSpec | None) -> onnx.ModelProto:
    """The QDQ model x86-ort ships for this QuantSpec."""
    from edgekit.calibration.calibrate import prepare_float_model
    from edgekit.calibration.qdq import write_qdq

    return write_qdq(prepare_float_model(model.proto, spec), spec)


# -- conversion -----------------------------------------------------------------------------------------------


def convert_to_ir(
    proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None, *, compress_to_fp16: bool = False
) -> tuple[bytes, bytes]:
    """(model.xml, model.bin) of `proto` converted by OpenVINO, reshaped to `shapes` when given, with the names
    OpenVINO invents renamed by graph order so that the same model gives the same bytes."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"  # a fixed name: the IR records it (conversion_parameters)
        path.write_bytes(proto.SerializeToString())
        try:
            converted = ov.convert_model(str(path))
            if shapes:
                converted.reshape({name: list(shape) for name, shape in shapes.items()})
        except Exception as exc:  # OpenVINO raises its own OpConversionFailure / GeneralFailure types
            raise BuildError(f"OpenVINO cannot convert the model ({type(exc).__name__}: {exc})") from exc
        stable_names(converted, onnx_names(proto))
        ov.save_model(converted, str(Path(folder) / "model.xml"), compress_to_fp16=compress_to_fp16)
        return (Path(folder) / "model.xml").read_bytes(), (Path(folder) / "model.bin").read_bytes()


def onnx_names(proto: onnx.ModelProto) -> set[str]:
    """Node, tensor and graph input names of `proto`: the names OpenVINO keeps from the source."""
    graph = proto.graph
    names = {node.name for node in graph.node} | {out for node in graph.node for out in node.output}
    return names | {t.name for t in graph.input} | {t.name for t in graph.initializer} | {t.name for t in graph.output}


def stable_names(converted: Any, keep: set[str]) -> None:
    """Rename every op whose name is not in `keep` (OpenVINO names them Type_N from a counter that runs on through
    the process) to Type_<its index in graph order>."""
    for index, op in enumerate(converted.get_ordered_ops()):
        if op.get_friendly_name() not in keep:
            op.set_friendly_name(f"{op.get_type_name()}_{index}")


# -- what OpenVINO refuses ------------------------------------------------------------------------------------


def openvino_refusals(proto: onnx.ModelProto) -> list[Refusal]:
    """The nodes OpenVINO's ONNX frontend has no rule for or fails to convert (from its partial conversion);
    when it converts everything, the ops the CPU plugin's `query_model` does not take."""
    from openvino.frontend import FrontEndManager

    from edgekit.op_support import Refusal

    labels = _node_labels(proto)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        # the frontend and its input model own what the converted nodes point to: all stay alive until the
        # refusals are read out (dropping them first gives empty attributes, then a crash)
        manager = FrontEndManager()
        frontend = manager.load_by_framework("onnx")
        try:
            source = frontend.load(str(path))
            partial = frontend.convert_partially(source)
        except Exception as exc:
            return [Refusal("model", proto.graph.name or "graph", f"OpenVINO's ONNX frontend cannot read it: {exc}")]
        failures = _conversion_messages(str(path)) if _has_unconverted(partial) else {}
        refused = [_frontend_refusal(op, labels, failures) for op in partial.get_ordered_ops()]
        found = [r for r in refused if r is not None] or _plugin_refusals(partial, labels)
        del partial, source, frontend, manager  # in this order: the model before what it points into
        return found


def _has_unconverted(converted: Any) -> bool:
    return any(
        op.get_type_name() in ("ONNXFrameworkNode", "NotSupportedONNXNode") for op in converted.get_ordered_ops()
    )


def _frontend_refusal(op: Any, labels: dict[str, tuple[str, str]], failures: dict[str, str]) -> Refusal | None:
    from edgekit.op_support import Refusal

    kind = op.get_type_name()
    if kind not in ("ONNXFrameworkNode", "NotSupportedONNXNode"):
        return None
    attributes = op.get_attributes()
    op_type, domain = attributes.get("ONNX_META_type", kind), attributes.get("ONNX_META_domain", "")
    _, node = labels.get(op.get_friendly_name(), (op_type, op.get_friendly_name()))
    if kind == "ONNXFrameworkNode":
        qualified = f"{domain}.{op_type}" if domain and domain != "ai.onnx" else op_type
        return Refusal(op_type, node, f"OpenVINO's ONNX frontend has no conversion rule for {qualified}")
    why = failures.get(op_type)
    return Refusal(op_type, node, "OpenVINO's ONNX frontend fails to convert it" + (f": {why}" if why else ""))


def _conversion_messages(path: str) -> dict[str, str]:
    """op type -> the last line of OpenVINO's conversion failure message for it (from a full conversion)."""
    import openvino as ov

    try:
        ov.convert_model(path)
    except Exception as exc:
        return {
            op: lines[-1]
            for op, text in _FAILED.findall(str(exc))
            if (lines := [line.strip() for line in text.splitlines() if line.strip()])
        }
    return {}


def _plugin_refusals(converted: Any, labels: dict[str, tuple[str, str]]) -> list[Refusal]:
    import openvino as ov

    from edgekit.op_support import Refusal

    try:
        supported = ov.Core().query_model(converted, "CPU")
    except Exception as exc:
        return [Refusal("model", "graph", f"OpenVINO's CPU plugin refuses it: {exc}")]
    refused = []
    for op in converted.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() in _STRUCTURAL or name in supported:
            continue
        op_type, node = labels.get(name, (op.get_type_name(), name))
        refused.append(Refusal(op_type, node, f"OpenVINO's CPU plugin has no kernel for it ({op.get_type_name()})"))
    return refused


def _node_labels(proto: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """OpenVINO op names (an ONNX node's name or an output's) -> (ONNX op type, the node as messages name it)."""
    from edgekit.targets.base import all_nodes, node_label

    labels: dict[str, tuple[str, str]] = {}
    for node in all_nodes(proto.graph):
        for name in (*node.output, node.name):
            if name:
                labels[name] = (node.op_type, node_label(node))
    return labels


# -- validation -----------------------------------------------------------------------------------------------


def cpu_capabilities() -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this machine's CPU (FP32, INT8, BF16, FP16, ...)."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _validation(
    model: Model,
    precision: str,
    xml: bytes,
    weights: bytes,
    hint: str,
    spec: QuantSpec | None,
    shapes: dict[str, tuple[int, ...]] | None,
) -> tuple[dict[str, Any], str]:
    """The validation block of the IR compiled here with `hint`, and the precision OpenVINO reports it ran at."""
    from edgekit.targets.validation import RAN_OPENVINO, OpenVinoRunner, validate_build

    runner = OpenVinoRunner(xml, weights, hint)
    ran = f"{RAN_OPENVINO} at inference precision {runner.inference_precision}"
    if precision == "int8":
        ran += " (FakeQuantize layers in int8)"
    native = _NATIVE.get(runner.inference_precision)
    if native and native not in cpu_capabilities():
        ran += " (emulated: this CPU lacks it natively)"
    block = validate_build(model, precision, runner, ran=ran, spec=spec, shapes=shapes)
    block["inference_precision"] = runner.inference_precision
    return block, runner.inference_precision


def _not_honoured(hint: str, ran_hint: str) -> list[dict[str, str]]:
    """What the build machine could not run as asked (the artifact still carries the hint for the device)."""
    native = _NATIVE.get(hint)
    capabilities = cpu_capabilities()
    if native is None or native in capabilities:
        return []
    how = f"OpenVINO ran it at {ran_hint}" + (" in emulation" if ran_hint == hint else "")
    return [
        {
            "what": f"inference precision {hint} on the build machine",
            "why": f"this CPU's OpenVINO capabilities are {', '.join(capabilities)} (no {native}): {how}, and the "
            "validation figures are for that. A device whose CPU has it (AMX, avx512_bf16, avx512_fp16) runs the "
            "hint natively.",
        }
    ]
