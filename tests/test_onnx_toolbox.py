"""The shared ONNX toolbox: attributes, consumers, Constant values, the fixed, layout-aware input shape and the
op tables both translators register their per-op functions in."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import ModelError
from edgekit.onnx_toolbox import (
    attrs,
    constant_value,
    consumers,
    default_opset,
    drop_unused_initializers,
    fixed_input_shape,
    image_layout,
)


def _model(input_shape, nodes=(), inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = list(nodes) or [helper.make_node("Relu", ["x"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], list(inits)))


def test_attrs_and_consumers():
    relu = helper.make_node("Relu", ["x"], ["r"])
    conv = helper.make_node("Conv", ["r", "w"], ["y"], kernel_shape=[3, 3], group=2)
    graph = _model([1, 3, 8, 8], [relu, conv]).graph
    assert attrs(conv) == {"kernel_shape": [3, 3], "group": 2}
    readers = consumers(graph)
    assert [n.op_type for n in readers["r"]] == ["Conv"] and [n.op_type for n in readers["x"]] == ["Relu"]
    assert "y" not in readers


def test_drop_unused_initializers_keeps_what_nodes_read():
    used = numpy_helper.from_array(np.zeros(3, np.float32), "w")
    unused = numpy_helper.from_array(np.zeros(3, np.float32), "stale")
    graph = _model([1, 3], [helper.make_node("Add", ["x", "w"], ["y"])], [used, unused]).graph
    drop_unused_initializers(graph)
    assert [i.name for i in graph.initializer] == ["w"]


def test_constant_value_reads_every_numeric_form():
    tensor = helper.make_node("Constant", [], ["a"], value=numpy_helper.from_array(np.arange(4, dtype=np.int64)))
    floats = helper.make_node("Constant", [], ["b"], value_floats=[1.5, 2.5])
    one_int = helper.make_node("Constant", [], ["c"], value_int=7)
    text = helper.make_node("Constant", [], ["d"], value_string="hello")
    assert constant_value(tensor).tolist() == [0, 1, 2, 3]
    assert constant_value(floats).dtype == np.float32 and constant_value(floats).tolist() == [1.5, 2.5]
    assert constant_value(one_int).tolist() == 7 and constant_value(one_int).dtype == np.int64
    assert constant_value(text) is None
    assert constant_value(helper.make_node("Relu", ["x"], ["y"])) is None


@pytest.mark.parametrize(
    ("shape", "resize", "expected"),
    [
        ([1, 3, 224, 224], None, (1, 3, 224, 224)),
        (["batch", 3, "h", "w"], [48, 192], (1, 3, 48, 192)),
        (["batch", "h", "w", 3], [48, 192], (1, 48, 192, 3)),  # channel-last: height and width at axes 1 and 2
        (["batch", 10], None, (1, 10)),
    ],
)
def test_fixed_input_shape_places_resize_by_layout(shape, resize, expected):
    assert fixed_input_shape(_model(shape), resize) == expected


def test_fixed_input_shape_says_what_to_do():
    with pytest.raises(ModelError, match="resize"):
        fixed_input_shape(_model(["batch", 3, "h", "w"]), None)
    with pytest.raises(ModelError, match="export the model with fixed sizes"):
        fixed_input_shape(_model(["batch", "n", 4]), None)


def test_image_layout():
    assert image_layout([1, 3, 224, 224]) == "NCHW"
    assert image_layout([1, 224, 224, 3]) == "NHWC"
    assert image_layout([1, 3, 5, 3], "nhwc") == "NHWC"  # ambiguous: the hint decides
    assert image_layout([1, 10]) is None


def test_tflite_takes_a_channel_last_input_as_it_is_instead_of_transposing_it_twice():
    from edgekit.targets.onnx_to_tf import channel_last, static_input_shape

    assert static_input_shape(_model(["b", 3, "h", "w"]), (32, 48)) == (1, 3, 32, 48)
    assert static_input_shape(_model(["b", "h", "w", 3]), (32, 48)) == (1, 32, 48, 3)
    assert channel_last((1, 224, 224, 3)) and not channel_last((1, 3, 224, 224))


def test_tflite_op_list_is_its_registered_functions():
    """TFLITE_OPS (ONNX op -> TFLite builtins, for the NNAPI report) cannot drift from what the translator takes."""
    from edgekit.targets import onnx_to_tf

    assert set(onnx_to_tf.TFLITE_OPS) == onnx_to_tf.SUPPORTED_OPS == onnx_to_tf.OPS.ops
    assert onnx_to_tf.FOLDS.ops <= onnx_to_tf.SUPPORTED_OPS  # every folded op also has a TF function


def test_translators_import_without_torch_or_tensorflow():
    """Both translators load their framework on first use, so listing targets stays light."""
    code = (
        "import sys, edgekit.targets.coreml_onnx, edgekit.targets.onnx_to_tf; "
        "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_default_opset_reads_the_default_domain_only():
    from onnx import helper

    graph = helper.make_graph([], "g", [], [])
    ms = helper.make_opsetid("com.microsoft", 1)
    both = helper.make_model(graph, opset_imports=[ms, helper.make_opsetid("", 18)])
    assert default_opset(both) == 18
    custom = helper.make_model(graph, opset_imports=[ms])
    assert default_opset(custom) is None and default_opset(custom, 13) == 13
