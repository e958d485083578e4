"""edgekit: take a trained vision model to edge devices and measure it there.

The public API is imported lazily so `import edgekit` stays fast and never loads torch, TensorFlow or
coremltools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Model": "edgekit.model",
    "Artifact": "edgekit.artifact",
    "PreprocessSpec": "edgekit.runtime.preprocess",
    "get_target": "edgekit.targets",
    "list_targets": "edgekit.targets",
    "build": "edgekit.api",
    "run": "edgekit.api",
    "RunSettings": "edgekit.device.settings",
    "EdgekitError": "edgekit.errors",
}

if TYPE_CHECKING:
    from edgekit.api import build, run
    from edgekit.artifact import Artifact
    from edgekit.device.settings import RunSettings
    from edgekit.errors import EdgekitError
    from edgekit.model import Model
    from edgekit.runtime.preprocess import PreprocessSpec
    from edgekit.targets import get_target, list_targets


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


__all__ = [
    "Artifact",
    "EdgekitError",
    "Model",
    "PreprocessSpec",
    "RunSettings",
    "__version__",
    "build",
    "get_target",
    "list_targets",
    "run",
]
