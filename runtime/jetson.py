"""Jetson facts and tools: board, L4T and JetPack versions, power mode, clocks, tegrastats, camera pipelines.

Every file is read under `sysfs_root` ("/" on a device) so tests lay out a tree as on a Jetson, and every
command goes through `run` (argv -> stdout text, or None when it cannot run) so tests can stand in for
`nvpmodel` or `dpkg-query`. Nothing here raises for a missing file or command: the fact is None and a
warning says why. Python 3.8-compatible.

Paths (documented by NVIDIA's Jetson Linux guides, or present on every JetPack since 4):
- board: /proc/device-tree/model; L4T: /etc/nv_tegra_release; JetPack: `dpkg-query -W nvidia-jetpack`
- power mode: `nvpmodel -q`, else /var/lib/nvpmodel/status ("pmode:0002") named by /etc/nvpmodel.conf
- GPU clock: devfreq `cur_freq`/`min_freq`/`max_freq` (Hz) of the GPU device under /sys/class/devfreq
  (17000000.ga10b on Orin with JetPack 5, 17000000.gpu with JetPack 6, 17000000.gv11b on Xavier,
  57000000.gpu on Nano/TX1, 17000000.gp10b on TX2), else /sys/devices/gpu.0/devfreq/*
- clocks locked (jetson_clocks): jetson_clocks raises the GPU's devfreq min_freq to its max_freq, so
  locked means min == max == cur
- EMC (memory) clock: /sys/kernel/debug/bpmp/debug/clk/emc/rate (Xavier/Orin, BPMP clock debugfs) or
  /sys/kernel/debug/clk/emc/clk_rate (Nano/TX1); debugfs is root-only, so as a user this is None + a warning
"""

import glob
import os
import re
import shutil
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

Runner = Callable[[List[str]], Optional[str]]

GPU_DEVFREQ_NAMES = ("ga10b", "gv11b", "gp10b", "gm20b", "gpu")
EMC_RATE_PATHS = ("/sys/kernel/debug/bpmp/debug/clk/emc/rate", "/sys/kernel/debug/clk/emc/clk_rate")
COMMAND_TIMEOUT_S = 5.0


def _path(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read(root: str, path: str, warnings: List[str], quiet_missing: bool = False) -> Optional[str]:
    full = _path(root, path)
    try:
        with open(full, "r", encoding="utf-8", errors="replace") as handle:
            return handle.read().replace("\x00", "").strip()
    except FileNotFoundError:
        if not quiet_missing:
            warnings.append("%s does not exist" % full)
    except PermissionError:
        warnings.append("%s: permission denied (root only; run the agent as root to read it)" % full)
    except OSError as exc:
        warnings.append("%s: %s" % (full, exc.strerror or exc))
    return None


def run_command(argv: List[str]) -> Optional[str]:
    """stdout of a command found on PATH, or None when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


# -- versions --------------------------------------------------------------------------------------------


def parse_nv_tegra_release(text: str) -> Optional[str]:
    """'# R35 (release), REVISION: 4.1, GCID: …' -> '35.4.1'."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    major, minor, patch = match.group(1), match.group(2), match.group(3) or "0"
    return "%s.%s.%s" % (major, minor, patch)


def parse_dpkg_jetpack(text: str) -> Optional[str]:
    """'nvidia-jetpack\\t5.1.2-b104' (dpkg-query -W) -> '5.1.2'."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("nvidia-jetpack"):
            return parts[1].split("-")[0].split("+")[0] or None
    return None


def parse_nvpmodel(text: str) -> Optional[Dict[str, Any]]:
    """`nvpmodel -q`: 'NV Power Mode: MAXN' then the mode id on its own line -> {'name': 'MAXN', 'id': 0}.
    JetPack 5 may print 'NV Fan Mode:quiet' first; it is ignored."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        match = re.match(r"NV Power Mode\s*:\s*(.+)$", line)
        if match:
            mode_id = int(lines[i + 1]) if i + 1 < len(lines) and lines[i + 1].isdigit() else None
            return {"name": match.group(1).strip(), "id": mode_id}
    return None


def _nvpmodel_from_files(root: str, warnings: List[str]) -> Optional[Dict[str, Any]]:
    status = _read(root, "/var/lib/nvpmodel/status", warnings)  # "pmode:0002 fmode:quiet"
    match = re.search(r"pmode:(\d+)", status or "")
    if not match:
        return None
    mode_id = int(match.group(1))
    conf = _read(root, "/etc/nvpmodel.conf", warnings) or ""
    names = dict((int(i), n) for i, n in re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)", conf))
    return {"name": names.get(mode_id), "id": mode_id}


# -- clocks ----------------------------------------------------------------------------------------------


def _gpu_devfreq_dir(root: str) -> Optional[str]:
    candidates = sorted(glob.glob(_path(root, "/sys/class/devfreq/*"))) + sorted(
        glob.glob(_path(root, "/sys/devices/gpu.0/devfreq/*"))
    )
    for folder in candidates:
        name = os.path.basename(folder).lower()
        if any(n in name for n in GPU_DEVFREQ_NAMES) and os.path.exists(os.path.join(folder, "cur_freq")):
            return folder
    return None


def gpu_clock(sysfs_root: str = "/", warnings: Optional[List[str]] = None) -> Optional[Dict[str, Any]]:
    """{'device', 'cur_hz', 'min_hz', 'max_hz', 'locked'} from the GPU's devfreq, or None."""
    warnings = warnings if warnings is not None else []
    folder = _gpu_devfreq_dir(sysfs_root)
    if folder is None:
        warnings.append("no GPU devfreq under %s: GPU clock unknown" % _path(sysfs_root, "/sys/class/devfreq"))
        return None
    values: Dict[str, Optional[int]] = {}
    for key in ("cur_freq", "min_freq", "max_freq"):
        text = _read(folder, key, warnings)
        values[key] = int(text) if text and text.isdigit() else None
    cur, low, high = values["cur_freq"], values["min_freq"], values["max_freq"]
    locked = None if None in (cur, low, high) else (low == high == cur)
    return {"device": os.path.basename(folder), "cur_hz": cur, "min_hz": low, "max_hz": high, "locked": locked}


def emc_rate_hz(sysfs_root: str = "/", warnings: Optional[List[str]] = None) -> Optional[int]:
    """The memory controller clock in Hz from BPMP debugfs (root only), or None with a warning."""
    warnings = warnings if warnings is not None else []
    seen: List[str] = []
    for path in EMC_RATE_PATHS:
        text = _read(sysfs_root, path, seen, quiet_missing=True)
        if text and text.isdigit():
            return int(text)
    warnings.extend(seen or ["EMC clock not readable (%s): run as root to read debugfs" % ", ".join(EMC_RATE_PATHS)])
    return None


# -- facts -----------------------------------------------------------------------------------------------


def is_jetson(sysfs_root: str = "/") -> bool:
    if os.path.exists(_path(sysfs_root, "/etc/nv_tegra_release")):
        return True
    model = _read(sysfs_root, "/proc/device-tree/model", [], quiet_missing=True) or ""
    return "jetson" in model.lower()


def jetson_facts(
    sysfs_root: str = "/", run: Runner = run_command, warnings: Optional[List[str]] = None
) -> Optional[Dict[str, Any]]:
    """Board, L4T, JetPack, power mode, GPU and EMC clocks; None (with a warning) when this is no Jetson."""
    warnings = warnings if warnings is not None else []
    if not is_jetson(sysfs_root):
        warnings.append("not a Jetson: no %s" % _path(sysfs_root, "/etc/nv_tegra_release"))
        return None
    release = _read(sysfs_root, "/etc/nv_tegra_release", warnings)
    l4t = parse_nv_tegra_release(release) if release else None
    if release and l4t is None:
        warnings.append("cannot parse the L4T release from %r" % release[:80])
    dpkg = run(["dpkg-query", "-W", "nvidia-jetpack"])
    jetpack = parse_dpkg_jetpack(dpkg) if dpkg else None
    if jetpack is None:
        warnings.append("JetPack version unknown: the nvidia-jetpack package is not installed (dpkg-query -W)")
    query = run(["nvpmodel", "-q"])
    power_mode = parse_nvpmodel(query) if query else None
    if power_mode is None:
        power_mode = _nvpmodel_from_files(sysfs_root, warnings)
    return {
        "board": _read(sysfs_root, "/proc/device-tree/model", warnings),
        "l4t": l4t,
        "jetpack": jetpack,
        "power_mode": power_mode,
        "gpu_clock": gpu_clock(sysfs_root, warnings),
        "emc_hz": emc_rate_hz(sysfs_root, warnings),
    }


# -- tegrastats ------------------------------------------------------------------------------------------

_TIME_RE = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)\s")
_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP_RE = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU_RE = re.compile(r"\bCPU \[([^\]]*)\]")
_EMC_RE = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D_RE = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+)[^\s]*)?")
_TEMP_RE = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
# JetPack 5+: "VDD_IN 5251mW/8535mW"; JetPack 4: "POM_5V_IN 2110/2110" and "VDD_IN 3917/3917" (mW too)
_RAIL_RE = re.compile(r"(?:^|\s)([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NO_SENSOR_C = -256.0  # tegrastats prints CV0@-256C for a zone without a sensor


def parse_tegrastats(line: str) -> Optional[Dict[str, Any]]:
    """One tegrastats line (JetPack 4, 5 or 6) as numbers, or None when it is not one.

    Keys: time (JetPack 5+ prefix, else None), ram_used_mb, ram_total_mb, swap_used_mb, swap_total_mb,
    cpu ([{'load_pct', 'freq_mhz'} or None for an offline core]), emc_pct, emc_mhz, gr3d_pct, gr3d_mhz,
    temps_c ({zone: °C}), rails_mw ({rail: {'now', 'avg'}}). Absent fields are None / empty."""
    ram = _RAM_RE.search(line)
    if ram is None:
        return None
    swap = _SWAP_RE.search(line)
    stamp = _TIME_RE.match(line)
    cpus: List[Optional[Dict[str, Optional[int]]]] = []
    cpu = _CPU_RE.search(line)
    for item in cpu.group(1).split(",") if cpu else []:
        match = re.match(r"\s*(\d+)%(?:@(\d+))?", item)
        cpus.append({"load_pct": int(match.group(1)), "freq_mhz": _int(match.group(2))} if match else None)
    emc = _EMC_RE.search(line)
    gr3d = _GR3D_RE.search(line)
    temps = dict((n, float(v)) for n, v in _TEMP_RE.findall(line) if float(v) != _NO_SENSOR_C)
    rails = dict((n, {"now": int(a), "avg": int(b)}) for n, a, b in _RAIL_RE.findall(line) if n not in ("NC", "RAM"))
    return {
        "time": stamp.group(1) if stamp else None,
        "ram_used_mb": int(ram.group(1)),
        "ram_total_mb": int(ram.group(2)),
        "swap_used_mb": int(swap.group(1)) if swap else None,
        "swap_total_mb": int(swap.group(2)) if swap else None,
        "cpu": cpus,
        "emc_pct": int(emc.group(1)) if emc else None,
        "emc_mhz": _int(emc.group(2)) if emc else None,
        "gr3d_pct": int(gr3d.group(1)) if gr3d else None,
        "gr3d_mhz": _int(gr3d.group(2)) if gr3d else None,
        "temps_c": temps,
        "rails_mw": rails,
    }


def _int(text: Optional[str]) -> Optional[int]:
    return int(text) if text else None


class TegrastatsSampler(object):
    """Runs `tegrastats --interval MS` beside a run and keeps its lines with their `perf_counter` time.

    A context manager; without tegrastats (not a Jetson) it records nothing and says so in `warnings`.
    `command` replaces the tegrastats argv (tests)."""

    def __init__(self, interval_ms: int = 100, command: Optional[List[str]] = None) -> None:
        if interval_ms <= 0:
            raise ValueError("tegrastats interval_ms must be > 0, got %r" % interval_ms)
        self.command = command or ["tegrastats", "--interval", str(int(interval_ms))]
        self.lines: List[Tuple[float, str]] = []
        self.warnings: List[str] = []
        self._process: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def start(self) -> "TegrastatsSampler":
        if shutil.which(self.command[0]) is None and not os.path.isfile(self.command[0]):
            self.warnings.append("%s not found: not a Jetson, or JetPack's tools are not on PATH" % self.command[0])
            return self
        try:
            self._process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, bufsize=1
            )
        except OSError as exc:
            self.warnings.append("cannot start %s: %s" % (" ".join(self.command), exc))
            return self
        self._thread = threading.Thread(target=self._read, name="edgekit-tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            with self._lock:
                self.lines.append((time.perf_counter(), line.rstrip("\n")))

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()  # tegrastats exits on SIGTERM; kill only if it hangs
                try:
                    process.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def samples(self) -> List[Tuple[float, Dict[str, Any]]]:
        """(time, parsed line) for every line that parsed."""
        with self._lock:
            lines = list(self.lines)
        parsed = [(t, parse_tegrastats(line)) for t, line in lines]
        return [(t, p) for t, p in parsed if p is not None]

    def __enter__(self) -> "TegrastatsSampler":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


# -- camera pipelines (for the plan's source kind "gstreamer") -------------------------------------------

_APPSINK = "appsink drop=true max-buffers=1"  # newest frame only: a slow model never sees stale frames


def _positive(name: str, value: Any, low: int = 1, high: Optional[int] = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = "%d..%d" % (low, high) if high is not None else ">= %d" % low
        raise ValueError("camera %s must be an integer %s, got %r" % (name, bound, value))
    return value


def csi_pipeline(
    sensor_id: int = 0,
    width: int = 1920,
    height: int = 1080,
    fps: int = 30,
    flip_method: int = 0,
    out_width: Optional[int] = None,
    out_height: Optional[int] = None,
) -> str:
    """A CSI camera through Argus (nvarguscamerasrc), scaled and converted by the VIC, ending in BGR frames."""
    _positive("sensor_id", sensor_id, low=0)
    for name, value in (("width", width), ("height", height), ("fps", fps)):
        _positive(name, value)
    _positive("flip_method", flip_method, low=0, high=7)
    out_w = _positive("out_width", out_width) if out_width is not None else width
    out_h = _positive("out_height", out_height) if out_height is not None else height
    return (
        "nvarguscamerasrc sensor-id=%d ! video/x-raw(memory:NVMM),width=%d,height=%d,format=NV12,framerate=%d/1 ! "
        "nvvidconv flip-method=%d ! video/x-raw,width=%d,height=%d,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! %s" % (sensor_id, width, height, fps, flip_method, out_w, out_h, _APPSINK)
    )


def v4l2_pipeline(
    device: Union[int, str] = 0, width: int = 640, height: int = 480, fps: int = 30, mjpeg: bool = False
) -> str:
    """A USB (V4L2) camera; `mjpeg` asks the camera for JPEG, which most give at higher resolutions and rates."""
    if isinstance(device, int) and not isinstance(device, bool):
        device = "/dev/video%d" % _positive("device", device, low=0)
    if not isinstance(device, str) or not re.match(r"^/dev/[A-Za-z0-9_./:+-]+$", device) or ".." in device:
        raise ValueError("camera device must be a number or a /dev path such as /dev/video0, got %r" % (device,))
    for name, value in (("width", width), ("height", height), ("fps", fps)):
        _positive(name, value)
    caps = "width=%d,height=%d,framerate=%d/1" % (width, height, fps)
    decode = "image/jpeg,%s ! jpegdec" % caps if mjpeg else "video/x-raw,%s" % caps
    return "v4l2src device=%s ! %s ! videoconvert ! video/x-raw,format=BGR ! %s" % (device, decode, _APPSINK)
