"""Small, shared readers and rewriters of ONNX graphs: the one place every pass and translator takes them from.

Calibration, the QDQ writers, `edgekit inspect` and the target translators (ONNX -> TensorFlow, ONNX -> torch)
all need a node's attributes, a tensor's consumers, a Constant node's value and the model input's fixed
shape; each used to carry its own copy, and the copies disagreed (one input fixer knew NHWC, the other not).
The translators' per-op tables live in edgekit/op_support.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import ModelError

DEFAULT_DOMAINS = ("", "ai.onnx")
SHAPE_OPS = frozenset({"Shape", "Size"})  # read a tensor's shape, never its values
IMAGE_CHANNELS = (1, 3)  # a rank-4 axis of this size next to two large ones is the channel axis


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (ints, floats, lists, bytes, tensors, graphs)."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def default_opset(proto: onnx.ModelProto, missing: int | None = None) -> int | None:
    """The version of the default ONNX domain the model imports (`missing` when it imports none)."""
    return next((o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS), missing)


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """For every tensor name, the nodes of `graph` that read it (in graph order)."""
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                readers[name].append(node)
    return readers


def drop_nodes(graph: onnx.GraphProto, removed: set[int]) -> None:
    """Remove the nodes whose id() is in `removed` (the caller holds those node objects, so the ids stay valid)."""
    if removed:
        kept = [node for node in graph.node if id(node) not in removed]
        del graph.node[:]
        graph.node.extend(kept)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads (after a rewrite left them behind)."""
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


_SCALAR_ATTRIBUTES = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The array a default-domain Constant node produces; None for any other node and for string or sparse
    constants (which no numeric pass can use)."""
    if node.op_type != "Constant" or node.domain not in DEFAULT_DOMAINS:
        return None
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in _SCALAR_ATTRIBUTES:
            value = onnx.helper.get_attribute_value(attribute)
            dtype = _SCALAR_ATTRIBUTES[attribute.name]
            return np.asarray(list(value) if attribute.name.endswith("s") else value, dtype)
    return None


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's real inputs: graph inputs that are not initializers (old exporters list weights as inputs)."""
    initializers = {init.name for init in proto.graph.initializer}
    return [value for value in proto.graph.input if value.name not in initializers]


def image_layout(shape: list[int | None] | tuple[int | None, ...], hint: str | None = None) -> str | None:
    """ "NCHW" or "NHWC" for a rank-4 image shape (None for other ranks): the axis of 1 or 3 channels decides;
    when both or neither look like channels, `hint` (e.g. the preprocess layout) or NCHW."""
    if len(shape) != 4:
        return None
    first, last = shape[1] in IMAGE_CHANNELS, shape[3] in IMAGE_CHANNELS
    if last and not first:
        return "NHWC"
    if first and not last:
        return "NCHW"
    return (hint or "NCHW").upper()


def fixed_input_shape(
    proto: onnx.ModelProto, resize: list[int] | tuple[int, int] | None = None, *, layout: str | None = None
) -> tuple[int, ...]:
    """The single input's shape, fixed: a free batch becomes 1 and free height/width come from `resize`
    ([height, width], the preprocess resize), placed by the input's layout (NCHW or NHWC, see `image_layout`).
    The shape keeps the model's own axis order. Any other free axis is a ModelError that says what to do."""
    inputs = graph_inputs(proto)
    if len(inputs) != 1:
        raise ModelError(f"the model must have exactly one input; this one has {len(inputs)}")
    value = inputs[0]
    dims = value.type.tensor_type.shape.dim
    shape: list[int | None] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if shape and shape[0] is None:
        shape[0] = 1
    if len(shape) == 4 and None in shape[1:]:
        h_axis, w_axis = (1, 2) if image_layout(shape, layout) == "NHWC" else (2, 3)
        if resize is None and (shape[h_axis] is None or shape[w_axis] is None):
            raise ModelError(
                f"input {value.name!r} has free dimensions {_named(shape)}; a device needs fixed sizes: set the "
                "model's preprocess resize [height, width] (e.g. --preprocess '{\"resize\": [224, 224]}') or export "
                "it with fixed sizes"
            )
        if resize is not None:
            shape[h_axis] = shape[h_axis] or int(resize[0])
            shape[w_axis] = shape[w_axis] or int(resize[1])
    if any(d is None for d in shape):
        raise ModelError(
            f"input {value.name!r} has a free dimension that cannot be fixed from the preprocessing: {_named(shape)}; "
            "export the model with fixed sizes"
        )
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


def _named(shape: list[int | None]) -> list[int | str]:
    return [d if d is not None else "?" for d in shape]


def node_label(node: onnx.NodeProto) -> str:
    """How messages name a node: its name, or its first output when it has none."""
    return node.name or (node.output[0] if node.output else node.op_type)
