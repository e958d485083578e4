"""The engine registry: engines register by name; `open_engine` opens one or explains why it cannot.

Adding an engine is one module (an `Engine` subclass with its `Options` dataclass, decorated with
`@register_engine("name", package=..., modules=...)`) and one line in `_BUILTIN_MODULES` below; the module
is imported the first time its engine is needed, so the agent loads only the engine it runs. Engines
whose library is missing on the device stay listed, so the error can say what to install.
Python 3.8-compatible.
"""

import importlib
import importlib.util
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from .base import Engine, EngineError, EngineOptions, EngineUnavailable, TensorInfo, read_options

__all__ = [
    "Engine",
    "EngineError",
    "EngineOptions",
    "EngineUnavailable",
    "TensorInfo",
    "available_engines",
    "engine_installed",
    "known_engines",
    "open_engine",
    "read_options",
    "register_engine",
    "register_placeholder",
]

# The registry: engine name -> module (relative to this package) that registers it.
_BUILTIN_MODULES = {
    "coreml": ".coreml",
    "onnxruntime": ".onnxruntime",
    "openvino": ".openvino",
    "tensorrt": ".tensorrt",
    "tflite": ".tflite",
}

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


def _entry(name: str) -> Optional[_Entry]:
    """The registration of `name`, importing its builtin module the first time; None when unknown."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name], __name__)
    return _REGISTRY.get(name)


def known_engines() -> List[str]:
    """Every engine name, installed or not (nothing is imported)."""
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


def engine_installed(name: str) -> bool:
    """Whether the library engine `name` needs is installed here (found without importing it)."""
    entry = _entry(name)
    return entry is not None and entry.installed()


def available_engines() -> List[str]:
    """Names this device can open now: implemented and with their library installed."""
    entries = [_entry(name) for name in known_engines()]
    return sorted(e.name for e in entries if e is not None and e.cls is not None and e.runs_here() and e.installed())


def open_engine(name: str, model_path: str, options: Optional[Dict[str, Any]] = None) -> Engine:
    """Create and load engine `name` for `model_path`; use it as a context manager to release it."""
    entry = _entry(name)
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
