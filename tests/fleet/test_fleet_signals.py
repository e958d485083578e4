"""Signals to a running `edgekit run`: SIGTERM (what timeout, systemd and CI runners send) and Ctrl-C stop every
agent, locally and on SSH devices, store what each measured, and exit 128 + the signal. Real processes, real
signals, the real sshd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgekit.store import ResultsStore

_CLI = [sys.executable, "-c", "from edgekit.cli import main; main()"]


def _start(args: list[str], db: Path) -> subprocess.Popen:
    env = dict(os.environ, EDGEKIT_DB=str(db), COLUMNS="200")
    return subprocess.Popen([*_CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _endless(artifact: Path, video: Path) -> list[str]:
    return ["run", str(artifact), "--source", str(video), "--loop", "--frames", "10000000", "--warmup", "2"]


def test_sigterm_stops_the_local_agent_and_stores_what_it_measured(
    tmp_path, digits_artifact, digits_video, processes_mentioning
):
    video, _ = digits_video
    db = tmp_path / "runs.db"
    cli = _start(_endless(digits_artifact.path, video), db)
    agents = lambda: [p for p in processes_mentioning("edgekit-run-") if "--plan" in p]  # noqa: E731
    _wait_for(agents, 60, "the local agent to start")
    time.sleep(2.0)  # past the warm-up: frames are being timed
    sent = time.monotonic()
    cli.send_signal(signal.SIGTERM)
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == 143, err
    assert time.monotonic() - sent < 10
    assert agents() == []  # no agent left running
    [stored] = ResultsStore(db).get()
    assert stored.status == "partial" and stored.result["frames"]["timed"] > 0, stored.result["errors"]
    assert "interrupted by SIGTERM on the host" in stored.result["errors"][0]["message"]
    assert "stopped by SIGTERM" in err and f"local: partial (run {stored.run_id}" in err


def test_ctrl_c_stops_every_fleet_device_at_once(
    sshd, tmp_path, digits_artifact, digits_video, processes_mentioning, write_fleet
):
    video, _ = digits_video
    fleet = tmp_path / "fleet.toml"
    write_fleet(fleet, sshd, tmp_path)  # box-a and box-b on the sshd, and "gone" (a closed port)
    db = tmp_path / "runs.db"
    cli = _start([*_endless(digits_artifact.path, video), "--fleet", str(fleet), "--tags", "lab"], db)
    agents = lambda: [p for p in processes_mentioning(str(tmp_path)) if "--plan" in p and "sh -c" not in p]  # noqa: E731
    _wait_for(lambda: len(agents()) == 2, 90, "both devices' agents to start")
    time.sleep(2.0)
    sent = time.monotonic()
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 130, err
    assert time.monotonic() - sent < 10  # stopped in parallel, not one device after another
    assert agents() == []
    stored = {r.device: r for r in ResultsStore(db).get()}
    assert set(stored) == {"box-a", "box-b", "gone"}
    for name in ("box-a", "box-b"):
        assert stored[name].status == "partial" and stored[name].result["frames"]["timed"] > 0
        assert "interrupted by SIGINT on the host" in stored[name].result["errors"][0]["message"]
    assert stored["gone"].status == "error"  # it had failed before the interrupt
    assert "stopped by SIGINT" in err and "box-a: partial" in err and "box-b: partial" in err
    for name in ("box-a", "box-b"):
        assert os.listdir(tmp_path / name / "runs") == []  # each run folder removed
