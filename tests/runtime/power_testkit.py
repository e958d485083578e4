"""Sensor trees for the power tests, laid out under a root folder exactly as each device has them in sysfs.

Values are written atomically (temp file + rename) so a reader never sees a half-written number, as with
real sysfs attributes."""

import os
from pathlib import Path

# Jetson Orin Nano (JetPack 5/6): one INA3221 on I2C bus 1, address 0x40
INA3221_HWMON = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
# Jetson Nano (JetPack 4): the L4T ina3221x iio driver on I2C bus 6
INA3221_IIO = "sys/bus/i2c/devices/6-0040/iio:device0"
RAPL = "sys/class/powercap"
BATTERY = "sys/class/power_supply/battery"
RAPL_RANGE_UJ = 262143328850  # max_energy_range_uj of a real package domain


def put(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(f"{value}\n")
    os.replace(temp, path)


def jetpack5_ina3221(root: Path, rails=None) -> Path:
    """hwmon INA3221: in{1-3}_label, in{1-3}_input (mV), curr{1-3}_input (mA), plus the shunt channels
    in4-in7 and curr4 that carry no rail. `rails`: {label: (mV, mA)} in channel order."""
    rails = rails or {"VDD_IN": (5072, 1184), "VDD_CPU_GPU_CV": (5064, 256), "VDD_SOC": (5072, 392)}
    driver = root / "sys/bus/i2c/drivers/ina3221"
    for name in ("bind", "unbind", "uevent"):
        put(driver / name, "")
    folder = root / INA3221_HWMON
    put(folder / "name", "ina3221")
    put(folder / "update_interval", 1)
    for n, (label, (mv, ma)) in enumerate(rails.items(), start=1):
        put(folder / f"in{n}_label", label)
        put(folder / f"in{n}_input", mv)
        put(folder / f"curr{n}_input", ma)
        put(folder / f"curr{n}_crit", 32760)
        put(folder / f"in{n + 3}_input", 40)  # shunt voltage
    put(folder / "in7_label", "sum of shunt voltages")
    put(folder / "in7_input", 120)
    put(folder / "curr4_input", 1800)
    return root


def set_ina3221(root: Path, channel: int, mv: int, ma: int) -> None:
    put(root / INA3221_HWMON / f"in{channel}_input", mv)
    put(root / INA3221_HWMON / f"curr{channel}_input", ma)


def jetpack4_ina3221(root: Path, rails=None, with_power: bool = True) -> Path:
    """iio INA3221x: rail_name_{N}, in_power{N}_input (mW), in_voltage{N}_input (mV), in_current{N}_input (mA)."""
    rails = rails or {"POM_5V_IN": (5016, 560), "POM_5V_GPU": (5016, 40), "POM_5V_CPU": (5016, 120)}
    folder = root / INA3221_IIO
    put(folder / "name", "ina3221x")
    put(root / "sys/bus/i2c/devices/i2c-6/name", "7000c400.i2c")  # the bus itself: no iio device
    for n, (label, (mv, ma)) in enumerate(rails.items()):
        put(folder / f"rail_name_{n}", label)
        put(folder / f"in_voltage{n}_input", mv)
        put(folder / f"in_current{n}_input", ma)
        if with_power:
            put(folder / f"in_power{n}_input", mv * ma // 1000)
    return root


def thor_ina238(root: Path) -> Path:
    """Two INA238 hwmon devices beside an unrelated sensor: one with power1_input (uW), one without."""
    put(root / "sys/class/hwmon/hwmon0/name", "cpu_thermal")
    put(root / "sys/class/hwmon/hwmon0/temp1_input", 41000)
    first = root / "sys/class/hwmon/hwmon3"
    put(first / "name", "ina238")
    put(first / "in1_input", 19032)
    put(first / "curr1_input", 1576)
    put(first / "power1_input", 30000000)  # 30 W; V x I would say 29.99 W: the power register wins
    put(first / "temp1_input", 38000)
    second = root / "sys/class/hwmon/hwmon4"
    put(second / "name", "ina238")
    put(second / "in1_input", 5000)
    put(second / "curr1_input", 1000)
    return root


def android_battery(root: Path, current_ua: int, voltage_uv: int = 3900000, status: str = "Discharging") -> Path:
    folder = root / BATTERY
    put(folder / "type", "Battery")
    put(folder / "present", 1)
    put(folder / "capacity", 76)
    put(folder / "status", status)
    put(folder / "current_now", current_ua)
    put(folder / "voltage_now", voltage_uv)
    return root


def rapl(root: Path, packages=(0,), energy_uj=None) -> Path:
    """intel-rapl:N package domains with core/uncore/dram sub-domains, as the intel_rapl_msr driver lays them out."""
    base = root / RAPL
    put(base / "intel-rapl/enabled", 1)
    for p in packages:
        domain = base / f"intel-rapl:{p}"
        put(domain / "name", f"package-{p}")
        put(domain / "enabled", 1)
        put(domain / "max_energy_range_uj", RAPL_RANGE_UJ)
        put(domain / "energy_uj", (energy_uj or {}).get(p, 1000000))
        for i, sub in enumerate(("core", "uncore", "dram")):
            put(base / f"intel-rapl:{p}:{i}/name", sub)
            put(base / f"intel-rapl:{p}:{i}/energy_uj", 500000)
            put(base / f"intel-rapl:{p}:{i}/max_energy_range_uj", RAPL_RANGE_UJ)
    return root


def set_rapl(root: Path, package: int, energy_uj: int) -> None:
    put(root / RAPL / f"intel-rapl:{package}/energy_uj", energy_uj)


# `powermetrics --samplers cpu_power,gpu_power,ane_power -i 100 -n 1` text as an M2 MacBook Air prints it. Written
# after the format of published recordings (the header, per-cluster residencies, the power lines, and the GPU
# sampler repeating "GPU Power"); no Mac was at hand to record one.
POWERMETRICS_SAMPLE = """Machine model: Mac14,2
OS version: 23E224
Boot arguments:
Boot time: Mon Apr  1 09:12:45 2024



*** Sampled system activity (Mon Apr  1 10:03:11 2024 +0200) (101.87ms elapsed) ***


**** Processor usage ****

E-Cluster HW active frequency: 1346 MHz
E-Cluster HW active residency:  61.21% (600 MHz:   0% 912 MHz:  41% 1284 MHz:  11% 1752 MHz: 9.1%)
E-Cluster idle residency:  38.79%
CPU 0 frequency: 1398 MHz
CPU 0 active residency:  43.12% (600 MHz:   0% 912 MHz:  20% 1284 MHz: 7.9% 1752 MHz: 6.0%)
CPU 0 idle residency:  56.88%
P-Cluster HW active frequency: 2412 MHz
P-Cluster HW active residency:  35.50% (660 MHz:  11% 924 MHz: 0.0% 3504 MHz: 9.2%)
P-Cluster idle residency:  64.50%

CPU Power: 1873 mW
GPU Power: 412 mW
ANE Power: 96 mW
Combined Power (CPU + GPU + ANE): 2381 mW

**** GPU usage ****

GPU HW active frequency: 444 MHz
GPU HW active residency:  21.48% (444 MHz:  21% 612 MHz:   0% 808 MHz:   0%)
GPU SW requested state: (P1 : 100% P2 :   0% P3 :   0%)
GPU idle residency:  78.52%
GPU Power: 405 mW
"""
