"""coremltools' conversion of a traced torch module, with its failures turned into BuildErrors that name the op.

coremltools 9 walks the TorchScript graph node by node (`convert_nodes`); when a node's conversion raises, the
node is still in that frame. `convert` reads it from the traceback and says which torch op (and which module
of the model, from the node's scope) coremltools could not convert, what it said, and which other route may
work. `patch_frontend` mends one defect of coremltools 9.0 under numpy 2: `int()` / `bool()` of a
one-element constant (`int(math.sqrt(N))` in MobileViT, EfficientViT) raised "only 0-dimensional arrays can
be converted to Python scalars".
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from edgekit.targets.base import BuildError


@cache
def patch_frontend() -> None:
    """Register conversions of torch's scalar casts that read a one-element constant as a scalar (once)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op

    def scalar_cast(python_type: type, dtype_name: str, original: Any) -> Any:
        def cast(context: Any, node: Any) -> None:
            (x,) = ops._get_inputs(context, node, expected=1)
            if x.can_be_folded_to_const() and np.size(x.val) == 1:
                value = python_type(np.asarray(x.val).reshape(-1)[0])
                context.add(mb.const(val=value, name=node.name), node.name)
                return
            original(context, node)

        return cast

    for torch_name, python_type, dtype_name in (("int", int, "int32"), ("bool", bool, "bool")):
        original = _TORCH_OPS_REGISTRY.name_to_func_mapping.get(torch_name)
        if original is not None:
            fixed = scalar_cast(python_type, dtype_name, original)
            fixed.__name__ = torch_name  # the registry keys a conversion by its function name
            register_torch_op(fixed, override=True)


def failing_node(exc: BaseException) -> str | None:
    """The TorchScript node coremltools was converting when `exc` was raised: "op 'kind' (node %name, module
    path)", or None when the failure came from elsewhere."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if tb.tb_frame.f_code.co_name == "convert_single_node" and hasattr(node, "kind"):
            found = node  # the innermost one: a node inside a loop or if block
        tb = tb.tb_next
    if found is None:
        return None
    try:
        scope = "/".join(found.get_scope_info()[0])
    except Exception:  # scope info is a nicety
        scope = ""
    module = f", module {scope}" if scope and scope != str(found.name) else ""
    return f"torch op '{found.kind}' (node %{found.name}{module})"


def convert(ct: Any, traced: Any, *, route: str, **options: Any) -> Any:
    """`ct.convert(traced, **options)`; a BuildError naming the op coremltools choked on, when it does."""
    patch_frontend()
    try:
        return ct.convert(traced, **options)
    except Exception as exc:
        raise BuildError(conversion_failure(exc, route)) from exc


def conversion_failure(exc: BaseException, route: str) -> str:
    """The message for a failed coremltools conversion: where, what it said, what to try."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    said = f"{type(exc).__name__}: {said}" if said else type(exc).__name__
    node = failing_node(exc)
    where = f" at {node}" if node else ""
    if route == "torch module":
        advice = (
            "build from the model's ONNX export instead (Model.load of the .onnx, or Model(model.proto, ...)): "
            "edgekit replays it in torch with ops coremltools converts"
        )
    else:
        advice = (
            "the replay emitted a torch op coremltools cannot convert here; build from the torch module "
            "(Model.from_torch) if you have it, or report this model"
        )
    return f"coremltools could not convert this model{where}: {said}; {advice}"
