"""The local transport: this machine is the device; the agent runs in a subprocess.

It takes the same path as the SSH transport (agent zipapp, plan file in, result file out, result
validated), so a local number and a remote number come from the same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.artifact import Artifact
from edgekit.device.bundle import build_agent_zipapp
from edgekit.device.result_file import max_result_bytes, read_result, too_big_message
from edgekit.device.results import exit_text, failed_result, interrupted_result
from edgekit.device.transport import ProgressFn
from edgekit.device.watch import RunWatch
from edgekit.errors import RunError, RunInterrupted
from edgekit.hashing import sha256_file

_MISSING = object()


def agent_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "edgekit-agent"


def local_agent() -> Path:
    """The agent zipapp for this edgekit, built once and reused (its name is its content hash)."""
    cache = agent_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkstemp(prefix="agent-", suffix=".pyz", dir=cache)[1])
    build_agent_zipapp(staged)
    final = cache / f"agent-{sha256_file(staged)[:16]}.pyz"
    staged.replace(final)
    return final


class LocalTransport:
    """Runs plans on this machine (a `Transport`, and `Cancellable`); `python` is the interpreter that runs
    the agent. The agent runs in a session of its own, so a Ctrl-C in the terminal reaches only edgekit,
    which stops the agent itself (SIGTERM: it writes what it measured) and keeps that result."""

    name = "local"

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._process: subprocess.Popen | None = None
        self._cancelled: int | None = None  # the signal a fleet cancel came with

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def cancel(self, signum: int = signal.SIGINT) -> None:
        """Stop the agent of the run in progress (from another thread: the fleet runner on a signal)."""
        self._cancelled = signum
        process = self._process
        if process is not None:
            _stop(process, STOP_GRACE_S)

    def run(
        self,
        artifact: Artifact,
        plan: dict[str, Any],
        *,
        timeout_s: float | None = None,
        progress: ProgressFn | None = None,
        watch: RunWatch | None = None,
    ) -> dict[str, Any]:
        """Run the plan with the agent; return the validated result (never raises for a device failure:
        a crash, a stall or a timeout comes back as a result with status `error` or `partial` and the reason).
        `watch` follows the agent's progress lines and says when it has stalled (default: RunWatch()); on
        Ctrl-C (or a signal the CLI turns into one) the agent is stopped, its partial result kept, and
        RunInterrupted raised with it. Nothing is pushed, so `progress` is never called."""
        plan = {**plan, "artifact_dir": str(artifact.path.resolve())}
        if self._cancelled is not None:
            return interrupted_result(plan, None, self._cancelled, started=False)
        watch = watch or RunWatch()
        with tempfile.TemporaryDirectory(prefix="edgekit-run-") as workdir:
            plan_path = Path(workdir) / "plan.json"
            result_path = Path(workdir) / "result.json"
            plan_path.write_text(json.dumps(plan))
            command = [self.python, str(local_agent()), "--plan", str(plan_path), "--result", str(result_path)]
            process = subprocess.Popen(
                [*command, "--progress"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                start_new_session=True,
            )
            self._process = process
            watch.start()
            readers = _pumps(process, watch)
            try:
                why_stopped = _wait(process, watch, timeout_s)
            except KeyboardInterrupt as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                _stop(process, STOP_GRACE_S)
                _joined(readers)
                result = interrupted_result(plan, _read_result(plan, result_path, process.returncode, "", None), signum)
                raise RunInterrupted(f"local: {result['status']}", signum=signum, result=result) from exc
            finally:
                self._process = None
            stopped = _stop(process, STOP_GRACE_S) if why_stopped else ""
            result = _read_result(plan, result_path, process.returncode, _joined(readers))
            if why_stopped:
                return _with_first_error(result, f"{why_stopped}; the agent was {stopped}")
            return result if self._cancelled is None else interrupted_result(plan, result, self._cancelled)


def _pumps(process: subprocess.Popen, watch: RunWatch) -> tuple[list[threading.Thread], bytearray]:
    """Threads reading the agent's stdout into `watch` and its stderr into a bounded buffer."""

    def pump(stream: Any, sink: Callable[[bytes], None]) -> None:
        for chunk in iter(lambda: stream.read1(1 << 16), b""):
            sink(chunk)

    def keep(chunk: bytes) -> None:
        errors.extend(chunk[: max(0, _MAX_STDERR - len(errors))])

    errors = bytearray()
    threads = [
        threading.Thread(target=pump, args=(process.stdout, watch.feed), daemon=True),
        threading.Thread(target=pump, args=(process.stderr, keep), daemon=True),
    ]
    for thread in threads:
        thread.start()
    return threads, errors


def _joined(readers: tuple[list[threading.Thread], bytearray]) -> str:
    """The agent's stderr, once both pipes are drained (an agent already stopped closes them)."""
    threads, errors = readers
    for thread in threads:
        thread.join(STOP_GRACE_S)
    return bytes(errors).decode("utf-8", "replace")


def _wait(process: subprocess.Popen, watch: RunWatch, timeout_s: float | None) -> str | None:
    """Wait for the agent to end; why it must be stopped instead (stalled, or over `timeout_s`), else None."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            process.wait(_POLL_S)
            return None
        except subprocess.TimeoutExpired:
            pass
        stalled = watch.overdue()
        if stalled:
            return stalled
        if deadline is not None and time.monotonic() > deadline:
            return f"the agent did not finish within {timeout_s:g} s; raise --timeout"


_POLL_S = 0.5  # how often the host looks at the watchdog while the agent runs
_MAX_STDERR = 1 << 20  # bytes of the agent's stderr kept (its last lines name a crash)


STOP_GRACE_S = 5.0  # an agent gets this long after SIGTERM to write what it measured, then SIGKILL


def _stop(process: subprocess.Popen, grace: float) -> str:
    """SIGTERM to the agent's process group, SIGKILL after `grace` s; what happened, in words."""
    if process.poll() is not None:
        return "already finished"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
        os.killpg(process.pid, signal.SIGCONT)  # a stopped (frozen) agent wakes to the SIGTERM and writes its result
    try:
        process.wait(grace)
        return "stopped"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return "killed"


def _read_result(
    plan: dict[str, Any], result_path: Path, returncode: int | None, stderr: str, missing: Any = _MISSING
) -> Any:
    """The agent's validated result; without one, a failed result saying how the agent ended (or `missing`)."""
    if not result_path.is_file():
        if missing is not _MISSING:
            return missing
        tail = " | ".join(stderr.strip().splitlines()[-5:])
        return failed_result(plan, f"the agent {exit_text(returncode)} and wrote no result: {tail}")
    try:
        limit = max_result_bytes()
        size = result_path.stat().st_size
        if size > limit:
            return failed_result(plan, too_big_message(str(result_path), size, limit))
        with open(result_path, "rb") as handle:  # read in chunks, raw samples thinned: bounded memory
            return read_result(handle, run_id=plan["run_id"])
    except (OSError, RunError) as exc:
        return failed_result(plan, f"the agent's result could not be used: {exc}")


def _with_first_error(result: dict[str, Any], message: str) -> dict[str, Any]:
    result = dict(result, errors=[{"stage": "transport", "message": message}, *result.get("errors", [])])
    if result["status"] == "ok":
        result["status"] = "partial"
    return result
