"""The SSH transport: a remote device runs the agent; files go there by content and results come back.

It takes the same path as the local transport (agent zipapp, plan file in, result file out, result
validated), over one paramiko connection per device (`connect`: jump hosts, host keys, key auth),
with every command an argv list run by `exec`. A run on the device:

    <workdir>/runs/<run id>/plan.json     written over SFTP (artifact and inputs pushed first, by content)
    python -c <agent_wrapper> AGENT ...   the agent in a process group of its own, its pid in agent.pid
    <workdir>/runs/<run id>/result.json   fetched to a temporary file, size-capped, read with bounded memory
                                          and validated; the run folder is then removed, whatever failed

A timeout, a lost connection or Ctrl-C stops the agent's process group (`stop_agent`); the scripts
are `runtime/device_scripts/`, sent as source text.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import shlex
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import paramiko

from edgekit.device.push import PushResult, push_agent, push_artifact, push_plan_inputs
from edgekit.device.result_file import (
    RESULT_BUDGET,
    CappedWriter,
    ResultTooBig,
    max_result_bytes,
    read_result,
    too_big_message,
)
from edgekit.device.results import exit_text, failed_result, interrupted_result
from edgekit.device.scripts import device_script
from edgekit.device.ssh.connect import Connector
from edgekit.device.ssh.exec import is_active, quote_argv, run_command
from edgekit.device.ssh.facts import agent_facts, flatten_facts, json_object
from edgekit.device.transport import ProgressFn
from edgekit.device.watch import RunWatch
from edgekit.errors import DeviceError, DeviceTimeout, RunError
from edgekit.fleet.inventory import Device

if TYPE_CHECKING:
    from edgekit.artifact import Artifact

log = logging.getLogger(__name__)

PREFETCH_REQUESTS = 128  # SFTP reads in flight while fetching a result: 128 x 32 KB = 4 MB of memory at most
INTERRUPT_STEP_S = 10.0  # seconds for each cleanup step after Ctrl-C (stop the agent, remove its run folder)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_STOP_FAILED = "possibly left running (the stop command failed)"


class _Cancelled(Exception):
    """The run was cancelled before its agent started (raised between steps and inside pushes)."""


class SshTransport:
    """Runs plans on one device over SSH (a `Transport`). Use it as a context manager:

        with SshTransport(device) as ssh:
            result = ssh.run(artifact, plan, timeout_s=600)

    `trust_on_first_use`: accept a host key that known_hosts lacks and save it there (a key that
    differs from the saved one is refused all the same). Each try to connect waits `connect_timeout`
    seconds (for TCP, the SSH banner and authentication) and a failed one is tried again `retries` times
    on transient network errors; both default to the device's `connect_timeout` and `connect_retries`
    (fleet-file fields, 10 s and 2).
    """

    def __init__(
        self,
        device: Device,
        *,
        trust_on_first_use: bool = False,
        connect_timeout: float | None = None,
        retries: int | None = None,
    ) -> None:
        self.device = device
        self.name = device.name
        self.trust_on_first_use = trust_on_first_use
        self.connect_timeout = device.connect_timeout if connect_timeout is None else connect_timeout
        self.retries = device.connect_retries if retries is None else retries
        self.bytes_sent = 0  # over every push of this transport
        self.trusted_keys: list[str] = []  # "host key-type fingerprint" saved on first use
        self.workdir_ready = False  # the work folder was prepared on this connection (edgekit.device.push)
        self._client: paramiko.SSHClient | None = None
        self._jumps: list[paramiko.SSHClient] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._workdir: str | None = None
        self._current_run_dir: str | None = None  # the run in progress, for cancel()
        self._cancelled: int | None = None  # the signal cancel() came with
        self._fetch_broke = False  # the last result fetch lost the connection

    # -- connection ---------------------------------------------------------------------------------

    def __enter__(self) -> SshTransport:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return is_active(self._client)

    def connect(self) -> None:
        """Open the connection (jump hosts first), retrying transient network errors."""
        if self.connected:
            return
        self.close()
        connector = Connector(
            self.device,
            self.name,
            trust_on_first_use=self.trust_on_first_use,
            timeout=self.connect_timeout,
            retries=self.retries,
            trusted_keys=self.trusted_keys,
        )
        clients = connector.connect()
        self._client, self._jumps = clients[-1], clients[:-1]

    def close(self) -> None:
        for closable in (self._sftp, self._client, *reversed(self._jumps)):
            if closable is not None:
                with contextlib.suppress(Exception):  # closing a dead connection may fail: nothing left to do
                    closable.close()
        self._sftp = self._client = None
        self._jumps = []
        self._workdir = None
        self.workdir_ready = False

    def _require_client(self) -> paramiko.SSHClient:
        if not self.connected:
            self.connect()
        assert self._client is not None
        return self._client

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The SFTP session (opened on first use)."""
        if self._sftp is None:
            try:
                self._sftp = self._require_client().open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise DeviceError(
                    f"device {self.name}: cannot open SFTP ({exc}); enable the sftp subsystem in the device's "
                    "sshd_config (Subsystem sftp internal-sftp)"
                ) from exc
        return self._sftp

    @property
    def workdir(self) -> str:
        """The device's work folder as an absolute path (`~` is the login user's home there)."""
        if self._workdir is None:
            workdir = self.device.workdir
            if not workdir.startswith("/"):
                try:
                    home = self.sftp.normalize(".")
                except OSError as exc:
                    raise DeviceError(f"device {self.name}: cannot find the home folder over SFTP ({exc})") from exc
                workdir = home.rstrip("/") + "/" + workdir.removeprefix("~").lstrip("/")
            self._workdir = workdir.rstrip("/") or "/"
        return self._workdir

    @property
    def python(self) -> str:
        """The device's interpreter as the fleet file gives it (`python3`, `/usr/bin/env python3`)."""
        return self.device.python

    def python_argv(self) -> list[str]:
        """The device's interpreter as an argv prefix (`python` may be `/usr/bin/env python3`)."""
        return shlex.split(self.device.python)

    # -- commands -----------------------------------------------------------------------------------

    def exec(
        self, argv: Sequence[str], *, timeout: float = 60.0, stdin: bytes | str | None = None
    ) -> tuple[int, str, str]:
        """Run `argv` on the device (each argument quoted) and return (exit code, stdout, stderr).

        The exit code is -1 when the command was killed by a signal. Raises DeviceTimeout when it runs
        longer than `timeout` seconds, DeviceError when the connection fails.
        """
        command = quote_argv(argv)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        rc, out, err = self._exec_command(command, timeout=timeout, stdin=data, what=str(argv[0]))
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def _exec_command(
        self, command: str, *, timeout: float, stdin: bytes | None, what: str
    ) -> tuple[int, bytes, bytes]:
        return run_command(
            self._require_client(),
            command,
            timeout=timeout,
            stdin=stdin,
            name=self.name,
            what=what,
            open_timeout=self.connect_timeout,
        )

    # -- pushing ------------------------------------------------------------------------------------

    def push_agent(self, *, progress: ProgressFn | None = None) -> PushResult:
        """Push the agent zipapp by content; `remote_path` is the file to run."""
        return push_agent(self, progress=progress)

    def push_artifact(self, artifact: Artifact, *, progress: ProgressFn | None = None) -> PushResult:
        """Push an artifact by content; `remote_path` is its folder on the device."""
        return push_artifact(self, artifact, progress=progress)

    # -- running ------------------------------------------------------------------------------------

    def run(
        self,
        artifact: Artifact,
        plan: dict[str, Any],
        *,
        timeout_s: float | None = None,
        push_inputs: bool = True,
        progress: ProgressFn | None = None,
        watch: RunWatch | None = None,
    ) -> dict[str, Any]:
        """Push the agent and the artifact, run the plan on the device, return the validated result.

        Never raises for a device failure: an unreachable device, a timeout, a crash, a full disk or a
        bad result comes back as a result with status `error` and the reason. A source file, an image
        folder or a `reference` that exists on this machine is pushed too (by content) and the plan
        points at the device's copy; `push_inputs=False` leaves such paths as they are (device paths).
        The agent reports its progress to `watch` (default: RunWatch()); when it stalls or overstays
        `timeout_s` (None: no overall cap) it is stopped and keeps what it measured (`partial` if any frame
        was timed).
        On Ctrl-C the agent is stopped and KeyboardInterrupt goes on.
        """
        run_id = plan.get("run_id")
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise RunError(f"plan run_id {run_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
        opened_here = not self.connected
        try:
            watch = watch or RunWatch()
            result = self._run(
                artifact, plan, timeout_s=timeout_s, push_inputs=push_inputs, progress=progress, watch=watch
            )
        except _Cancelled:
            return interrupted_result(plan, None, self._cancelled or 2, started=False)
        except DeviceError as exc:
            result = failed_result(plan, str(exc))
        finally:
            if opened_here:
                self.close()
        return result if self._cancelled is None else interrupted_result(plan, result, self._cancelled)

    def _check_cancelled(self) -> None:
        if self._cancelled is not None:
            raise _Cancelled

    def _cancellable(self, progress: ProgressFn | None) -> ProgressFn:
        """`progress`, and a push that stops (its upload removed) as soon as the run is cancelled."""

        def report(sent: int, total: int) -> None:
            self._check_cancelled()
            if progress:
                progress(sent, total)

        return report

    def _run(
        self,
        artifact: Artifact,
        plan: dict[str, Any],
        *,
        timeout_s: float | None,
        push_inputs: bool,
        progress: ProgressFn | None,
        watch: RunWatch,
    ) -> dict[str, Any]:
        progress = self._cancellable(progress)
        self._check_cancelled()
        agent = self.push_agent(progress=progress).remote_path
        device_plan = {**plan, "artifact_dir": self.push_artifact(artifact, progress=progress).remote_path}
        if push_inputs:
            device_plan = push_plan_inputs(self, device_plan, progress=progress)
        self._check_cancelled()
        run_dir = self._write_plan(device_plan)
        self._current_run_dir = run_dir  # from here cancel() stops the agent (its `stop` file: even unstarted)
        interrupted = False
        try:
            self._check_cancelled()
            try:
                rc, stderr = self._run_agent(agent, run_dir, timeout_s, watch)
            except DeviceTimeout as exc:
                return self._result_after_timeout(plan, run_dir, str(exc))
            except DeviceError as exc:
                # the connection broke during the run: stop the agent over a fresh one if we can
                self._stop_after_lost_connection(run_dir)
                raise DeviceError(f"{exc}; the run was abandoned") from exc
            except KeyboardInterrupt:
                # the user is waiting: every step of the cleanup gets a short, fixed time
                interrupted = True
                self._stop_agent(run_dir, grace=2.0, timeout=INTERRUPT_STEP_S)
                raise
            return self._result_after_exit(plan, run_dir, rc, stderr)
        finally:
            self._current_run_dir = None
            self._cleanup(run_dir, timeout=INTERRUPT_STEP_S if interrupted else 30.0, reconnect=not interrupted)

    def _write_plan(self, device_plan: dict[str, Any]) -> str:
        """Create the run folder `<workdir>/runs/<run id>` with its plan.json; return the folder."""
        run_dir = f"{self.workdir}/runs/{device_plan['run_id']}"
        try:
            try:
                self.sftp.mkdir(run_dir)
            except OSError:
                self.exec(["mkdir", "-p", run_dir], timeout=30)  # it may exist from an earlier try
            self.sftp.putfo(io.BytesIO(json.dumps(device_plan).encode()), f"{run_dir}/plan.json")
        except OSError as exc:
            self._cleanup(run_dir)  # a full disk must not also collect empty run folders
            raise DeviceError(
                f"device {self.name}: cannot write the plan into {run_dir} ({exc}); check free space and "
                f"permissions of the work folder {self.workdir}"
            ) from exc
        return run_dir

    def _run_agent(self, agent: str, run_dir: str, timeout_s: float | None, watch: RunWatch) -> tuple[int, bytes]:
        """Run the agent in `run_dir` through the wrapper script; (exit code, stderr)."""
        # not `exec`: the shell stays to say which signal ended the agent (SSH itself reports a bare -1)
        script = 'cd "$1" && shift && "$@"; rc=$?; [ $rc -gt 128 ] && echo "edgekit-signal $((rc - 128))" >&2; exit $rc'
        command = ["sh", "-c", script, "sh", run_dir, *self.python_argv(), "-c"]
        # absolute paths, so `ps` on the device shows which run an agent belongs to
        command += [device_script("agent_wrapper"), agent]
        command += ["--plan", f"{run_dir}/plan.json", "--result", f"{run_dir}/result.json", "--progress"]
        watch.start()
        rc, _, stderr = run_command(
            self._require_client(),
            quote_argv(command),
            timeout=math.inf if timeout_s is None else timeout_s,
            stdin=None,
            name=self.name,
            what="the agent",
            open_timeout=self.connect_timeout,
            watch=watch,
        )
        return rc, stderr

    def _result_after_timeout(self, plan: dict[str, Any], run_dir: str, why: str) -> dict[str, Any]:
        """Stop the agent; its result (what it timed: `partial`) with why it was stopped as the first error."""
        stopped = self._stop_agent(run_dir, grace=5.0)
        message = f"{why}; the agent was {stopped}"
        try:
            result = self._fetch_result(plan, run_dir)
        except DeviceError as exc:  # its result is unusable (too big, invalid): say so beside the timeout
            return failed_result(plan, f"{message}; {exc}")
        if result is None:
            return failed_result(plan, message)
        result["errors"].insert(0, {"stage": "transport", "message": message})
        if result["status"] == "ok":
            result["status"] = "partial"
        return result

    def _result_after_exit(self, plan: dict[str, Any], run_dir: str, rc: int, stderr: bytes) -> dict[str, Any]:
        try:
            result = self._fetch_result(plan, run_dir)
        except DeviceError as exc:
            return failed_result(plan, str(exc))
        if result is None:
            lines = stderr.decode("utf-8", "replace").strip().splitlines()
            signals = [
                line.split()[1] for line in lines if line.startswith("edgekit-signal ") and len(line.split()) == 2
            ]
            ended = exit_text(-int(signals[-1])) if signals and signals[-1].isdigit() else exit_text(rc)
            tail = " | ".join(line for line in lines[-6:] if not line.startswith("edgekit-signal "))
            return failed_result(plan, f"the agent on device {self.name} {ended} and wrote no result: {tail}")
        return result

    def cancel(self, signum: int = 2) -> None:
        """Stop this transport's run; called from another thread (the fleet runner on a signal). A run whose
        agent runs returns what it measured (marked with the signal); one still pushing starts nothing."""
        self._cancelled = signum
        run_dir = self._current_run_dir
        if run_dir and self.connected:
            self._stop_agent(run_dir, grace=2.0, timeout=INTERRUPT_STEP_S)

    def _fetch_result(self, plan: dict[str, Any], run_dir: str) -> dict[str, Any] | None:
        """The validated result.json of a run, None when there is none; DeviceError when it is unusable.

        It is downloaded into a temporary file (never held whole in memory), refused past
        `max_result_bytes()` before and while downloading, and read with raw samples thinned
        (`edgekit.device.result_file`); `RESULT_BUDGET` makes devices finishing together take turns."""
        path = f"{run_dir}/result.json"
        self._fetch_broke = False
        try:
            limit = max_result_bytes()
            size = self.sftp.stat(path).st_size or 0
        except FileNotFoundError:
            return None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._fetch_broke = not self.connected
            raise DeviceError(f"device {self.name}: cannot read {path} ({exc})") from exc
        except RunError as exc:  # the limit's environment variable is malformed
            raise DeviceError(f"device {self.name}: {exc}") from exc
        if size > limit:
            raise DeviceError(f"device {self.name}: {too_big_message(path, size, limit)}")
        with RESULT_BUDGET.hold(size), tempfile.TemporaryFile(prefix="edgekit-result-") as local:
            try:
                # prefetch keeps SFTP fast; its cap bounds what arrives before it is written (else the whole file)
                writer = CappedWriter(local, limit, path)
                self.sftp.getfo(path, writer, prefetch=True, max_concurrent_prefetch_requests=PREFETCH_REQUESTS)
            except ResultTooBig as exc:
                raise DeviceError(f"device {self.name}: {exc}") from exc
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._fetch_broke = not self.connected  # the run folder is then removed over a new connection
                raise DeviceError(f"device {self.name}: cannot fetch {path} ({exc})") from exc
            local.seek(0)
            try:
                return read_result(local, run_id=plan["run_id"])
            except RunError as exc:
                raise DeviceError(f"device {self.name}: the agent's result could not be used: {exc}") from exc

    def _stop_agent(self, run_dir: str, *, grace: float, timeout: float | None = None) -> str:
        """Stop the run's agent (SIGTERM, then SIGKILL after `grace` s); say what happened. The stop command
        itself may take `timeout` s (default grace + 15)."""
        argv = [*self.python_argv(), "-c", device_script("stop_agent"), run_dir, str(grace)]
        try:
            rc, out, err = self.exec(argv, timeout=timeout if timeout is not None else grace + 15)
        except DeviceError as exc:
            log.warning("device %s: could not stop the agent: %s", self.name, exc)
            return _STOP_FAILED
        if rc != 0:
            log.warning("device %s: stopping the agent failed: %s", self.name, err.strip()[-500:])
            return _STOP_FAILED
        return out.strip() or "stopped"

    def _stop_after_lost_connection(self, run_dir: str) -> None:
        try:
            self.close()
            self.connect()
            self._stop_agent(run_dir, grace=2.0)
        except DeviceError as exc:
            log.warning("device %s: could not stop the agent after the connection broke: %s", self.name, exc)

    def _cleanup(self, run_dir: str, *, timeout: float = 30.0, reconnect: bool = False) -> None:
        """Remove the run folder; `reconnect`: over a fresh connection when fetching the result lost this
        one, so a failed fetch leaves no runs/<id> behind either."""
        if not self.connected and not (reconnect and self._fetch_broke):
            return
        try:
            self.exec(["rm", "-rf", run_dir], timeout=timeout)  # connects again if it must
        except DeviceError as exc:
            log.warning("device %s: could not remove %s: %s", self.name, run_dir, exc)

    # -- facts --------------------------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        """Facts about the device, checked (see `clean_facts`): the agent's device facts (hostname, os,
        machine, python, cpu, cpu_count, numpy, opencv) at the top level, the rest flattened one level
        (`engines`, `engine_packages.<name>`, `gpu.names`, `disk.free_bytes`, `power_probe`, `warnings`),
        and `facts_source`: `agent`, or `fallback` when the agent could not say (a small script then
        gives host, OS, CPU, Python and disk space).
        """
        agent = self.push_agent().remote_path
        python = self.python_argv()
        rc, out, _ = self.exec([*python, agent, "--facts", "--workdir", self.workdir], timeout=120)
        data, source = agent_facts(rc, out), "agent"
        if data is None:
            rc, out, err = self.exec([*python, "-c", device_script("fallback_facts"), self.workdir], timeout=60)
            data, source = (json_object(out) if rc == 0 else None), "fallback"
            if data is None:
                tail = " | ".join(err.strip().splitlines()[-3:])
                raise DeviceError(
                    f"device {self.name}: {self.device.python!r} could not report facts (exit {rc}: {tail}); "
                    "set `python` in the fleet file to a Python 3.8+ interpreter on the device"
                )
        return flatten_facts(data, source)
