"""The Android target: a .tflite model for LiteRT (XNNPACK on the CPU, GPU or NNAPI delegates on the phone).

fp32 and fp16 (float16 weights) convert the float model; int8 is full-integer with activation grids from the
QuantSpec (targets/tflite_quant.py), float input/output by default or int8 I/O with `int8_io`; the QuantSpec's
float nodes stay float behind a DEQUANTIZE. Every build runs in
LiteRT against ONNX Runtime FP32 on the source model (`edgekit.targets.validation`): the manifest's `validation`.
Needs the tflite extra (TensorFlow for conversion, ai-edge-litert and ai-edge-quantizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import ModelError
from edgekit.op_support import Refusal
from edgekit.targets import register_target
from edgekit.targets.base import (
    DEFAULTS,
    BuildAt,
    BuildError,
    Target,
    TargetOptions,
    build_size,
    count_ops,
    static_model,
    translator_refusals,
)
from edgekit.targets.onnx_to_tf import (
    OPS,
    SUPPORTED_OPS,
    TFLITE_OPS,
    ConversionError,
    channel_last,
    static_input_shape,
    to_tflite,
)
from edgekit.targets.onnx_to_tf_fusions import fuse_gelu
from edgekit.targets.validation import RAN_LITERT, probe_inputs, validate

if TYPE_CHECKING:
    import onnx

    from edgekit.calibration.quant_spec import QuantSpec
    from edgekit.model import Model
    from edgekit.targets.tflite_quant import QuantizedTflite

# NNAPI delegate coverage (TFLite builtins it can hand to NNAPI on Android 10+), from the NNAPI delegate's
# op validation in the TensorFlow Lite source (delegates/nnapi/nnapi_delegate.cc); ops outside run on the CPU.
# Op level only: the delegate also checks types (EXP, LOG, SQRT, POW float only; SPLIT not int8) and
# attributes (no align_corners resize). GELU has no NNAPI operation.
NNAPI_OPS = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "DEQUANTIZE",
        "DIV",
        "FULLY_CONNECTED",
        "HARD_SWISH",
        "LOGISTIC",
        "MAX_POOL_2D",
        "MAXIMUM",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PAD",
        "QUANTIZE",
        "RELU",
        "RELU6",
        "RELU_0_TO_1",
        "RESHAPE",
        "SOFTMAX",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "TRANSPOSE",
        "GATHER",
        "CAST",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "SPLIT",
        "SLICE",
        "TRANSPOSE_CONV",
        "ABS",
        "EXP",
        "LOG",
        "NEG",
        "SQRT",
        "POW",
    }
)


def _install_hint(exc: ImportError) -> BuildError:
    return BuildError(
        f"the android-tflite target needs the tflite extra ({exc.name or exc} is missing): "
        "pip install 'edgekit[tflite]'"
    )


def _litert_runner(tflite: bytes, as_is: bool) -> Any:
    """A validation runner over the .tflite in LiteRT: feeds in the ONNX model's layout, given as they are when
    `as_is` (an NCHW .tflite input, or a channel-last model), else transposed to NHWC; outputs in order."""
    from edgekit.runtime.engines.tflite import TfliteEngine

    engine = TfliteEngine.from_bytes(tflite, {"threads": 1})

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        (x,) = feed.values()
        return engine.infer({engine.input_names[0]: x if as_is else x.transpose(0, 2, 3, 1)})

    return engine, run


def float_node_notes(
    result: QuantizedTflite, prepared: onnx.ModelProto, spec: QuantSpec, int8_io: bool
) -> list[dict[str, str]]:
    """Where the int8 .tflite computes differently from the QDQ model: activations no quantized ONNX op reads
    (the QDQ model leaves them float) are int8 here, on their QuantSpec grids, the inputs of the QuantSpec's
    float nodes among them (dequantized before the float ops); a float output stays float with --int8-io."""
    from edgekit.calibration.qdq import quantized_tensors
    from edgekit.targets.tflite_quant import read_parameters

    in_qdq = quantized_tensors(prepared, spec)
    params = read_parameters(result.data)
    int8_here = sorted(
        {
            m.onnx_name
            for name, m in result.mapping.items()
            if params.get(name, {}).get("dtype") == "int8"
            and spec.tensors.get(m.onnx_name) is not None
            and spec.tensors[m.onnx_name].kind == "activation"
            and m.onnx_name not in in_qdq
        }
    )
    feeding = {name for node in prepared.graph.node if node.name in spec.float_nodes for name in node.input}
    notes = []
    if head := [name for name in int8_here if name in feeding]:
        notes.append(
            {
                "what": f"float inputs of the kept-float nodes: {', '.join(head)}",
                "why": "the .tflite computes them in int8, each on its own grid, and dequantizes them before the "
                "float ops (the QDQ model computes them in float)",
            }
        )
    if others := [name for name in int8_here if name not in feeding]:
        notes.append(
            {
                "what": f"activations the QDQ model leaves float: {', '.join(others)}",
                "why": "no quantized ONNX op reads them (a Resize or Split input, say); the full-integer .tflite "
                "computes them in int8 on their QuantSpec grids",
            }
        )
    outputs = [o.name for o in prepared.graph.output]
    floats = [o for o in outputs if any(n.name in spec.float_nodes for n in prepared.graph.node if o in n.output)]
    if int8_io and floats:
        notes.append(
            {
                "what": f"int8 output {', '.join(floats)}",
                "why": "its ops are kept float (QuantSpec float nodes), so the output stays float32",
            }
        )
    return notes


@dataclass(frozen=True)
class TFLiteOptions(TargetOptions):
    """android-tflite build options."""

    int8_io: bool = field(
        default=False,
        metadata={
            "help": "int8 builds: int8 input and output tensors instead of float ones",
            "flag": "--int8-io",
        },
    )
    nchw_input: bool = field(
        default=False,
        metadata={
            "help": "give the .tflite an NCHW input as the ONNX model has (default NHWC, the layout of camera frames)",
        },
    )

    def check(self, precision: str) -> None:
        if self.int8_io and precision != "int8":
            raise BuildError(f"{self.label('int8_io', True)} needs --precision int8 (this build is {precision})")


@register_target
class AndroidTfliteTarget(Target):
    name = "android-tflite"
    description = "Android phone with LiteRT/TFLite (XNNPACK CPU, GPU or NNAPI delegate)"
    device = "Android phone"
    engine = "tflite"
    precisions = ("fp32", "fp16", "int8")
    quantized_precisions = ("int8",)
    # TFLite's int8 scheme: asymmetric int8 activations, symmetric per-channel int8 weights
    activation_scheme = "int8_asym"
    weight_scheme = "int8_per_channel"
    Options = TFLiteOptions

    def supported_ops(self) -> set[tuple[str, str]]:
        return {("ai.onnx", op) for op in SUPPORTED_OPS}

    def refusals(self, proto: onnx.ModelProto, at: BuildAt = DEFAULTS) -> list[Refusal]:
        """The translator's refusals on the model at its build shape, shape arithmetic folded (what it converts)."""
        return translator_refusals(proto, at.size, OPS, check_input=static_input_shape, rewrite=fuse_gelu)

    def accelerator_fallbacks(self, proto: onnx.ModelProto) -> dict[str, dict[str, int]]:
        """ONNX ops that become a TFLite builtin the NNAPI delegate does not take (they run on the CPU)."""
        return {"nnapi": count_ops(proto, lambda domain, op: not set(TFLITE_OPS.get(op, ())) <= NNAPI_OPS)}

    def _build_impl(
        self, model: Model, precision: str, spec: QuantSpec | None, options: TFLiteOptions
    ) -> tuple[dict[str, bytes], dict]:
        nchw = options.nchw_input
        size = build_size(model)
        try:
            static, _ = static_model(model.proto, size)
            shape = static_input_shape(static)
            if channel_last(shape) and nchw:
                raise BuildError(
                    f"{options.label('nchw_input', True)}: this model's input is channel-last {list(shape)}; its "
                    ".tflite input is the model's own NHWC"
                )
            as_is = nchw or channel_last(shape)  # the .tflite input is laid out as the ONNX model's
            probes = probe_inputs(model, {model.inputs[0].name: shape}, spec)
            if precision == "int8":
                first = probes.feeds[0][model.inputs[0].name]
                data, extra = self._int8(model, spec, first, nchw, options.int8_io)
            else:
                extra = {"not_honoured": []}
                data = to_tflite(static, fp16=precision == "fp16", nchw_input=nchw)
            engine, run = _litert_runner(data, as_is)
            with engine:
                extra["validation"] = validate(model, precision, run, ran=RAN_LITERT, probes=probes)
        except ImportError as exc:
            raise _install_hint(exc) from exc
        except (ConversionError, ModelError) as exc:
            raise BuildError(str(exc)) from exc
        n, c, h, w = shape
        input_entry = {
            "name": "input",
            "shape": list(shape) if as_is else [n, h, w, c],
            "dtype": "float32",
            "layout": "NCHW" if nchw else "NHWC",
        }
        preprocess = model.preprocess.to_dict() if model.preprocess is not None else None
        if preprocess is not None:
            preprocess["layout"] = input_entry["layout"]
        return {"model.tflite": data}, {
            **extra,
            "model_file": "model.tflite",
            "inputs": [input_entry],
            "preprocess": preprocess,
            "delegates": ["xnnpack", "gpu", "nnapi"],
        }

    def _int8(
        self, model: Model, spec: QuantSpec, probe: np.ndarray, nchw: bool, int8_io: bool
    ) -> tuple[bytes, dict[str, Any]]:
        from edgekit.calibration.calibrate import prepare_float_model
        from edgekit.calibration.spec_summary import quantization_summary
        from edgekit.targets.tflite_quant import TfliteQuantError, quantize_full_integer

        prepared = prepare_float_model(model.proto, spec)  # the spec's weight transforms, BN folded
        prepared, shape = static_model(prepared, build_size(model))  # the spec's tensor names stay
        float_tflite = to_tflite(prepared, nchw_input=nchw)
        as_is = nchw or channel_last(shape)
        try:
            result = quantize_full_integer(float_tflite, prepared, spec, probe, int8_io=int8_io, nchw_input=as_is)
        except TfliteQuantError as exc:
            raise BuildError(str(exc)) from exc
        not_honoured = list(result.not_honoured)
        if spec.scheme.get("weights") != self.weight_scheme:
            not_honoured.append(
                {
                    "what": f"weights {spec.scheme.get('weights')}",
                    "why": "TFLite's quantizer computes int8 per-channel weight scales (max|w| / 127) from the weights",
                }
            )
        not_honoured += float_node_notes(result, prepared, spec, int8_io)
        quantization = {
            **quantization_summary(spec),
            "int8_io": int8_io,
            "activations_from_spec": len(result.expected),
            "mapped": {name: m.onnx_name for name, m in sorted(result.mapping.items())},
            "float_ops": result.kept_float,  # TFLite ops left float for them (DEQUANTIZE before)
            "full_integer": not result.kept_float,
        }
        return result.data, {"not_honoured": not_honoured, "quantization": quantization}

    def tool_versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        versions = super().tool_versions()
        for package in ("tensorflow-cpu", "tensorflow", "ai-edge-litert", "ai-edge-quantizer"):
            try:
                versions[package] = version(package)
            except PackageNotFoundError:
                continue
        return versions
