"""The SSH transport: a remote device runs the agent; files go there by content and results come back.

It takes the same path as the local transport (agent zipapp, plan file in, result file out, result
validated), over one paramiko connection per device:

- the socket is opened here with TCP_NODELAY (paramiko never sets it, and each command would then
  stall about 40 ms), optionally through jump hosts (`direct-tcpip` channels, like ProxyJump);
- host keys are checked against known_hosts; an unknown key is refused unless trust on first use is
  asked for, and a changed key is always refused;
- only key authentication (a key file, ssh-agent or the default keys); edgekit never asks for or logs
  a password or passphrase;
- every command is an argv list, each argument quoted, so paths and values arrive literally.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import select
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko.hostkeys import HostKeyEntry

from edgekit.errors import RunError
from edgekit.fleet.inventory import Device

if TYPE_CHECKING:
    from edgekit.artifact import Artifact
    from edgekit.device.push import PushResult

log = logging.getLogger(__name__)

MAX_OUTPUT = 16 << 20  # bytes kept per stream of a command; the rest is read and dropped
MAX_RESULT_BYTES = 256 << 20
MAX_FACTS = 64
INTERRUPT_STEP_S = 10.0  # seconds for each cleanup step after Ctrl-C (stop the agent, remove its run folder)
FACTS_SCHEMA, FACTS_VERSION = "edgekit.facts", 1
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ProgressFn = Callable[[int, int], None]

# Runs on the device in the run folder: a process group of its own (so a stop reaches every process
# the agent starts), a pid file written before the agent runs, and no start at all once a stop came.
_AGENT_WRAPPER = """import os, sys
try:
    os.setsid()
except OSError:
    pass
with open("agent.pid.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename("agent.pid.tmp", "agent.pid")
if os.path.exists("stop"):
    sys.exit(124)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""

# Stops the agent's process group: SIGTERM (the agent then writes what it measured), SIGKILL after
# the grace period. Prints what happened.
_STOP_AGENT = """import os, signal, sys, time
rundir, grace = sys.argv[1], float(sys.argv[2])
open(os.path.join(rundir, "stop"), "w").close()
pidfile = os.path.join(rundir, "agent.pid")
deadline = time.time() + 3
while not os.path.exists(pidfile):
    if time.time() > deadline:
        print("never started")
        sys.exit(0)
    time.sleep(0.02)
pid = int(open(pidfile).read().split()[0])
def alive():
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
try:
    os.killpg(pid, signal.SIGTERM)
except ProcessLookupError:
    print("already exited")
    sys.exit(0)
end = time.time() + grace
while alive() and time.time() < end:
    time.sleep(0.02)
if alive():
    os.killpg(pid, signal.SIGKILL)
    end = time.time() + 2
    while alive() and time.time() < end:
        time.sleep(0.02)
    print("killed")
else:
    print("stopped")
"""

# Facts when the agent cannot give them (an older agent without --facts): enough to know the device.
_FALLBACK_FACTS = """import json, os, platform, shutil, socket, sys
cpu = platform.processor()
try:
    for line in open("/proc/cpuinfo"):
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
device = {"hostname": socket.gethostname(), "os": platform.platform(), "machine": platform.machine(),
          "python": platform.python_version(), "cpu": cpu, "cpu_count": os.cpu_count()}
facts = {"device": device, "disk": None}
try:
    usage = shutil.disk_usage(sys.argv[1] if os.path.exists(sys.argv[1]) else os.path.expanduser("~"))
    facts["disk"] = {"path": sys.argv[1], "free_bytes": usage.free, "total_bytes": usage.total}
except OSError:
    pass
print(json.dumps(facts))
"""


class DeviceError(RunError):
    """A device that cannot be reached or used; the message names the device and what to do."""


class HostKeyError(DeviceError):
    """A host key that is unknown (and not trusted on first use) or that changed."""


class DeviceTimeout(DeviceError):
    """A command on the device that did not finish in time."""


class SshTransport:
    """Runs plans on one device over SSH. Use it as a context manager:

        with SshTransport(device) as ssh:
            result = ssh.run(artifact, plan, timeout_s=600)

    `trust_on_first_use`: accept a host key that known_hosts lacks and save it there (a key that
    differs from the saved one is refused all the same). Connecting retries `retries` times on
    transient network errors, waiting 0.5 s, then 1 s, ...
    """

    def __init__(
        self,
        device: Device,
        *,
        trust_on_first_use: bool = False,
        connect_timeout: float = 10.0,
        retries: int = 2,
    ) -> None:
        self.device = device
        self.name = device.name
        self.trust_on_first_use = trust_on_first_use
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.bytes_sent = 0  # over every push of this transport
        self.trusted_keys: list[str] = []  # "host key-type fingerprint" saved on first use
        self._client: paramiko.SSHClient | None = None
        self._jumps: list[paramiko.SSHClient] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._workdir: str | None = None
        self._prepared = False

    # -- connection ---------------------------------------------------------------------------------

    def __enter__(self) -> SshTransport:
        self.connect()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def connect(self) -> None:
        """Open the connection (jump hosts first), retrying transient network errors."""
        if self.connected:
            return
        self.close()
        clients: list[paramiko.SSHClient] = []
        try:
            self._client = self._connect_chain(self.device, clients)
        except BaseException:
            for client in reversed(clients):
                client.close()
            raise
        self._jumps = clients[:-1]

    def close(self) -> None:
        for closable in (self._sftp, self._client, *reversed(self._jumps)):
            if closable is not None:
                with contextlib.suppress(Exception):  # closing a dead connection may fail: nothing left to do
                    closable.close()
        self._sftp = self._client = None
        self._jumps = []
        self._workdir = None
        self._prepared = False

    def _connect_chain(self, device: Device, clients: list[paramiko.SSHClient]) -> paramiko.SSHClient:
        """Connect to `device`, through its jump hosts (connected first and appended to `clients`)."""
        via = self._connect_chain(device.jump, clients) if device.jump is not None else None
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                client = self._connect_once(device, via)
                clients.append(client)
                return client
            except _Transient as exc:
                if attempt == self.retries:
                    raise DeviceError(f"device {self.name}: {exc.message}") from exc.__cause__
                log.info("device %s: %s; retrying in %.1f s", self.name, exc.message, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _connect_once(self, device: Device, via: paramiko.SSHClient | None) -> paramiko.SSHClient:
        timeout = self.connect_timeout
        where = f"{device.address}" + (f" (jump host of {self.name})" if device is not self.device else "")
        if via is not None:
            assert device.jump is not None
            try:
                sock: Any = via.get_transport().open_channel(
                    "direct-tcpip", (device.host, device.port), ("127.0.0.1", 0), timeout=timeout
                )
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise _Transient(
                    f"jump host {device.jump.address} could not connect to {device.host}:{device.port} ({exc})"
                ) from exc
        else:
            try:
                sock = socket.create_connection((device.host, device.port), timeout=timeout)
            except socket.gaierror as exc:
                raise DeviceError(
                    f"device {self.name}: cannot resolve host {device.host!r} ({exc.strerror}); check `host`"
                ) from exc
            except TimeoutError as exc:
                raise _Transient(
                    f"no answer from {where} within {timeout:g} s; is the device on and reachable?"
                ) from exc
            except ConnectionRefusedError as exc:
                raise _Transient(
                    f"{where} refused the connection; is sshd running there, and is the port right?"
                ) from exc
            except OSError as exc:
                raise _Transient(f"cannot reach {where}: {exc.strerror or exc}") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        client = paramiko.SSHClient()
        known_hosts = device.known_hosts
        if known_hosts.is_file():
            try:
                client.load_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                sock.close()
                raise DeviceError(f"device {self.name}: cannot read known_hosts {known_hosts}: {exc}") from exc
        client.set_missing_host_key_policy(
            _TrustOnFirstUse(self, device) if self.trust_on_first_use else _RefuseUnknown(self, device)
        )
        try:
            client.connect(
                device.host,
                port=device.port,
                username=device.user,
                key_filename=str(device.key) if device.key else None,
                look_for_keys=device.key is None,
                allow_agent=True,
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(_changed_key_message(self.name, device, exc.expected_key, exc.key)) from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise DeviceError(
                f"device {self.name}: the key {device.key or '(default key)'} is protected by a passphrase; "
                f"load it into ssh-agent (ssh-add {device.key or ''}) - edgekit never asks for passphrases"
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            keys = f"key {device.key}" if device.key else "ssh-agent and the default keys (~/.ssh/id_*)"
            raise DeviceError(
                f"device {self.name}: {where} refused key authentication for user {device.user!r} with {keys} "
                f"({exc}); add your public key to ~{device.user}/.ssh/authorized_keys on the device "
                f"(ssh-copy-id -p {device.port} {device.user}@{device.host}) or set `key` in the fleet file"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            client.close()
            raise _Transient(f"SSH handshake with {where} failed: {exc or type(exc).__name__}") from exc
        client.get_transport().set_keepalive(15)
        return client

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

    # -- commands -----------------------------------------------------------------------------------

    def exec(
        self, argv: Sequence[str], *, timeout: float = 60.0, stdin: bytes | str | None = None
    ) -> tuple[int, str, str]:
        """Run `argv` on the device (each argument quoted) and return (exit code, stdout, stderr).

        The exit code is -1 when the command was killed by a signal. Raises DeviceTimeout when it runs
        longer than `timeout` seconds, DeviceError when the connection fails.
        """
        if not argv:
            raise ValueError("exec needs a command")
        command = " ".join(shlex.quote(str(arg)) for arg in argv)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        rc, out, err = self._exec_command(command, timeout=timeout, stdin=data, what=str(argv[0]))
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def _exec_command(
        self, command: str, *, timeout: float, stdin: bytes | None, what: str
    ) -> tuple[int, bytes, bytes]:
        client = self._require_client()
        deadline = time.monotonic() + timeout
        try:
            channel = client.get_transport().open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise DeviceError(
                f"device {self.name}: cannot start a command ({exc}); the connection may be gone"
            ) from exc
        out, err = bytearray(), bytearray()
        try:
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            fd = channel.fileno()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeviceTimeout(_timeout_message(self.name, what, timeout))
                if channel.recv_ready():
                    _keep(out, channel.recv(1 << 16))
                    continue
                if channel.recv_stderr_ready():
                    _keep(err, channel.recv_stderr(1 << 16))
                    continue
                if channel.closed:  # finished (an exit status or a signal), or the connection broke
                    if not channel.exit_status_ready() and not self.connected:
                        raise DeviceError(f"device {self.name}: lost the connection while running {what}")
                    break
                if channel.eof_received:
                    if channel.exit_status_ready():
                        break
                    channel.status_event.wait(min(remaining, 1.0))
                    continue
                select.select([fd], [], [], min(remaining, 1.0))
            rc = channel.recv_exit_status() if channel.exit_status_ready() else -1
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise DeviceError(
                f"device {self.name}: lost the connection while running {what} ({exc or type(exc).__name__})"
            ) from exc
        finally:
            channel.close()
        return rc, bytes(out), bytes(err)

    def python_argv(self) -> list[str]:
        """The device's interpreter as an argv prefix (`python` may be `/usr/bin/env python3`)."""
        return shlex.split(self.device.python)

    # -- pushing ------------------------------------------------------------------------------------

    def push_agent(self, *, progress: ProgressFn | None = None) -> PushResult:
        """Push the agent zipapp by content; `remote_path` is the file to run."""
        from edgekit.device.push import push_agent

        return push_agent(self, progress=progress)

    def push_artifact(self, artifact: Artifact, *, progress: ProgressFn | None = None) -> PushResult:
        """Push an artifact by content; `remote_path` is its folder on the device."""
        from edgekit.device.push import push_artifact

        return push_artifact(self, artifact, progress=progress)

    # -- running ------------------------------------------------------------------------------------

    def run(
        self,
        artifact: Artifact,
        plan: dict[str, Any],
        *,
        timeout_s: float = 3600.0,
        push_inputs: bool = True,
        progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Push the agent and the artifact, run the plan on the device, return the validated result.

        Never raises for a device failure: an unreachable device, a timeout, a crash, a full disk or a
        bad result comes back as a result with status `error` and the reason. A source file, an image
        folder or a `reference` that exists on this machine is pushed too (by content) and the plan
        points at the device's copy; `push_inputs=False` leaves such paths as they are (device paths).
        On a timeout the agent is stopped (it keeps what it measured: `partial` if any frame was timed).
        On Ctrl-C the agent is stopped and KeyboardInterrupt goes on.
        """
        from edgekit.device.local import failed_result

        run_id = plan.get("run_id")
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise RunError(f"plan run_id {run_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
        opened_here = not self.connected
        try:
            return self._run(artifact, plan, timeout_s=timeout_s, push_inputs=push_inputs, progress=progress)
        except DeviceError as exc:
            return failed_result(plan, str(exc))
        finally:
            if opened_here:
                self.close()

    def _run(
        self,
        artifact: Artifact,
        plan: dict[str, Any],
        *,
        timeout_s: float,
        push_inputs: bool,
        progress: ProgressFn | None,
    ) -> dict[str, Any]:
        from edgekit.device.local import failed_result
        from edgekit.device.push import push_plan_inputs

        agent = self.push_agent(progress=progress).remote_path
        device_plan = {**plan, "artifact_dir": self.push_artifact(artifact, progress=progress).remote_path}
        if push_inputs:
            device_plan = push_plan_inputs(self, device_plan, progress=progress)
        run_dir = f"{self.workdir}/runs/{plan['run_id']}"
        try:
            try:
                self.sftp.mkdir(run_dir)
            except OSError:
                self.exec(["mkdir", "-p", run_dir], timeout=30)  # it may exist from an earlier try
            self.sftp.putfo(io.BytesIO(json.dumps(device_plan).encode()), f"{run_dir}/plan.json")
        except OSError as exc:
            raise DeviceError(
                f"device {self.name}: cannot write the plan into {run_dir} ({exc}); check free space and "
                f"permissions of the work folder {self.workdir}"
            ) from exc
        self._current_run_dir = run_dir
        command = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", run_dir, *self.python_argv(), "-c"]
        # absolute paths, so `ps` on the device shows which run an agent belongs to
        command += [_AGENT_WRAPPER, agent, "--plan", f"{run_dir}/plan.json", "--result", f"{run_dir}/result.json"]
        interrupted = False
        try:
            try:
                rc, _, stderr = self._exec_command(
                    " ".join(shlex.quote(a) for a in command), timeout=timeout_s, stdin=None, what="the agent"
                )
            except DeviceTimeout:
                stopped = self._stop_agent(run_dir, grace=5.0)
                message = (
                    f"the agent did not finish within {timeout_s:g} s on device {self.name} and was {stopped}; "
                    "raise the timeout (--timeout) or ask for fewer frames"
                )
                try:
                    result = self._fetch_result(plan, run_dir)
                except DeviceError:
                    result = None
                if result is None:
                    return failed_result(plan, message)
                result["errors"].insert(0, {"stage": "transport", "message": message})
                if result["status"] == "ok":
                    result["status"] = "partial"
                return result
            except DeviceError as exc:
                # the connection broke during the run: stop the agent over a fresh one if we can
                self._stop_after_lost_connection(run_dir)
                raise DeviceError(f"{exc}; the run was abandoned") from exc
            except KeyboardInterrupt:
                # the user is waiting: every step of the cleanup gets a short, fixed time
                interrupted = True
                self._stop_agent(run_dir, grace=2.0, timeout=INTERRUPT_STEP_S)
                raise
            try:
                result = self._fetch_result(plan, run_dir)
            except DeviceError as exc:
                return failed_result(plan, str(exc))
            if result is None:
                tail = " | ".join(stderr.decode("utf-8", "replace").strip().splitlines()[-5:])
                return failed_result(
                    plan, f"the agent on device {self.name} exited with code {rc} and wrote no result: {tail}"
                )
            return result
        finally:
            self._current_run_dir = None
            self._cleanup(run_dir, timeout=INTERRUPT_STEP_S if interrupted else 30.0)

    def cancel(self) -> None:
        """Stop the agent of the run in progress; called from another thread (the fleet runner on Ctrl-C).
        The run then returns what the agent measured before it stopped."""
        run_dir = getattr(self, "_current_run_dir", None)
        if run_dir and self.connected:
            self._stop_agent(run_dir, grace=2.0)

    def _fetch_result(self, plan: dict[str, Any], run_dir: str) -> dict[str, Any] | None:
        """The validated result.json of a run, None when there is none; DeviceError when it is unusable."""
        from edgekit.device.results import validate_result

        path = f"{run_dir}/result.json"
        try:
            size = self.sftp.stat(path).st_size or 0
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DeviceError(f"device {self.name}: cannot read {path} ({exc})") from exc
        if size > MAX_RESULT_BYTES:
            raise DeviceError(
                f"device {self.name}: the result {path} is {size} bytes, more than {MAX_RESULT_BYTES}; "
                "run with keep_samples false or fewer frames"
            )
        buffer = io.BytesIO()
        try:
            self.sftp.getfo(path, buffer, prefetch=True)
        except OSError as exc:
            raise DeviceError(f"device {self.name}: cannot fetch {path} ({exc})") from exc
        try:
            data = json.loads(buffer.getvalue()[: MAX_RESULT_BYTES + 1])
            return validate_result(data, run_id=plan["run_id"])
        except (ValueError, RecursionError, RunError) as exc:
            raise DeviceError(f"device {self.name}: the agent's result could not be used: {exc}") from exc

    def _stop_agent(self, run_dir: str, *, grace: float, timeout: float | None = None) -> str:
        """Stop the run's agent (SIGTERM, then SIGKILL after `grace` s); say what happened. The stop command
        itself may take `timeout` s (default grace + 15)."""
        argv = [*self.python_argv(), "-c", _STOP_AGENT, run_dir, str(grace)]
        try:
            rc, out, err = self.exec(argv, timeout=timeout if timeout is not None else grace + 15)
        except DeviceError as exc:
            log.warning("device %s: could not stop the agent: %s", self.name, exc)
            return "possibly left running (the stop command failed)"
        if rc != 0:
            log.warning("device %s: stopping the agent failed: %s", self.name, err.strip()[-500:])
            return "possibly left running (the stop command failed)"
        return out.strip() or "stopped"

    def _stop_after_lost_connection(self, run_dir: str) -> None:
        try:
            self.close()
            self.connect()
            self._stop_agent(run_dir, grace=2.0)
        except DeviceError as exc:
            log.warning("device %s: could not stop the agent after the connection broke: %s", self.name, exc)

    def _cleanup(self, run_dir: str, *, timeout: float = 30.0) -> None:
        if not self.connected:
            return
        try:
            self.exec(["rm", "-rf", run_dir], timeout=timeout)
        except DeviceError as exc:
            log.warning("device %s: could not remove %s: %s", self.name, run_dir, exc)

    # -- facts --------------------------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        """Facts about the device, checked (see `clean_facts`): the agent's device facts (hostname, os,
        machine, python, cpu, cpu_count, numpy, opencv) at the top level, the rest flattened one level
        (`engines`, `engine_packages.<name>`, `gpu.names`, `disk.free_bytes`, `power_probe`, `warnings`),
        and `facts_source`: `agent`, or `fallback` when the agent could not say (a small Python one-liner
        then gives host, OS, CPU, Python and disk space).
        """
        agent = self.push_agent().remote_path
        python = self.python_argv()
        rc, out, _ = self.exec([*python, agent, "--facts", "--workdir", self.workdir], timeout=120)
        data = _json_object(out) if rc == 0 else None
        source = "agent"
        if data is None or data.get("schema") != FACTS_SCHEMA or data.get("version") != FACTS_VERSION:
            rc, out, err = self.exec([*python, "-c", _FALLBACK_FACTS, self.workdir], timeout=60)
            data = _json_object(out) if rc == 0 else None
            source = "fallback"
            if data is None:
                tail = " | ".join(err.strip().splitlines()[-3:])
                raise DeviceError(
                    f"device {self.name}: {self.device.python!r} could not report facts (exit {rc}: {tail}); "
                    "set `python` in the fleet file to a Python 3.8+ interpreter on the device"
                )
        device = data.get("device") if isinstance(data.get("device"), dict) else {}
        rest = {k: v for k, v in data.items() if k not in ("device", "schema", "version", "facts_source")}
        return {**clean_facts({**device, **rest}), "facts_source": source}


def clean_facts(data: dict[str, Any]) -> dict[str, Any]:
    """A device's facts, never trusted: at most 64 entries, keys up to 64 characters, values strings
    (up to 512 characters), finite numbers, booleans or null; one level of nesting is flattened to
    `outer.inner`; lists become lists of up to 32 short strings; anything else is dropped."""
    clean: dict[str, Any] = {}

    def put(key: Any, value: Any, depth: int) -> None:
        if len(clean) >= MAX_FACTS or not isinstance(key, str) or not key or len(key) > 64:
            return
        if value is None or isinstance(value, bool):
            clean[key] = value
        elif isinstance(value, int):
            clean[key] = value if abs(value) < 2**63 else None
        elif isinstance(value, float):
            clean[key] = value if math.isfinite(value) else None
        elif isinstance(value, str):
            clean[key] = value[:512]
        elif isinstance(value, list):
            clean[key] = [str(v)[:128] for v in value[:32] if isinstance(v, (str, int, float))]
        elif isinstance(value, dict) and depth == 0:
            for inner, item in list(value.items())[:MAX_FACTS]:
                if isinstance(inner, str):
                    put(f"{key}.{inner}", item, 1)

    for key, value in list(data.items())[: MAX_FACTS * 4]:
        put(key, value, 0)
    return clean


class _Transient(Exception):
    """A connection failure that may pass (refused, timed out, reset): worth another try."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _keep(buffer: bytearray, data: bytes) -> None:
    room = MAX_OUTPUT - len(buffer)
    if room > 0:
        buffer += data[:room]


def _timeout_message(name: str, what: str, timeout: float) -> str:
    return f"device {name}: {what} did not finish within {timeout:g} s"


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text[: 1 << 20])
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _known_hosts_name(device: Device) -> str:
    return device.host if device.port == 22 else f"[{device.host}]:{device.port}"


def _changed_key_message(name: str, device: Device, expected: Any, offered: Any) -> str:
    host = _known_hosts_name(device)
    return (
        f"device {name}: the host key of {host} has CHANGED: {device.known_hosts} holds "
        f"{expected.get_name()} {expected.fingerprint}, the device offered {offered.get_name()} {offered.fingerprint}. "
        "Someone may be intercepting the connection, so edgekit refuses it. If the device was reinstalled or its "
        f"key regenerated on purpose, remove the old key with `ssh-keygen -R '{host}' -f {device.known_hosts}` "
        "and connect again (trust on first use then records the new key)."
    )


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, transport: SshTransport, device: Device) -> None:
        self.transport, self.device = transport, device

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        device = self.device
        raise HostKeyError(
            f"device {self.transport.name}: the host key of {hostname} ({key.get_name()} {key.fingerprint}) is not "
            f"in {device.known_hosts}. Check the fingerprint on the device (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_{key.get_name().removeprefix('ssh-')}_key.pub), then add it with "
            f"`ssh-keyscan -p {device.port} {device.host} >> {device.known_hosts}`, or connect once with trust on "
            "first use (--trust-on-first-use)"
        )


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown key and append it to known_hosts (paramiko's AutoAddPolicy rewrites the whole
    file, dropping lines it cannot parse; appending one line keeps the user's file as it was)."""

    def __init__(self, transport: SshTransport, device: Device) -> None:
        self.transport, self.device = transport, device

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        path = self.device.known_hosts
        line = HostKeyEntry([hostname], key).to_line()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            prefix = ""
            if path.is_file() and path.stat().st_size > 0:
                with open(path, "rb") as handle:
                    handle.seek(-1, os.SEEK_END)
                    prefix = "" if handle.read(1) == b"\n" else "\n"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as handle:
                handle.write(prefix + line)
        except OSError as exc:
            raise HostKeyError(
                f"device {self.transport.name}: cannot save the host key of {hostname} to {path} ({exc}); "
                "fix the file's permissions or set `known_hosts` in the fleet file"
            ) from exc
        client.get_host_keys().add(hostname, key.get_name(), key)
        entry = f"{hostname} {key.get_name()} {key.fingerprint}"
        self.transport.trusted_keys.append(entry)
        log.warning("device %s: trusted a new host key on first use, saved to %s: %s", self.transport.name, path, entry)
