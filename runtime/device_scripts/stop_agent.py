"""Stops a run's agent on the device: `python -c SOURCE RUN_DIR GRACE_S`.

Leaves a `stop` file (so an agent not started yet never starts), then sends SIGTERM to the agent's
process group (the agent then writes what it measured; SIGCONT wakes a stopped one) and SIGKILL after
the grace period. Prints what happened: never started, already exited, stopped or killed. Python 3.8-compatible.
"""

import os
import signal
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _wait_gone(pid: int, seconds: float) -> None:
    end = time.time() + seconds
    while _alive(pid) and time.time() < end:
        time.sleep(0.02)


def main() -> None:
    rundir, grace = sys.argv[1], float(sys.argv[2])
    open(os.path.join(rundir, "stop"), "w").close()
    pidfile = os.path.join(rundir, "agent.pid")
    deadline = time.time() + 3
    while not os.path.exists(pidfile):
        if time.time() > deadline:
            print("never started")
            sys.exit(0)
        time.sleep(0.02)
    with open(pidfile) as handle:
        pid = int(handle.read().split()[0])
    try:
        os.killpg(pid, signal.SIGTERM)
        os.killpg(pid, signal.SIGCONT)  # a stopped (frozen) agent wakes to the SIGTERM and writes its result
    except ProcessLookupError:
        print("already exited")
        sys.exit(0)
    _wait_gone(pid, grace)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
        _wait_gone(pid, 2)
        print("killed")
    else:
        print("stopped")


if __name__ == "__main__":
    main()
