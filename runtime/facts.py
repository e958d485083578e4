"""Facts about the device the agent runs on: host, OS, CPU, Python and library versions."""

import os
import platform
import socket
from typing import Any, Dict, Optional


def _cpu_model() -> Optional[str]:
    # x86 says "model name"; many ARM kernels say "Hardware" or "Model" instead (Jetson, Raspberry Pi)
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8", errors="replace") as handle:
            found: Dict[str, str] = {}
            for line in handle:
                key, sep, value = line.partition(":")
                key = key.strip().lower()
                if sep and key in ("model name", "hardware", "model", "cpu model") and key not in found:
                    found[key] = value.strip()
        for key in ("model name", "cpu model", "hardware", "model"):
            if found.get(key):
                return found[key]
    except OSError:
        pass
    return platform.processor() or None


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or a broken install: the fact is "unknown"
        return None


def device_facts() -> Dict[str, Any]:
    """Hostname, OS, machine, Python, CPU model and count, numpy and OpenCV versions."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "numpy": _version("numpy"),
        "opencv": _version("cv2"),
    }
