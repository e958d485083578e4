"""Claim: the faults of the issue-18 audit, measured again with the real CLI against namespace devices.

`edgekit run --fleet` runs as a subprocess against devices made by tests/fleet/netns.py (one network
namespace, veth, sshd each). Five parts, one table:

1. N devices (32; 8 with --quick), five of them faulty at once: a slow link (tc tbf 1 Mbit/s), a nearly
   full disk (a 4 MB tmpfs work folder filled to 64 KB free), a changed host key, a dead device (everything
   in its namespace killed before the run: the port refuses) and a frozen one (its agent SIGSTOPped mid-run,
   once it has had the video open for 0.5 CPU-seconds; the host's no-progress watchdog, `--stall-timeout 15`, must stop
   it). Every agent loops 10,000 frames. Wall time, every healthy device ok, each faulty one failing alone
   with a message naming its fault, the CLI's peak RSS (wait4's ru_maxrss), its most threads and open fds
   (/proc, every 50 ms), each beside the same run on one healthy device (the anchor), and `edgekit report`
   afterwards.
2. Ctrl-C during pushes: the live devices' links shaped to 4 Mbit/s and a new 2 MB video to push, SIGINT
   once 200 KB a device have crossed the links: seconds to exit, agents started after the signal (from
   /proc command lines holding the work folders), stored statuses, exit code, one summary line per device.
3. SIGTERM to a local `edgekit run --loop --frames 10**8` (as tests/fleet/test_fleet_signals.py): seconds
   to exit, agents left, stored status, exit code.
4. A hostile device whose `python` prints markup, control characters, HTML and an IPv6-looking address to
   stderr and exits: `report`, `report --status error` and `report --html` shown literally.
5. Host memory for big results is benchmarks/result_memory.py's claim (cited, not repeated).

Run (root; needs `ip netns`, tc and /usr/sbin/sshd; ~1 min for 32 devices on 2 cores, 35 s with --quick):
    .venv/bin/python benchmarks/fleet_audit.py [--quick] [--devices 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import WORK, digits_video, print_table
from detection import cpu_isa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fleet"))
from netns import NetnsFleet, NsDevice, NsSpec, netns_fleet, unavailable_reason

from edgekit.api import build
from edgekit.demo_data import digits_model_path
from edgekit.store import ResultsStore

CLI = [sys.executable, "-c", "from edgekit.cli import main; main()"]
FAULTS = {"slow": "slow link", "full": "nearly full disk", "rekeyed": "host key changed", "dead": "dead", "frozen": ""}
HOSTILE = "[bold]boom[/] \\033[31mred\\033[0m bell\\007 cr\\r <script>x</script> at [fe80::1%%eth0]:22"
# what a message must name for each fault (case-insensitive); the slow link must simply succeed
NAMES = {"full": r"full|space", "rekeyed": r"host key|changed", "dead": r"refused|unreachable", "frozen": r"no frame"}


@dataclass
class Cli:
    """One `edgekit` subprocess, watched: its peak RSS (wait4), most threads and open fds (/proc)."""

    args: list[str]
    env: dict[str, str]
    folder: Path
    process: subprocess.Popen = field(init=False)
    started: float = field(init=False)
    threads: int = 0
    fds: int = 0
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.out, self.err = self.folder / "stdout", self.folder / "stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([*CLI, *self.args], env=self.env, stdout=out, stderr=err)
        self.started = time.monotonic()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        proc = Path(f"/proc/{self.process.pid}")
        while not self._done.is_set():
            try:
                status = (proc / "status").read_text()
                self.threads = max(self.threads, int(re.search(r"Threads:\s+(\d+)", status).group(1)))
                self.fds = max(self.fds, len(os.listdir(proc / "fd")))
            except (OSError, AttributeError):
                return
            time.sleep(0.05)

    def finish(self, timeout: float = 900) -> tuple[int, float, float]:
        """(exit code, seconds since start, peak RSS in MB); wait4 gives the child's own ru_maxrss."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.process.kill()
            time.sleep(0.02)
        self._done.set()
        self.process.returncode = os.waitstatus_to_exitcode(status)
        return self.process.returncode, time.monotonic() - self.started, usage.ru_maxrss / 1024

    def text(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


def cmdlines(text: str) -> dict[int, str]:
    """pid -> command line of this machine's processes whose command line holds `text`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if text in line and int(entry.name) != os.getpid():
                found[int(entry.name)] = line
    return found


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def is_agent(line: str) -> bool:
    return "--plan" in line and not line.startswith("sh -c")


class Freezer(threading.Thread):
    """SIGSTOPs a device's agent once, mid-run: after it has had the video open (the engine loads before the
    source opens) for 0.5 CPU-seconds and 1 s, so frames run and the agent's 0.5 s progress tick has come
    even when 30 agents share two cores."""

    def __init__(self, device: NsDevice) -> None:
        super().__init__(daemon=True)
        self.device, self.frozen_at, self.halt = device, 0.0, threading.Event()
        self.opened: dict[int, tuple[float, float]] = {}  # pid -> (wall, CPU seconds) when first seen open

    def run(self) -> None:
        while not self.halt.is_set() and not self.frozen_at:
            for pid, line in self.device.processes().items():
                if not is_agent(line) or not _has_video_open(pid):
                    continue
                wall, cpu = self.opened.setdefault(pid, (time.monotonic(), _cpu_s(pid)))
                if time.monotonic() - wall > 1.0 and _cpu_s(pid) - cpu > 0.5:
                    os.kill(pid, signal.SIGSTOP)
                    self.frozen_at = time.monotonic()
            time.sleep(0.01)


def _has_video_open(pid: int) -> bool:
    try:
        return any(".mp4" in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def stored(db: Path) -> dict[str, object]:
    return {r.device: r for r in ResultsStore(db).get()}


def first_error(record) -> str:
    errors = record.result.get("errors") or [{}]
    return str(errors[0].get("message", ""))


def five_faults(ns: NetnsFleet, root: Path, artifact, video: Path, rows: list) -> Path:
    """Part 1; returns the results database."""
    db = root / "faults.db"
    fleet = ns.write_fleet(root / "faults.toml", [d.name for d in ns.devices if d.name != "hostile"])
    full = ns["full"].workdir
    (full / "filler").write_bytes(b"\0" * (4 * 2**20 - 64 * 2**10))  # nearly full: 64 KB left
    ns["dead"].kill_all()
    # ~1.6 s of frames per agent alone (digits run at ~6,000 fps here): time to freeze one mid-run
    plan = ["--source", str(video), "--loop", "--frames", "10000", "--warmup", "2"]
    plan += ["--stall-timeout", "15", "--load-timeout", "60"]
    env = {**os.environ, "COLUMNS": "200"}
    # the anchor: the same CLI and plan on one healthy device (per-device costs = growth beyond it)
    one = Cli(["run", str(artifact.path), "--fleet", str(fleet), "--device", "ok00", *plan],
              {**env, "EDGEKIT_DB": str(root / "one.db")}, root)  # fmt: skip
    one_rc, one_s, one_peak = one.finish()
    freezer = Freezer(ns["frozen"])
    freezer.start()
    cli = Cli(["run", str(artifact.path), "--fleet", str(fleet), *plan], {**env, "EDGEKIT_DB": str(db)}, root)
    rc, seconds, peak = cli.finish()
    freezer.halt.set()
    records = stored(db)
    devices = [d.name for d in ns.devices if d.name != "hostile"]
    healthy = [n for n in devices if n not in FAULTS or n == "slow"]
    ok = [n for n in healthy if n in records and records[n].status == "ok"]
    tb = "Traceback" in cli.text()
    rows.append(["1", f"{len(devices)} devices, 5 faults: wall time", f"{seconds:.1f} s", "", ""])
    rows.append(
        [
            "1",
            "healthy devices ok (incl. the slow link)",
            f"{len(ok)}/{len(healthy)}",
            "all",
            verdict(len(ok) == len(healthy)),
        ]
    )
    for name, pattern in NAMES.items():
        record = records.get(name)
        message = first_error(record) if record else "no record"
        good = record is not None and record.status != "ok" and re.search(pattern, message, re.I) is not None
        rows.append(["1", f"{name}: {record.status if record else '-'}", message[:110], pattern, verdict(good)])
    if not freezer.frozen_at:
        rows.append(["1", "frozen: agent SIGSTOPped mid-run", "missed (ran out first)", "frozen", "FAIL"])
    rows.append(
        [
            "1",
            "exit code / traceback",
            f"{rc} / {'yes' if tb else 'no'}",
            "1 or 2 / no",
            verdict(rc in (1, 2) and not tb),
        ]
    )
    extra = len(devices) - 1
    rows.append(["1", f"anchor: 1 device ({one_rc}), wall / CLI peak RSS / threads / fds",
                 f"{one_s:.1f} s / {one_peak:.0f} MB / {one.threads} / {one.fds}", "", ""])  # fmt: skip
    rows.append(["1", f"{len(devices)} devices: CLI peak RSS / most threads / open fds",
                 f"{peak:.0f} MB / {cli.threads} / {cli.fds}", "", ""])  # fmt: skip
    rows.append(["1", "per extra device: RSS / threads / fds",
                 f"{(peak - one_peak) / extra:.2f} MB / {(cli.threads - one.threads) / extra:.2f} / "
                 f"{(cli.fds - one.fds) / extra:.2f}", "", ""])  # fmt: skip
    agent_rss = sorted(
        (r.result.get("memory") or {}).get("peak_rss_mb") or 0 for r in records.values() if r.status == "ok"
    )
    if agent_rss and agent_rss[-1]:
        rows.append(["1", "agent peak RSS on a device (median)", f"{agent_rss[len(agent_rss) // 2]:.0f} MB", "", ""])
    env = {**os.environ, "EDGEKIT_DB": str(db), "COLUMNS": "200"}
    last = ["--last", str(len(devices) + 10)]  # the default lists the latest 20
    report = subprocess.run([*CLI, "report", *last], env=env, capture_output=True, text=True)
    shown = sum(1 for n in ok if n in report.stdout)
    rows.append(
        [
            "1",
            "`edgekit report --last N` afterwards: rc, ok devices shown",
            f"{report.returncode}, {shown}",
            "0, all",
            verdict(report.returncode == 0 and shown == len(ok)),
        ]
    )
    return db


class ProcessLog(threading.Thread):
    """Every process whose command line holds `text`, with when it was first seen."""

    def __init__(self, text: str) -> None:
        super().__init__(daemon=True)
        self.text, self.seen, self.halt = text, {}, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.monotonic()
            for pid, line in cmdlines(self.text).items():
                self.seen.setdefault(pid, (now, line))
            time.sleep(0.02)


def ctrl_c_during_pushes(ns: NetnsFleet, root: Path, artifact, rows: list) -> None:
    """Part 2: a new, bigger video behind 4 Mbit/s links; SIGINT once pushes have begun."""
    db = root / "ctrl-c.db"
    names = [d.name for d in ns.devices if d.name not in ("hostile", "dead", "frozen")]
    for name in names:
        subprocess.run(["tc", "qdisc", "replace", "dev", ns[name].host_veth, "root", "tbf", "rate", "4mbit"]
                       + ["burst", "32kbit", "latency", "400ms"], check=True)  # fmt: skip
    video, _ = digits_video((224, 224), count=1000)
    fleet = ns.write_fleet(root / "ctrl-c.toml", names)
    watch = ProcessLog(str(ns.root))
    watch.start()
    cli = Cli(["run", str(artifact.path), "--fleet", str(fleet), "--source", str(video), "--frames", "50"],
              {**os.environ, "EDGEKIT_DB": str(db), "COLUMNS": "200"}, root)  # fmt: skip
    # pushes have begun once the first push check has run on every device: wait for sftp's bytes on the links
    sent = lambda: sum(_tbf_sent(ns[n].host_veth) for n in names)  # noqa: E731
    before = sent()
    while sent() - before < len(names) * 200_000 and time.monotonic() - cli.started < 120:
        time.sleep(0.05)
    agents_before = sum(1 for _, line in watch.seen.values() if is_agent(line))
    signalled = time.monotonic()
    cli.process.send_signal(signal.SIGINT)
    rc, _, _ = cli.finish(timeout=60)
    stop_s = time.monotonic() - signalled
    time.sleep(0.5)
    watch.halt.set()
    late = [line for t, line in watch.seen.values() if t > signalled and is_agent(line)]
    left = [line for line in cmdlines(str(ns.root)).values() if is_agent(line)]
    statuses: dict[str, int] = {}
    for record in stored(db).values():
        statuses[record.status] = statuses.get(record.status, 0) + 1
    err = cli.err.read_text(errors="replace")
    summaries = sum(1 for n in names if re.search(rf"^\s*{re.escape(n)}: ", err, re.M))
    stopped_ok = sum(statuses.get(s, 0) for s in ("partial", "cancelled"))
    rows.append(
        [
            "2",
            f"SIGINT after {signalled - cli.started:.1f} s: seconds to exit",
            f"{stop_s:.2f} s",
            "<= 5 s",
            verdict(stop_s <= 5),
        ]
    )
    rows.append(
        [
            "2",
            "agents running at the signal / started after it",
            f"{agents_before} / {len(late)}",
            "- / 0",
            verdict(not late),
        ]
    )
    rows.append(["2", "agents left after exit", str(len(left)), "0", verdict(not left)])
    rows.append(
        [
            "2",
            "stored statuses",
            json.dumps(statuses),
            "partial/cancelled; full, rekeyed: error",
            verdict(stopped_ok == len(names) - 2 and statuses.get("error") == 2),
        ]
    )
    rows.append(
        [
            "2",
            "exit code / summary lines",
            f"{rc} / {summaries} of {len(names)}",
            f"130 / {len(names)}",
            verdict(rc == 130 and summaries == len(names)),
        ]
    )


def _tbf_sent(veth: str) -> int:
    shown = subprocess.run(["tc", "-s", "qdisc", "show", "dev", veth], capture_output=True, text=True).stdout
    match = re.search(r"Sent (\d+) bytes", shown)
    return int(match.group(1)) if match else 0


def sigterm_local(root: Path, artifact, video: Path, rows: list) -> None:
    """Part 3: SIGTERM to a local endless run (the measurement of tests/fleet/test_fleet_signals.py)."""
    db = root / "local.db"
    cli = Cli(["run", str(artifact.path), "--source", str(video), "--loop", "--frames", str(10**8), "--warmup", "2"],
              {**os.environ, "EDGEKIT_DB": str(db), "COLUMNS": "200"}, root)  # fmt: skip
    # this CLI's own agents (the machine is shared: other runs' agents are not counted)
    mine = lambda: [p for p, line in cmdlines("edgekit-run-").items() if is_agent(line) and _ppid(p) == cli.process.pid]  # noqa: E731
    while not mine() and time.monotonic() - cli.started < 60:
        time.sleep(0.1)
    time.sleep(2.0)  # past the warm-up: frames are being timed
    agents = mine()
    signalled = time.monotonic()
    cli.process.send_signal(signal.SIGTERM)
    rc, _, _ = cli.finish(timeout=60)
    stop_s = time.monotonic() - signalled
    left = [p for p in agents if Path(f"/proc/{p}").exists()]
    [record] = stored(db).values()
    timed = record.result["frames"]["timed"]
    rows.append(
        [
            "3",
            "local SIGTERM: seconds to exit / agents left",
            f"{stop_s:.2f} s / {len(left)} of {len(agents)}",
            "<= 5 s / 0",
            verdict(stop_s <= 5 and bool(agents) and not left),
        ]
    )
    rows.append(
        [
            "3",
            "stored status, frames kept / exit code",
            f"{record.status}, {timed} / {rc}",
            "partial, > 0 / 143",
            verdict(record.status == "partial" and timed > 0 and rc == 143),
        ]
    )


def hostile_device(ns: NetnsFleet, root: Path, artifact, video: Path, db: Path, rows: list) -> None:
    """Part 4: a device whose python prints hostile text and exits; the reports show it literally."""
    python = root / "hostile-python"
    python.write_text(f"#!/bin/sh\nprintf '{HOSTILE}\\n' >&2\nexit 3\n")
    python.chmod(0o755)
    ns.python, saved = str(python), ns.python
    fleet = ns.write_fleet(root / "hostile.toml", ["hostile"])
    ns.python = saved
    env = {**os.environ, "EDGEKIT_DB": str(db), "COLUMNS": "250"}
    run = subprocess.run([*CLI, "run", str(artifact.path), "--fleet", str(fleet), "--source", str(video)],
                         env=env, capture_output=True, text=True)  # fmt: skip
    html = root / "report.html"
    outputs = {
        "run --fleet": run,
        "report": subprocess.run([*CLI, "report"], env=env, capture_output=True, text=True),
        "report --status error": subprocess.run(
            [*CLI, "report", "--status", "error"], env=env, capture_output=True, text=True
        ),
        "report --html": subprocess.run([*CLI, "report", "--html", str(html)], env=env, capture_output=True, text=True),
    }
    for what, done in outputs.items():
        text = done.stdout + done.stderr
        raw = [c for c in ("\x1b", "\x07", "\r") if c in text]
        rows.append(
            [
                "4",
                f"{what}: rc, traceback, raw control chars",
                f"{done.returncode}, {'Traceback' in text}, {raw}",
                "no traceback, []",
                verdict("Traceback" not in text and not raw),
            ]
        )
    listed = outputs["report --status error"].stdout
    literal = all(s in listed for s in ("[bold]boom[/]", "fe80::1%eth0"))
    rows.append(
        ["4", "report --status error shows [bold]boom[/] and fe80::1%eth0", str(literal), "True", verdict(literal)]
    )
    line = next((text for text in listed.splitlines() if "boom" in text), "")
    excerpt = line[max(0, line.find("boom") - 20) :][:100]
    rows.append(["4", "the hostile error as `report --status error` lists it", ascii(excerpt), "", ""])
    page = html.read_text() if html.exists() else ""
    escaped = "&lt;script&gt;" in page and "<script>x" not in page and "[bold]boom[/]" in page
    rows.append(["4", "report --html: markup literal, <script> escaped", str(escaped), "True", verdict(escaped)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=32, help="devices of part 1 (five of them faulty)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 devices")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return
    count = 8 if args.quick else args.devices
    video, _ = digits_video((112, 112), count=1000)  # parts 1 and 4 (1.2 MB: ~10 s over the slow link)
    endless, _ = digits_video((112, 112), count=40)  # part 3, looped
    artifact = build(digits_model_path(), "x86-ort", WORK / "fleet-digits-x86-ort")
    specs = [NsSpec(f"ok{i:02d}") for i in range(count - len(FAULTS))] + [
        NsSpec("slow", rate="1mbit"),
        NsSpec("full", workdir_size="4m"),
        NsSpec("rekeyed", wrong_host_key=True),
        NsSpec("dead"),
        NsSpec("frozen"),
        NsSpec("hostile"),
    ]
    rows: list[list[str]] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ek-fleet-audit-") as tmp:
        root = Path(tmp)
        with netns_fleet(specs, root) as ns:
            made = time.monotonic() - start
            db = five_faults(ns, root, artifact, video, rows)
            hostile_device(ns, root, artifact, video, db, rows)
            ctrl_c_during_pushes(ns, root, artifact, rows)
        sigterm_local(root, artifact, endless, rows)
    rows.append(
        ["5", "4 devices x 200 MB results: host peak RSS", "see benchmarks/result_memory.py", "<= 300 MB", "(cited)"]
    )
    print(f"\nCPU: {cpu_isa()}; {os.cpu_count()} cores; {count} namespace devices (+1 hostile) made in {made:.1f} s")
    print_table("issue 18 audit, measured with the real CLI", ["part", "figure", "measured", "target", "verdict"], rows)


if __name__ == "__main__":
    main()
