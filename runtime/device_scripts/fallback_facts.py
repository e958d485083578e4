"""Facts when the agent cannot give them (an older agent without --facts): enough to know the device.

`python -c SOURCE WORKDIR` prints one JSON object: `device` (hostname, os, machine, python, cpu,
cpu_count) and `disk` (free and total bytes where WORKDIR is, else the home folder; null when unknown).
Python 3.8-compatible, standard library only.
"""

import json
import os
import platform
import shutil
import socket
import sys


def _cpu() -> str:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def main() -> None:
    device = {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
    }
    facts = {"device": device, "disk": None}
    try:
        usage = shutil.disk_usage(sys.argv[1] if os.path.exists(sys.argv[1]) else os.path.expanduser("~"))
        facts["disk"] = {"path": sys.argv[1], "free_bytes": usage.free, "total_bytes": usage.total}
    except OSError:
        pass
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
