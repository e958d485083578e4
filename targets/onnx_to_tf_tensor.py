"""The TFLite translator's data-movement ops on activations: Gather (a ViT's class token `x[:, 0]`), Pad in its
three modes, Tile, Expand, Cast and TopK (registered into onnx_to_tf_ops.OPS). On constants these ops are
folded before (edgekit/onnx_fold.py, targets/onnx_to_tf_folds.py); here they meet activations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from edgekit.op_support import GraphFacts
from edgekit.targets.onnx_to_tf_ops import NCHW_TO_NHWC, OPS, Value, computed_input, decoded, laid_out, tf_axis

if TYPE_CHECKING:
    from edgekit.targets.onnx_to_tf import Translator


def _gather_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    data, indices = facts.const(node.input[0]), facts.const(node.input[1])
    if data is None and indices is None:
        return "indices computed from the data itself (TFLite's GATHER takes them, the translator does not)"
    return None


@OPS.register("Gather", check=_gather_check)
def _gather(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """A scalar index: one STRIDED_SLICE that drops the axis (a ViT's class token); an index list on an
    activation, or computed indices into a constant table (an embedding): GATHER."""
    tf = ctx.tf
    indices = ctx.const(ins[1])
    if indices is None:  # a constant table, computed indices
        table = ctx.const(ins[0])
        index = ctx.nchw(ctx.values[ins[1]])
        axis = attrs.get("axis", 0) % table.ndim
        return laid_out(ctx, tf.gather(tf.constant(table), tf.cast(index, tf.int32), axis=axis))
    x = ctx.values[ins[0]]
    axis = attrs.get("axis", 0) % len(x.tensor.shape)
    size = int(x.tensor.shape[tf_axis(x, axis)])
    indices = np.where(indices < 0, indices + size, indices).astype(np.int32)
    if indices.ndim == 0:
        data = ctx.nchw(x)
        begin, end = [0] * len(data.shape), [int(d) for d in data.shape]
        begin[axis], end[axis] = int(indices), int(indices) + 1
        y = tf.strided_slice(data, begin, end, [1] * len(begin), shrink_axis_mask=1 << axis)
        return laid_out(ctx, y)
    if indices.ndim == 1 and x.nhwc:
        return Value(tf.gather(x.tensor, indices, axis=tf_axis(x, axis)), True)
    return laid_out(ctx, tf.gather(ctx.nchw(x), indices, axis=axis))


@OPS.register("Cast")
def _cast(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
    return Value(ctx.tf.cast(x.tensor, ctx.tf.as_dtype(dtype)), x.nhwc)


def _expand_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    return computed_input(node, facts, range(1, 2), "target shape")


@OPS.register("Expand", check=_expand_check)
def _expand(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """Broadcast both ways (a 1 keeps the input's size): a MUL by ones of the broadcast shape."""
    x = ctx.nchw(ctx.values[ins[0]])
    shape = [int(d) for d in ctx.const(ins[1])]
    rank = max(len(shape), len(x.shape))
    ones = np.ones([*([1] * (rank - len(shape))), *shape], np.float32)
    return laid_out(ctx, x * ctx.tf.constant(ones.astype(x.dtype.as_numpy_dtype)))


def _pad_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    if reason := computed_input(node, facts, range(1, 4), "pads, value or axes"):
        return reason
    pads = attrs.get("pads", facts.const(node.input[1]) if len(node.input) > 1 else None)
    if pads is not None and min(int(p) for p in pads) < 0:
        return "negative pads (a crop)"
    mode = decoded(attrs.get("mode", "constant"))
    if mode not in ("constant", "reflect", "edge"):
        return f"mode {mode!r}"
    return None


def _pad_widths(ctx: Translator, ins: list[str], attrs: dict, rank: int) -> list[list[int]]:
    """[[before, after]] per ONNX axis."""
    pads = attrs.get("pads", ctx.const(ins[1]) if len(ins) > 1 else None)
    pads = [int(p) for p in pads]
    axes = ctx.const(ins[3]) if len(ins) > 3 and ins[3] else None
    axes = range(rank) if axes is None else [int(a) % rank for a in axes]
    widths = [[0, 0] for _ in range(rank)]
    count = len(pads) // 2
    for i, axis in enumerate(axes):
        widths[axis] = [pads[i], pads[i + count]]
    return widths


@OPS.register("Pad", check=_pad_check)
def _pad(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    """constant: PAD/PADV2; reflect: MIRROR_PAD; edge: the border row/column repeated (SLICE, TILE,
    CONCATENATION), as TFLite has no edge mode."""
    tf = ctx.tf
    x = ctx.values[ins[0]]
    rank = len(x.tensor.shape)
    widths = _pad_widths(ctx, ins, attrs, rank)
    if x.nhwc:
        widths = [widths[a] for a in NCHW_TO_NHWC]
    mode = decoded(attrs.get("mode", "constant"))
    if mode == "constant":
        value = ctx.const(ins[2]) if len(ins) > 2 and ins[2] else None
        fill = 0.0 if value is None or value.size == 0 else value.reshape(-1)[0].item()
        return Value(tf.pad(x.tensor, widths, constant_values=fill), x.nhwc)
    if mode == "reflect":
        return Value(tf.pad(x.tensor, widths, mode="REFLECT"), x.nhwc)
    y = x.tensor
    for axis, (before, after) in enumerate(widths):
        size = int(y.shape[axis])
        parts = []
        if before:
            parts.append(_repeat_edge(tf, y, axis, 0, before))
        parts.append(y)
        if after:
            parts.append(_repeat_edge(tf, y, axis, size - 1, after))
        y = tf.concat(parts, axis) if len(parts) > 1 else y
    return Value(y, x.nhwc)


def _repeat_edge(tf: Any, y: Any, axis: int, index: int, count: int) -> Any:
    begin, size = [0] * len(y.shape), [int(d) for d in y.shape]
    begin[axis], size[axis] = index, 1
    multiples = [1] * len(y.shape)
    multiples[axis] = count
    return tf.tile(tf.slice(y, begin, size), multiples)


def _tile_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    return computed_input(node, facts, range(1, 2), "repeats")


@OPS.register("Tile", check=_tile_check)
def _tile(ctx: Translator, ins: list[str], attrs: dict) -> Value:
    x = ctx.values[ins[0]]
    repeats = [int(r) for r in ctx.const(ins[1])]
    if x.nhwc:
        repeats = [repeats[a] for a in NCHW_TO_NHWC]
    return Value(ctx.tf.tile(x.tensor, repeats), x.nhwc)


def _topk_check(node: Any, attrs: dict, facts: GraphFacts) -> str | None:
    if reason := computed_input(node, facts, range(1, 2), "k"):
        return reason
    rank = facts.rank(node.input[0])
    axis = attrs.get("axis", -1)
    if rank is not None and axis % rank not in (rank - 1, 1 if rank == 4 else rank - 1):
        return f"axis {axis} of a rank-{rank} tensor (TFLite's TOPK_V2 takes the last axis)"
    if not attrs.get("sorted", 1):
        return "sorted=0"
    return None


@OPS.register("TopK", check=_topk_check)
def _topk(ctx: Translator, ins: list[str], attrs: dict) -> list[Value]:
    """TOPK_V2 over the last TF axis (ONNX's last axis, or the channels of an NHWC activation); smallest-k
    as the top-k of the negation; indices cast to int64 as ONNX has them."""
    tf = ctx.tf
    x = ctx.values[ins[0]]
    rank = len(x.tensor.shape)
    axis = tf_axis(x, attrs.get("axis", -1))
    if axis != rank - 1:
        x = Value(ctx.nchw(x), False)
        axis = tf_axis(x, attrs.get("axis", -1))
    if axis != rank - 1:
        raise NotImplementedError("TopK over an axis other than the last")
    k = int(ctx.const(ins[1]).reshape(-1)[0])
    largest = bool(attrs.get("largest", 1))
    values, indices = tf.math.top_k(x.tensor if largest else -x.tensor, k=k, sorted=True)
    return [Value(values if largest else -values, x.nhwc), Value(tf.cast(indices, tf.int64), x.nhwc)]
