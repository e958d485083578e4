"""Packs the device agent (`runtime/`) into a deterministic zipapp that runs without edgekit installed.

The zip holds `runtime/**/*.py` as the package `runtime` plus a top-level `__main__.py` that calls
`runtime.agent.main()`. Entries are sorted and carry a fixed timestamp and mode, so building twice gives
byte-identical files and the fleet can push the agent by its sha256 like any artifact.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import zipfile
from pathlib import Path

# 1980-01-01 is the earliest time a zip can store; any fixed value makes the archive reproducible
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SHEBANG = b"#!/usr/bin/env python3\n"
_MAIN = b'''"""edgekit device agent: python agent.pyz --plan PLAN --result RESULT"""
import sys

from runtime.agent import main

sys.exit(main())
'''


def runtime_dir() -> Path:
    """The folder of the `edgekit.runtime` package, found without importing (running) it."""
    spec = importlib.util.find_spec("edgekit.runtime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("edgekit.runtime is not installed: reinstall edgekit")
    return Path(list(spec.submodule_search_locations)[0])


def _entries(root: Path) -> list[tuple[str, bytes]]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                arcname = "runtime/" + path.relative_to(root).as_posix()
                entries.append((arcname, path.read_bytes()))
    entries.append(("__main__.py", _MAIN))
    return sorted(entries)


def agent_zipapp_bytes(root: Path | None = None) -> bytes:
    """The zipapp's bytes (shebang + zip); the same sources always give the same bytes."""
    buffer = io.BytesIO()
    buffer.write(_SHEBANG)
    with zipfile.ZipFile(buffer, "w") as archive:
        for arcname, data in _entries(root or runtime_dir()):
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever machine builds it
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def build_agent_zipapp(out_path: Path) -> Path:
    """Write the agent zipapp to `out_path` (atomically) and return the path.

    Run it on a device with `python agent.pyz --plan plan.json --result result.json`; the device needs
    Python 3.8+, numpy, OpenCV and the artifact's engine, not edgekit.
    """
    out_path = Path(out_path)
    data = agent_zipapp_bytes()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temp = out_path.with_name(out_path.name + ".tmp")
    temp.write_bytes(data)
    os.chmod(temp, 0o755)
    os.replace(temp, out_path)
    return out_path


def agent_zipapp_sha256() -> str:
    """The content address of the agent the current sources would build."""
    return hashlib.sha256(agent_zipapp_bytes()).hexdigest()
