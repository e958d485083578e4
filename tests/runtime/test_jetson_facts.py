"""Jetson facts read from a tree laid out as on a Jetson (Orin with JetPack 5 and 6, Xavier NX, Nano), the
outputs of nvpmodel, dpkg-query and tegrastats as each JetPack prints them, and the camera pipelines."""

import sys
import time

import pytest
from power_testkit import put

from edgekit.runtime.jetson import (
    TegrastatsSampler,
    csi_pipeline,
    emc_rate_hz,
    gpu_clock,
    is_jetson,
    jetson_facts,
    parse_dpkg_jetpack,
    parse_nv_tegra_release,
    parse_nvpmodel,
    parse_tegrastats,
    v4l2_pipeline,
)

ORIN_JP5_RELEASE = (
    "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
    "DATE: Tue Aug  1 19:57:35 UTC 2023\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
)
ORIN_JP6_RELEASE = (
    "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, "
    "DATE: Fri Jul 19 23:24:25 UTC 2024\n"
)
NANO_JP4_RELEASE = (
    "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
    "DATE: Sat Feb 19 17:05:08 UTC 2022\n"
)


def jetson_tree(root, release, model, devfreq, cur, low, high, emc=None):
    """/etc/nv_tegra_release, the device-tree model (NUL-terminated, as the kernel writes it) and the GPU's
    devfreq folder under /sys/devices with its /sys/class/devfreq entry (a symlink on the device)."""
    put(root / "etc/nv_tegra_release", release)
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    folder = root / "sys/devices/platform" / devfreq / "devfreq" / devfreq
    for name, value in (("cur_freq", cur), ("min_freq", low), ("max_freq", high), ("governor", "nvhost_podgov")):
        put(folder / name, value)
    (root / "sys/class/devfreq").mkdir(parents=True)
    (root / "sys/class/devfreq" / devfreq).symlink_to(folder)
    if emc is not None:
        put(root / "sys/kernel/debug/bpmp/debug/clk/emc/rate", emc)
    return root


def commands(outputs):
    """Stands in for running nvpmodel/dpkg-query, which exist only on a Jetson: argv[0] -> stdout or None."""
    return lambda argv: outputs.get(argv[0])


# -- versions and power mode ------------------------------------------------------------------------------


def test_nv_tegra_release_versions():
    assert parse_nv_tegra_release(ORIN_JP5_RELEASE) == "35.4.1"
    assert parse_nv_tegra_release(ORIN_JP6_RELEASE) == "36.3.0"
    assert parse_nv_tegra_release(NANO_JP4_RELEASE) == "32.7.1"
    assert parse_nv_tegra_release("# R36 (release), REVISION: 4, GCID: 1") == "36.4.0"
    assert parse_nv_tegra_release("Ubuntu 22.04") is None


def test_dpkg_jetpack_version():
    assert parse_dpkg_jetpack("nvidia-jetpack\t5.1.2-b104\n") == "5.1.2"
    assert parse_dpkg_jetpack("nvidia-jetpack\t6.0+b106\n") == "6.0"
    assert parse_dpkg_jetpack("nvidia-jetpack\t\n") is None


def test_nvpmodel_query_output():
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: 15W\n2\n") == {"name": "15W", "id": 2}
    assert parse_nvpmodel("NVPM WARN: power mode is not set!\n") is None


# -- a whole Jetson ---------------------------------------------------------------------------------------


def test_orin_jetpack5_with_jetson_clocks(tmp_path):
    jetson_tree(
        tmp_path,
        ORIN_JP5_RELEASE,
        "NVIDIA Jetson AGX Orin Developer Kit",
        "17000000.ga10b",
        1300500000,
        1300500000,
        1300500000,
        emc=3199000000,
    )
    warnings = []
    run = commands({"nvpmodel": "NV Power Mode: MAXN\n0\n", "dpkg-query": "nvidia-jetpack\t5.1.2-b104\n"})
    facts = jetson_facts(str(tmp_path), run=run, warnings=warnings)
    assert facts == {
        "board": "NVIDIA Jetson AGX Orin Developer Kit",
        "l4t": "35.4.1",
        "jetpack": "5.1.2",
        "power_mode": {"name": "MAXN", "id": 0},
        "gpu_clock": {
            "device": "17000000.ga10b",
            "cur_hz": 1300500000,
            "min_hz": 1300500000,
            "max_hz": 1300500000,
            "locked": True,
        },
        "emc_hz": 3199000000,
    }
    assert warnings == []


def test_orin_nano_jetpack6_unlocked_as_a_user(tmp_path):
    # JetPack 6 names the GPU's devfreq 17000000.gpu; without root debugfs (EMC) is not there to read
    jetson_tree(
        tmp_path,
        ORIN_JP6_RELEASE,
        "NVIDIA Jetson Orin Nano Developer Kit",
        "17000000.gpu",
        306000000,
        306000000,
        624750000,
    )
    warnings = []
    facts = jetson_facts(str(tmp_path), run=commands({"dpkg-query": "nvidia-jetpack\t6.0+b106\n"}), warnings=warnings)
    assert facts["l4t"] == "36.3.0" and facts["jetpack"] == "6.0"
    assert facts["gpu_clock"]["locked"] is False and facts["gpu_clock"]["max_hz"] == 624750000
    assert facts["emc_hz"] is None and any("EMC clock not readable" in w for w in warnings)
    assert facts["power_mode"] is None  # no nvpmodel and no status file


def test_xavier_power_mode_from_nvpmodel_files(tmp_path):
    jetson_tree(
        tmp_path,
        ORIN_JP5_RELEASE,
        "NVIDIA Jetson Xavier NX Developer Kit",
        "17000000.gv11b",
        114750000,
        114750000,
        1109250000,
    )
    put(tmp_path / "var/lib/nvpmodel/status", "pmode:0002 fmode:quiet")
    put(
        tmp_path / "etc/nvpmodel.conf",
        "< POWER_MODEL ID=0 NAME=MODE_15W_2CORE >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=2 NAME=MODE_15W_6CORE >\n",
    )
    warnings = []
    facts = jetson_facts(str(tmp_path), run=commands({}), warnings=warnings)
    assert facts["power_mode"] == {"name": "MODE_15W_6CORE", "id": 2}
    assert facts["jetpack"] is None and any("nvidia-jetpack" in w for w in warnings)


def test_nano_jetpack4_devfreq_and_old_emc_path(tmp_path):
    jetson_tree(
        tmp_path, NANO_JP4_RELEASE, "NVIDIA Jetson Nano Developer Kit", "57000000.gpu", 921600000, 76800000, 921600000
    )
    put(tmp_path / "sys/kernel/debug/clk/emc/clk_rate", 1600000000)
    assert gpu_clock(str(tmp_path))["locked"] is False
    assert emc_rate_hz(str(tmp_path)) == 1600000000


def test_not_a_jetson_is_none_with_a_warning(tmp_path):
    warnings = []
    called = []
    assert not is_jetson(str(tmp_path))
    assert jetson_facts(str(tmp_path), run=lambda argv: called.append(argv), warnings=warnings) is None
    assert called == [] and warnings == [f"not a Jetson: no {tmp_path}/etc/nv_tegra_release"]
    clock_warnings = []
    assert gpu_clock(str(tmp_path), clock_warnings) is None and "no GPU devfreq" in clock_warnings[0]


# -- tegrastats -------------------------------------------------------------------------------------------

NANO_JP4 = (
    "RAM 2448/3964MB (lfb 4x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [9%@1479,3%@1479,4%@1479,1%@1479] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 0%@921 APE 25 PLL@40C CPU@42.5C PMIC@100C GPU@40C AO@49C thermal@41.25C "
    "POM_5V_IN 2110/2110 POM_5V_GPU 0/0 POM_5V_CPU 451/451"
)
XAVIER_NX_JP4 = (
    "RAM 2232/7772MB (lfb 1063x4MB) SWAP 0/3886MB (cached 0MB) CPU [1%@1190,2%@1190,off,off,off,off] "
    "EMC_FREQ 0% GR3D_FREQ 0% AO@41C GPU@40.5C PMIC@100C AUX@40.5C CPU@41.5C thermal@40.8C "
    "VDD_IN 3917/3917 VDD_CPU_GPU_CV 448/448 VDD_SOC 1184/1184"
)
AGX_ORIN_JP5 = (
    "04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) CPU [0%@729,0%@729,0%@729,"
    "0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 "
    "APE 174 CV0@-256C CPU@44.562C Tboard@32C SOC2@40.093C Tdiode@33C SOC0@41.093C CV1@-256C GPU@-256C tj@44.343C "
    "SOC1@41.25C CV2@-256C VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW"
)
ORIN_NANO_JP6 = (
    "10-08-2026 04:35:02 RAM 6712/7620MB (lfb 12x4MB) SWAP 369/3810MB (cached 8MB) CPU [38%@1497,2%@729,1%@729,0%@729,"
    "1%@729,0%@729] EMC_FREQ 61%@2133 GR3D_FREQ 99%@[612] NVDEC off NVJPG off VIC off OFA off APE 200 cpu@57.125C "
    "soc2@55.093C soc0@56.625C gpu@58.5C tj@58.5C soc1@55.5C VDD_IN 9251mW/8535mW VDD_CPU_GPU_CV 2512mW/1944mW "
    "VDD_SOC 2720mW/2659mW"
)


def test_tegrastats_jetpack4_nano():
    stats = parse_tegrastats(NANO_JP4)
    assert stats["time"] is None and (stats["ram_used_mb"], stats["ram_total_mb"]) == (2448, 3964)
    assert (stats["swap_used_mb"], stats["swap_total_mb"]) == (0, 1982)
    assert stats["cpu"] == [{"load_pct": p, "freq_mhz": 1479} for p in (9, 3, 4, 1)]
    assert (stats["emc_pct"], stats["emc_mhz"], stats["gr3d_pct"], stats["gr3d_mhz"]) == (0, 1600, 0, 921)
    assert stats["temps_c"] == {"PLL": 40.0, "CPU": 42.5, "PMIC": 100.0, "GPU": 40.0, "AO": 49.0, "thermal": 41.25}
    assert stats["rails_mw"] == {
        "POM_5V_IN": {"now": 2110, "avg": 2110},
        "POM_5V_GPU": {"now": 0, "avg": 0},
        "POM_5V_CPU": {"now": 451, "avg": 451},
    }


def test_tegrastats_jetpack4_xavier_with_offline_cores():
    stats = parse_tegrastats(XAVIER_NX_JP4)
    assert (
        stats["cpu"][:2] == [{"load_pct": 1, "freq_mhz": 1190}, {"load_pct": 2, "freq_mhz": 1190}]
        and stats["cpu"][2:] == [None] * 4
    )
    assert (stats["emc_pct"], stats["emc_mhz"], stats["gr3d_pct"], stats["gr3d_mhz"]) == (0, None, 0, None)
    assert stats["rails_mw"]["VDD_IN"] == {"now": 3917, "avg": 3917} and len(stats["rails_mw"]) == 3


def test_tegrastats_jetpack5_agx_orin():
    stats = parse_tegrastats(AGX_ORIN_JP5)
    assert stats["time"] == "04-11-2025 10:36:27" and len(stats["cpu"]) == 12
    assert (stats["emc_mhz"], stats["gr3d_pct"], stats["gr3d_mhz"]) == (2133, 0, 0)
    assert "CV0" not in stats["temps_c"] and "GPU" not in stats["temps_c"]  # -256C: no sensor
    assert stats["temps_c"]["tj"] == 44.343 and stats["temps_c"]["Tboard"] == 32.0
    assert sorted(stats["rails_mw"]) == ["VDDQ_VDD2_1V8AO", "VDD_CPU_CV", "VDD_GPU_SOC", "VIN_SYS_5V0"]  # NC skipped


def test_tegrastats_jetpack6_orin_nano():
    stats = parse_tegrastats(ORIN_NANO_JP6)
    assert stats["cpu"][0] == {"load_pct": 38, "freq_mhz": 1497}
    assert (stats["emc_pct"], stats["emc_mhz"], stats["gr3d_pct"], stats["gr3d_mhz"]) == (61, 2133, 99, 612)
    assert stats["temps_c"]["gpu"] == 58.5 and stats["rails_mw"]["VDD_IN"] == {"now": 9251, "avg": 8535}
    assert parse_tegrastats("tegrastats: unknown option") is None


def test_sampler_collects_lines_and_stops_the_process():
    # a stand-in that prints like tegrastats and, like it, runs until it is told to stop
    lines = [NANO_JP4, "garbage", ORIN_NANO_JP6]
    script = f"import time\nfor line in {lines!r}:\n    print(line, flush=True)\nwhile True:\n    time.sleep(1)\n"
    sampler = TegrastatsSampler(command=[sys.executable, "-c", script])
    with sampler:
        process = sampler._process
        for _ in range(200):
            if len(sampler.lines) == 3:
                break
            time.sleep(0.01)
    assert process.poll() is not None  # stopped
    samples = sampler.samples()
    assert [s["ram_total_mb"] for _, s in samples] == [3964, 7620] and samples[0][0] <= samples[1][0]


def test_sampler_without_tegrastats_warns():
    with TegrastatsSampler(command=["edgekit-no-such-tegrastats"]) as sampler:
        pass
    assert sampler.samples() == [] and "edgekit-no-such-tegrastats not found" in sampler.warnings[0]
    with pytest.raises(ValueError, match="interval_ms must be > 0"):
        TegrastatsSampler(interval_ms=0)


# -- camera pipelines -------------------------------------------------------------------------------------


def test_csi_pipeline():
    assert csi_pipeline(sensor_id=1, width=1280, height=720, fps=60, flip_method=2, out_width=640, out_height=360) == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,format=NV12,framerate=60/1 ! "
        "nvvidconv flip-method=2 ! video/x-raw,width=640,height=360,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1"
    )


def test_v4l2_pipelines():
    assert v4l2_pipeline(2) == (
        "v4l2src device=/dev/video2 ! video/x-raw,width=640,height=480,framerate=30/1 ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1"
    )
    mjpeg = v4l2_pipeline("/dev/v4l/by-id/usb-046d_C920-video-index0", 1920, 1080, 30, mjpeg=True)
    assert "device=/dev/v4l/by-id/usb-046d_C920-video-index0 ! image/jpeg,width=1920,height=1080," in mjpeg
    assert "jpegdec ! videoconvert" in mjpeg


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: csi_pipeline(sensor_id="0"), "sensor_id must be an integer >= 0"),
        (lambda: csi_pipeline(width=0), "width must be an integer >= 1"),
        (lambda: csi_pipeline(fps=29.97), "fps must be an integer"),
        (lambda: csi_pipeline(flip_method=8), "flip_method must be an integer 0..7"),
        (lambda: v4l2_pipeline("/dev/video0 ! filesink location=/etc/passwd"), "must be a number or a /dev path"),
        (lambda: v4l2_pipeline("/dev/../etc/shadow"), "must be a number or a /dev path"),
        (lambda: v4l2_pipeline(-1), "device must be an integer >= 0"),
    ],
)
def test_pipeline_parts_are_validated(build, message):
    with pytest.raises(ValueError, match=message):
        build()
