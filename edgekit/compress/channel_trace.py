"""The channel tracer behind structured pruning: which conv output channels each tensor carries.

The model is traced with ``torch.fx`` and its shapes recorded with ``ShapeProp``; `ChannelTracer` walks the
graph once and gives each tensor node a `ChannelLayout`, a list of `ChannelSpace` segments (a space is born at
a regular Conv2d's output and flows through BatchNorm, activations, pools, depthwise convs, ``cat`` and
flatten; element-wise ops of equal shapes unite spaces into one coupled group). What it cannot follow is
blocked with a reason. `edgekit.compress.structured` decides what to keep and slices the modules.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

# -- channel spaces ---------------------------------------------------------------------------------------------


class ChannelSpace:
    """A set of channels that must be pruned together (union-find node)."""

    def __init__(self, size: int, *, producer: str | None = None, blocked: str | None = None) -> None:
        self.size = size
        self.parent: ChannelSpace | None = None
        self.producers: list[str] = [producer] if producer else []
        self.blocked: list[str] = [blocked] if blocked else []

    def root(self) -> ChannelSpace:
        node = self
        while node.parent is not None:
            node = node.parent
        if node is not self:
            self.parent = node
        return node


def _union(a: ChannelSpace, b: ChannelSpace) -> None:
    ra, rb = a.root(), b.root()
    if ra is rb:
        return
    if ra.size != rb.size:  # cannot happen for equal shapes; stay safe anyway
        _block([ra, rb], f"channel counts {ra.size} and {rb.size} are joined")
        return
    rb.parent = ra
    ra.producers += rb.producers
    ra.blocked += rb.blocked


def _block(spaces: Iterable[ChannelSpace], reason: str) -> None:
    for space in spaces:
        root = space.root()
        if reason not in root.blocked:
            root.blocked.append(reason)


@dataclass(frozen=True)
class ChannelLayout:
    """The channel dimension of a tensor: consecutive spaces, each channel spanning `inner` positions."""

    segments: tuple[ChannelSpace, ...]
    inner: int = 1

    @property
    def structure(self) -> tuple[tuple[int, ...], int]:
        return tuple(s.size for s in self.segments), self.inner


def _unify(a: ChannelLayout, b: ChannelLayout, reason: str) -> bool:
    if a.structure != b.structure:
        _block([*a.segments, *b.segments], reason)
        return False
    for sa, sb in zip(a.segments, b.segments, strict=True):
        _union(sa, sb)
    return True


# -- op tables --------------------------------------------------------------------------------------------------

_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.SiLU,
    nn.GELU,
    nn.ELU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)
_ELEMENTWISE_FUNCS: set[Any] = {
    F.relu,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.leaky_relu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.silu,
    F.gelu,
    F.elu,
    F.mish,
    F.dropout,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "contiguous", "clone"}
_POOL_FUNCS: set[Any] = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate}
_BINARY_FUNCS: set[Any] = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_RESHAPE_FUNCS: set[Any] = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_CAT_FUNCS: set[Any] = {torch.cat, torch.concat}
_META_FUNCS: set[Any] = {getattr}
_META_METHODS = {"size", "dim"}
_MEAN_FUNCS: set[Any] = {torch.mean}


def _meta(node: Any) -> TensorMetadata | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return meta if isinstance(meta, TensorMetadata) else None


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = _meta(node)
    return tuple(meta.shape) if meta is not None else None


def _input_nodes(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def _target_label(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


# -- the tracer -------------------------------------------------------------------------------------------------


class ChannelTracer:
    """Walks the fx graph once and assigns a `ChannelLayout` to each tensor node."""

    def __init__(self, gm: fx.GraphModule, exclude: set[str]) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.exclude = exclude
        self.layouts: dict[fx.Node, ChannelLayout | None] = {}
        self.own: dict[str, ChannelSpace] = {}  # regular conv -> the space of its output channels
        self.records: dict[str, tuple[str, ChannelLayout]] = {}  # module -> (kind, input layout)
        self.bn_after: dict[str, str] = {}  # conv -> BatchNorm2d applied directly to its output
        self.attr_reads: list[str] = []

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.layouts[node] = self._visit(node)
        for target in self.attr_reads:
            for name, (_, layout) in self.records.items():
                if target.startswith(name + "."):
                    _block(layout.segments, f"parameters of {name!r} are read directly ({target})")
            for name, space in self.own.items():
                if target.startswith(name + "."):
                    _block([space], f"parameters of {name!r} are read directly ({target})")

    # helpers
    def _layout(self, node: Any) -> ChannelLayout | None:
        return self.layouts.get(node) if isinstance(node, fx.Node) else None

    def _fresh(self, node: fx.Node, reason: str) -> ChannelLayout | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        return ChannelLayout((ChannelSpace(shape[1], blocked=reason),))

    def _unknown(self, node: fx.Node, why: str | None = None) -> ChannelLayout | None:
        reason = why or f"node {node.name!r} ({node.op} {_target_label(node)}) is not understood by the channel tracer"
        for arg in _input_nodes(node):
            layout = self._layout(arg)
            if layout is not None:
                _block(layout.segments, reason)
        return self._fresh(node, reason)

    def _record(self, name: str, kind: str, layout: ChannelLayout) -> None:
        previous = self.records.get(name)
        if previous is None:
            self.records[name] = (kind, layout)
        else:
            _unify(previous[1], layout, f"module {name!r} is called on differently shaped channel layouts")

    def _passthrough(self, node: fx.Node) -> ChannelLayout | None:
        tensors = [a for a in _input_nodes(node) if _meta(a) is not None]
        if not tensors:
            return None
        if len(tensors) > 1:
            return self._unknown(node)
        return self._layout(tensors[0])

    def _channel_preserving(self, node: fx.Node) -> ChannelLayout | None:
        """Pools and spatial reductions: channels stay in dim 1, one position each."""
        source = node.args[0] if node.args else None
        layout, in_shape, out_shape = self._layout(source), _shape(source), _shape(node)
        if (
            layout is None
            or layout.inner != 1
            or in_shape is None
            or out_shape is None
            or len(in_shape) != 4
            or len(out_shape) < 2
            or out_shape[1] != in_shape[1]
            or any(isinstance(a, fx.Node) and _meta(a) is not None for a in _input_nodes(node)[1:])
        ):
            return self._unknown(node)
        return layout

    def _mean(self, node: fx.Node) -> ChannelLayout | None:
        in_shape = _shape(node.args[0]) if node.args else None
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if in_shape is None or dims is None:
            return self._unknown(node)
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) for d in dims) or any(d % len(in_shape) in (0, 1) for d in dims):
            return self._unknown(node)
        return self._channel_preserving(node)

    def _binary(self, node: fx.Node) -> ChannelLayout | None:
        tensors = [a for a in _input_nodes(node) if _meta(a) is not None]
        if len(tensors) <= 1:
            return self._layout(tensors[0]) if tensors else None
        layouts = [self._layout(t) for t in tensors]
        shapes = {_shape(t) for t in tensors}
        reason = f"node {node.name!r} ({_target_label(node)}) joins tensors whose channels cannot be matched"
        if len(tensors) != 2 or len(shapes) != 1 or any(layout is None for layout in layouts):
            return self._unknown(node, reason)
        a, b = layouts
        assert a is not None and b is not None
        if not _unify(a, b, reason):
            return self._fresh(node, reason)
        return a

    def _cat(self, node: fx.Node) -> ChannelLayout | None:
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        out_shape = _shape(node)
        if not isinstance(parts, (list, tuple)) or not isinstance(dim, int) or out_shape is None:
            return self._unknown(node)
        layouts = [self._layout(p) for p in parts]
        if dim % len(out_shape) != 1 or any(la is None for la in layouts) or len({la.inner for la in layouts}) != 1:
            return self._unknown(node)
        return ChannelLayout(tuple(s for la in layouts for s in la.segments), layouts[0].inner)

    def _reshape(self, node: fx.Node) -> ChannelLayout | None:
        source = node.args[0] if node.args else None
        layout, in_shape, out_shape = self._layout(source), _shape(source), _shape(node)
        if layout is None or in_shape is None or out_shape is None:
            return self._unknown(node)
        if out_shape == in_shape:
            return layout
        flat = math.prod(in_shape[1:])
        if len(in_shape) < 2 or len(out_shape) != 2 or out_shape[0] != in_shape[0] or out_shape[1] != flat:
            return self._unknown(node)
        if node.op == "call_method" and node.target in ("view", "reshape"):
            shape_args = node.args[1:]
            if len(shape_args) == 1 and isinstance(shape_args[0], (list, tuple)):
                shape_args = tuple(shape_args[0])
            # a feature count written into the code would break once channels are removed
            if len(shape_args) != 2 or (isinstance(shape_args[1], int) and shape_args[1] != -1):
                return self._unknown(node, f"node {node.name!r} reshapes to a hard-coded size {list(shape_args)}")
        return ChannelLayout(layout.segments, layout.inner * math.prod(in_shape[2:]))

    # dispatch
    def _visit(self, node: fx.Node) -> ChannelLayout | None:
        if node.op == "placeholder":
            return self._fresh(node, "its channels come from the model input")
        if node.op == "get_attr":
            self.attr_reads.append(str(node.target))
            return None
        if node.op == "output":
            for arg in _input_nodes(node):
                layout = self._layout(arg)
                if layout is not None:
                    _block(layout.segments, "its channels are a model output")
            return None
        if node.op == "call_module":
            return self._visit_module(node, str(node.target), self.modules[str(node.target)])
        if node.op == "call_function":
            return self._visit_function(node)
        if node.op == "call_method":
            return self._visit_method(node)
        return self._unknown(node)

    def _visit_function(self, node: fx.Node) -> ChannelLayout | None:
        target = node.target
        if target in _META_FUNCS:
            return None
        if target in _ELEMENTWISE_FUNCS:
            return self._passthrough(node)
        if target in _POOL_FUNCS:
            return self._channel_preserving(node)
        if target in _MEAN_FUNCS:
            return self._mean(node)
        if target in _BINARY_FUNCS:
            return self._binary(node)
        if target in _CAT_FUNCS:
            return self._cat(node)
        if target in _RESHAPE_FUNCS:
            return self._reshape(node)
        return self._unknown(node)

    def _visit_method(self, node: fx.Node) -> ChannelLayout | None:
        target = node.target
        if target in _META_METHODS:
            return None
        if target in _ELEMENTWISE_METHODS:
            return self._passthrough(node)
        if target == "mean":
            return self._mean(node)
        if target in _BINARY_METHODS:
            return self._binary(node)
        if target in _RESHAPE_METHODS:
            return self._reshape(node)
        return self._unknown(node)

    def _visit_module(self, node: fx.Node, name: str, module: nn.Module) -> ChannelLayout | None:
        source = node.args[0] if node.args else None
        layout, in_shape = self._layout(source), _shape(source)
        single_input = len([a for a in _input_nodes(node) if _meta(a) is not None]) == 1
        if isinstance(module, nn.Conv2d) and type(module) is nn.Conv2d:
            if layout is None or layout.inner != 1 or not single_input:
                return self._unknown(node)
            if module.groups == 1:
                self._record(name, "conv_in", layout)
                if name not in self.own:
                    excluded = "excluded by the caller" if name in self.exclude else None
                    self.own[name] = ChannelSpace(module.out_channels, producer=name, blocked=excluded)
                return ChannelLayout((self.own[name],))
            if module.groups == module.in_channels == module.out_channels and name not in self.exclude:
                self._record(name, "dw", layout)
                return layout
            why = (
                f"depthwise conv {name!r} is excluded by the caller"
                if name in self.exclude
                else f"grouped conv {name!r} (groups={module.groups}) is not a depthwise conv"
            )
            return self._unknown(node, why)
        if type(module) is nn.BatchNorm2d:
            if layout is None or layout.inner != 1 or not single_input:
                return self._unknown(node)
            self._record(name, "bn", layout)
            if source is not None and source.op == "call_module" and str(source.target) in self.own:
                self.bn_after.setdefault(str(source.target), name)
            return layout
        if type(module) is nn.Linear:
            if layout is None or in_shape is None or len(in_shape) != 2 or not single_input:
                return self._unknown(node)
            self._record(name, "linear_in", layout)
            return self._fresh(node, "Linear outputs are not pruned")
        if isinstance(module, _ELEMENTWISE_MODULES) or (isinstance(module, nn.PReLU) and module.num_parameters == 1):
            return self._passthrough(node)
        if isinstance(module, _POOL_MODULES):
            return self._channel_preserving(node)
        if type(module) is nn.Flatten:
            return self._reshape(node)
        return self._unknown(node, f"module {name!r} ({type(module).__name__}) is not understood by the channel tracer")
