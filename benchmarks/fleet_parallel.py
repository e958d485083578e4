"""Claim: the fleet runner scales: 8 devices in parallel take at most 1.3x the time of 1 device; a second
run pushes 0 bytes; a command round trip is at most 15 ms; the fleet adds under 1 s per device.

Devices are network namespaces on this machine (tests/fleet/netns.py), each with its own sshd on a veth
link; the runner, transport, agent and store are the real ones (the same path as `edgekit run --fleet`).
Anchor: the same artifact and plan on 1 device, measured in the same run; rounds alternate which side
goes first, and each figure is the median over the rounds.

All "devices" share this machine's CPUs, so 8 agents compete for them: the 8-device time cannot beat
the CPU work of 8 agents divided by the cores. The table shows that floor (machine CPU seconds busy
during the 8-device run / cores) beside the ratio, and a CPU-light plan (few frames) next to the
~300-frame one, to separate the fleet's own cost from CPU contention.

Fleet overhead per device = a fresh transport's `run` (connect, push check, plan, start, wait, fetch,
clean up) minus the agent's own time, where the agent's own time is the same agent zipapp, plan and Python run
as a subprocess here (no SSH). The run's parts are timed on the real transport (a subclass that only
adds stopwatches). `total - wall_s` (wall_s: the timed frames only) is shown too; it also holds the
agent's interpreter start, imports, model load and warm-up.

Run (root; needs `ip netns`, tc and /usr/sbin/sshd):
    .venv/bin/python benchmarks/fleet_parallel.py [--rounds 3] [--devices 8] [--frames 300] [--light-frames 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import WORK, digits_video, median, print_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fleet"))
from netns import NsSpec, loopback_sshd, netns_fleet, unavailable_reason

from edgekit.api import build
from edgekit.demo_data import digits_model_path
from edgekit.device.plan import Source, make_plan
from edgekit.device.settings import RunSettings
from edgekit.device.ssh import SshTransport
from edgekit.fleet.runner import run_fleet
from edgekit.model import Model
from edgekit.store import ResultsStore


def cpu_busy_seconds() -> float:
    """Seconds of CPU time this machine has spent busy (all cores, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Fleet:
    """Runs one artifact and plan across devices through the fleet runner, counting bytes pushed."""

    def __init__(self, artifact, store: ResultsStore) -> None:
        self.artifact, self.store = artifact, store

    def run(self, devices, plan_options: dict) -> tuple[float, float, list, int]:
        """(wall seconds, machine CPU seconds, records, bytes pushed)."""
        transports: list[SshTransport] = []

        def plan_for(device, run_id):
            return make_plan(
                str(self.artifact.path), run_id=run_id, engine=self.artifact.manifest["engine"], **plan_options
            )

        def transport_for(device):
            transport = SshTransport(device)
            transports.append(transport)
            return transport

        cpu = cpu_busy_seconds()
        start = time.perf_counter()
        records = run_fleet(self.artifact, devices, plan_for, transport_for, timeout_s=600, store=self.store)
        wall = time.perf_counter() - start
        cpu = cpu_busy_seconds() - cpu
        bad = [f"{r.device}: {r.result['errors']}" for r in records if not r.ok]
        if bad:
            raise SystemExit("a device failed: " + "; ".join(bad))
        return wall, cpu, records, sum(t.bytes_sent for t in transports)


def round_trip_ms(device, count: int) -> float:
    with SshTransport(device) as ssh:
        ssh.exec(["true"])
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            rc, _, _ = ssh.exec(["true"])
            samples.append((time.perf_counter() - start) * 1000)
            assert rc == 0
    return statistics.median(samples)


class TimedSsh(SshTransport):
    """The real SSH transport, with a stopwatch on each part of `run`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.parts: dict[str, float] = {}

    def _timed(self, part: str, call, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.parts[part] = self.parts.get(part, 0.0) + time.perf_counter() - start

    def connect(self) -> None:
        self._timed("connect", super().connect)

    def push_agent(self, **kwargs):
        return self._timed("push check: agent (with the work folder check)", super().push_agent, **kwargs)

    def push_artifact(self, artifact, **kwargs):
        return self._timed("push check: artifact", super().push_artifact, artifact, **kwargs)

    def _exec_command(self, command, *, timeout, stdin, what):
        part = "agent command (ssh session, sh, wrapper, agent)" if what == "the agent" else None
        if part is None:
            return super()._exec_command(command, timeout=timeout, stdin=stdin, what=what)
        return self._timed(part, super()._exec_command, command, timeout=timeout, stdin=stdin, what=what)

    def _fetch_result(self, plan, run_dir):
        return self._timed("fetch result", super()._fetch_result, plan, run_dir)

    def _cleanup(self, run_dir, **kwargs):
        return self._timed("clean up", super()._cleanup, run_dir, **kwargs)


def agent_alone_s(artifact, plan: dict) -> float:
    """The agent's own time: the same zipapp, plan and Python in a subprocess here, no SSH."""
    from edgekit.device.local import local_agent

    agent = local_agent()
    with tempfile.TemporaryDirectory(prefix="edgekit-agent-alone-") as tmp:
        plan_path, result_path = Path(tmp) / "plan.json", Path(tmp) / "result.json"
        plan_path.write_text(json.dumps({**plan, "artifact_dir": str(artifact.path.resolve())}))
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(agent), "--plan", str(plan_path), "--result", str(result_path)],
            check=True,
            capture_output=True,
            cwd=tmp,
        )
        return time.perf_counter() - start


def overhead(device, artifact, plan_options: dict, rounds: int) -> dict[str, float]:
    """Medians over `rounds` of a fresh transport's run, its parts, and the agent alone."""
    figures: dict[str, list[float]] = {}
    for index in range(rounds):
        plan = make_plan(str(artifact.path), engine=artifact.manifest["engine"], **plan_options)
        for side in ("ssh", "alone") if index % 2 == 0 else ("alone", "ssh"):
            if side == "alone":
                figures.setdefault("agent alone", []).append(agent_alone_s(artifact, plan))
                continue
            ssh = TimedSsh(device)
            start = time.perf_counter()
            try:
                ssh.connect()  # here, so that no other part's time holds it
                result = ssh.run(artifact, plan, timeout_s=600)
                total = time.perf_counter() - start
            finally:
                ssh.close()
            assert result["status"] == "ok", result["errors"]
            figures.setdefault("total", []).append(total)
            figures.setdefault("total - wall_s", []).append(total - (result["wall_s"] or 0.0))
            for part, seconds in ssh.parts.items():
                figures.setdefault(part, []).append(seconds)
            figures.setdefault("rest (inputs check, run folder, plan upload)", []).append(
                total - sum(ssh.parts.values())
            )
    return {name: median(values) for name, values in figures.items()}


def transport_only(devices) -> tuple[float, float]:
    """Wall seconds for connect + push check + one command + close on `devices`, in parallel, and the
    machine CPU seconds spent: the fleet's own path without the agent's CPU work."""

    def one(device) -> None:
        with SshTransport(device) as ssh:
            ssh.push_agent()
            rc, _, _ = ssh.exec(["true"])
            assert rc == 0

    cpu = cpu_busy_seconds()
    start = time.perf_counter()
    with ThreadPoolExecutor(len(devices)) as pool:
        list(pool.map(one, devices))
    return time.perf_counter() - start, cpu_busy_seconds() - cpu


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--frames", type=int, default=300, help="frames of the full plan")
    parser.add_argument("--light-frames", type=int, default=20, help="frames of the CPU-light plan")
    parser.add_argument("--threads", type=int, default=1, help="engine threads per agent")
    parser.add_argument("--round-trips", type=int, default=50)
    args = parser.parse_args()

    reason = unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return
    cores = os.cpu_count() or 1
    video, labels = digits_video((112, 112), count=args.frames)
    artifact = build(Model.load(digits_model_path()), "x86-ort", WORK / "fleet-digits-x86-ort")
    plans = {
        f"full ({args.frames} frames)": dict(
            source=Source.parse(video),
            settings=RunSettings(frames=args.frames, warmup=10, threads=args.threads, labels=labels),
        ),
        f"light ({args.light_frames} frames)": dict(
            source=Source.parse(video),
            settings=RunSettings(
                frames=args.light_frames, warmup=2, threads=args.threads, labels=labels[: args.light_frames]
            ),
        ),
    }

    with tempfile.TemporaryDirectory(prefix="edgekit-fleet-bench-") as tmp:
        root = Path(tmp)
        store = ResultsStore(root / "results.db")
        fleet = Fleet(artifact, store)
        specs = [NsSpec(f"dev{i}") for i in range(args.devices)]
        with netns_fleet(specs, root) as ns, loopback_sshd(root) as lo:
            devices = [ns.edgekit_device(s.name) for s in specs]
            one = devices[:1]
            first_plan = next(iter(plans.values()))

            _, _, _, first_bytes = fleet.run(devices, first_plan)
            _, _, _, second_bytes = fleet.run(devices, first_plan)

            scaling_rows, figures = [], {}
            for label, plan in plans.items():
                t1s, t8s, floors, ratios, ideal = [], [], [], [], []
                for index in range(args.rounds):
                    order = ("1", "n") if index % 2 == 0 else ("n", "1")
                    measured = {}
                    for side in order:
                        measured[side] = fleet.run(one if side == "1" else devices, plan)
                    t1, tn, cpu_n = measured["1"][0], measured["n"][0], measured["n"][1]
                    t1s.append(t1)
                    t8s.append(tn)
                    floors.append(cpu_n / cores)
                    ratios.append(tn / t1)
                    ideal.append(tn / max(t1, cpu_n / cores))
                figures[label] = median(ratios)
                scaling_rows.append(
                    [
                        label,
                        f"{median(t1s):.2f}",
                        f"{median(t8s):.2f}",
                        f"{median(floors):.2f}",
                        f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                        f"{median(ideal):.2f}",
                    ]
                )
            t1s, t8s, floors, ratios, ideal = [], [], [], [], []
            for index in range(args.rounds):
                order = ("1", "n") if index % 2 == 0 else ("n", "1")
                measured = {side: transport_only(one if side == "1" else devices) for side in order}
                (t1, _), (tn, cpu_n) = measured["1"], measured["n"]
                t1s.append(t1)
                t8s.append(tn)
                floors.append(cpu_n / cores)
                ratios.append(tn / t1)
                ideal.append(tn / max(t1, cpu_n / cores))
            transport_label = "no agent: connect + push check + exec(true)"
            figures[transport_label] = median(ratios)
            scaling_rows.append(
                [
                    transport_label,
                    f"{median(t1s):.2f}",
                    f"{median(t8s):.2f}",
                    f"{median(floors):.2f}",
                    f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                    f"{median(ideal):.2f}",
                ]
            )

            rtt_lo = round_trip_ms(lo.edgekit_device("loopback"), args.round_trips)
            rtt_ns = round_trip_ms(devices[0], args.round_trips)
            light = plans[f"light ({args.light_frames} frames)"]
            parts = overhead(devices[0], artifact, light, max(3, args.rounds))

    print(
        f"\nmachine: {cores} cores; {args.devices} namespace devices; {args.rounds} rounds; "
        f"engine threads per agent: {args.threads}; artifact {artifact.id[:12]} (demo digits, x86-ort)"
    )
    print_table(
        f"1 device vs {args.devices} in parallel (seconds, medians); CPU floor = machine CPU-seconds busy in the "
        f"{args.devices}-device run / {cores} cores",
        [
            "work per device",
            "1 device",
            f"{args.devices} devices",
            "CPU floor",
            "ratio (range)",
            "ratio vs max(1 dev, floor)",
        ],
        scaling_rows,
    )
    fleet_overhead = parts["total"] - parts["agent alone"]
    summary = ("total", "agent alone", "total - wall_s")
    rows = [[name, f"{seconds:.3f}"] for name, seconds in parts.items() if name not in summary]
    rows += [
        ["SSH run total (fresh transport)", f"{parts['total']:.3f}"],
        ["the agent alone (same zipapp, plan, Python; subprocess here)", f"{parts['agent alone']:.3f}"],
        ["=> fleet overhead: total - agent alone", f"{fleet_overhead:.3f}"],
        [
            "(total - result wall_s: also the agent's start, imports, model load, warm-up)",
            f"{parts['total - wall_s']:.3f}",
        ],
    ]
    print_table(
        f"fleet overhead per device (light plan, fresh connection, medians of {max(3, args.rounds)})",
        ["part", "seconds"],
        rows,
    )
    full_label, light_label = plans
    print_table(
        "claims",
        ["figure", "measured", "target", "verdict"],
        [
            *[
                [f"{args.devices} vs 1 wall-time ratio, {label}", f"{ratio:.2f}", "<= 1.3", verdict(ratio <= 1.3)]
                for label, ratio in figures.items()
            ],
            ["bytes pushed, first run (all devices)", f"{first_bytes}", "(reference)", ""],
            ["bytes pushed, second run (all devices)", f"{second_bytes}", "0", verdict(second_bytes == 0)],
            [
                f"exec(['true']) round trip, loopback (median of {args.round_trips})",
                f"{rtt_lo:.2f} ms",
                "<= 15 ms",
                verdict(rtt_lo <= 15),
            ],
            [
                f"exec(['true']) round trip, into a namespace (median of {args.round_trips})",
                f"{rtt_ns:.2f} ms",
                "<= 15 ms",
                verdict(rtt_ns <= 15),
            ],
            [
                "fleet overhead per device (total - agent alone)",
                f"{fleet_overhead:.3f} s",
                "< 1 s",
                verdict(fleet_overhead < 1),
            ],
        ],
    )


if __name__ == "__main__":
    main()
