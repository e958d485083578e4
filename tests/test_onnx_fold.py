"""Shape arithmetic folded at the build shape: what a dynamic export (YOLO's anchor grid, ViT reshapes) needs
before a fixed-shape converter reads it."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.onnx_fold import fold_at_shape

torch = pytest.importorskip("torch")


class _GridHead(torch.nn.Module):
    """A detector-like head: an anchor grid from the feature map's shape, and a reshape from it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.conv(x)
        b, c, h, w = y.shape
        gy, gx = torch.meshgrid(
            torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
        )
        grid = torch.stack((gx, gy), 0).expand(b, 2, h, w)
        return torch.cat((y[:, :2] + grid, y[:, 2:]), 1).reshape(b, c, h * w)


def _dynamic_export() -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        _GridHead().eval(),
        torch.zeros(1, 3, 32, 32),
        buffer,
        opset_version=17,
        input_names=["images"],
        output_names=["out"],
        dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}, "out": {0: "b", 2: "n"}},
        dynamo=False,
    )
    return onnx.load_from_string(buffer.getvalue())


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_dynamic_export_folds_to_its_data_flow_and_computes_the_same():
    proto = _dynamic_export()
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Shape"] and (ops["Range"] or ops["Expand"] or ops["ConstantOfShape"])
    folded = fold_at_shape(proto, (1, 3, 48, 64))
    left = Counter(n.op_type for n in folded.graph.node)
    for op in ("Shape", "Gather", "Range", "Expand", "ConstantOfShape", "Constant", "Unsqueeze"):
        assert op not in left, op
    assert left["Conv"] == 1
    kept = {o for n in folded.graph.node for o in n.output}
    assert kept <= {o for n in proto.graph.node for o in n.output}  # every surviving tensor keeps its name
    dims = [d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 48, 64]
    assert [d.dim_value for d in folded.graph.output[0].type.tensor_type.shape.dim] == [1, 4, 24 * 32]
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(proto, x), atol=1e-5)


def test_quantization_boundaries_stay_and_wrong_rank_is_refused():
    weight = numpy_helper.from_array(np.arange(4, dtype=np.int8).reshape(2, 2), "w_q")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "s"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2])],
        initializer=[weight, scale],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded = fold_at_shape(proto, (3, 2))
    assert [n.op_type for n in folded.graph.node] == ["DequantizeLinear", "MatMul"]  # the runtime fuses these
    with pytest.raises(ValueError, match="rank 2"):
        fold_at_shape(proto, (1, 3, 2))


def test_dynamic_export_builds_for_android_tflite_at_its_preprocess_size(tmp_path):
    pytest.importorskip("tensorflow")
    from edgekit import build
    from edgekit.inspect import inspect_model
    from edgekit.model import Model

    model = Model(_dynamic_export(), preprocess={"resize": [48, 64]})
    assert inspect_model(model, targets=["android-tflite"]).unsupported["android-tflite"] == {}
    artifact = build(model, "android-tflite", tmp_path / "a")
    assert artifact.manifest["inputs"][0]["shape"] == [1, 48, 64, 3]
    assert artifact.manifest["validation"]["max_abs_error"] < 1e-4
    unsized = Model(_dynamic_export())
    refused = inspect_model(unsized, targets=["android-tflite"]).refusals["android-tflite"]
    assert refused[0]["op"] == "input" and "free dimensions" in refused[0]["reason"]
