"""Runs over SSH end to end: the demo's artifact on real digits, timeouts, crashes and bad results."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from edgekit.device.plan import Source, make_plan
from edgekit.device.settings import RunSettings
from edgekit.device.ssh import SshTransport


def digits_plan(video: Path, labels: list[int] | None, **options):
    return make_plan("set by the transport", Source.parse(video), RunSettings(labels=labels, **options))


def test_demo_artifact_end_to_end(device, digits_artifact, digits_video):
    video, labels = digits_video
    with SshTransport(device) as ssh:
        plan = digits_plan(video, labels, warmup=2)
        result = ssh.run(digits_artifact, plan, timeout_s=120)
        assert result["status"] == "ok", result["errors"]
        assert result["run_id"] == plan["run_id"] and result["artifact_id"] == digits_artifact.id
        assert result["frames"]["timed"] == len(labels)
        inference = result["latency_ms"]["inference"]
        assert inference["count"] == len(labels) and 0 < inference["p50"] < 1000
        assert result["latency_ms"]["end_to_end"]["mean"] >= inference["mean"]
        assert result["accuracy"]["count"] == len(labels) and result["accuracy"]["top1"] >= 0.8
        assert result["throughput_fps"] > 0 and result["device"]["python"]

        # the second run sends nothing: agent, artifact and video are on the device already
        sent = ssh.bytes_sent
        again = ssh.run(digits_artifact, digits_plan(video, labels, warmup=0), timeout_s=120)
        assert again["status"] == "ok" and ssh.bytes_sent == sent
        workdir = Path(ssh.workdir)
    assert os.listdir(workdir / "runs") == []  # each run's folder is removed afterwards
    [inputs] = os.listdir(workdir / "inputs")
    assert os.listdir(workdir / "inputs" / inputs) == [video.name]


def test_timeout_stops_the_agent(device, digits_artifact, digits_video, processes_mentioning):
    video, labels = digits_video
    # a warm-up far longer than the video keeps the agent busy before any frame is timed
    plan = digits_plan(video, labels, warmup=10**7)
    seen: list[list[str]] = []
    watcher = threading.Timer(2.0, lambda: seen.append(processes_mentioning(plan["run_id"])))
    watcher.start()
    started = time.monotonic()
    result = SshTransport(device).run(digits_artifact, plan, timeout_s=3)
    watcher.join()
    agents = [line for line in seen[0] if "sh -c" not in line]  # its shell waits to report a signal
    assert len(agents) == 1 and "--plan" in agents[0]  # the agent was running, found by its run id
    assert time.monotonic() - started < 20
    assert result["status"] == "error" and result["frames"]["timed"] == 0
    messages = [error["message"] for error in result["errors"]]
    assert any("device loopback: the agent did not finish within 3 s" in m for m in messages), messages
    time.sleep(0.2)
    assert processes_mentioning(plan["run_id"]) == []


def test_agent_crash_is_an_error_result(sshd, tmp_path: Path, digits_artifact, digits_video):
    crashing = tmp_path / "crashing-python"
    crashing.write_text("#!/bin/sh\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    crashing.chmod(0o755)
    video, labels = digits_video
    result = SshTransport(sshd.device(tmp_path, python=str(crashing))).run(
        digits_artifact, digits_plan(video, labels), timeout_s=30
    )
    assert result["status"] == "error"
    assert result["errors"][0]["message"] == (
        "the agent on device loopback was killed by SIGSEGV and wrote no result: Segmentation fault (core dumped)"
    )


def test_a_result_that_breaks_the_contract_is_not_trusted(sshd, tmp_path: Path, digits_artifact, digits_video):
    lying = tmp_path / "lying-python"
    lying.write_text(
        '#!/bin/sh\necho \'{"schema": "edgekit.result", "version": 1, "run_id": "someone-else", "status": "ok"}\''
        " > result.json\n"
    )
    lying.chmod(0o755)
    garbage = tmp_path / "garbage-python"
    garbage.write_text("#!/bin/sh\nprintf '{\"schema\": [[[[' > result.json\n")
    garbage.chmod(0o755)
    video, labels = digits_video
    for python, reason in ((lying, "is for run 'someone-else'"), (garbage, "could not be used")):
        result = SshTransport(sshd.device(tmp_path, python=str(python))).run(
            digits_artifact, digits_plan(video, labels), timeout_s=30
        )
        assert result["status"] == "error"
        assert result["errors"][0]["message"].startswith("device loopback: the agent's result could not be used")
        assert reason in result["errors"][0]["message"]
        assert os.listdir(tmp_path / "device-workdir" / "runs") == []  # the run folder went all the same


def test_a_result_too_big_is_refused_and_its_run_folder_removed(
    sshd, tmp_path: Path, digits_artifact, digits_video, monkeypatch
):
    monkeypatch.setenv("EDGEKIT_MAX_RESULT_MB", "0.05")  # 52 KB
    bulky = tmp_path / "bulky-python"
    bulky.write_text("#!/bin/sh\nhead -c 100000 /dev/zero > result.json\n")
    bulky.chmod(0o755)
    video, labels = digits_video
    result = SshTransport(sshd.device(tmp_path, python=str(bulky))).run(
        digits_artifact, digits_plan(video, labels), timeout_s=30
    )
    message = result["errors"][0]["message"]
    assert result["status"] == "error" and "result.json is 0.1 MB, more than the host reads (0.05 MB)" in message
    assert "raise the limit with EDGEKIT_MAX_RESULT_MB=<megabytes>" in message
    assert os.listdir(tmp_path / "device-workdir" / "runs") == []


def test_unreachable_device_is_an_error_result(sshd, tmp_path: Path, digits_artifact, digits_video):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    video, labels = digits_video
    plan = digits_plan(video, labels)
    result = SshTransport(sshd.device(tmp_path, port=port), retries=0).run(digits_artifact, plan, timeout_s=30)
    assert result["status"] == "error" and result["run_id"] == plan["run_id"]
    assert result["errors"][0]["message"].startswith(f"device loopback: {sshd.user}@127.0.0.1:{port} refused")
    assert sys.executable  # the device python is this interpreter; nothing ran


def test_timeout_during_timed_frames_keeps_them(device, digits_artifact, digits_video):
    video, _ = digits_video
    plan = make_plan("unused", Source.parse(video, loop=True), RunSettings(frames=10**8, warmup=0, keep_samples=False))
    result = SshTransport(device).run(digits_artifact, plan, timeout_s=2.5)
    assert result["status"] == "partial" and result["frames"]["timed"] > 0
    assert result["latency_ms"]["inference"]["count"] == result["frames"]["timed"]
    assert result["errors"][0]["stage"] == "transport" and "within 2.5 s" in result["errors"][0]["message"]


CTRL_C_SCRIPT = """
import json, sys
from edgekit.artifact import Artifact
from edgekit.fleet.inventory import Device
from edgekit.device.ssh import SshTransport
settings, artifact, plan = json.loads(sys.argv[1])
device = Device(**{**settings, "key": Path(settings["key"]), "known_hosts": Path(settings["known_hosts"])})
try:
    SshTransport(device).run(Artifact.load(artifact), plan, timeout_s=60)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_stops_the_agent(device, digits_artifact, digits_video, processes_mentioning):
    video, labels = digits_video
    plan = digits_plan(video, labels, warmup=10**7)
    settings = {
        key: str(getattr(device, key)) if key in ("key", "known_hosts") else getattr(device, key)
        for key in ("name", "host", "port", "user", "key", "workdir", "python", "known_hosts")
    }
    args = json.dumps([settings, str(digits_artifact.path), plan])
    host = subprocess.Popen(
        [sys.executable, "-c", "from pathlib import Path\n" + CTRL_C_SCRIPT, args], stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60  # generous: a loaded CI machine starts Python slowly
    while not processes_mentioning(f"runs/{plan['run_id']}/plan.json") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_mentioning(f"runs/{plan['run_id']}/plan.json"), "the agent never started"
    host.send_signal(signal.SIGINT)
    out, _ = host.communicate(timeout=90)  # cleanup steps are bounded (INTERRUPT_STEP_S each), Python starts slowly
    assert out.strip() == "interrupted"
    assert processes_mentioning(plan["run_id"]) == []
