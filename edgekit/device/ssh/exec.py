"""Run one command on a device over an open SSH connection: bounded output, a deadline, an exit code.

Every command is an argv list, each argument quoted, so paths and values arrive literally. Output
beyond `MAX_OUTPUT` bytes per stream is read and dropped (a chatty command cannot fill the host's
memory); a command that outlives its timeout raises DeviceTimeout (the channel is closed, the
connection stays usable).
"""

from __future__ import annotations

import select
import shlex
import time
from collections.abc import Sequence

import paramiko

from edgekit.device.watch import RunWatch
from edgekit.errors import DeviceError, DeviceTimeout

MAX_OUTPUT = 16 << 20  # bytes kept per stream of a command; the rest is read and dropped
_POLL_S = 1.0  # longest wait between checks of the deadline


def quote_argv(argv: Sequence[str]) -> str:
    """One shell command line that gives `argv` to the program literally."""
    if not argv:
        raise ValueError("exec needs a command")
    return " ".join(shlex.quote(str(arg)) for arg in argv)


def is_active(client: paramiko.SSHClient | None) -> bool:
    transport = client.get_transport() if client else None
    return bool(transport and transport.is_active())


def run_command(
    client: paramiko.SSHClient,
    command: str,
    *,
    timeout: float,
    stdin: bytes | None,
    name: str,
    what: str,
    open_timeout: float = 10.0,
    watch: RunWatch | None = None,
) -> tuple[int, bytes, bytes]:
    """Run the shell `command` on the device `name` and return (exit code, stdout, stderr).

    The exit code is -1 when the command was killed by a signal. Raises DeviceTimeout when it runs longer
    than `timeout` seconds or, with a `watch` (which reads its stdout as it comes), when the watch says it
    stalled; DeviceError when the connection fails; both name `what` was running.
    """
    deadline = time.monotonic() + timeout
    try:
        channel = client.get_transport().open_session(timeout=open_timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise DeviceError(f"device {name}: cannot start a command ({exc}); the connection may be gone") from exc
    out, err = bytearray(), bytearray()
    try:
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
        if not _drain(channel, out, err, deadline, watch) and not is_active(client):
            raise DeviceError(f"device {name}: lost the connection while running {what}")
        rc = channel.recv_exit_status() if channel.exit_status_ready() else -1
    except _Overdue as overdue:
        why = str(overdue) or f"{what} did not finish within {timeout:g} s"
        raise DeviceTimeout(f"device {name}: {why}") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise DeviceError(
            f"device {name}: lost the connection while running {what} ({exc or type(exc).__name__})"
        ) from exc
    finally:
        channel.close()
    return rc, bytes(out), bytes(err)


class _Overdue(Exception):
    """The deadline passed (no message), or the watch said the command stalled (its message)."""


def _drain(
    channel: paramiko.Channel, out: bytearray, err: bytearray, deadline: float, watch: RunWatch | None = None
) -> bool:
    """Read both streams until the command ends; False when the channel closed with no exit status
    (killed by a signal, or the connection broke). Raises _Overdue at the deadline or when `watch` (fed
    stdout as it arrives) says the command stalled."""
    fd = channel.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Overdue
        stalled = watch.overdue() if watch is not None else None
        if stalled:
            raise _Overdue(stalled)
        if channel.recv_ready():
            data = channel.recv(1 << 16)
            if watch is not None:
                watch.feed(data)
            _keep(out, data)
        elif channel.recv_stderr_ready():
            _keep(err, channel.recv_stderr(1 << 16))
        elif channel.closed:  # finished (an exit status or a signal), or the connection broke
            return channel.exit_status_ready()
        elif channel.eof_received:
            if channel.exit_status_ready():
                return True
            channel.status_event.wait(min(remaining, _POLL_S))
        else:
            select.select([fd], [], [], min(remaining, _POLL_S))


def _keep(buffer: bytearray, data: bytes) -> None:
    room = MAX_OUTPUT - len(buffer)
    if room > 0:
        buffer += data[:room]
