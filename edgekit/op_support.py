"""What an ONNX interpreter of ours takes, op by op and node by node, and how a refusal is worded.

Both translators (ONNX -> TensorFlow for android-tflite, ONNX -> torch for ios-coreml) keep one function per
ONNX op in an `OpTable`, registered by decorator, so the supported-op list is the functions. An op can also
register a `check`: a function of the node, its attributes and the graph's facts (static shapes, constant
values) that returns why this particular node cannot be taken (a grouped conv, a Softmax axis, a Resize mode)
or None. `OpTable.refusals` runs both on a whole graph, so `edgekit inspect -t TARGET` predicts exactly what
the build would refuse, naming op, node and reason, before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.onnx_toolbox import DEFAULT_DOMAINS, attrs, constant_value, node_label

OpFunction = Callable[..., Any]


@dataclass(frozen=True)
class Refusal:
    """One node a target cannot take, and why."""

    op: str
    node: str
    reason: str

    def text(self) -> str:
        return f"{self.op} node {self.node!r}: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"op": self.op, "node": self.node, "reason": self.reason}


def refusal_message(who: str, refusals: list[Refusal], advice: str = "", *, shown: int = 8) -> str:
    """`who` cannot take these nodes: the first `shown` by name with their reason, then how many more."""
    lines = [f"  - {r.text()}" for r in refusals[:shown]]
    if len(refusals) > shown:
        more = refusals[shown:]
        ops = ", ".join(sorted({r.op for r in more}))
        lines.append(f"  - and {len(more)} more node(s) ({ops})")
    text = f"{who} cannot take {len(refusals)} node(s) of this model:\n" + "\n".join(lines)
    return f"{text}\n{advice}" if advice else text


def refused_op_counts(refusals: Iterable[Refusal]) -> dict[str, int]:
    """Refusals counted per op type (what `edgekit inspect`'s table shows), sorted by op."""
    counts: dict[str, int] = {}
    for refusal in refusals:
        counts[refusal.op] = counts.get(refusal.op, 0) + 1
    return dict(sorted(counts.items()))


class GraphFacts:
    """A graph's static shapes (from ONNX shape inference) and constant values, for per-node checks."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(proto)
        except Exception:  # a model shape inference cannot read still gets its op checks, without shapes
            inferred = proto
        graph = inferred.graph
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        for value in (*graph.input, *graph.value_info, *graph.output):
            tensor_type = value.type.tensor_type
            if tensor_type.HasField("shape"):
                dims = tensor_type.shape.dim
                self.shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                value = constant_value(node)
                if value is not None:
                    self.consts[node.output[0]] = value
        for init in graph.initializer:
            self.shapes.setdefault(init.name, tuple(init.dims))

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        """The tensor's shape (None for an unknown dim), or None when its rank is unknown."""
        return self.shapes.get(name) if name else None

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def const(self, name: str) -> np.ndarray | None:
        """The tensor's value when it is an initializer or a Constant node's output."""
        return self.consts.get(name) if name else None


Check = Callable[[onnx.NodeProto, dict[str, Any], GraphFacts], "str | None"]


class OpTable:
    """The per-op functions of one ONNX interpreter, registered by decorator: what it supports is what is registered.

        table = OpTable("the TFLite converter")

        @table.register("Relu")
        def relu(ctx, inputs, attrs): ...

        @table.register("Conv", check=conv_check)  # conv_check(node, attrs, facts) -> reason or None
        def conv(ctx, inputs, attrs): ...

    `walk_ops` are ops the interpreter's walk handles itself, without a function (Constant); they count as
    supported. The function's signature is the interpreter's own business.
    """

    def __init__(self, owner: str, *, walk_ops: Iterable[str] = ()) -> None:
        self.owner = owner  # who refuses, in messages: "the TFLite converter"
        self.walk_ops = frozenset(walk_ops)
        self.functions: dict[str, OpFunction] = {}
        self.checks: dict[str, Check] = {}

    def register(self, *op_types: str, check: Check | None = None) -> Callable[[OpFunction], OpFunction]:
        """Decorator: `function` computes these ONNX ops (default domain); `check` says which nodes it cannot."""

        def add(function: OpFunction) -> OpFunction:
            for op_type in op_types:
                if op_type in self.functions or op_type in self.walk_ops:
                    raise ValueError(f"{self.owner}: op {op_type} is registered twice")
                self.functions[op_type] = function
                if check is not None:
                    self.checks[op_type] = check
            return function

        return add

    @property
    def ops(self) -> frozenset[str]:
        """Every op this interpreter takes: the registered ones and those its walk handles."""
        return frozenset(self.functions) | self.walk_ops

    def lookup(self, node: onnx.NodeProto, error: type[Exception], advice: str = "") -> OpFunction:
        """The function for `node`; `error` naming the op and the node (and what it takes) when there is none."""
        function = self.functions.get(node.op_type)
        if function is None:
            message = (
                f"{self.owner} cannot take op {node.op_type} (node {node_label(node)!r}); "
                f"it takes: {', '.join(sorted(self.ops))}"
            )
            raise error(f"{message}. {advice}" if advice else message)
        return function

    def unsupported(self, graph: onnx.GraphProto) -> list[str]:
        """The op types in `graph` (sorted, once each) this interpreter does not take, other domains included."""
        return sorted({n.op_type for n in graph.node if n.op_type not in self.ops or n.domain not in DEFAULT_DOMAINS})

    def refusal(self, node: onnx.NodeProto, facts: GraphFacts) -> Refusal | None:
        """Why this interpreter cannot take `node`, or None."""
        if node.domain not in DEFAULT_DOMAINS:
            return Refusal(node.op_type, node_label(node), f"op of domain {node.domain!r}: {self.owner} takes ONNX ops")
        if node.op_type not in self.ops:
            return Refusal(node.op_type, node_label(node), f"{self.owner} does not implement this op")
        check = self.checks.get(node.op_type)
        reason = check(node, attrs(node), facts) if check is not None else None
        return Refusal(node.op_type, node_label(node), reason) if reason else None

    def refusals(self, proto: onnx.ModelProto, facts: GraphFacts | None = None) -> list[Refusal]:
        """Every node of the main graph this interpreter cannot take, in graph order."""
        facts = facts or GraphFacts(proto)
        found = (self.refusal(node, facts) for node in proto.graph.node)
        return [refusal for refusal in found if refusal is not None]
