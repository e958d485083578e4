"""The Jetson target: an ONNX model plus the build configuration; the device builds the TensorRT engine.

A TensorRT engine only runs on the TensorRT version and GPU that built it, so the artifact carries ONNX
(the float model for fp32/fp16, a QDQ model with symmetric int8 scales from the QuantSpec for int8; no
calibration cache, which TensorRT ignores for a Q/DQ network), and a `build` section that the agent hands to its
`tensorrt` engine as options (runtime/engines/tensorrt/ builds and caches the engine on the device).

What TensorRT's ONNX parser wants from a QDQ graph (onnx-tensorrt docs/operators.md; NVIDIA's Q/DQ
placement guide): zero points of 0 (symmetric int8), weights stored in float behind a QuantizeLinear ->
DequantizeLinear pair (TensorRT 8.x rejects a DequantizeLinear fed by an int8 constant: "only activation
types allowed as input to this layer"), and biases in float (an int32 DequantizeLinear is refused the same
way, onnx/onnx-tensorrt#850). TensorRT quantizes the biases itself from the input and weight scales.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.onnx_toolbox import default_opset, node_label
from edgekit.op_support import Refusal
from edgekit.targets import register_target
from edgekit.targets.base import DEFAULTS, BuildAt, BuildError, Target, TargetOptions, all_nodes
from edgekit.targets.tensorrt_ops import (
    DEFAULT_TRT_VERSION,
    OP_LIST_SOURCE,
    TENSORRT_ONNX_OPS,
    op_list_version,
    refusal_reason,
    tensorrt_ops,
)
from edgekit.targets.tensorrt_opset import TRT8_MAX_OPSET, opset_for_tensorrt

if TYPE_CHECKING:
    import onnx

    from edgekit.calibration.quant_spec import QuantSpec
    from edgekit.model import Model

DLA_CORES = (0, 1)  # Jetson AGX Xavier / Xavier NX / AGX Orin / Orin NX have two DLA cores (Orin Nano none)
SPARSITY_PATTERNS = ("2:4",)  # what Ampere's sparse tensor cores run
# why an int8 artifact carries no calibration cache (the manifest says it in quantization.tensorrt)
EXPLICIT_QDQ = {
    "mode": "explicit Q/DQ",
    "calibration_cache": None,
    "why": "every scale is in the model's Q/DQ nodes; TensorRT 8.5 to 10 ignore a calibrator for a network with "
    "Q/DQ layers, so a cache would be dead weight (edgekit quantize writes one for implicit INT8 from a float model)",
}


@dataclass(frozen=True)
class TensorRTOptions(TargetOptions):
    """jetson-trt build options; they go into the manifest's `build` section, which the device's engine reads."""

    dla_core: int | None = field(
        default=None,
        metadata={
            "help": "run on this DLA core, 0 or 1 (fp16 and int8 only); what the DLA cannot run goes to the GPU",
            "flag": "--dla",
            "example": "0",
        },
    )
    gpu_fallback: bool | None = field(
        default=None,
        metadata={
            "help": "with dla_core: run the layers the DLA cannot on the GPU (default true)",
            "example": "false",
        },
    )
    sparsity: str | None = field(
        default=None,
        metadata={
            "help": "the structured sparsity pattern (2:4): TensorRT may use sparse kernels for layers that have it",
            "flag": "--sparsity",
            "example": "2:4",
        },
    )
    max_batch: int | None = field(
        default=None,
        metadata={
            "help": "largest batch of the optimization profile when the batch axis is dynamic (default 1)",
            "flag": "--max-batch",
            "example": "8",
        },
    )
    workspace_mb: int | None = field(
        default=None,
        metadata={
            "help": "builder workspace in MiB (default: TensorRT's)",
            "example": "1024",
        },
    )
    trt_version: str = field(
        default=DEFAULT_TRT_VERSION,
        metadata={
            "help": "the TensorRT version of the devices, whose ONNX parser decides which ops build: 8.5 (JetPack 5), "
            "8.6 (JetPack 6.0), 10 (JetPack 6.1+)",
            "example": "8.6",
        },
    )

    def check(self, precision: str) -> None:
        if self.dla_core is not None:
            if self.dla_core not in DLA_CORES:
                raise BuildError(
                    f"{self.label('dla_core', self.dla_core)}: Jetson DLA cores are numbered "
                    f"{' and '.join(map(str, DLA_CORES))} (AGX Xavier, Xavier NX, AGX Orin, Orin NX; an Orin Nano "
                    "has none)"
                )
            if precision == "fp32":
                raise BuildError(
                    f"{self.label('dla_core')}: the DLA does not run fp32; build with --precision fp16 or --precision "
                    "int8 (GPU fallback runs the layers the DLA cannot)"
                )
        if self.gpu_fallback and self.dla_core is None:
            raise BuildError(
                f"{self.label('gpu_fallback')} only applies with a DLA core: pass -O dla_core=0 (--dla 0) or 1, or "
                "drop gpu_fallback"
            )
        if self.sparsity is not None and self.sparsity not in SPARSITY_PATTERNS:
            raise BuildError(
                f"{self.label('sparsity', self.sparsity)}: TensorRT's structured sparsity is "
                f"{', '.join(SPARSITY_PATTERNS)}"
            )
        op_list_version(self.trt_version)
        for name in ("max_batch", "workspace_mb"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BuildError(f"{self.label(name, value)}: must be a positive integer")


@register_target
class JetsonTensorRtTarget(Target):
    name = "jetson-trt"
    description = "NVIDIA Jetson (JetPack 5/6) with TensorRT; the engine is built and cached on the device"
    device = "NVIDIA Jetson"
    engine = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    quantized_precisions = ("int8",)
    activation_scheme = "int8_sym"  # TensorRT's Q/DQ: symmetric int8, zero point 0
    weight_scheme = "int8_per_channel"
    Options = TensorRTOptions

    def supported_ops(self) -> set[tuple[str, str]]:
        return {("ai.onnx", op) for op in TENSORRT_ONNX_OPS}

    def refusals(self, proto: onnx.ModelProto, at: BuildAt = DEFAULTS) -> list[Refusal]:
        """Every node the ONNX parser of the TensorRT in `options` (`trt_version`, default JetPack 5's) does not
        import, naming the release that does."""
        trt_version = getattr(at.options, "trt_version", None) or DEFAULT_TRT_VERSION
        listed = op_list_version(trt_version)
        supported = tensorrt_ops(listed)
        found = []
        for node in all_nodes(proto.graph):
            if node.domain in ("", "ai.onnx") and node.op_type in supported:
                continue
            found.append(Refusal(node.op_type, node_label(node), refusal_reason(node, listed, trt_version)))
        return found

    def build_notes(self, proto: onnx.ModelProto, options: TargetOptions | None = None) -> list[str]:
        trt_version = getattr(options, "trt_version", None) or DEFAULT_TRT_VERSION
        opset = default_opset(proto)
        if opset is None or opset <= TRT8_MAX_OPSET or int(trt_version.split(".")[0]) >= 10:
            return []
        return [
            f"opset {opset}: built at opset {TRT8_MAX_OPSET} for TensorRT {trt_version}, whose ONNX parser ignores "
            "the opset-18 axes input of ReduceMean and the other reductions (-O trt_version=10.x keeps it)"
        ]

    # -- build -------------------------------------------------------------------------------------

    def _build_impl(
        self, model: Model, precision: str, spec: QuantSpec | None, options: TensorRTOptions
    ) -> tuple[dict[str, bytes], dict]:
        dla = options.dla_core
        not_honoured: list[dict[str, Any]] = []
        build = {
            "precision": precision,
            "calibration_cache": None,
            "dla_core": dla,
            "gpu_fallback": options.gpu_fallback is not False if dla is not None else False,
            "sparsity": options.sparsity is not None,
            "workspace_mb": options.workspace_mb,
            "profile_shapes": profile_shapes(model, options.max_batch),
        }
        if build["sparsity"]:
            not_sparse = not_2_4_sparse_layers(model.proto)
            if not_sparse:
                shown = ", ".join(not_sparse[:5]) + (f" and {len(not_sparse) - 5} more" if len(not_sparse) > 5 else "")
                not_honoured.append(
                    {
                        "what": f"2:4 sparsity for {len(not_sparse)} layer(s): {shown}",
                        "why": "their weights do not have 2 zeros in every 4 consecutive input-channel weights, so "
                        "TensorRT runs them dense; prune them with edgekit.compress.pruning (n_m=(2, 4)) and fine-tune",
                        "layers": not_sparse,
                    }
                )
        listed = op_list_version(options.trt_version)
        extra: dict[str, Any] = {
            "model_file": "model.onnx",
            "op_check": {"tensorrt": options.trt_version, "op_list": OP_LIST_SOURCE.format(listed)},
        }
        if precision in ("fp32", "fp16"):
            # TensorRT builds FP16 itself (BuilderFlag.FP16) from the float weights: nothing to convert here
            files = {"model.onnx": model.to_bytes()}
        else:
            from edgekit.calibration.spec_summary import quantization_summary

            qdq_bytes, _, notes = self._int8_model(model, spec)
            not_honoured.extend(notes)
            files = {"model.onnx": qdq_bytes}
            extra["quantization"] = {
                **quantization_summary(spec),
                "created_by": spec.created_by,
                "tensorrt": EXPLICIT_QDQ,
            }
        files["model.onnx"], extra["opset"] = opset_for_tensorrt(files["model.onnx"], options.trt_version)
        extra["validation"] = _validation(model, precision, files["model.onnx"], spec, build["profile_shapes"])
        return files, {**extra, "build": build, "not_honoured": not_honoured}

    def _int8_model(self, model: Model, quant_spec: QuantSpec) -> tuple[bytes, QuantSpec, list[dict[str, Any]]]:
        from edgekit.calibration.calibrate import prepare_float_model
        from edgekit.calibration.qdq import write_qdq
        from edgekit.model import Model as ModelClass

        spec, notes = symmetric_spec(quant_spec)
        qdq = float_weights_behind_qdq(write_qdq(prepare_float_model(model.proto, spec), spec))
        bad = sorted(
            name for name, zero_point in _zero_points(qdq).items() if zero_point.dtype != np.int8 or np.any(zero_point)
        )
        if bad:
            raise BuildError(f"the QDQ model has non-int8 or non-zero zero points at {', '.join(bad[:5])}: a bug")
        packaged = ModelClass(qdq, preprocess=model.preprocess, class_names=model.class_names)
        return packaged.to_bytes(), spec, notes

    def tool_versions(self) -> dict[str, str]:
        import onnxruntime

        return {**super().tool_versions(), "onnxruntime": onnxruntime.__version__}


# -- the QuantSpec as TensorRT wants it -------------------------------------------------------------------


def symmetric_spec(spec: QuantSpec) -> tuple[QuantSpec, list[dict[str, Any]]]:
    """A copy of `spec` for TensorRT: activations symmetric int8, biases left float (TensorRT quantizes
    them). Asymmetric activations are refused unless the spec came from QAT export (recalibrating would
    lose the training): those are widened to +-max(|lo|, |hi|) and listed in the returned notes."""
    from edgekit.calibration.quant_spec import QuantSpec, TensorQuant

    asymmetric = sorted(
        name
        for name, entry in spec.tensors.items()
        if entry.kind == "activation" and (entry.dtype != "int8" or np.any(np.asarray(entry.zero_point) != 0))
    )
    notes: list[dict[str, Any]] = []
    if asymmetric and spec.created_by != "qat":
        raise BuildError(
            f"this QuantSpec has asymmetric activations ({spec.scheme.get('activations')}; e.g. {asymmetric[0]}), "
            "but TensorRT only runs symmetric int8 (zero point 0): calibrate for jetson-trt (int8_sym), e.g. "
            "`edgekit build MODEL -t jetson-trt -p int8 --calib DATA` or `edgekit quantize --activations int8_sym`"
        )
    tensors = {}
    for name, entry in spec.tensors.items():
        if entry.kind == "bias":
            continue
        if name in asymmetric:
            scale = np.asarray(entry.scale, dtype=np.float64)
            zero_point = np.asarray(entry.zero_point, dtype=np.float64)
            info = np.iinfo(entry.dtype)
            ends = np.abs([(info.min - zero_point) * scale, (info.max - zero_point) * scale])
            bound = float(ends.max())
            entry = TensorQuant(
                entry.kind,
                "int8",
                max(bound, 1e-12) / 127.0,
                0,
                axis=None,
                observer=entry.observer,
                settings=entry.settings,
                range=(-bound, bound),
                observed=entry.observed,
            )
        tensors[name] = entry
    if asymmetric:
        notes.append(
            {
                "what": f"activations {spec.scheme.get('activations')} from QAT ({len(asymmetric)} tensors)",
                "why": "TensorRT runs symmetric int8 only; each range was widened to +-max(|lo|, |hi|), which "
                "coarsens those tensors. Train with activations int8_sym for jetson-trt.",
            }
        )
    copy = QuantSpec(
        source_model_sha256=spec.source_model_sha256,
        scheme={**spec.scheme, "activations": "int8_sym"},
        tensors=tensors,
        nodes=dict(spec.nodes),
        calibration=dict(spec.calibration),
        created_by=spec.created_by,
        transforms=list(spec.transforms),
    )
    return copy, notes


def float_weights_behind_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each `int8 initializer -> DequantizeLinear` with `float initializer -> QuantizeLinear ->
    DequantizeLinear`, the form TensorRT 8.5 to 10 parse for weights. The float values are the dequantized
    integers, so TensorRT's QuantizeLinear gives back exactly the integers of the QDQ model."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    replaced: dict[str, onnx.TensorProto] = {}
    quantizers: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        quantized = inits[node.input[0]]
        if quantized.data_type != TensorProto.INT8 or quantized.name in replaced:
            continue
        q = numpy_helper.to_array(quantized).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zero_point = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) if len(node.input) > 2 else 0.0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero_point = np.asarray(zero_point).reshape(shape) if np.ndim(zero_point) else zero_point
        values = ((q - zero_point) * scale).astype(np.float32)
        float_name = f"{quantized.name}_float"
        replaced[quantized.name] = numpy_helper.from_array(values, float_name)
        attrs = {"axis": axis} if np.ndim(scale) else {}
        quantizers.append(
            helper.make_node(
                "QuantizeLinear",
                [float_name, *node.input[1:3]],
                [quantized.name],
                name=f"{quantized.name}_QuantizeLinear",
                **attrs,
            )
        )
    kept = [init for init in model.graph.initializer if init.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*kept, *replaced.values()])
    nodes = [*quantizers, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _zero_points(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{Q/DQ node name: its zero point} for every quantizer of the model."""
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    return {
        node.name: numpy_helper.to_array(inits[node.input[2]])
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in inits
    }


def _validation(
    model: Model, precision: str, data: bytes, spec: QuantSpec | None, shapes: dict[str, list[list[int]]] | None
) -> dict[str, Any]:
    """The emitted ONNX in ONNX Runtime (TensorRT cannot be installed here) vs ONNX Runtime FP32 on the source, at
    the profile's opt shapes. fp16 rounds the float weights to float16, as TensorRT's FP16 engine stores them
    (its activations stay float32 here, so the figure is a floor of what the device sees)."""
    import onnx

    from edgekit.targets.validation import RAN_TENSORRT, OrtRunner, validate_build

    if precision == "fp16":
        data = _float16_weights(onnx.load_from_string(data)).SerializeToString()
    fixed = None
    if shapes is not None:
        fixed = {t.name: tuple(shapes[t.name][1]) if t.name in shapes else tuple(t.shape) for t in model.inputs}
    block = validate_build(model, precision, OrtRunner(data), ran=RAN_TENSORRT, spec=spec, shapes=fixed)
    if precision == "fp16":
        block["emulated"] = "float16 weights; TensorRT's float16 activations only on the device"
    return block


def _float16_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` whose float32 initializers hold float16-rounded values (still float32 tensors)."""
    from onnx import TensorProto, numpy_helper

    for init in proto.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            rounded = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    return proto


# -- optimization profile -----------------------------------------------------------------------------


def profile_shapes(model: Model, max_batch: int | None = None) -> dict[str, list[list[int]]] | None:
    """[min, opt, max] shapes per input with a dynamic axis (None when every input is fixed).

    The batch axis (axis 0) runs 1..max_batch (1 by default) with opt 1, the batch the agent feeds; other
    dynamic axes are fixed to what the preprocessing produces (TensorRT's DLA and most kernels want them
    fixed)."""
    shapes: dict[str, list[list[int]]] = {}
    for tensor in model.inputs:
        dims = list(tensor.shape)
        dynamic = [i for i, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]
        if not dims:
            continue
        if 0 not in dynamic:
            if max_batch is not None and max_batch != dims[0]:
                raise BuildError(
                    f"input {tensor.name!r} has a fixed batch of {dims[0]}, so "
                    f"{TensorRTOptions.label('max_batch', max_batch)} cannot apply: "
                    "export the model with a dynamic batch axis"
                )
            if not dynamic:
                continue
        fixed = list(dims)
        for axis in dynamic:
            if axis == 0:
                continue
            value = _axis_from_preprocess(model, len(dims), axis)
            if value is None:
                raise BuildError(
                    f"input {tensor.name!r} has a dynamic axis {axis} ({dims[axis]!r}) that the preprocessing does "
                    "not fix; export the model with that axis fixed, or set a preprocess resize (and crop)"
                )
            fixed[axis] = value
        low, opt, high = list(fixed), list(fixed), list(fixed)
        if 0 in dynamic:
            low[0], opt[0], high[0] = 1, 1, int(max_batch or 1)
        shapes[tensor.name] = [[int(d) for d in s] for s in (low, opt, high)]
    return shapes or None


def _axis_from_preprocess(model: Model, rank: int, axis: int) -> int | None:
    spec = model.preprocess
    if spec is None or rank != 4:
        return None
    size = spec.fixed_input_size
    channels = 1 if spec.color == "GRAY" else 3
    layout = {"NCHW": (None, channels, "h", "w"), "NHWC": (None, "h", "w", channels)}[spec.layout]
    want = layout[axis]
    if want in ("h", "w"):
        return None if size is None else int(size[0] if want == "h" else size[1])
    return want


# -- 2:4 structured sparsity --------------------------------------------------------------------------


def is_2_4_sparse(weight: np.ndarray, input_axis: int = 1) -> bool:
    """True when every group of 4 consecutive input-channel weights (at each output channel and kernel
    position) has at least 2 zeros: what TensorRT's sparse kernels need. The numpy twin of
    edgekit.compress.pruning.is_n_m_sparse(weight, 2, 4), which needs torch (an extra this target must not
    require)."""
    weight = np.asarray(weight)
    if weight.ndim < 2 or weight.shape[input_axis] % 4:
        return False
    groups = np.moveaxis(weight, input_axis, -1).reshape(-1, 4)
    return bool(((groups != 0).sum(axis=1) <= 2).all())


def not_2_4_sparse_layers(proto: onnx.ModelProto) -> list[str]:
    """Names of the Conv/Gemm nodes whose constant weights are not 2:4 sparse."""
    from onnx import numpy_helper

    from edgekit.calibration.calibrate import prepare_float_model

    prepared = prepare_float_model(proto)  # constants as initializers, BatchNorm folded, every node named
    inits = {init.name: init for init in prepared.graph.initializer}
    dense = []
    for node in prepared.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        axis = 1
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 1 if trans_b else 0  # B is (N, K) with transB, else (K, N): K is the input axis
        if not is_2_4_sparse(weight, axis):
            dense.append(node.name)
    return dense
