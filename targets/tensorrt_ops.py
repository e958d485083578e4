"""The ONNX ops TensorRT's ONNX parser imports, per release, and how a refusal names the release that would
take an op (what jetson-trt's `refusals` and `edgekit inspect -t jetson-trt` say)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit.targets.base import BuildError

if TYPE_CHECKING:
    import onnx

# ONNX ops that TensorRT's ONNX parser imports, per TensorRT release: the "Y" rows of onnx/onnx-tensorrt
# docs/operators.md on its release branches 8.5-GA (opsets up to 17), 8.6-GA (up to 17) and 10.0-GA (9 to 20).
# No release dropped an op of the one before, so each list is the previous one plus what it added. The build
# checks the list of the TensorRT its devices run (`-O trt_version`, default 8.5: JetPack 5, the oldest
# this target builds for); a newer TensorRT uses the newest list at or below its version.
TENSORRT_ONNX_OPS: frozenset[str] = frozenset(
    {
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GRU",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsNaN",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LRN",
        "LSTM",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RNN",
        "RoiAlign",
        "Round",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    }
)

TENSORRT_OPS_ADDED: dict[str, frozenset[str]] = {
    "8.6": frozenset({"GroupNormalization", "IsInf", "LayerNormalization"}),
    "10.0": frozenset({"CastLike", "Gelu", "Hardmax", "Mish"}),
}
TRT_VERSIONS = ("8.5", "8.6", "10.0")  # the releases with an op list above, oldest first
JETPACKS = {"8.5": "JetPack 5", "8.6": "JetPack 6.0", "10.0": "JetPack 6.1+"}
DEFAULT_TRT_VERSION = "8.5"
OP_LIST_SOURCE = "onnx/onnx-tensorrt docs/operators.md, branch {}-GA"


def _version_key(version: str) -> tuple[int, int]:
    major, _, minor = version.strip().partition(".")
    return int(major), int(minor.partition(".")[0] or 0)


def op_list_version(version: str) -> str:
    """The op list that applies to TensorRT `version` ("8.6.2", "10.3", "10"): the newest release at or below it;
    BuildError for an unreadable version or one older than 8.5."""
    try:
        key = _version_key(version)
    except ValueError:
        key = None
    known = [v for v in TRT_VERSIONS if key is not None and _version_key(v) <= key]
    if not known:
        raise BuildError(
            f"-O trt_version={version}: give the devices' TensorRT version, {TRT_VERSIONS[0]} "
            f"or newer ({', '.join(f'{v}: {JETPACKS[v]}' for v in TRT_VERSIONS)})"
        )
    return known[-1]


def tensorrt_ops(version: str = DEFAULT_TRT_VERSION) -> frozenset[str]:
    """The ONNX ops TensorRT `version`'s parser imports."""
    listed = op_list_version(version)
    added = [TENSORRT_OPS_ADDED.get(v, frozenset()) for v in TRT_VERSIONS if _version_key(v) <= _version_key(listed)]
    return TENSORRT_ONNX_OPS.union(*added)


def first_version_with(op: str) -> str | None:
    """The oldest TensorRT release (of those listed) whose parser imports `op`, or None."""
    return next((v for v in TRT_VERSIONS if op in tensorrt_ops(v)), None)


def refusal_reason(node: onnx.NodeProto, listed: str, asked: str) -> str:
    """Why TensorRT `asked` (whose op list is `listed`'s) does not take `node`, and which release would."""
    if node.domain not in ("", "ai.onnx"):
        return f"op of domain {node.domain!r}: TensorRT's ONNX parser takes ONNX ops (and its plugins)"
    since = first_version_with(node.op_type)
    source = OP_LIST_SOURCE.format(listed)
    if since is None:
        return f"not imported by TensorRT's ONNX parser up to {TRT_VERSIONS[-1]} ({source})"
    return (
        f"{node.op_type} is parsed from TensorRT {since} ({JETPACKS[since]}); this build targets {asked}: pass "
        f"-O trt_version={since} if the devices run it"
    )
