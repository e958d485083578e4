"""The `Transport` protocol: what carries a plan to a device and brings its result back.

`LocalTransport` (this machine, the agent in a subprocess) and `SshTransport` (a device over SSH) both
satisfy it; `edgekit.run` and the fleet runner are written against it, not against either one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from edgekit.artifact import Artifact
    from edgekit.device.watch import RunWatch

ProgressFn = Callable[[int, int], None]
"""`progress(sent, total)`: bytes pushed so far out of the bytes this push needs."""

_T = TypeVar("_T")


class Transport(Protocol):
    """Runs plans on one device. Open it as a context manager, then `run` as many plans as needed:

    with transport:
        result = transport.run(artifact, plan, timeout_s=600)
    """

    name: str
    """The device's name, as results are stored and reported under it."""

    def __enter__(self: _T) -> _T: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def run(
        self,
        artifact: Artifact,
        plan: dict[str, Any],
        *,
        timeout_s: float | None,
        progress: ProgressFn | None = None,
        watch: RunWatch | None = None,
    ) -> dict[str, Any]:
        """Run `plan` with `artifact` and return the validated result (docs/contracts.md). A device that fails
        (unreachable, crashed, hung, timed out, a bad result) gives a result with status `error` or `partial`,
        not an exception. `progress` follows the bytes of any push; `watch` reads the agent's progress lines
        and stops a run that stalls (default: RunWatch()); `timeout_s` caps the whole run (None: no cap)."""
        ...


@runtime_checkable
class Cancellable(Protocol):
    """A transport that can stop its run from another thread (the fleet runner on Ctrl-C or SIGTERM): a run
    in progress returns what the agent measured before it stopped, marked with the signal; a run not started
    yet (connecting, pushing) returns `cancelled` without starting its agent."""

    def cancel(self, signum: int = 2) -> None: ...
