"""Power probes: read a device's power sensors, sample them beside a run, and integrate energy.

Probes are registered by name (`@register_probe("x86-rapl")`) and read files under a configurable root
(`sysfs_root`, "/" on a device), so tests lay out the tree exactly as the device has it. A probe's
`read()` gives watts per rail plus "total". `PowerSampler` reads a probe in a sleeping thread during the
timed part of a run, measures an idle baseline before it, and summarises power and energy.

A probe that cannot read raises `PowerError` naming itself and the file; the agent then reports no power
(`null`) and a warning. Nothing here reports a number it did not read. Python 3.8-compatible.
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

TOTAL = "total"
SUM_RAIL = "sum"  # the summary's `rail` when the total is the sum of all rails
# rails that carry the whole module's input power (Jetson); when one exists it is the total
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "5V_IN")

clock = time.perf_counter

Sample = Tuple[float, Dict[str, float]]


class PowerError(RuntimeError):
    """A probe that cannot read; the message names the probe, the file and what to do."""


_PROBES: Dict[str, type] = {}


def register_probe(name: str) -> Callable[[type], type]:
    """Class decorator: register a Probe subclass under `name` (its `name` attribute is set to it)."""

    def decorate(cls: type) -> type:
        cls.name = name
        _PROBES[name] = cls
        return cls

    return decorate


def available_probes() -> List[str]:
    """Every registered probe name (whether this device has the sensor or not)."""
    return sorted(_PROBES)


def detect_probe(sysfs_root: str = "/") -> Optional[str]:
    """The first probe whose sensor files exist under `sysfs_root` (for `"probe": "auto"`), or None."""
    for name in _DETECT_ORDER:
        cls = _PROBES.get(name)
        try:
            if cls is not None and cls.present(sysfs_root):
                return name
        except OSError:
            continue
    return None


def open_probe(name: str, sysfs_root: str = "/") -> "Probe":
    """Open probe `name`; raises PowerError when it is unknown or cannot read its files."""
    cls = _PROBES.get(name)
    if cls is None:
        raise PowerError("unknown power probe %r; this agent knows %s" % (name, ", ".join(available_probes())))
    return cls(sysfs_root)


# -- reading files ------------------------------------------------------------------------------------------


def _join(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read_text(probe: str, path: str) -> str:
    try:
        with open(path, "r", encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except PermissionError as exc:
        raise PowerError(
            "power probe %s cannot read %s: permission denied (%s); run the agent as a user that may read "
            "it (root, or chmod a+r the file)" % (probe, path, exc.strerror or exc)
        ) from exc
    except OSError as exc:
        raise PowerError("power probe %s cannot read %s: %s" % (probe, path, exc.strerror or exc)) from exc


def _read_number(probe: str, path: str) -> float:
    text = _read_text(probe, path)
    try:
        return float(text)
    except ValueError:
        raise PowerError("power probe %s read %r from %s, which is not a number" % (probe, text[:40], path)) from None


def _pick_total(rails: Dict[str, float]) -> Tuple[str, float]:
    """The input rail when the device has one (it already includes every other rail), else the sum."""
    for name in INPUT_RAILS:
        if name in rails:
            return name, rails[name]
    if len(rails) == 1:
        name = next(iter(rails))
        return name, rails[name]
    return SUM_RAIL, sum(rails.values())


def _unique(name: str, taken: Dict[str, Any], device: str) -> str:
    # two sensors with the same label (rare) stay apart by their device
    return name if name not in taken else "%s@%s" % (name, device)


# -- probes -------------------------------------------------------------------------------------------------


class Probe(object):
    """Reads one device's power sensors. `read()` -> watts per rail plus "total".

    `cumulative` probes (energy counters) return the average power since the previous read (or since
    they were opened); the others return the power at the moment of the read.
    """

    name = ""
    cumulative = False

    def __init__(self, sysfs_root: str = "/") -> None:
        self.root = sysfs_root
        self.total_rail = SUM_RAIL  # which rail "total" is; set by the first read
        self.read_time = 0.0  # `clock()` when the last read's values were taken
        self.warnings: List[str] = []

    @classmethod
    def present(cls, sysfs_root: str) -> bool:
        """Whether this probe's sensor files exist (readable or not) under `sysfs_root`."""
        return False

    def read(self) -> Dict[str, float]:
        rails = self._read_rails()
        if not self.cumulative:
            self.read_time = clock()
        self.total_rail, total = _pick_total(rails)
        rails[TOTAL] = total
        return rails

    def _read_rails(self) -> Dict[str, float]:
        raise NotImplementedError

    def _warn_once(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


class _Channel(object):
    """One rail: watts from a power file (scaled), or from a voltage and a current file."""

    def __init__(
        self,
        rail: str,
        power: Optional[str] = None,
        power_scale: float = 1.0,
        volts: Optional[str] = None,
        amps: Optional[str] = None,
        va_scale: float = 1.0,
    ) -> None:
        self.rail = rail
        self.power, self.power_scale = power, power_scale
        self.volts, self.amps, self.va_scale = volts, amps, va_scale

    def watts(self, probe: str) -> float:
        if self.power is not None:
            return _read_number(probe, self.power) * self.power_scale
        return _read_number(probe, self.volts) * _read_number(probe, self.amps) * self.va_scale  # type: ignore[arg-type]


class _ChannelProbe(Probe):
    """A probe made of rails found once when it opens; opening also reads them once to prove it can."""

    def __init__(self, sysfs_root: str = "/") -> None:
        super(_ChannelProbe, self).__init__(sysfs_root)
        self.channels = self._discover()
        if not self.channels:
            raise PowerError(
                "power probe %s found no sensor under %s (looked for %s): this device does not have it, or "
                "sysfs_root is wrong" % (self.name, sysfs_root, " or ".join(self._patterns()))
            )
        self.read()

    def _discover(self) -> List[_Channel]:
        raise NotImplementedError

    @classmethod
    def _patterns(cls) -> Sequence[str]:
        return ()

    def _read_rails(self) -> Dict[str, float]:
        return dict((c.rail, c.watts(self.name)) for c in self.channels)


_INA3221_HWMON = "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label"
_INA3221_IIO = "/sys/bus/i2c/devices/*/iio:device*/rail_name_*"


@register_probe("jetson-ina3221")
class Ina3221Probe(_ChannelProbe):
    """Jetson INA3221 rails: JetPack 5+ hwmon (`in{N}_label`, `in{N}_input` mV, `curr{N}_input` mA) or
    JetPack 4 iio (`rail_name_{N}`, `in_power{N}_input` mW, or `in_voltage{N}_input` x `in_current{N}_input`).
    The total is VDD_IN / POM_5V_IN when present (the module's input), else the sum of the rails."""

    @classmethod
    def _patterns(cls) -> Sequence[str]:
        return (_INA3221_HWMON, _INA3221_IIO)

    @classmethod
    def present(cls, sysfs_root: str) -> bool:
        return any(glob.glob(_join(sysfs_root, p)) for p in cls._patterns())

    def _discover(self) -> List[_Channel]:
        channels: Dict[str, _Channel] = {}
        for label_path in sorted(glob.glob(_join(self.root, _INA3221_HWMON))):
            folder = os.path.dirname(label_path)
            index = re.match(r"in(\d+)_label$", os.path.basename(label_path))
            volts = os.path.join(folder, "in%s_input" % index.group(1)) if index else ""
            amps = os.path.join(folder, "curr%s_input" % index.group(1)) if index else ""
            # in4-in7 are shunt voltages and their sum, and curr4 a summed current: only 1-3 are rails
            if not index or int(index.group(1)) > 3 or not os.path.exists(amps) or not os.path.exists(volts):
                continue
            label = _read_text(self.name, label_path)
            if not label or label.upper() == "NC":  # "NC": the channel is not connected on this board
                continue
            device = os.path.basename(os.path.dirname(os.path.dirname(folder)))
            rail = _unique(label, channels, device)
            channels[rail] = _Channel(rail, volts=volts, amps=amps, va_scale=1e-6)  # mV x mA
        for name_path in sorted(glob.glob(_join(self.root, _INA3221_IIO))):
            folder = os.path.dirname(name_path)
            index = re.match(r"rail_name_(\d+)$", os.path.basename(name_path))
            if not index:
                continue
            n = index.group(1)
            label = _read_text(self.name, name_path)
            if not label or label.upper() == "NC":
                continue
            rail = _unique(label, channels, os.path.basename(os.path.dirname(folder)))
            power = os.path.join(folder, "in_power%s_input" % n)
            if os.path.exists(power):
                channels[rail] = _Channel(rail, power=power, power_scale=1e-3)  # mW
            else:
                volts = os.path.join(folder, "in_voltage%s_input" % n)
                amps = os.path.join(folder, "in_current%s_input" % n)
                channels[rail] = _Channel(rail, volts=volts, amps=amps, va_scale=1e-6)  # mV x mA
        return list(channels.values())


_HWMON_NAMES = "/sys/class/hwmon/hwmon*/name"


@register_probe("jetson-ina238")
class Ina238Probe(_ChannelProbe):
    """Jetson Thor INA238 monitors (hwmon `name` "ina238"): `power1_input` (uW) when present, else
    `in1_input` (mV) x `curr1_input` (mA). A rail is named by the hwmon `label` (or `in1_label`) file,
    else by its hwmon folder."""

    @classmethod
    def _patterns(cls) -> Sequence[str]:
        return (_HWMON_NAMES + ' = "ina238"',)

    @classmethod
    def _folders(cls, sysfs_root: str) -> List[str]:
        folders = []
        for name_path in sorted(glob.glob(_join(sysfs_root, _HWMON_NAMES))):
            try:
                with open(name_path, "r", encoding="ascii", errors="replace") as handle:
                    if handle.read().strip() == "ina238":
                        folders.append(os.path.dirname(name_path))
            except OSError:
                continue
        return folders

    @classmethod
    def present(cls, sysfs_root: str) -> bool:
        return bool(cls._folders(sysfs_root))

    def _discover(self) -> List[_Channel]:
        channels: Dict[str, _Channel] = {}
        for folder in self._folders(self.root):
            label = None
            for name in ("label", "in1_label"):
                if os.path.exists(os.path.join(folder, name)):
                    label = _read_text(self.name, os.path.join(folder, name))
                    break
            rail = _unique(label or os.path.basename(folder), channels, os.path.basename(folder))
            power = os.path.join(folder, "power1_input")
            if os.path.exists(power):
                channels[rail] = _Channel(rail, power=power, power_scale=1e-6)  # uW
            else:
                volts, amps = os.path.join(folder, "in1_input"), os.path.join(folder, "curr1_input")
                channels[rail] = _Channel(rail, volts=volts, amps=amps, va_scale=1e-6)  # mV x mA
        return list(channels.values())


_BATTERY = "/sys/class/power_supply/battery"
_NOT_CONSUMPTION = ("charging", "full", "not charging")


@register_probe("android-battery")
class AndroidBatteryProbe(Probe):
    """Android's battery fuel gauge: `current_now` (uA) x `voltage_now` (uV).

    Vendors disagree on the sign of the discharge current, so the magnitude is used. While the battery
    charges (or a charger holds it full) the gauge does not see the device's consumption: a warning says so.
    """

    def __init__(self, sysfs_root: str = "/") -> None:
        super(AndroidBatteryProbe, self).__init__(sysfs_root)
        folder = _join(sysfs_root, _BATTERY)
        self.current = os.path.join(folder, "current_now")
        self.voltage = os.path.join(folder, "voltage_now")
        self.status_path = os.path.join(folder, "status")
        self.status: Optional[str] = None
        self.read()

    @classmethod
    def present(cls, sysfs_root: str) -> bool:
        return os.path.exists(_join(sysfs_root, _BATTERY + "/current_now"))

    def _read_rails(self) -> Dict[str, float]:
        if os.path.exists(self.status_path):
            self.status = _read_text(self.name, self.status_path)
            if self.status.lower() in _NOT_CONSUMPTION:
                self._warn_once(
                    "power probe %s: the battery status is %r; power read while a charger is connected is not "
                    "the device's consumption (unplug it to measure)" % (self.name, self.status)
                )
        amps = abs(_read_number(self.name, self.current)) * 1e-6
        volts = _read_number(self.name, self.voltage) * 1e-6
        return {"battery": amps * volts}


_RAPL = "/sys/class/powercap/intel-rapl:*"


@register_probe("x86-rapl")
class RaplProbe(Probe):
    """x86 RAPL package energy counters (`energy_uj`, wrapping at `max_energy_range_uj`): the power is
    the energy used since the previous read over the time between them; packages are summed."""

    cumulative = True

    def __init__(self, sysfs_root: str = "/") -> None:
        super(RaplProbe, self).__init__(sysfs_root)
        self.domains: List[Tuple[str, str, Optional[float]]] = []  # rail, energy file, wrap range
        folders = [f for f in sorted(glob.glob(_join(sysfs_root, _RAPL))) if os.path.basename(f).count(":") == 1]
        named = [(f, _read_text(self.name, os.path.join(f, "name"))) for f in folders]
        for folder, rail in named:
            if not rail.startswith("package"):
                continue  # psys overlaps the packages; dram and core/uncore are sub-domains
            wrap_path = os.path.join(folder, "max_energy_range_uj")
            wrap = _read_number(self.name, wrap_path) if os.path.exists(wrap_path) else None
            self.domains.append((rail, os.path.join(folder, "energy_uj"), wrap))
        if not self.domains:
            raise PowerError(
                "power probe %s found no package domain under %s: this is not an x86 machine with RAPL, "
                "or the intel_rapl kernel module is not loaded (modprobe intel_rapl_msr)"
                % (self.name, _join(sysfs_root, _RAPL))
            )
        self._last = self._energies()
        self.read_time = self._last[0]
        self.last_energy_j: Dict[str, float] = {}  # per rail, between the last two reads

    @classmethod
    def present(cls, sysfs_root: str) -> bool:
        return bool(glob.glob(_join(sysfs_root, _RAPL + "/energy_uj")))

    def _energies(self) -> Tuple[float, List[float]]:
        values = [_read_number(self.name, path) for _, path, _ in self.domains]
        return clock(), values

    def _read_rails(self) -> Dict[str, float]:
        t0, before = self._last
        t1, after = self._energies()
        self._last = (t1, after)
        self.read_time = t1  # the interval the watts average over ends here, to the tick
        rails = {}
        for i, (rail, path, wrap) in enumerate(self.domains):
            used = after[i] - before[i]
            if used < 0:
                if wrap is None:
                    raise PowerError(
                        "power probe %s: %s went backwards and %s has no max_energy_range_uj to unwrap it"
                        % (self.name, path, os.path.dirname(path))
                    )
                used += wrap
            self.last_energy_j[rail] = used * 1e-6
            rails[rail] = used * 1e-6 / (t1 - t0) if t1 > t0 else 0.0
        return rails


_PM_LINE = re.compile(r"^(CPU|GPU|ANE) Power:\s*([0-9.]+)\s*(mW|W)\s*$")
_PM_COMBINED = re.compile(r"^Combined Power \([^)]*\):\s*([0-9.]+)\s*(mW|W)\s*$")


def parse_powermetrics(text: str) -> Dict[str, float]:
    """Watts from `powermetrics --samplers cpu_power,gpu_power,ane_power` text: cpu, gpu, ane and total
    (the "Combined Power" line, else their sum). The first line of each kind wins: the GPU sampler
    repeats "GPU Power". Raises PowerError when no power line is present."""
    rails: Dict[str, float] = {}
    combined = None
    for line in text.splitlines():
        line = line.strip()
        match = _PM_LINE.match(line)
        if match:
            key = match.group(1).lower()
            if key not in rails:
                rails[key] = float(match.group(2)) * (1e-3 if match.group(3) == "mW" else 1.0)
            continue
        match = _PM_COMBINED.match(line)
        if match and combined is None:
            combined = float(match.group(1)) * (1e-3 if match.group(2) == "mW" else 1.0)
    if not rails and combined is None:
        raise PowerError("power probe macos-powermetrics: no 'CPU Power' or 'Combined Power' line in its output")
    rails[TOTAL] = combined if combined is not None else sum(rails.values())
    return rails


@register_probe("macos-powermetrics")
class PowermetricsProbe(Probe):
    """Apple silicon CPU/GPU/ANE power from `powermetrics` (each read samples for `window_ms`). It needs
    root: the agent runs it with `sudo -n` when not root, which works only with a NOPASSWD sudoers rule."""

    window_ms = 100

    def __init__(self, sysfs_root: str = "/") -> None:
        super(PowermetricsProbe, self).__init__(sysfs_root)
        if platform.system() != "Darwin":
            raise PowerError("power probe %s runs only on macOS, not %s" % (self.name, platform.system()))
        tool = shutil.which("powermetrics") or "/usr/bin/powermetrics"
        self.command = [tool, "--samplers", "cpu_power,gpu_power,ane_power", "-i", str(self.window_ms), "-n", "1"]
        if os.geteuid() != 0:
            self.command = ["sudo", "-n"] + self.command
        self.read()

    @classmethod
    def present(cls, sysfs_root: str) -> bool:
        return platform.system() == "Darwin" and bool(shutil.which("powermetrics"))

    def read(self) -> Dict[str, float]:
        try:
            run = subprocess.run(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PowerError("power probe %s cannot run %s: %s" % (self.name, self.command[0], exc)) from exc
        if run.returncode != 0:
            raise PowerError(
                "power probe %s: %s failed (%s); it needs root: run the agent with sudo, or allow powermetrics "
                "in sudoers with NOPASSWD"
                % (self.name, " ".join(self.command), run.stderr.decode("utf-8", "replace").strip()[:200])
            )
        rails = parse_powermetrics(run.stdout.decode("utf-8", "replace"))
        self.read_time = clock()
        self.total_rail = "combined"
        return rails


# auto-detection order: the most specific sensor first
_DETECT_ORDER = ("jetson-ina238", "jetson-ina3221", "x86-rapl", "android-battery", "macos-powermetrics")


# -- sampling and energy ------------------------------------------------------------------------------------


def integrate(samples: Sequence[Sample], cumulative: bool) -> Tuple[float, Dict[str, float]]:
    """(seconds covered, joules per rail) from timed readings.

    Cumulative readings are averages over the interval that ends at them, so the first reading only
    marks the start; instantaneous readings are joined by trapezoids.
    """
    if len(samples) < 2:
        return 0.0, {}
    rails = list(samples[-1][1])
    energy = dict((r, 0.0) for r in rails)
    for i in range(1, len(samples)):
        (t0, w0), (t1, w1) = samples[i - 1], samples[i]
        dt = t1 - t0
        for r in rails:
            energy[r] += (w1[r] if cumulative else 0.5 * (w0[r] + w1[r])) * dt
    return samples[-1][0] - samples[0][0], energy


class PowerSampler(object):
    """Reads a probe every `interval_s` in a sleeping thread between `start()` and `stop()`.

    Errors never escape: the first one is kept in `error` and the summary is then None, because a
    window with a hole in it is not a measurement.
    """

    def __init__(self, probe: Probe, interval_s: float = 0.05) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0, got %r" % (interval_s,))
        self.probe = probe
        self.interval_s = float(interval_s)
        self.samples: List[Sample] = []
        self.idle_w: Optional[float] = None
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def warnings(self) -> List[str]:
        return list(self.probe.warnings)

    def _read(self) -> Optional[Sample]:
        try:
            watts = self.probe.read()
        except PowerError as exc:
            self.error = self.error or str(exc)
            return None
        except Exception as exc:  # a driver returning garbage must not cost the run
            self.error = self.error or "power probe %s: %s: %s" % (self.probe.name, type(exc).__name__, exc)
            return None
        # the probe's own time stamp: for energy counters, watts x interval then gives back the counted energy
        return self.probe.read_time, watts

    def idle_baseline(self, seconds: float) -> Optional[float]:
        """Average total watts over `seconds` of doing nothing, read in the calling thread; None for 0 s."""
        if seconds <= 0 or self.error:
            return None
        first = self._read()
        if first is None:
            return None
        samples = [first]
        end = first[0] + seconds
        while True:
            left = end - clock()
            if left <= 0:
                break
            time.sleep(min(self.interval_s, left))
            sample = self._read()
            if sample is None:
                return None
            samples.append(sample)
        duration, energy = integrate(samples, self.probe.cumulative)
        self.idle_w = energy[TOTAL] / duration if duration > 0 else None
        return self.idle_w

    def start(self) -> None:
        """Take the first reading now (the window starts here) and keep reading in a thread."""
        self.samples = []
        self._stop.clear()
        if self.error:
            return
        first = self._read()
        if first is None:
            return
        self.samples.append(first)
        self._thread = threading.Thread(target=self._loop, name="edgekit-power")
        self._thread.daemon = True
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            sample = self._read()
            if sample is None:
                return
            self.samples.append(sample)

    def stop(self) -> List[Sample]:
        """Stop the thread, take the last reading now (the window ends here) and return the readings."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return self.samples
        thread.join(10.0)
        if thread.is_alive():
            self.error = self.error or "power probe %s: a read did not return within 10 s" % self.probe.name
            return self.samples
        if not self.error:
            last = self._read()
            if last is not None:
                self.samples.append(last)
        return self.samples

    def summary(self, frames: int) -> Optional[Dict[str, Any]]:
        """The result's `power` block for a timed part of `frames` frames; None when it was not measured."""
        if self.error or len(self.samples) < 2:
            return None
        duration, energy = integrate(self.samples, self.probe.cumulative)
        if duration <= 0:
            return None
        avg = energy[TOTAL] / duration
        active = max(0.0, avg - self.idle_w) if self.idle_w is not None else None
        return {
            "probe": self.probe.name,
            "rail": self.probe.total_rail,
            "idle_w": self.idle_w,
            "avg_w": avg,
            "active_w": active,
            "energy_j": energy[TOTAL],
            "energy_per_inference_mj": energy[TOTAL] / frames * 1e3 if frames else None,
            "duration_s": duration,
            "samples": len(self.samples) - 1 if self.probe.cumulative else len(self.samples),
            "rails_avg_w": dict((r, e / duration) for r, e in sorted(energy.items()) if r != TOTAL),
        }
