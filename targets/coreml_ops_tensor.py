"""Replay ops that move, index and reduce tensors (ios-coreml's ONNX-to-torch route): shapes, slicing,
gathering, padding, tiling, reductions, TopK and Einsum. Registered in `REPLAY_OPS` (targets/coreml_ops.py) on
import; shape and index inputs are parameters (numpy, initializers of the folded graph), data inputs tensors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.op_support import GraphFacts
from edgekit.targets.coreml_ops import ReplayCall, decoded, dims, given, ints, padded_or_cropped, replay_op

# -- shapes --------------------------------------------------------------------------------------------


@replay_op("Shape")
def _shape(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """A static shape (the replay runs at one input shape): a constant of the trace."""
    shape = dims(args[0])
    return ctx.torch.tensor(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], dtype=ctx.torch.int64)


@replay_op("Size")
def _size(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.tensor(int(np.prod(list(dims(args[0])))), dtype=ctx.torch.int64)


@replay_op("Reshape", params=(1,))
def _reshape(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x, shape = args[0], ints(args[1])
    shape = [dims(x)[i] if s == 0 and not attrs.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return ctx.torch.reshape(x, shape)


@replay_op("Flatten")
def _flatten(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axis = attrs.get("axis", 1) % max(x.dim(), 1) if attrs.get("axis", 1) != x.dim() else x.dim()
    return ctx.torch.reshape(x, (int(np.prod(list(dims(x)[:axis]))), -1))


def _axes(args: list[Any], attrs: dict) -> list[int] | None:
    """Axes from the attribute (older opsets) or the input (opset 13+), None when absent."""
    if "axes" in attrs:
        return list(attrs["axes"])
    return ints(args[1]) if given(args, 1) else None


@replay_op("Squeeze", params=(1,))
def _squeeze(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axes = _axes(args, attrs)
    if axes is None:
        return ctx.torch.reshape(x, [d for d in dims(x) if d != 1])
    drop = {a % x.dim() for a in axes}
    return ctx.torch.reshape(x, [d for i, d in enumerate(dims(x)) if i not in drop])


@replay_op("Unsqueeze", params=(1,))
def _unsqueeze(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axes = _axes(args, attrs) or []
    rank = x.dim() + len(axes)
    shape = list(dims(x))
    for axis in sorted(a % rank for a in axes):
        shape.insert(axis, 1)
    return ctx.torch.reshape(x, shape)


@replay_op("Transpose")
def _transpose(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    return x.permute(*attrs["perm"]) if "perm" in attrs else x.permute(*reversed(range(x.dim())))


@replay_op("Concat")
def _concat(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    parts = [v for v in args if v is not None and v.numel() > 0] or [args[0]]
    return ctx.torch.cat(parts, dim=attrs["axis"])


@replay_op("Expand", params=(1,))
def _expand(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """ONNX Expand broadcasts both ways: the result has the broadcast of the input's and the given shape."""
    x = args[0]
    target = np.broadcast_shapes(tuple(dims(x)), tuple(ints(args[1])))
    if x.dim() < len(target):
        x = ctx.torch.reshape(x, (1,) * (len(target) - x.dim()) + tuple(dims(x)))
    return x.expand(*target)


@replay_op("Tile", params=(1,))
def _tile(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return args[0].repeat(*ints(args[1]))


def _fill_value(ctx: ReplayCall, attrs: dict) -> tuple[float | int, Any]:
    value = attrs.get("value")
    array = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.zeros(1, np.float32)
    if array.dtype.kind == "f":
        return float(array.reshape(-1)[0]), ctx.torch.float32
    return array.reshape(-1)[0].item(), ctx.torch.bool if array.dtype.kind == "b" else ctx.torch.int64


@replay_op("ConstantOfShape", params=(0,))
def _constant_of_shape(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    value, dtype = _fill_value(ctx, attrs)
    return ctx.torch.full(ints(args[0]), value, dtype=dtype)


@replay_op("Range", params=(0, 1, 2))
def _range(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    start, limit, delta = (np.asarray(a).reshape(-1)[0].item() for a in args[:3])
    dtype = ctx.torch.float32 if np.asarray(args[0]).dtype.kind == "f" else ctx.torch.int64
    return ctx.torch.arange(start, limit, delta, dtype=dtype)


# -- slicing and gathering ---------------------------------------------------------------------------------


def _slice_bounds(args: list[Any], attrs: dict) -> tuple[list[int], list[int], list[int] | None, list[int] | None]:
    if "starts" in attrs:  # opset < 10: attributes
        return list(attrs["starts"]), list(attrs["ends"]), attrs.get("axes"), None
    axes = ints(args[3]) if given(args, 3) else None
    steps = ints(args[4]) if given(args, 4) else None
    return ints(args[1]), ints(args[2]), axes, steps


def _slice_indices(size: int, start: int, end: int, step: int) -> range:
    """The indices an ONNX Slice takes along one axis of `size` (the spec's clamping, either direction)."""
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    if step > 0:
        return range(max(0, min(size, start)), max(0, min(size, end)), step)
    return range(max(-1, min(size - 1, start)), max(-1, min(size - 1, end)), step)


@replay_op("Slice", params=(1, 2, 3, 4))
def _slice(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """Python slicing for positive steps; an index_select of the taken indices for negative ones."""
    x = args[0]
    starts, ends, axes, steps = _slice_bounds(args, attrs)
    axes = [a % x.dim() for a in axes] if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    reversed_axes = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        taken = _slice_indices(int(dims(x)[axis]), start, end, step)
        if step > 0:
            index[axis] = slice(taken.start, max(taken.start, taken.stop), step)
        else:
            reversed_axes.append((axis, list(taken)))
    y = x[tuple(index)]
    for axis, picked in reversed_axes:
        y = ctx.torch.index_select(y, axis, ctx.torch.tensor(picked, dtype=ctx.torch.int64))
    return y


@replay_op("Split", params=(1,))
def _split(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    axis = attrs.get("axis", 0) % x.dim()
    sizes = attrs.get("split") or (ints(args[1]) if given(args, 1) else None)
    if sizes is None:
        count = attrs.get("num_outputs") or len(ctx.outputs)
        size = dims(x)[axis]
        chunk = math.ceil(size / count)  # opset 18's num_outputs: equal chunks, the last one smaller
        sizes = [chunk] * (count - 1) + [size - chunk * (count - 1)]
    return ctx.torch.split(x, list(sizes), dim=axis)


@replay_op("Gather", literals=(1,))
def _gather(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    """Constant indices (negative ones resolved now) or indices computed from the image (TopK's, ArgMax's)."""
    torch = ctx.torch
    data, indices = args[0], args[1]
    axis = attrs.get("axis", 0) % data.dim()
    size = dims(data)[axis]
    if torch.is_tensor(indices):
        shape = tuple(dims(indices))
        flat = torch.reshape(indices, (-1,)).long()
        flat = torch.where(flat < 0, flat + size, flat)
    else:
        shape = np.shape(indices)
        flat = torch.as_tensor(np.asarray(indices, np.int64).reshape(-1) % size)
    picked = torch.index_select(data, axis, flat)
    return torch.reshape(picked, (*dims(data)[:axis], *shape, *dims(data)[axis + 1 :]))


@replay_op("GatherElements")
def _gather_elements(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    data, indices = args[0], args[1].long()
    axis = attrs.get("axis", 0) % data.dim()
    indices = ctx.torch.where(indices < 0, indices + dims(data)[axis], indices)
    return ctx.torch.gather(data, axis, indices)


# -- padding -----------------------------------------------------------------------------------------------

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    mode = decoded(attrs.get("mode", "constant"))
    if mode not in _PAD_MODES:
        return f"pad mode {mode!r}"
    if mode in ("constant", "wrap"):  # padded_or_cropped / _wrapped take any axis and negative pads
        return None
    rank = facts.rank(node.input[0])
    pads = attrs.get("pads") or (facts.const(node.input[1]) if len(node.input) > 1 else None)
    axes = facts.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if rank is None or pads is None:
        return None
    full = _full_pads(ints(pads), None if axes is None else ints(axes), rank)
    if any(p < 0 for p in full):
        return f"negative pads in {mode} mode: torch crops only in constant mode"
    if any(full[i] or full[i + rank] for i in range(min(2, rank))) or not 3 <= rank <= 5:
        return f"{mode} padding of the batch or channel axis (or of a {rank}-D tensor): torch pads the last 1-3 axes"
    return None


def _full_pads(pads: list[int], axes: list[int] | None, rank: int) -> list[int]:
    """[begin..., end...] over every axis, from pads over `axes` (opset 18) or over all axes."""
    if axes is None:
        return pads
    full = [0] * (2 * rank)
    count = len(axes)
    for k, axis in enumerate(axes):
        full[axis % rank], full[axis % rank + rank] = pads[k], pads[k + count]
    return full


@replay_op("Pad", params=(1, 3), literals=(2,), check=_pad_check)
def _pad(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x = args[0]
    rank = x.dim()
    pads = _full_pads(attrs.get("pads") or ints(args[1]), ints(args[3]) if given(args, 3) else None, rank)
    begin, end = pads[:rank], pads[rank:]
    mode = _PAD_MODES[decoded(attrs.get("mode", "constant"))]
    if mode == "circular":  # slices and a concat: coremltools 9 has no circular pad
        for axis in range(rank):
            x = _wrapped(ctx, x, axis, begin[axis], end[axis])
        return x
    if mode != "constant":
        torch_pad: list[int] = []
        for i in reversed(range(rank)):
            torch_pad += [begin[i], end[i]]
        while len(torch_pad) > 2 and torch_pad[-2:] == [0, 0]:
            torch_pad = torch_pad[:-2]
        return ctx.F.pad(x, torch_pad, mode=mode)
    value = args[2] if given(args, 2) else attrs.get("value", 0.0)
    if ctx.torch.is_tensor(value):  # a fill computed from the image: pad with zeros, then fill the border
        padded = padded_or_cropped(ctx, x, begin, end)
        mask = padded_or_cropped(ctx, ctx.torch.zeros_like(x, dtype=ctx.torch.bool), begin, end, value=True)
        return ctx.torch.where(mask, value.to(x.dtype), padded)
    value = float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0
    return padded_or_cropped(ctx, x, begin, end, value)


def _wrapped(ctx: ReplayCall, x: Any, axis: int, before: int, after: int) -> Any:
    size = dims(x)[axis]
    if before < 0 or after < 0:
        x = x.narrow(axis, max(0, -before), size - max(0, -before) - max(0, -after))
        before, after, size = max(0, before), max(0, after), dims(x)[axis]
    parts = [x.narrow(axis, size - before, before)] if before else []
    parts.append(x)
    if after:
        parts.append(x.narrow(axis, 0, after))
    return ctx.torch.cat(parts, dim=axis) if len(parts) > 1 else x


# -- reductions --------------------------------------------------------------------------------------------


def _reduce_dims(args: list[Any], attrs: dict) -> list[int] | None:
    """The axes a Reduce* node reduces (attribute or input); all of them when none are given, None for a no-op."""
    x = args[0]
    axes = _axes(args, attrs)
    if not axes:
        return None if attrs.get("noop_with_empty_axes", 0) else list(range(x.dim()))
    return sorted(a % x.dim() for a in axes)


def _reducer(name: str):
    def run(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
        dims = _reduce_dims(args, attrs)
        if dims is None:
            return args[0]
        return _reduce(ctx, name, args[0], dims, bool(attrs.get("keepdims", 1)))

    return run


def _reduce(ctx: ReplayCall, name: str, x: Any, dims: list[int], keep: bool) -> Any:
    torch = ctx.torch
    if name == "max":
        return torch.amax(x, dim=dims, keepdim=keep)
    if name == "min":
        return torch.amin(x, dim=dims, keepdim=keep)
    if name == "prod":
        for d in sorted(dims, reverse=True):
            x = _product(ctx, x, d, keep)
        return x
    if name == "logsumexp":
        return torch.logsumexp(x, dim=dims, keepdim=keep)
    if name == "l1":
        return torch.sum(torch.abs(x), dim=dims, keepdim=keep)
    if name == "l2":
        return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep))
    if name == "sumsquare":
        return torch.sum(x * x, dim=dims, keepdim=keep)
    return getattr(torch, name)(x, dim=dims, keepdim=keep)


def _product(ctx: ReplayCall, x: Any, axis: int, keep: bool) -> Any:
    """The product along `axis` by pairwise halving (coremltools 9 has no prod): log2(size) multiplications."""
    torch = ctx.torch
    while dims(x)[axis] > 1:
        size = dims(x)[axis]
        if size % 2:
            x = torch.cat([x, torch.ones_like(x.narrow(axis, 0, 1))], dim=axis)
            size += 1
        x = x.narrow(axis, 0, size // 2) * x.narrow(axis, size // 2, size // 2)
    return x if keep else torch.squeeze(x, axis)


_REDUCERS = {
    "ReduceMax": "max", "ReduceMin": "min", "ReduceMean": "mean", "ReduceSum": "sum", "ReduceProd": "prod",
    "ReduceL1": "l1", "ReduceL2": "l2", "ReduceSumSquare": "sumsquare", "ReduceLogSumExp": "logsumexp",
}  # fmt: skip
for _op, _name in _REDUCERS.items():
    replay_op(_op, params=(1,))(_reducer(_name))


def _arg_check(node: onnx.NodeProto, attrs: dict, facts: GraphFacts) -> str | None:
    if attrs.get("select_last_index", 0):
        return "select_last_index=1: torch picks the first of equal values"
    return None


@replay_op("ArgMax", check=_arg_check)
def _argmax(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.argmax(args[0], dim=attrs.get("axis", 0), keepdim=bool(attrs.get("keepdims", 1)))


@replay_op("ArgMin", check=_arg_check)
def _argmin(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.argmin(args[0], dim=attrs.get("axis", 0), keepdim=bool(attrs.get("keepdims", 1)))


@replay_op("TopK", params=(1,))
def _top_k(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    k = ints(args[1])[0] if given(args, 1) else attrs["k"]
    values, indices = ctx.torch.topk(
        args[0], k, dim=attrs.get("axis", -1), largest=bool(attrs.get("largest", 1)), sorted=True
    )
    return values, indices


@replay_op("CumSum", params=(1,))
def _cumsum(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x, axis = args[0], ints(args[1])[0] % args[0].dim()
    reverse = bool(attrs.get("reverse", 0))
    y = ctx.torch.flip(x, [axis]) if reverse else x
    y = ctx.torch.cumsum(y, dim=axis)
    if attrs.get("exclusive", 0):
        y = y - (ctx.torch.flip(x, [axis]) if reverse else x)
    return ctx.torch.flip(y, [axis]) if reverse else y


@replay_op("Einsum")
def _einsum(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    return ctx.torch.einsum(decoded(attrs["equation"]).replace(" ", ""), *args)


# -- depth and space -------------------------------------------------------------------------------------


@replay_op("DepthToSpace")
def _depth_to_space(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x, block = args[0], attrs["blocksize"]
    if decoded(attrs.get("mode", "DCR")) == "CRD":
        return ctx.F.pixel_shuffle(x, block)
    n, c, h, w = dims(x)
    y = ctx.torch.reshape(x, (n, block, block, c // block**2, h, w)).permute(0, 3, 4, 1, 5, 2)
    return ctx.torch.reshape(y, (n, c // block**2, h * block, w * block))


@replay_op("SpaceToDepth")
def _space_to_depth(ctx: ReplayCall, args: list[Any], attrs: dict) -> Any:
    x, block = args[0], attrs["blocksize"]
    n, c, h, w = dims(x)
    y = ctx.torch.reshape(x, (n, c, h // block, block, w // block, block)).permute(0, 3, 5, 1, 2, 4)
    return ctx.torch.reshape(y, (n, c * block**2, h // block, w // block))
