"""The engine registry: engines register by name; `open_engine` opens one or explains why it cannot.

Adding an engine is one module and one decorator (`@register_engine("name", package=..., modules=...)`)
plus an import at the bottom of this file. Engines whose library is missing on the device stay listed,
so the error can say what to install. Python 3.8-compatible.
"""

import importlib.util
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from .base import Engine, EngineError, EngineUnavailable, TensorInfo

__all__ = [
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "TensorInfo",
    "available_engines",
    "known_engines",
    "open_engine",
    "register_engine",
    "register_placeholder",
]

_WHAT_TO_DO = "install %s on the device, or build the artifact for a target whose engine the device has"


class _Entry(object):
    def __init__(
        self, name: str, cls: Optional[type], package: str, modules: Sequence[str], platforms: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.cls = cls  # None: a placeholder that a later version of the agent implements
        self.package = package  # what to pip/apt install, as the user types it
        self.modules = tuple(modules)  # importable module names, any one of which will do
        self.platforms = tuple(platforms)  # sys.platform values it runs on; empty: any

    def runs_here(self) -> bool:
        return not self.platforms or sys.platform in self.platforms

    def installed(self) -> bool:
        for module in self.modules:
            try:
                if importlib.util.find_spec(module) is not None:
                    return True
            except (ImportError, ValueError):
                continue
        return False


_REGISTRY: Dict[str, _Entry] = {}


def register_engine(
    name: str,
    package: Optional[str] = None,
    modules: Optional[Sequence[str]] = None,
    platforms: Sequence[str] = (),
) -> Callable[[type], type]:
    """Class decorator: register an Engine subclass under `name`.

    `modules` are the importable names, any one of which the engine needs (default: `name`);
    `package` is what a user installs to get one (default: the first module), used in error messages;
    `platforms` the `sys.platform` values it can run on (default: any) — coremltools installs on Linux but
    predicts only on macOS.
    """
    needed = tuple(modules) if modules else (name,)

    def decorate(cls: type) -> type:
        _REGISTRY[name] = _Entry(name, cls, package or needed[0], needed, platforms)
        return cls

    return decorate


def register_placeholder(name: str, package: str, modules: Sequence[str]) -> None:
    """Reserve a name whose implementation is not in this agent yet (a real registration replaces it)."""
    if name not in _REGISTRY:
        _REGISTRY[name] = _Entry(name, None, package, modules)


def known_engines() -> List[str]:
    """Every registered name, installed or not."""
    return sorted(_REGISTRY)


def available_engines() -> List[str]:
    """Names this device can open now: implemented and with their library installed."""
    return sorted(n for n, e in _REGISTRY.items() if e.cls is not None and e.runs_here() and e.installed())


def open_engine(name: str, model_path: str, options: Optional[Dict[str, Any]] = None) -> Engine:
    """Create and load engine `name` for `model_path`; use it as a context manager to release it."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise EngineUnavailable(
            "unknown engine %r; this agent knows %s: fix the artifact's engine or the plan's engine.name"
            % (name, ", ".join(known_engines()))
        )
    if not entry.installed():
        raise EngineUnavailable(
            "engine %r needs the Python package %s, which is not installed on this device: %s"
            % (name, entry.package, _WHAT_TO_DO % entry.package)
        )
    if entry.cls is None:
        raise EngineUnavailable(
            "engine %r is not implemented in this version of the agent (the package %s is installed): update "
            "the agent, or build the artifact for a target whose engine the device has" % (name, entry.package)
        )
    engine = entry.cls(model_path, options)
    return engine.load()


from . import coreml, onnxruntime, tensorrt, tflite  # noqa: E402,F401  (each registers itself)
