"""The ONNX-to-torch replay of ios-coreml, op by op, against ONNX Runtime (no coremltools needed): every
variant of the ops real models export (Resize in every mode, ConvTranspose, grouped Conv, Split / Slice / Gather
on data, Pad, Tile, LayerNormalization, attention's MatMul / Softmax / Einsum, reductions, TopK, ...), and the
variants the replay cannot take refused by name before anything is built, as `inspect` predicts."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.targets import BuildError, get_target
from edgekit.targets.coreml_ops import REPLAY_OPS

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

from edgekit.targets.coreml_onnx import build_module  # noqa: E402

F32, I64 = np.float32, np.int64


def _model(nodes, shape, inits=None, opset=17, outputs=("y",)):
    """A graph of `nodes` reading input `x` of `shape`, with numpy `inits` as initializers."""
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)  # types the outputs (ORT needs them)


def _one(op, extra=(), shape=(1, 3, 6, 8), inits=None, opset=17, outputs=("y",), **attrs):
    return _model([helper.make_node(op, ["x", *extra], list(outputs), name="n", **attrs)], shape, inits, opset, outputs)


def _assert_replays(proto, shape, tolerance=1e-5):
    """The replay's outputs equal ONNX Runtime's (every output, integer ones exactly)."""
    probe = np.random.default_rng(3).standard_normal(shape).astype(F32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": probe})
    module = build_module(proto, tuple(shape))
    with torch.no_grad():
        got = module(torch.from_numpy(probe))
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(expected, got, strict=True):
        g = g.numpy()
        assert e.shape == g.shape
        if e.dtype.kind in "iub":
            np.testing.assert_array_equal(e, g.astype(e.dtype))
        else:
            np.testing.assert_allclose(g, e, atol=tolerance * max(1.0, float(np.abs(e).max())), rtol=0)
    # the traced module (what coremltools converts) computes the same
    traced = torch.jit.trace(module, torch.from_numpy(probe), check_trace=False)
    again = traced(torch.from_numpy(probe))
    again = again if isinstance(again, tuple) else (again,)
    for g, a in zip(got, again, strict=True):
        np.testing.assert_array_equal(g.numpy(), a.numpy())


# -- Resize -----------------------------------------------------------------------------------------------

_X = (1, 2, 5, 7)
_SCALES = {"up2": [1, 1, 2, 2], "down": [1, 1, 0.5, 0.5], "frac": [1, 1, 1.5, 1.7], "up3": [1, 1, 3, 3]}


def _resize(mode, transform, scales=None, sizes=None, opset=17, **attrs):
    inits = {"roi": np.zeros(0, F32)}
    inputs = ["roi", "", ""]
    if scales is not None:
        inits["scales"] = np.array(_SCALES[scales], F32)
        inputs[1] = "scales"
    else:
        inits["sizes"] = np.array(sizes, I64)
        inputs[2] = "sizes"
    return _one("Resize", inputs, _X, inits, opset, mode=mode, coordinate_transformation_mode=transform, **attrs)


RESIZES = {
    "nearest-asymmetric-floor-x2": _resize("nearest", "asymmetric", "up2", nearest_mode="floor"),
    "nearest-asymmetric-floor-x3": _resize("nearest", "asymmetric", "up3", nearest_mode="floor"),
    "nearest-half_pixel-down": _resize("nearest", "half_pixel", "down"),
    "nearest-half_pixel-frac": _resize("nearest", "half_pixel", "frac", nearest_mode="round_prefer_ceil"),
    "nearest-align_corners-sizes": _resize("nearest", "align_corners", sizes=[1, 2, 9, 4]),
    "nearest-asymmetric-ceil": _resize("nearest", "asymmetric", "frac", nearest_mode="ceil"),
    "nearest-pytorch_half_pixel": _resize("nearest", "pytorch_half_pixel", "up2"),
    "linear-half_pixel-x2": _resize("linear", "half_pixel", "up2"),
    "linear-half_pixel-down": _resize("linear", "half_pixel", "down"),
    "linear-pytorch_half_pixel-sizes": _resize("linear", "pytorch_half_pixel", sizes=[1, 2, 10, 3]),
    "linear-align_corners-x2": _resize("linear", "align_corners", "up2"),
    "linear-align_corners-sizes": _resize("linear", "align_corners", sizes=[1, 2, 8, 13]),
    "linear-asymmetric-frac": _resize("linear", "asymmetric", "frac"),
    "linear-half_pixel_symmetric": _resize("linear", "half_pixel_symmetric", "frac", opset=19),
    "linear-antialias-down": _resize("linear", "half_pixel", "down", opset=19, antialias=1),
    "cubic-half_pixel-x2": _resize("cubic", "half_pixel", "up2"),
    "cubic-align_corners-a": _resize("cubic", "align_corners", "frac", cubic_coeff_a=-0.5),
    "cubic-exclude_outside": _resize("cubic", "half_pixel", "down", exclude_outside=1),
    "linear-axes-sizes": _one(
        "Resize", ["", "", "sizes"], _X, {"sizes": np.array([9], I64)}, 18, mode="linear", axes=[3]
    ),
    "upsample-9": _model(
        [helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")], _X, {"s": np.array([1, 1, 2, 2], F32)}, 9
    ),
}


@pytest.mark.parametrize("case", sorted(RESIZES))
def test_resize_matches_onnx_runtime(case):
    _assert_replays(RESIZES[case], _X)


# -- conv, pooling, normalization ---------------------------------------------------------------------------

_RNG = np.random.default_rng(0)


def _w(*shape):
    return _RNG.standard_normal(shape).astype(F32)


_S = (1, 4, 6, 8)
CASES = {
    "conv-grouped": _one("Conv", ["w", "b"], _S, {"w": _w(6, 2, 3, 3), "b": _w(6)}, group=2, pads=[1, 1, 1, 1]),
    "conv-depthwise-dilated": _one("Conv", ["w"], _S, {"w": _w(4, 1, 3, 3)}, group=4, dilations=[2, 2]),
    "conv-asymmetric": _one("Conv", ["w"], _S, {"w": _w(3, 4, 3, 3)}, pads=[0, 1, 2, 0], strides=[2, 2]),
    "conv-same_lower": _one("Conv", ["w"], _S, {"w": _w(3, 4, 2, 2)}, auto_pad="SAME_LOWER", strides=[2, 2]),
    "convT-stride2": _one("ConvTranspose", ["w", "b"], _S, {"w": _w(4, 3, 2, 2), "b": _w(3)}, strides=[2, 2]),
    "convT-pads-outpad": _one(
        "ConvTranspose", ["w"], _S, {"w": _w(4, 3, 3, 3)}, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]
    ),
    "convT-asymmetric": _one(
        "ConvTranspose", ["w", "b"], _S, {"w": _w(4, 2, 4, 4), "b": _w(2)}, strides=[2, 2], pads=[1, 2, 2, 1]
    ),  # fmt: skip
    "convT-output_shape": _one(
        "ConvTranspose", ["w"], _S, {"w": _w(4, 2, 3, 3)}, strides=[2, 2], output_shape=[13, 16]
    ),
    "convT-same_upper-grouped": _one(
        "ConvTranspose", ["w"], _S, {"w": _w(4, 1, 3, 3)}, strides=[2, 2], auto_pad="SAME_UPPER", group=2
    ),
    "convT-dilated": _one("ConvTranspose", ["w"], _S, {"w": _w(4, 2, 3, 3)}, dilations=[2, 2]),
    "maxpool-ceil": _one("MaxPool", [], _S, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "maxpool-same_upper": _one("MaxPool", [], _S, kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    "avgpool-pads": _one("AveragePool", [], _S, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
    "layernorm-last": _one("LayerNormalization", ["s", "b"], (1, 5, 8), {"s": _w(8), "b": _w(8)}, axis=-1),
    "layernorm-chw": _one("LayerNormalization", ["s"], _S, {"s": _w(4, 6, 8)}, axis=1, epsilon=1e-6),
    "layernorm-broadcast": _one("LayerNormalization", ["s", "b"], _S, {"s": _w(1, 8), "b": _w(8)}, axis=-2),
    "instancenorm": _one("InstanceNormalization", ["s", "b"], _S, {"s": _w(4), "b": _w(4)}),
    "batchnorm": _one(
        "BatchNormalization", ["s", "b", "m", "v"], _S, {"s": _w(4), "b": _w(4), "m": _w(4), "v": np.ones(4, F32)}
    ),
    "lpnorm": _one("LpNormalization", [], _S, axis=1),
    "softmax-axis1": _one("Softmax", [], _S, axis=1),
    "softmax-axis1-opset11": _one("Softmax", [], _S, opset=11, axis=1),
    "logsoftmax-axis2": _one("LogSoftmax", [], _S, axis=2),
    "gemm-transB": _one("Gemm", ["w", "b"], (2, 8), {"w": _w(5, 8), "b": _w(5)}, transB=1, alpha=0.5, beta=2.0),
    "matmul-batched": _one("MatMul", ["w"], (1, 2, 5, 8), {"w": _w(1, 2, 8, 3)}),
    "matmul-3d-2d": _one("MatMul", ["w"], (1, 5, 8), {"w": _w(8, 3)}),
    "einsum-attention": _model(
        [helper.make_node("Einsum", ["x", "x"], ["y"], equation="bhid,bhjd->bhij")], (1, 2, 5, 8)
    ),
    "einsum-linear": _one("Einsum", ["w"], (1, 5, 8), {"w": _w(8, 3)}, equation="bnc,cd->bnd"),
    "gelu-20": _one("Gelu", [], _S, opset=20),
    "gelu-tanh-20": _one("Gelu", [], _S, opset=20, approximate="tanh"),
    "prelu": _one("PRelu", ["s"], _S, {"s": _w(4, 1, 1)}),
    "leakyrelu": _one("LeakyRelu", [], _S, alpha=0.2),
    "elu": _one("Elu", [], _S, alpha=0.7),
    "celu": _one("Celu", [], _S, alpha=1.3),
    "selu": _one("Selu", [], _S),
    "hardswish": _one("HardSwish", [], _S),
    "hardsigmoid": _one("HardSigmoid", [], _S, alpha=0.3, beta=0.4),
    "mish": _one("Mish", [], _S, opset=18),
    "thresholdedrelu": _one("ThresholdedRelu", [], _S, alpha=0.5),
    "clip-bounds": _one("Clip", ["lo", "hi"], _S, {"lo": np.array(-0.5, F32), "hi": np.array(0.7, F32)}),
    "clip-relu6": _one("Clip", ["lo", "hi"], _S, {"lo": np.array(0, F32), "hi": np.array(6, F32)}),
    "pow-2": _one("Pow", ["e"], _S, {"e": np.array(2.0, F32)}),
    "pow-tensor": _model([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Pow", ["a", "x"], ["y"])], _S),
    "sum-mean-min-max": _model(
        [
            helper.make_node("Sum", ["x", "c", "x"], ["s"]),
            helper.make_node("Mean", ["s", "x"], ["m"]),
            helper.make_node("Min", ["m", "c"], ["n"]),
            helper.make_node("Max", ["n", "x"], ["y"]),
        ],
        _S,
        {"c": _w(8)},
    ),
    "mod-fmod": _one("Mod", ["c"], _S, {"c": np.array(0.3, F32)}, fmod=1),
    "mod-int": _model(
        [
            helper.make_node("Mul", ["x", "ten"], ["m"]),
            helper.make_node("Cast", ["m"], ["i"], to=TensorProto.INT64),
            helper.make_node("Mod", ["i", "three"], ["r"]),
            helper.make_node("Mod", ["i", "three"], ["f"], fmod=1),
            helper.make_node("Sub", ["r", "f"], ["y"]),
        ],
        _S,
        {"ten": np.array(10.0, F32), "three": np.array(-3, I64)},
    ),
    "where-greater": _model(
        [helper.make_node("Greater", ["x", "c"], ["g"]), helper.make_node("Where", ["g", "x", "c"], ["y"])],
        _S,
        {"c": np.array(0.1, F32)},
    ),
}
for _op in ("Abs", "Ceil", "Cos", "Erf", "Exp", "Floor", "Neg", "Round", "Sigmoid", "Sign", "Sin", "Softplus",
            "Softsign", "Tanh", "Relu"):  # fmt: skip
    CASES[_op.lower()] = _one(_op, [], _S)
CASES["log-sqrt-reciprocal"] = _model(
    [
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Log", ["a"], ["l"]),
        helper.make_node("Sqrt", ["a"], ["s"]),
        helper.make_node("Reciprocal", ["s"], ["r"]),
        helper.make_node("Add", ["l", "r"], ["y"]),
    ],
    _S,
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnx_runtime(case):
    proto = CASES[case]
    _assert_replays(proto, [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim], 1e-4)


# -- shapes, indexing, reductions -----------------------------------------------------------------------------


def _ints(*values):
    return np.array(values, I64)


SHAPES = {
    "split-sizes": _one("Split", ["s"], _S, {"s": _ints(1, 3)}, outputs=("y", "z"), axis=1),
    "split-num_outputs-uneven": _one("Split", [], _S, opset=18, outputs=("y", "z", "w"), axis=3, num_outputs=3),
    "split-equal": _one("Split", [], _S, outputs=("y", "z"), axis=2),
    "slice-steps": _one(
        "Slice", ["s", "e", "a", "t"], _S, {"s": _ints(1, -1), "e": _ints(4, -9), "a": _ints(1, 3), "t": _ints(2, -2)}
    ),  # fmt: skip
    "slice-to-end": _one("Slice", ["s", "e", "a"], _S, {"s": _ints(-3), "e": _ints(2**62), "a": _ints(-1)}),
    "gather-scalar": _one("Gather", ["i"], (1, 5, 8), {"i": np.array(0, I64)}, axis=1),
    "gather-negative-2d": _one("Gather", ["i"], _S, {"i": _ints(-1, 0, 2, 1).reshape(2, 2)}, axis=3),
    "gather-elements": _one("GatherElements", ["i"], _S, {"i": np.zeros((1, 4, 6, 2), I64) - 1}, axis=3),
    "pad-constant-value": _one("Pad", ["p", "v"], _S, {"p": _ints(0, 0, 1, 2, 0, 0, 2, 1), "v": np.array(0.5, F32)}),
    "pad-reflect": _one("Pad", ["p"], _S, {"p": _ints(0, 0, 2, 1, 0, 0, 1, 2)}, mode="reflect"),
    "pad-edge": _one("Pad", ["p"], _S, {"p": _ints(0, 0, 1, 3, 0, 0, 2, 0)}, mode="edge"),
    "pad-wrap-19": _one("Pad", ["p"], _S, {"p": _ints(0, 1, 1, -1, 0, 0, 2, 2)}, opset=19, mode="wrap"),
    "pad-channels-constant": _one("Pad", ["p"], _S, {"p": _ints(0, 2, 0, 0, 0, 1, 0, 0)}),
    "pad-negative": _one("Pad", ["p"], _S, {"p": _ints(0, 0, -1, 2, 0, 0, 2, -3)}),
    "pad-axes-18": _one("Pad", ["p", "", "a"], _S, {"p": _ints(1, 2, 3, 4), "a": _ints(-1, 2)}, opset=18),
    "tile": _one("Tile", ["r"], _S, {"r": _ints(1, 2, 1, 3)}),
    "expand-both-ways": _one("Expand", ["s"], (4, 1, 8), {"s": _ints(2, 1, 3, 1)}),
    "reshape-zero-minus1": _one("Reshape", ["s"], _S, {"s": _ints(0, -1, 8)}),
    "flatten-2": _one("Flatten", [], _S, axis=2),
    "squeeze-unsqueeze": _model(
        [
            helper.make_node("Unsqueeze", ["x", "a"], ["u"]),
            helper.make_node("Squeeze", ["u", "b"], ["y"]),
        ],
        _S,
        {"a": _ints(0, -1), "b": _ints(1, -1)},
    ),
    "transpose": _one("Transpose", [], _S, perm=[0, 2, 3, 1]),
    "depth-to-space-dcr": _one("DepthToSpace", [], _S, blocksize=2),
    "depth-to-space-crd": _one("DepthToSpace", [], _S, blocksize=2, mode="CRD"),
    "space-to-depth": _one("SpaceToDepth", [], _S, blocksize=2),
    "reducemax-axes-18": _one("ReduceMax", ["a"], _S, {"a": _ints(1, -1)}, opset=18, keepdims=0),
    "reducesum-13": _one("ReduceSum", ["a"], _S, {"a": _ints(2)}, opset=13),
    "reducemean-attr-13": _one("ReduceMean", [], _S, opset=13, axes=[2, 3]),
    "reducemean-all": _one("ReduceMean", [], _S, opset=13, keepdims=0),
    "reducesum-noop-18": _one("ReduceSum", [], _S, opset=18, noop_with_empty_axes=1),
    "reduce-l2-prod-lse": _model(
        [
            helper.make_node("ReduceL2", ["x"], ["a"], axes=[1]),
            helper.make_node("ReduceProd", ["a"], ["b"], axes=[2]),
            helper.make_node("ReduceLogSumExp", ["x"], ["c"], axes=[1, 2]),
            helper.make_node("ReduceL1", ["x"], ["d"], axes=[1, 2]),
            helper.make_node("ReduceMin", ["x"], ["e"], axes=[1, 2]),
            helper.make_node("ReduceSumSquare", ["x"], ["f"], axes=[1, 2]),
            helper.make_node("Add", ["b", "c"], ["g"]),
            helper.make_node("Sub", ["d", "e"], ["h"]),
            helper.make_node("Sum", ["g", "h", "f"], ["y"]),
        ],
        _S,
        opset=13,
    ),
    "argmax": _one("ArgMax", [], _S, axis=1, keepdims=0),
    "topk-values-indices": _one("TopK", ["k"], _S, {"k": _ints(3)}, outputs=("y", "z"), axis=-1),
    "topk-smallest-axis1": _one("TopK", ["k"], _S, {"k": _ints(2)}, outputs=("y", "z"), axis=1, largest=0),
    "gather-by-topk": _model(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("TopK", ["m", "k"], ["v", "i"], axis=1),
            helper.make_node("Gather", ["x", "i"], ["y"], axis=1),
        ],
        _S,
        {"k": _ints(2)},
        opset=13,
    ),
    "cast-int-float": _model(
        [
            helper.make_node("Mul", ["x", "c"], ["m"]),
            helper.make_node("Cast", ["m"], ["i"], to=TensorProto.INT64),
            helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT),
        ],
        _S,
        {"c": np.array(10.0, F32)},
    ),
    "cumsum-exclusive-reverse": _one("CumSum", ["a"], _S, {"a": np.array(3, I64)}, exclusive=1, reverse=1),
    "concat-with-constant": _one("Concat", ["c"], _S, {"c": _w(1, 2, 6, 8)}, axis=1),
    "shape-arithmetic-folded": _model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i"], ["c"], axis=0),
            helper.make_node("Div", ["c", "two"], ["h"]),
            helper.make_node("Concat", ["one", "h", "minus"], ["t"], axis=0),
            helper.make_node("Reshape", ["x", "t"], ["r"]),
            helper.make_node(
                "ConstantOfShape", ["t2"], ["z"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])
            ),
            helper.make_node("Add", ["r", "z"], ["y"]),
        ],
        _S,
        {"i": _ints(1), "two": _ints(2), "one": _ints(1), "minus": _ints(-1), "t2": _ints(1, 2, 96)},
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(SHAPES))
def test_shape_and_index_op_matches_onnx_runtime(case):
    proto = SHAPES[case]
    _assert_replays(proto, [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim], 1e-4)


# -- refusals: predicted by inspect, raised by the build, naming the node --------------------------------------

REFUSED = {
    "resize-crop": (_resize("linear", "tf_crop_and_resize", "up2"), "tf_crop_and_resize"),
    "resize-aspect": (
        _one("Resize", ["", "", "s"], _X, {"s": _ints(4, 4)}, 18, axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
        "keep_aspect_ratio_policy",
    ),
    "reshape-computed": (
        _model(
            [
                helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
                helper.make_node("Cast", ["m"], ["c"], to=TensorProto.INT64),
                helper.make_node("Reshape", ["x", "c"], ["y"], name="n"),
            ],
            _S,
            opset=13,
        ),
        "computed from the image",
    ),
    "pad-reflect-channels": (_one("Pad", ["p"], _S, {"p": _ints(0, 1, 0, 0, 0, 1, 0, 0)}, mode="reflect"), "channel"),
    "maxpool-indices": (_one("MaxPool", [], _S, outputs=("y", "i"), kernel_shape=[2, 2]), "Indices"),
    "argmax-last": (_one("ArgMax", [], _S, select_last_index=1), "select_last_index"),
    "avgpool-asymmetric": (
        _one("AveragePool", [], _S, kernel_shape=[3, 3], pads=[0, 0, 1, 1], count_include_pad=0),
        "asymmetric",
    ),
    "dropout-mask": (_one("Dropout", [], _S, outputs=("y", "mask")), "mask"),
    "unknown-op": (_one("Hardmax", [], _S), "does not implement"),
    "conv-computed-weight": (
        _model([helper.make_node("Conv", ["x", "x"], ["y"], name="n")], (1, 1, 3, 3)),
        "weight is computed",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_variant_the_replay_cannot_take_is_refused_by_name(case):
    proto, reason = REFUSED[case]
    shape = tuple(d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim)
    predicted = get_target("ios-coreml").refusals(proto)
    assert [r.node for r in predicted] == ["n"] and reason in predicted[0].reason
    with pytest.raises(BuildError, match=f"node 'n': .*{reason}"):
        build_module(proto, shape)


def test_every_registered_op_runs_in_a_test_here():
    tested = {n.op_type for cases in (RESIZES, CASES, SHAPES) for m in cases.values() for n in m.graph.node}
    untested = REPLAY_OPS.ops - tested - {"Constant", "Identity", "Dropout", "Size", "Range", "Not", "And", "Or",
                                          "Xor", "Equal", "Less", "LessOrEqual", "GreaterOrEqual", "IsNaN",
                                          "ArgMin", "CastLike", "GlobalAveragePool", "GlobalMaxPool"}  # fmt: skip
    assert not untested, f"ops without a replay test: {sorted(untested)}"


def test_parameters_arrive_as_numpy_and_data_as_tensors():
    """The rule: an integer initializer read as data (Add of int64s) is a tensor; the replay never mixes."""
    proto = _model(
        [
            helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
            helper.make_node("Add", ["i", "c"], ["s"]),
            helper.make_node("Cast", ["s"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Sqrt", ["f"], ["q"]),
            helper.make_node("Gather", ["q", "g"], ["y"], axis=1),
        ],
        _S,
        {"c": np.array(7, I64), "g": _ints(-1)},
    )
    _assert_replays(proto, _S)


# what the replay emits must also be what coremltools 9 converts (movedim, celu, fmod, prod, circular or
# negative pads are not): the variants that emit something unusual, built for ios-coreml at fp16
CONVERTED = (
    "cubic-half_pixel-x2", "linear-antialias-down", "nearest-half_pixel-frac", "linear-axes-sizes",
    "convT-asymmetric", "convT-output_shape", "pad-negative", "pad-wrap-19", "pad-reflect", "celu", "mod-fmod",
    "reduce-l2-prod-lse", "einsum-attention", "gather-by-topk", "cumsum-exclusive-reverse", "depth-to-space-dcr",
)  # fmt: skip
_ALL = {**RESIZES, **CASES, **SHAPES}


@pytest.mark.parametrize("case", CONVERTED)
def test_replayed_op_converts_with_coremltools(case, tmp_path):
    pytest.importorskip("coremltools")
    from edgekit.model import Model

    artifact = get_target("ios-coreml").build(Model(_ALL[case]), tmp_path / "a", precision="fp16")
    validation = artifact.manifest["validation"]  # the replay Core ML converts, against ONNX Runtime FP32
    assert validation["max_abs_error"] <= 1e-4 * max(1.0, validation["reference_abs_max"])
