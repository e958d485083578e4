"""Power probes against sensor trees laid out as on each device, and the sampler integrating energy while the
test rewrites the sensor files."""

import contextlib
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from power_testkit import (
    INA3221_HWMON,
    POWERMETRICS_SAMPLE,
    RAPL_RANGE_UJ,
    android_battery,
    jetpack4_ina3221,
    jetpack5_ina3221,
    put,
    rapl,
    set_ina3221,
    set_rapl,
    thor_ina238,
)

from edgekit.runtime.power import (
    PowerError,
    PowerSampler,
    available_probes,
    detect_probe,
    integrate,
    open_probe,
    parse_powermetrics,
)

PROBES = ["android-battery", "jetson-ina238", "jetson-ina3221", "macos-powermetrics", "x86-rapl"]


def test_registry_lists_every_probe_and_detects_none_on_an_empty_tree(tmp_path):
    assert available_probes() == PROBES
    assert detect_probe(str(tmp_path)) is None
    with pytest.raises(PowerError, match="unknown power probe 'rapl'; this agent knows android-battery, "):
        open_probe("rapl", str(tmp_path))


@pytest.mark.parametrize(
    "build, name",
    [
        (jetpack5_ina3221, "jetson-ina3221"),
        (jetpack4_ina3221, "jetson-ina3221"),
        (thor_ina238, "jetson-ina238"),
        (rapl, "x86-rapl"),
        (lambda root: android_battery(root, -450000), "android-battery"),
    ],
)
def test_detect_probe_finds_each_device(tmp_path, build, name):
    build(tmp_path)
    assert detect_probe(str(tmp_path)) == name


# -- Jetson ---------------------------------------------------------------------------------------------------


def test_jetpack5_hwmon_rails_and_the_input_rail_as_total(tmp_path):
    probe = open_probe("jetson-ina3221", str(jetpack5_ina3221(tmp_path)))
    watts = probe.read()
    # channels 4-7 (shunt voltages, their sum, the summed current) are not rails
    assert set(watts) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC", "total"}
    assert watts["VDD_IN"] == pytest.approx(5.072 * 1.184)
    assert watts["VDD_CPU_GPU_CV"] == pytest.approx(5.064 * 0.256)
    assert watts["VDD_SOC"] == pytest.approx(5.072 * 0.392)
    assert watts["total"] == watts["VDD_IN"] and probe.total_rail == "VDD_IN"  # not the sum: VDD_IN holds them
    set_ina3221(tmp_path, 1, 5000, 2000)
    assert probe.read()["total"] == pytest.approx(10.0)


def test_jetpack5_without_an_input_rail_sums_the_rails(tmp_path):
    jetpack5_ina3221(tmp_path, {"VDD_GPU_SOC": (5000, 1000), "VDD_CPU_CV": (5000, 400), "VIN_SYS_5V0": (5000, 600)})
    probe = open_probe("jetson-ina3221", str(tmp_path))
    assert probe.read()["total"] == pytest.approx(10.0) and probe.total_rail == "sum"


def test_jetpack4_iio_power_files_and_voltage_current_fallback(tmp_path):
    probe = open_probe("jetson-ina3221", str(jetpack4_ina3221(tmp_path / "a")))
    watts = probe.read()
    assert watts == pytest.approx(
        {"POM_5V_IN": 2.808, "POM_5V_GPU": 0.2, "POM_5V_CPU": 0.601, "total": 2.808}
    )  # in_power (mW) as the driver rounds it
    assert probe.total_rail == "POM_5V_IN"
    probe = open_probe("jetson-ina3221", str(jetpack4_ina3221(tmp_path / "b", with_power=False)))
    assert probe.read()["POM_5V_IN"] == pytest.approx(5.016 * 0.560)


def test_thor_ina238_prefers_power1_input(tmp_path):
    probe = open_probe("jetson-ina238", str(thor_ina238(tmp_path)))
    watts = probe.read()
    assert watts == pytest.approx({"hwmon3": 30.0, "hwmon4": 5.0, "total": 35.0})
    assert probe.total_rail == "sum"
    put(tmp_path / "sys/class/hwmon/hwmon3/label", "VDD_IN")  # a labelled input rail becomes the total
    probe = open_probe("jetson-ina238", str(tmp_path))
    assert probe.read()["total"] == pytest.approx(30.0) and probe.total_rail == "VDD_IN"


# -- Android --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("current_ua", [-450000, 450000], ids=["discharge-negative", "discharge-positive"])
def test_android_battery_either_sign_convention(tmp_path, current_ua):
    probe = open_probe("android-battery", str(android_battery(tmp_path, current_ua, 3900000)))
    assert probe.read() == pytest.approx({"battery": 0.45 * 3.9, "total": 0.45 * 3.9})
    assert probe.total_rail == "battery" and probe.warnings == []


def test_android_battery_while_charging_warns(tmp_path):
    probe = open_probe("android-battery", str(android_battery(tmp_path, 800000, 4200000, status="Charging")))
    probe.read()
    assert len(probe.warnings) == 1  # once, however many reads
    assert "'Charging'" in probe.warnings[0] and "not the device's consumption" in probe.warnings[0]


# -- RAPL -----------------------------------------------------------------------------------------------------


def test_rapl_sums_packages_and_unwraps_the_counter(tmp_path):
    start = RAPL_RANGE_UJ - 1000000  # package-0 is 1 J before its wrap
    rapl(tmp_path, packages=(0, 1), energy_uj={0: start, 1: 5000000})
    before = time.perf_counter()
    probe = open_probe("x86-rapl", str(tmp_path))
    opened = time.perf_counter()
    time.sleep(0.05)
    set_rapl(tmp_path, 0, 2000000)  # wrapped: 1 J to the top, then 2 J
    set_rapl(tmp_path, 1, 6500000)
    written = time.perf_counter()
    watts = probe.read()
    after = time.perf_counter()
    assert probe.last_energy_j == pytest.approx({"package-0": 3.0, "package-1": 1.5})
    assert set(watts) == {"package-0", "package-1", "total"}  # core, uncore and dram are inside the packages
    # the probe's own interval lies between what the test saw on either side of it
    assert 3.0 / (after - before) <= watts["package-0"] <= 3.0 / (written - opened)
    assert watts["total"] == pytest.approx(watts["package-0"] + watts["package-1"]) and probe.total_rail == "sum"


def test_rapl_without_package_domains_says_so(tmp_path):
    put(tmp_path / "sys/class/powercap/intel-rapl:0/name", "psys")
    put(tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj", 1)
    with pytest.raises(PowerError, match="x86-rapl found no package domain"):
        open_probe("x86-rapl", str(tmp_path))


# -- macOS ----------------------------------------------------------------------------------------------------


def test_powermetrics_text_is_parsed():
    watts = parse_powermetrics(POWERMETRICS_SAMPLE)
    # the first "GPU Power" (from the CPU sampler's block) wins over the GPU sampler's repeat
    assert watts == pytest.approx({"cpu": 1.873, "gpu": 0.412, "ane": 0.096, "total": 2.381})
    without_combined = "\n".join(line for line in POWERMETRICS_SAMPLE.splitlines() if "Combined" not in line)
    assert parse_powermetrics(without_combined)["total"] == pytest.approx(1.873 + 0.412 + 0.096)
    with pytest.raises(PowerError, match="no 'CPU Power' or 'Combined Power' line"):
        parse_powermetrics("*** Sampled system activity ***\n")


def test_powermetrics_refuses_outside_macos():
    if platform.system() == "Darwin":
        pytest.skip("this machine is a Mac: the refusal is for other systems")
    with pytest.raises(PowerError, match="macos-powermetrics runs only on macOS"):
        open_probe("macos-powermetrics")


def test_powermetrics_on_a_mac():
    if platform.system() != "Darwin" or not shutil.which("powermetrics"):
        pytest.skip("needs macOS on Apple silicon with powermetrics, run as root or with sudo NOPASSWD for it")
    try:
        probe = open_probe("macos-powermetrics")
    except PowerError as exc:
        pytest.skip(f"powermetrics needs root here: {exc}")
    watts = probe.read()
    assert watts["total"] > 0 and probe.total_rail == "combined"


# -- files that cannot be read ----------------------------------------------------------------------------------


def test_missing_sensor_names_the_probe_and_where_it_looked(tmp_path):
    with pytest.raises(PowerError) as info:
        open_probe("jetson-ina3221", str(tmp_path))
    assert f"jetson-ina3221 found no sensor under {tmp_path}" in str(info.value)
    assert "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label" in str(info.value)


def test_missing_file_is_named(tmp_path):
    android_battery(tmp_path, -450000)
    (tmp_path / "sys/class/power_supply/battery/voltage_now").unlink()
    with pytest.raises(PowerError, match="android-battery cannot read .*/battery/voltage_now: No such file"):
        open_probe("android-battery", str(tmp_path))


@contextlib.contextmanager
def unprivileged():
    """Root reads every file whatever its mode; drop the effective uid so a mode-0400 file is refused."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)  # nobody
    try:
        yield
    finally:
        os.seteuid(0)


def test_permission_denied_is_named():
    # a world-traversable folder (pytest's tmp_path is 0700 to root), with energy_uj 0400 as since Linux 5.10
    root = Path(tempfile.mkdtemp(prefix="edgekit-rapl-"))
    try:
        os.chmod(root, 0o755)
        rapl(root)
        for folder, _, _ in os.walk(root):
            os.chmod(folder, 0o755)
        energy = root / "sys/class/powercap/intel-rapl:0/energy_uj"
        for path in root.rglob("*"):
            if path.is_file():
                os.chmod(path, 0o444)
        os.chmod(energy, 0o400)
        with unprivileged(), pytest.raises(PowerError) as info:
            open_probe("x86-rapl", str(root))
        assert f"x86-rapl cannot read {energy}: permission denied" in str(info.value)
    finally:
        shutil.rmtree(root)


# -- sampling and energy ----------------------------------------------------------------------------------------


def test_integrate_instant_and_cumulative():
    ramp = [(0.0, {"total": 0.0}), (1.0, {"total": 2.0}), (3.0, {"total": 2.0})]
    assert integrate(ramp, cumulative=False) == (3.0, pytest.approx({"total": 1.0 + 4.0}))
    # cumulative readings are averages over the interval ending at them: the first only marks the start
    assert integrate(ramp, cumulative=True) == (3.0, pytest.approx({"total": 2.0 + 4.0}))
    assert integrate(ramp[:1], cumulative=False) == (0.0, {})


def test_sampler_idle_baseline_and_constant_power(tmp_path):
    jetpack5_ina3221(tmp_path, {"VDD_IN": (5000, 400), "VDD_SOC": (5000, 100)})
    sampler = PowerSampler(open_probe("jetson-ina3221", str(tmp_path)), interval_s=0.01)
    assert sampler.idle_baseline(0.05) == pytest.approx(2.0)
    set_ina3221(tmp_path, 1, 5000, 1000)
    sampler.start()
    time.sleep(0.05)
    samples = sampler.stop()
    assert len(samples) >= 3 and not sampler._thread
    summary = sampler.summary(frames=20)
    duration = samples[-1][0] - samples[0][0]
    assert summary == {
        "probe": "jetson-ina3221",
        "rail": "VDD_IN",
        "idle_w": pytest.approx(2.0),
        "avg_w": pytest.approx(5.0),
        "active_w": pytest.approx(3.0),
        "energy_j": pytest.approx(5.0 * duration),
        "energy_per_inference_mj": pytest.approx(5.0 * duration / 20 * 1e3),
        "duration_s": pytest.approx(duration),
        "samples": len(samples),
        "rails_avg_w": {"VDD_IN": pytest.approx(5.0), "VDD_SOC": pytest.approx(0.5)},
    }


def test_sampler_integrates_energy_while_a_thread_changes_the_power(tmp_path):
    jetpack5_ina3221(tmp_path, {"VDD_IN": (5000, 1000)})
    sampler = PowerSampler(open_probe("jetson-ina3221", str(tmp_path)), interval_s=0.005)
    change = []

    def step_up():
        time.sleep(0.06)
        change.append(time.perf_counter())
        set_ina3221(tmp_path, 1, 5000, 3000)  # 5 W -> 15 W
        change.append(time.perf_counter())

    writer = threading.Thread(target=step_up)
    sampler.start()
    writer.start()
    writer.join()
    time.sleep(0.06)
    samples = sampler.stop()
    summary = sampler.summary(frames=30)
    t0, t1 = samples[0][0], samples[-1][0]

    def exact(t_switch):
        return 5.0 * (t_switch - t0) + 15.0 * (t1 - t_switch)

    # the step lands between two reads, where the trapezoid is off by at most half the gap times 10 W
    gap = max(b[0] - a[0] for a, b in zip(samples[:-1], samples[1:], strict=True))
    assert exact(change[1]) - 10.0 * gap <= summary["energy_j"] <= exact(change[0]) + 10.0 * gap
    assert 5.0 < summary["avg_w"] < 15.0 and summary["idle_w"] is None and summary["active_w"] is None
    assert summary["energy_per_inference_mj"] == pytest.approx(summary["energy_j"] / 30 * 1e3)
    assert {w["total"] for _, w in samples} == {5.0, 15.0}


def test_sampler_with_rapl_counts_every_joule_through_a_wrap(tmp_path):
    start = RAPL_RANGE_UJ - 3000000  # package-0 wraps 3 J in
    rapl(tmp_path, packages=(0, 1), energy_uj={0: start, 1: 0})
    sampler = PowerSampler(open_probe("x86-rapl", str(tmp_path)), interval_s=0.005)
    assert sampler.idle_baseline(0.02) == 0.0  # the counters did not move
    sampler.start()
    # the counters advance in 1 J (0.5 J) steps that the sampler reads at its own pace
    for step in range(1, 9):
        set_rapl(tmp_path, 0, (start + step * 1000000) % RAPL_RANGE_UJ)
        set_rapl(tmp_path, 1, step * 500000)
        time.sleep(0.006)
    samples = sampler.stop()
    summary = sampler.summary(frames=100)
    # each reading is the energy since the one before over the time between them: the sum is what was counted
    assert summary["energy_j"] == pytest.approx(8.0 + 4.0)
    assert summary["energy_per_inference_mj"] == pytest.approx(120.0)
    assert summary["rails_avg_w"] == pytest.approx(
        {"package-0": 8.0 / summary["duration_s"], "package-1": 4.0 / summary["duration_s"]}
    )
    assert summary["rail"] == "sum" and summary["samples"] == len(samples) - 1
    assert summary["idle_w"] == 0.0 and summary["active_w"] == summary["avg_w"]


def test_sampler_loses_a_file_mid_run_and_reports_nothing(tmp_path):
    jetpack5_ina3221(tmp_path)
    sampler = PowerSampler(open_probe("jetson-ina3221", str(tmp_path)), interval_s=0.005)
    sampler.start()
    time.sleep(0.02)
    (tmp_path / INA3221_HWMON / "curr1_input").unlink()  # e.g. the driver unbound
    time.sleep(0.03)
    sampler.stop()
    assert sampler.summary(frames=10) is None
    assert "jetson-ina3221 cannot read" in sampler.error and "curr1_input" in sampler.error


def test_sampler_needs_a_positive_interval(tmp_path):
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        PowerSampler(open_probe("x86-rapl", str(rapl(tmp_path))), interval_s=0)
