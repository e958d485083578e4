"""Facts about the device the agent runs on: host, OS, CPU, Python and library versions, and (for
`--facts`) its engines, GPU, free disk and power probe. Python 3.8-compatible."""

import os
import platform
import shutil
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional

from .isa import isa_facts

FACTS_SCHEMA = "edgekit.facts"
FACTS_VERSION = 1


def peak_rss_mb() -> Optional[float]:
    """The agent process's peak resident memory so far in MiB (model, engine arena, frames, interpreter), or
    None where the OS does not report it (no `resource` module on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    if peak <= 0:
        return None
    # Linux and the BSDs count kilobytes; macOS (and iOS) count bytes
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return round(peak * scale / (1024.0 * 1024.0), 2)


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
        "isa": isa_facts(),  # x86: VNNI/AMX or not, and the weight scheme safe on this CPU (runtime/isa.py)
    }


def engine_packages() -> Dict[str, bool]:
    """For every engine this agent knows: is its library installed? Found without importing it."""
    from . import engines

    # the registry's entries know their modules; find_spec never loads TensorRT or coremltools
    return dict((name, engines.engine_installed(name)) for name in engines.known_engines())


def gpu_facts(sysfs_root: str = "/") -> Optional[Dict[str, Any]]:
    """GPUs from `nvidia-smi -L`, else a Jetson's board model from the device tree; None when neither."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            run = subprocess.run([smi, "-L"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
            names = parse_nvidia_smi_list(run.stdout.decode("utf-8", "replace"))
            if run.returncode == 0 and names:
                return {"source": "nvidia-smi", "names": names}
        except (OSError, subprocess.SubprocessError):
            pass
    model_path = os.path.join(sysfs_root, "proc/device-tree/model")
    try:
        with open(model_path, "r", encoding="utf-8", errors="replace") as handle:
            model = handle.read().replace("\x00", "").strip()
    except OSError:
        return None
    if "jetson" in model.lower() or "nvidia" in model.lower():
        return {"source": "device-tree", "names": [model]}
    return None


def parse_nvidia_smi_list(text: str) -> List[str]:
    """GPU names from `nvidia-smi -L`: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-…)" -> "NVIDIA H100 80GB HBM3".
    MIG instance lines (indented, "MIG 1g.10gb Device 0: …") belong to their GPU and are skipped."""
    names = []
    for line in text.splitlines():
        head, sep, rest = line.partition(":")
        if sep and line.startswith("GPU ") and head[4:].strip().isdigit():
            name = rest.split("(UUID:")[0].strip()
            if name:
                names.append(name)
    return names


def disk_facts(workdir: str) -> Dict[str, Any]:
    """Free and total bytes of the file system holding `workdir` (its nearest existing parent when it
    does not exist yet, as before the first push)."""
    path = os.path.abspath(workdir)
    probe = path
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    usage = shutil.disk_usage(probe)
    return {"path": path, "exists": os.path.isdir(path), "free_bytes": usage.free, "total_bytes": usage.total}


def _jetson_facts(sysfs_root: str, warnings: List[str]) -> Optional[Dict[str, Any]]:
    """A Jetson's board, L4T, JetPack, power mode and clocks (runtime/jetson.py); None elsewhere, quietly."""
    from .jetson import is_jetson, jetson_facts

    if not is_jetson(sysfs_root):
        return None
    return jetson_facts(sysfs_root, warnings=warnings)


def agent_facts(workdir: Optional[str] = None, sysfs_root: str = "/") -> Dict[str, Any]:
    """Everything `--facts` prints: device facts, engines, GPU, disk, power probe, Jetson facts and whether
    `tegrastats` is on PATH (docs/contracts.md).

    A fact that cannot be read is null with a warning; this never raises.
    """
    from .engines import available_engines
    from .power import PowerError, detect_probe, open_probe

    warnings: List[str] = []
    facts: Dict[str, Any] = {
        "schema": FACTS_SCHEMA,
        "version": FACTS_VERSION,
        "device": {},
        "engines": [],
        "engine_packages": {},
        "gpu": None,
        "disk": None,
        "power_probe": None,
        "jetson": None,
        "tegrastats": False,
        "warnings": warnings,
    }
    steps = (
        ("device", device_facts),
        ("engines", available_engines),
        ("engine_packages", engine_packages),
        ("gpu", lambda: gpu_facts(sysfs_root)),
        ("disk", (lambda: disk_facts(workdir)) if workdir else (lambda: None)),
        ("power_probe", lambda: detect_probe(sysfs_root)),
        ("jetson", lambda: _jetson_facts(sysfs_root, warnings)),
        ("tegrastats", lambda: shutil.which("tegrastats") is not None),
    )
    for key, read in steps:
        try:
            facts[key] = read()
        except Exception as exc:  # one unreadable fact must not hide the others
            warnings.append("%s: %s: %s" % (key, type(exc).__name__, exc))
    if facts["power_probe"]:
        try:
            # present is not readable (RAPL is root-only since Linux 5.10): say so now, not mid-run
            warnings.extend(open_probe(facts["power_probe"], sysfs_root).warnings)
        except PowerError as exc:
            warnings.append(str(exc))
        except Exception as exc:
            warnings.append("power probe %s: %s: %s" % (facts["power_probe"], type(exc).__name__, exc))
    return facts
