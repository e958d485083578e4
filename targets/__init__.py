"""Backends that turn a Model (and a QuantSpec) into an Artifact for one kind of device.

A new target is one module (a `Target` subclass with its `Options` dataclass, decorated with
`@register_target`) and one line in `_BUILTIN_MODULES` below. `get_target("x86-ort")` builds one and
`list_targets()` lists them. Each backend module is imported only when its target is asked for, so
`import edgekit` never loads TensorFlow, torch or coremltools.
"""

from __future__ import annotations

import importlib

from edgekit.targets.base import BuildError, Target, TargetError, TargetOptions, options_from_text

# The registry: name -> module that registers it, imported the first time its target is needed.
_BUILTIN_MODULES = {
    "x86-ort": "edgekit.targets.onnxruntime",
    "x86-openvino": "edgekit.targets.openvino",
    "android-tflite": "edgekit.targets.tflite",
    "jetson-trt": "edgekit.targets.tensorrt",
    "ios-coreml": "edgekit.targets.coreml",
}
_REGISTRY: dict[str, type[Target]] = {}


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: make a Target subclass available under its `name`."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a non-empty `name` to be registered")
    _REGISTRY[cls.name] = cls
    return cls


def target_names() -> list[str]:
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


def get_target(name: str) -> Target:
    """The target registered as `name`, ready to build."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise TargetError(f"unknown target {name!r}; known targets: {', '.join(target_names())}")
    return _REGISTRY[name]()


def list_targets() -> list[Target]:
    return [get_target(name) for name in target_names()]


__all__ = [
    "BuildError",
    "Target",
    "TargetError",
    "TargetOptions",
    "get_target",
    "list_targets",
    "options_from_text",
    "register_target",
    "target_names",
]
