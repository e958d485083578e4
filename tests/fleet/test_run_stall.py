"""A run whose agent stops making progress is stopped by the host's watchdog within its stall allowance and
keeps the frames it timed; the progress lines that drive it also feed the progress bar. Real agents, frozen
with SIGSTOP (what a hung engine or camera driver looks like from the host), locally and over the real sshd."""

from __future__ import annotations

import os
import signal
import threading
import time

from edgekit.device.plan import Source, make_plan
from edgekit.device.settings import RunSettings
from edgekit.device.ssh import SshTransport
from edgekit.device.watch import RunWatch


def _freezer(find_agents, seen: list):
    """An on_progress listener that records each RunProgress and freezes the agent once frames are timed."""
    frozen = threading.Event()

    def on_progress(progress) -> None:
        seen.append(progress)
        if progress.phase == "run" and progress.done > 0 and not frozen.is_set():
            frozen.set()
            for line in find_agents():
                os.kill(int(line.split(":")[0]), signal.SIGSTOP)

    return on_progress, frozen


def test_a_frozen_local_agent_is_stopped_by_the_watchdog_and_keeps_its_frames(
    tmp_path, digits_artifact, digits_video, processes_mentioning
):
    from edgekit.api import run

    video, _ = digits_video
    seen: list = []
    agents = lambda: [p for p in processes_mentioning("edgekit-run-") if "--plan" in p]  # noqa: E731
    on_progress, frozen = _freezer(agents, seen)
    started = time.monotonic()
    record = run(digits_artifact, str(video), save=False, loop=True, frames=10**8, warmup=2, stall_s=2.0,
                 keep_samples=False, on_progress=on_progress)  # fmt: skip
    assert frozen.is_set()
    assert time.monotonic() - started < 30
    result = record.result
    assert result["status"] == "partial" and result["frames"]["timed"] > 0, result["errors"]
    first = result["errors"][0]
    assert first["stage"] == "transport" and "no frame finished for 2 s" in first["message"], first
    assert "the agent was stopped" in first["message"]  # SIGTERM reached it through SIGCONT: no SIGKILL needed
    phases = [p.phase for p in seen]
    assert phases[0] == "load" and "run" in phases
    assert any(p.fps for p in seen if p.phase == "run")
    assert agents() == []


def test_a_frozen_agent_over_ssh_is_stopped_by_the_watchdog(
    device, digits_artifact, digits_video, processes_mentioning
):
    video, _ = digits_video
    plan = make_plan("unused", Source.parse(video, loop=True), RunSettings(frames=10**8, warmup=0, keep_samples=False))
    find = lambda: [p for p in processes_mentioning(plan["run_id"]) if "--plan" in p and "sh -c" not in p]  # noqa: E731
    seen: list = []
    on_progress, frozen = _freezer(find, seen)
    started = time.monotonic()
    result = SshTransport(device).run(digits_artifact, plan, watch=RunWatch(stall_s=2.0, on_progress=on_progress))
    assert frozen.is_set()
    assert time.monotonic() - started < 40
    assert result["status"] == "partial" and result["frames"]["timed"] > 0, result["errors"]
    message = result["errors"][0]["message"]
    assert "device loopback: no frame finished for 2 s" in message and "the agent was stopped" in message, message
    time.sleep(0.2)
    assert find() == []
