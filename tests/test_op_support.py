"""The op tables both translators register their per-op functions (and per-node checks) in, and refusals."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import ModelError
from edgekit.op_support import GraphFacts, OpTable, Refusal, refusal_message, refused_op_counts


def _model(input_shape, nodes=(), inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(list(nodes), "g", [x], [y], initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_op_table_registers_looks_up_and_names_what_it_lacks():
    table = OpTable("the test interpreter", walk_ops=("Constant",))

    @table.register("Relu", "LeakyRelu")
    def relu(ctx, inputs, attrs):
        return "relu"

    assert table.ops == {"Constant", "Relu", "LeakyRelu"}
    assert table.lookup(helper.make_node("LeakyRelu", ["x"], ["y"]), ModelError) is relu
    with pytest.raises(
        ModelError,
        match=r"the test interpreter cannot take op Erf \(node 'e'\); it takes: Constant, "
        r"LeakyRelu, Relu\. Try another",
    ):
        table.lookup(helper.make_node("Erf", ["x"], ["y"], name="e"), ModelError, "Try another")
    graph = _model(
        [1, 3, 8, 8],
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Relu", ["r"], ["c"], domain="custom"),
            helper.make_node("Erf", ["c"], ["y"]),
        ],
    ).graph
    assert table.unsupported(graph) == ["Erf", "Relu"]  # a Relu of another domain is not ours
    with pytest.raises(ValueError, match="registered twice"):
        table.register("Relu")(relu)


def _softmax_last_axis_only(node, attrs, facts):
    rank = facts.rank(node.input[0])
    axis = attrs.get("axis", -1)
    return None if rank is None or axis in (-1, rank - 1) else f"Softmax on axis {axis} of a rank-{rank} tensor"


def test_refusals_name_op_node_and_reason_from_checks_and_missing_ops():
    table = OpTable("the test interpreter")
    table.register("Softmax", check=_softmax_last_axis_only)(lambda ctx, inputs, attrs: None)
    table.register("Add")(lambda ctx, inputs, attrs: None)
    proto = _model(
        [1, 3, 8, 8],
        [
            helper.make_node("Softmax", ["x"], ["s1"], name="last", axis=-1),
            helper.make_node("Softmax", ["s1"], ["s2"], name="chan", axis=1),
            helper.make_node("Add", ["s2", "k"], ["a"]),
            helper.make_node("Erf", ["a"], ["y"], name="erf"),
        ],
        [numpy_helper.from_array(__import__("numpy").ones((1,), "float32"), "k")],
    )
    facts = GraphFacts(proto)
    assert facts.shape("s2") == (1, 3, 8, 8) and facts.rank("k") == 1 and facts.const("k").tolist() == [1.0]
    refusals = table.refusals(proto, facts)
    assert refusals == [
        Refusal("Softmax", "chan", "Softmax on axis 1 of a rank-4 tensor"),
        Refusal("Erf", "erf", "the test interpreter does not implement this op"),
    ]
    assert refused_op_counts(refusals) == {"Erf": 1, "Softmax": 1}
    message = refusal_message("target t", refusals * 5, "Export it otherwise.", shown=3)
    assert message.startswith("target t cannot take 10 node(s) of this model:\n  - Softmax node 'chan': Softmax")
    assert "  - and 7 more node(s) (Erf, Softmax)" in message and message.endswith("Export it otherwise.")
