"""The device-side scripts (`runtime/device_scripts/`) as source text, to send as `python -c SOURCE`.

They ship inside the runtime package, so ruff and the Python 3.8 check see them like any agent code;
the host only reads their text (nothing of the runtime is imported to run them here).
"""

from __future__ import annotations

import functools
from importlib import resources

_PACKAGE = "edgekit.runtime.device_scripts"


@functools.cache
def device_script(name: str) -> str:
    """The source of `runtime/device_scripts/<name>.py` (agent_wrapper, stop_agent, fallback_facts, sha256_file)."""
    return resources.files(_PACKAGE).joinpath(f"{name}.py").read_text(encoding="utf-8")
