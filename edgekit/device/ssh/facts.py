"""What a device says about itself (`edgekit devices check`), never trusted: parsed, checked, flattened.

The agent answers `--facts` with an `edgekit.facts` document (`edgekit.runtime.facts`); a device whose
agent cannot (an older agent, a broken install) is asked with the small fallback script instead
(`runtime/device_scripts/fallback_facts.py`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from edgekit.device.results import MAX_FACTS
from edgekit.runtime.facts import FACTS_SCHEMA, FACTS_VERSION


def json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in a command's output (at most 1 MiB of it read), None when there is none."""
    try:
        data = json.loads(text[: 1 << 20])
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def agent_facts(rc: int, out: str) -> dict[str, Any] | None:
    """The agent's `--facts` answer when it is one this edgekit reads, else None (then ask the fallback)."""
    data = json_object(out) if rc == 0 else None
    if data is None or data.get("schema") != FACTS_SCHEMA or data.get("version") != FACTS_VERSION:
        return None
    return data


def flatten_facts(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The device facts (hostname, os, machine, python, cpu, ...) at the top level, the rest flattened one
    level (`engines`, `engine_packages.<name>`, `gpu.names`, `disk.free_bytes`, ...), all checked by
    `clean_facts`, plus `facts_source` (`agent` or `fallback`)."""
    device = data.get("device") if isinstance(data.get("device"), dict) else {}
    rest = {k: v for k, v in data.items() if k not in ("device", "schema", "version", "facts_source")}
    return {**clean_facts({**device, **rest}), "facts_source": source}


def clean_facts(data: dict[str, Any]) -> dict[str, Any]:
    """A device's facts, never trusted: at most 64 entries, keys up to 64 characters, values strings
    (up to 512 characters), finite numbers, booleans or null; one level of nesting is flattened to
    `outer.inner`; lists become lists of up to 32 short strings; anything else is dropped."""
    clean: dict[str, Any] = {}

    def put(key: Any, value: Any, depth: int) -> None:
        if len(clean) >= MAX_FACTS or not isinstance(key, str) or not key or len(key) > 64:
            return
        if value is None or isinstance(value, bool):
            clean[key] = value
        elif isinstance(value, int):
            clean[key] = value if abs(value) < 2**63 else None
        elif isinstance(value, float):
            clean[key] = value if math.isfinite(value) else None
        elif isinstance(value, str):
            clean[key] = value[:512]
        elif isinstance(value, list):
            clean[key] = [str(v)[:128] for v in value[:32] if isinstance(v, (str, int, float))]
        elif isinstance(value, dict) and depth == 0:
            for inner, item in list(value.items())[:MAX_FACTS]:
                if isinstance(inner, str):
                    put(f"{key}.{inner}", item, 1)

    for key, value in list(data.items())[: MAX_FACTS * 4]:
        put(key, value, 0)
    return clean
