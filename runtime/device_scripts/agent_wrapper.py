"""Runs on the device in the run folder and becomes the agent: `python -c SOURCE AGENT ARGS...`.

A process group of its own (so a stop reaches every process the agent starts), a pid file written
before the agent runs, and no start at all once a stop came (the `stop` file). Python 3.8-compatible.
"""

import contextlib
import os
import sys


def main() -> None:
    with contextlib.suppress(OSError):  # already a group leader
        os.setsid()
    with open("agent.pid.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename("agent.pid.tmp", "agent.pid")
    if os.path.exists("stop"):
        sys.exit(124)
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])


if __name__ == "__main__":
    main()
