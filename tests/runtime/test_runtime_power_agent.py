"""Power in the agent: the plan's `power` block, a run that measures it, a run that cannot, and `--facts`."""

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import threading
import time

import pytest
from power_testkit import RAPL_RANGE_UJ, jetpack5_ina3221, put, rapl
from runtime_testkit import make_plan, run_agent

from edgekit.device.bundle import build_agent_zipapp
from edgekit.runtime.facts import parse_nvidia_smi_list
from edgekit.runtime.plan import Plan, PlanError

POWER_KEYS = {
    "probe",
    "rail",
    "idle_w",
    "avg_w",
    "active_w",
    "energy_j",
    "energy_per_inference_mj",
    "duration_s",
    "samples",
    "rails_avg_w",
}
FACTS_KEYS = {
    "schema",
    "version",
    "device",
    "engines",
    "engine_packages",
    "gpu",
    "disk",
    "power_probe",
    "jetson",
    "tegrastats",
    "warnings",
}
DEVICE_KEYS = {"hostname", "os", "machine", "python", "cpu", "cpu_count", "numpy", "opencv", "isa"}

# a RAPL counter advanced by another process at RATE_W, as the CPU would: no thread of the agent's competes
RATE_W = 12.0
_COUNTER = """
import os, sys, time
path, start, rate, wrap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
origin = time.perf_counter()
while True:
    with open(path + ".tmp", "w") as handle:
        handle.write("%d\\n" % ((start + rate * 1e6 * (time.perf_counter() - origin)) % wrap))
    os.replace(path + ".tmp", path)
    time.sleep(0.0005)
"""


def plan_dict(**power):
    return {
        "schema": "edgekit.plan",
        "version": 1,
        "artifact_dir": "a",
        "source": {"kind": "video", "uri": "v"},
        "power": power,
    }


def test_plan_power_defaults_and_values(tmp_path):
    plan = Plan.from_dict(plan_dict(), str(tmp_path))
    assert (plan.power_probe, plan.power_interval_s, plan.power_idle_s, plan.power_sysfs_root) == (None, 0.05, 1.0, "/")
    plan = Plan.from_dict(plan_dict(probe="auto", interval_s=0.01, idle_s=0, sysfs_root="tree"), str(tmp_path))
    assert (plan.power_probe, plan.power_interval_s, plan.power_idle_s) == ("auto", 0.01, 0.0)
    assert plan.power_sysfs_root == str(tmp_path / "tree")  # relative to the plan file, like every path
    assert Plan.from_dict(plan_dict(probe="jetson-ina3221")).power_probe == "jetson-ina3221"


@pytest.mark.parametrize(
    "power, message",
    [
        ({"probe": "rapl"}, "power probe is 'rapl'; use null, 'auto' or one of android-battery, jetson-ina238, "),
        ({"probe": "x86-rapl", "interval": 1}, "power has unknown key 'interval'; known keys: probe, interval_s"),
        ({"interval_s": 0}, "power interval_s must be a number > 0"),
        ({"idle_s": -1}, "power idle_s must be a finite number >= 0"),
        ({"idle_s": float("inf")}, "power idle_s must be a finite number >= 0"),
        ({"sysfs_root": ""}, "power sysfs_root must be a non-empty path"),
    ],
)
def test_plan_power_errors(power, message):
    with pytest.raises(PlanError) as info:
        Plan.from_dict(plan_dict(**power))
    assert message in str(info.value)


@pytest.fixture
def rapl_counter(tmp_path):
    """A RAPL tree whose package-0 counter another process advances at RATE_W, wrapping 20 ms in."""
    root = rapl(tmp_path / "sysfs")
    energy = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    start = RAPL_RANGE_UJ - int(RATE_W * 1e6 * 0.02)
    counter = subprocess.Popen(
        [sys.executable, "-c", _COUNTER, str(energy), str(start), str(RATE_W), str(RAPL_RANGE_UJ)]
    )
    try:
        deadline = time.time() + 10
        while int(energy.read_text()) == 1000000 and time.time() < deadline:
            time.sleep(0.005)
        yield root
    finally:
        counter.terminate()
        counter.wait(10)


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_agent_measures_power_over_the_timed_part(tmp_path, artifact, colour_video, rapl_counter, mode):
    path, _ = colour_video
    power = {"probe": "x86-rapl", "sysfs_root": str(rapl_counter), "idle_s": 0.1, "interval_s": 0.01}
    plan = make_plan(artifact, {"kind": "video", "uri": str(path), "loop": True}, frames=240, mode=mode, power=power)
    code, result = run_agent(tmp_path, plan)
    assert code == 0 and result["status"] == "ok" and result["warnings"] == [], result
    block = result["power"]
    assert set(block) == POWER_KEYS
    assert block["probe"] == "x86-rapl" and block["rail"] == "package-0" and block["samples"] >= 1
    # the counter runs in another process at RATE_W; on a loaded machine it may lag, so only roughly
    assert 0 < block["idle_w"] < 2 * RATE_W and 0 < block["avg_w"] < 2 * RATE_W
    assert block["active_w"] == max(0.0, block["avg_w"] - block["idle_w"])
    timed = result["frames"]["timed"]
    assert timed == 240 and result["frames"]["warmup"] == 2
    assert block["energy_j"] == pytest.approx(block["avg_w"] * block["duration_s"])
    assert block["energy_per_inference_mj"] == pytest.approx(block["energy_j"] / timed * 1e3)
    # the window is the timed part: warm-up and the idle baseline are outside it
    assert result["wall_s"] <= block["duration_s"] < result["wall_s"] + 0.05
    assert block["rails_avg_w"] == {"package-0": block["avg_w"]}


def test_agent_auto_detects_the_probe(tmp_path, artifact, colour_video):
    path, _ = colour_video
    root = jetpack5_ina3221(tmp_path / "sysfs")
    power = {"probe": "auto", "sysfs_root": str(root), "idle_s": 0.02, "interval_s": 0.005}
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "video", "uri": str(path)}, power=power))
    assert code == 0 and result["warnings"] == []
    assert result["power"]["probe"] == "jetson-ina3221" and result["power"]["rail"] == "VDD_IN"
    assert result["power"]["avg_w"] == pytest.approx(5.072 * 1.184)  # the file did not change: exactly its value
    assert set(result["power"]["rails_avg_w"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}


@pytest.mark.parametrize(
    "probe, build, fragment",
    [
        ("jetson-ina3221", None, "power probe jetson-ina3221 found no sensor under "),
        ("auto", None, "power probe auto: no power sensor found under "),
        ("x86-rapl", "unreadable", "power probe x86-rapl cannot read "),
    ],
)
def test_agent_without_a_readable_sensor_runs_and_reports_null_power(
    tmp_path, artifact, colour_video, probe, build, fragment
):
    path, _ = colour_video
    root = tmp_path / "sysfs"
    root.mkdir()
    if build == "unreadable":  # a folder where the counter file should be: reading it fails like a denied file
        rapl(root)
        energy = root / "sys/class/powercap/intel-rapl:0/energy_uj"
        energy.unlink()
        energy.mkdir()
    power = {"probe": probe, "sysfs_root": str(root), "idle_s": 0.02}
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "video", "uri": str(path)}, power=power))
    assert code == 0 and result["status"] == "ok" and result["frames"]["timed"] == 12
    assert result["power"] is None
    assert len(result["warnings"]) == 1 and fragment in result["warnings"][0], result["warnings"]
    assert result["warnings"][0].endswith("power was not measured")
    if build == "unreadable":
        assert "intel-rapl:0/energy_uj" in result["warnings"][0]


def test_agent_with_power_and_a_failing_source(tmp_path, artifact):
    """Nothing timed: no power block, no warning about power, and no sampler thread left behind."""
    root = jetpack5_ina3221(tmp_path / "sysfs")
    plan = make_plan(
        artifact,
        {"kind": "video", "uri": "/nonexistent/clip.mp4"},
        power={"probe": "jetson-ina3221", "sysfs_root": str(root)},
    )
    code, result = run_agent(tmp_path, plan)
    assert code == 1 and result["errors"][0]["stage"] == "source"
    assert result["power"] is None and result["warnings"] == []
    assert not [t for t in threading.enumerate() if t.name == "edgekit-power"]


def _facts(args, env=None):
    run = subprocess.run(args, cwd="/tmp", env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("\n") == 1  # one JSON object, one line, nothing else on stdout
    return json.loads(run.stdout)


def test_facts_on_the_host(tmp_path):
    root = rapl(tmp_path / "sysfs")
    put(root / "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    facts = _facts(
        [
            sys.executable,
            "-m",
            "edgekit.runtime",
            "--facts",
            "--workdir",
            str(tmp_path / "work"),
            "--sysfs-root",
            str(root),
        ]
    )
    assert set(facts) == FACTS_KEYS and facts["schema"] == "edgekit.facts" and facts["version"] == 1
    assert set(facts["device"]) == DEVICE_KEYS and facts["device"]["cpu_count"] >= 1
    assert "onnxruntime" in facts["engines"]
    installed = {
        name: any(importlib.util.find_spec(m) is not None for m in modules)
        for name, modules in {
            "coreml": ["coremltools"],
            "onnxruntime": ["onnxruntime"],
            "openvino": ["openvino"],
            "tensorrt": ["tensorrt"],
            "tflite": ["tflite_runtime", "ai_edge_litert"],
        }.items()
    }
    assert facts["engine_packages"] == installed and installed["onnxruntime"]
    # the tree has a Jetson's board model but none of its other files: only the Jetson facts warn
    assert facts["power_probe"] == "x86-rapl" and not [w for w in facts["warnings"] if "rapl" in w.lower()]
    assert facts["jetson"]["board"] == "NVIDIA Jetson Orin Nano Developer Kit" and facts["jetson"]["l4t"] is None
    disk = facts["disk"]
    assert disk["path"] == str(tmp_path / "work") and disk["exists"] is False  # measured at its parent
    assert 0 < disk["free_bytes"] <= disk["total_bytes"]
    if os.path.exists("/usr/bin/nvidia-smi") or facts["gpu"] and facts["gpu"]["source"] == "nvidia-smi":
        assert facts["gpu"]["names"]
    else:
        assert facts["gpu"] == {"source": "device-tree", "names": ["NVIDIA Jetson Orin Nano Developer Kit"]}


def test_nvidia_smi_list_is_parsed():
    text = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5a1c2e4f-0b7d-4a55-9c1e-2f3b4c5d6e7f)\n"
        "  MIG 1g.10gb     Device  0: (UUID: MIG-0c2b9c67-4e8a-5b7e-a1f0-0d3e1c2b4a5f)\n"
        "GPU 1: NVIDIA Thor (UUID: GPU-00000000-0000-0000-0000-000000000001)\n"
    )
    assert parse_nvidia_smi_list(text) == ["NVIDIA H100 80GB HBM3", "NVIDIA Thor"]
    assert parse_nvidia_smi_list("No devices were found\n") == []


def test_facts_from_the_zipapp_without_edgekit(tmp_path):
    pyz = build_agent_zipapp(tmp_path / "agent.pyz")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]  # numpy, OpenCV, ORT; no edgekit (-S skips its hook)
    root = tmp_path / "sysfs"
    root.mkdir()
    facts = _facts([sys.executable, "-S", str(pyz), "--facts", "--sysfs-root", str(root)], env=env)
    assert set(facts) == FACTS_KEYS
    assert facts["disk"] is None and facts["power_probe"] is None
    assert facts["device"]["numpy"] and "onnxruntime" in facts["engines"]


def test_plan_and_result_are_required_without_facts(tmp_path, capsys):
    from edgekit.runtime.agent import main

    with pytest.raises(SystemExit) as info:
        main(["--plan", str(tmp_path / "plan.json")])
    assert info.value.code == 2
    assert "--plan and --result are required (or --facts, or --time-model)" in capsys.readouterr().err


def test_a_jetson_run_carries_its_release_and_power_mode(tmp_path, artifact, colour_video):
    path, _ = colour_video
    root = jetpack5_ina3221(tmp_path / "sysfs")
    release = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n"
    put(root / "etc/nv_tegra_release", release)
    (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    power = {"probe": "auto", "sysfs_root": str(root), "idle_s": 0.0, "interval_s": 0.005}
    code, result = run_agent(tmp_path, make_plan(artifact, {"kind": "video", "uri": str(path)}, power=power))
    assert code == 0
    jetson = result["device"]["jetson"]
    assert jetson["l4t"] == "35.4.1" and "Orin" in jetson["board"]
    assert any("JetPack version unknown" in w for w in result["warnings"])  # said, not guessed
