"""The agent as shipped: a deterministic zipapp that runs without edgekit, `python -m edgekit.runtime`,
and the Python 3.8 floor checked by vermin."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from runtime_testkit import make_artifact, make_plan

from edgekit.device.bundle import agent_zipapp_sha256, build_agent_zipapp, runtime_dir

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def test_zipapp_is_deterministic_and_complete(tmp_path):
    first = build_agent_zipapp(tmp_path / "a" / "agent.pyz")
    second = build_agent_zipapp(tmp_path / "b" / "agent.pyz")
    assert first.read_bytes() == second.read_bytes()
    assert hashlib.sha256(first.read_bytes()).hexdigest() == agent_zipapp_sha256()
    assert first.read_bytes().startswith(b"#!/usr/bin/env python3\n") and os.access(first, os.X_OK)
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        infos = archive.infolist()
    assert names == sorted(names) and "__main__.py" in names
    assert {"runtime/__init__.py", "runtime/agent.py", "runtime/engines/__init__.py", "runtime/engines/base.py"} <= set(
        names
    )
    expected = sorted("runtime/" + p.relative_to(runtime_dir()).as_posix() for p in runtime_dir().rglob("*.py"))
    assert [n for n in names if n.startswith("runtime/")] == [n for n in expected if "__pycache__" not in n]
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
    assert not any(n.endswith(".pyc") for n in names)


def _site_packages_env():
    # numpy, OpenCV and ONNX Runtime on the path, but `site` is off (-S), so edgekit's editable-install
    # hook never runs: the zipapp must bring everything else itself, as on a device
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    return env


def _write_plan(tmp_path, colour_video):
    artifact = make_artifact(tmp_path / "artifact")
    path, labels = colour_video
    plan = make_plan(artifact, {"kind": "video", "uri": str(path)}, labels=labels, mode="pipelined")
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    return plan_path


def test_zipapp_runs_without_edgekit(tmp_path, colour_video):
    pyz = build_agent_zipapp(tmp_path / "agent.pyz")
    plan_path = _write_plan(tmp_path, colour_video)
    env = _site_packages_env()
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import numpy, cv2, onnxruntime\ntry:\n import edgekit\nexcept ImportError: print('no edgekit')",
        ],
        cwd="/tmp",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "no edgekit", probe.stderr
    result_path = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, "-S", str(pyz), "--plan", str(plan_path), "--result", str(result_path)],
        cwd="/tmp",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(result_path.read_text())
    assert result["status"] == "ok" and result["frames"]["timed"] == 12 and result["accuracy"]["top1"] == 1.0
    assert "edgekit agent: ok, 12 frames" in run.stderr


def test_zipapp_imports_its_own_runtime_in_isolated_mode(tmp_path):
    pyz = build_agent_zipapp(tmp_path / "agent.pyz")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import runtime.agent as a; print(a.__file__)"
    run = subprocess.run(
        [sys.executable, "-I", "-c", code, str(pyz)], cwd="/tmp", capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == os.path.join(str(pyz), "runtime", "agent.py")


def test_python_dash_m_on_the_host(tmp_path, colour_video):
    plan_path = _write_plan(tmp_path, colour_video)
    result_path = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, "-m", "edgekit.runtime", "--plan", str(plan_path), "--result", str(result_path)],
        cwd="/tmp",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(result_path.read_text())["status"] == "ok"


def test_runtime_imports_nothing_else_from_edgekit():
    for path in RUNTIME.rglob("*.py"):
        text = path.read_text()
        assert "import edgekit" not in text and "from edgekit" not in text, path


def test_runtime_is_python38_compatible():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.skip("vermin is not installed (pip install vermin)")
    # --eval-annotations also catches `list[int]` in signatures, which 3.8 evaluates at import time
    for extra in ([], ["--eval-annotations"]):
        run = subprocess.run(
            [vermin, "--target=3.8-", "--no-tips", "--violations"] + extra + [str(RUNTIME)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr


def test_zipapp_on_a_real_python38(tmp_path, colour_video):
    """Runs when EDGEKIT_PYTHON38 names a Python 3.8 with numpy, OpenCV and onnxruntime (as on JetPack 5)."""
    python38 = os.environ.get("EDGEKIT_PYTHON38")
    if not python38:
        pytest.skip("set EDGEKIT_PYTHON38 to a Python 3.8 interpreter with numpy, opencv and onnxruntime")
    pyz = build_agent_zipapp(tmp_path / "agent.pyz")
    plan_path = _write_plan(tmp_path, colour_video)
    result_path = tmp_path / "result.json"
    run = subprocess.run(
        [python38, "-I", str(pyz), "--plan", str(plan_path), "--result", str(result_path)],
        cwd="/tmp",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(result_path.read_text())
    assert result["device"]["python"].startswith("3.8.") and result["status"] == "ok"
