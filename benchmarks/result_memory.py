"""Claim: four devices returning ~200 MB results each cost the host process at most 300 MB of peak RSS.

Four devices of one fleet file share a real OpenSSH server on 127.0.0.1 (tests/fleet/netns.py
`loopback_sshd`), each with its own work folder. Their `python` is a stand-in agent that writes a valid
result of the requested size (six stages of raw samples at full float precision, written with
indent=4: the bulk of a big result; and a small detection task_output) instead of running a model, so
the figure is the host's cost of fetching, validating and storing results, not of inference. The host
side runs `edgekit.api.run_fleet` (the path of `edgekit run --fleet`) in a child process, which reports
its own peak RSS (ru_maxrss) and its RSS after imports (the anchor: edgekit before any result arrives).

Run (needs /usr/sbin/sshd):
    .venv/bin/python benchmarks/result_memory.py [--devices 4] [--mb 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fleet"))

BUDGET_MB = 300.0

STAND_IN_AGENT = """
import json, shutil, sys
args = sys.argv[1:]
plan = json.load(open(args[args.index("--plan") + 1]))
with open(args[args.index("--result") + 1], "wb") as out:
    head = {"schema": "edgekit.result", "version": 1, "run_id": plan["run_id"], "status": "ok"}
    out.write(json.dumps(head)[:-1].encode() + b", ")
    with open(BODY, "rb") as body:
        shutil.copyfileobj(body, out, 1 << 20)
"""


def write_body(path: Path, megabytes: float) -> int:
    """The result after its header: summaries, then raw samples (and detections) until `megabytes`."""
    rng = random.Random(0)
    stages = ("capture", "preprocess", "inference", "postprocess", "end_to_end", "inference_gpu")
    per_stage = min(1_000_000, int(megabytes * 1e6 * 0.98 / len(stages) / 32))  # 32 bytes a sample at indent=4
    summary = {"mean": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0, "std": 0.1, "count": per_stage}
    with open(path, "w") as out:
        frames_json = json.dumps({"timed": per_stage, "warmup": 0, "dropped": 0})
        out.write(f'"frames": {frames_json},\n"latency_ms": {json.dumps(dict.fromkeys(stages, summary))},\n')
        out.write('"samples_ms": {\n')
        for index, stage in enumerate(stages):
            out.write(f' "{stage}": [\n')
            out.write(",\n".join(f"            {rng.uniform(0.5, 50.0)!r}" for _ in range(per_stage)))
            out.write("\n ]" + ("," if index < len(stages) - 1 else "") + "\n")
        out.write("},\n")
        room = max(0, int(megabytes * 1e6) - out.tell() - 64)
        boxes = min(2_000, room // 120)  # samples are the bulk, as in a long run
        frames = [{"frame": i, "size": [480, 640], "boxes": []} for i in range(max(1, boxes // 100))]
        for i in range(boxes):
            x, y = rng.uniform(0, 600), rng.uniform(0, 440)
            box = [x, y, x + rng.uniform(1, 40), y + rng.uniform(1, 40), rng.random(), i % 80]
            frames[i % len(frames)]["boxes"].append(box)
        out.write('"task_output": ')
        json.dump({"kind": "detect", "frames": frames, "count": boxes, "truncated": False}, out, indent=1)
        out.write("}\n")
        return out.tell()


def host_side(fleet: str, artifact: str, db: str) -> None:
    """The host process: run the fleet, print its RSS after imports and at its peak (MB) as JSON."""
    from edgekit.api import run_fleet
    from edgekit.store import ResultsStore

    after_imports = _rss_mb()
    started = time.monotonic()
    records = run_fleet(artifact, fleet, "frames.mp4", source_on_device=True, store=ResultsStore(db), timeout_s=600)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "imports_mb": after_imports,
                "peak_mb": peak,
                "seconds": time.monotonic() - started,
                "statuses": [r.result["status"] for r in records],
                "samples_kept": [len(r.result.get("samples_ms", {}).get("inference", [])) for r in records],
                "errors": [r.result["errors"][:1] for r in records],
            }
        )
    )


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--mb", type=float, default=200.0, help="size of each device's result in MB")
    parser.add_argument("--host-side", nargs=3, metavar=("FLEET", "ARTIFACT", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.host_side:
        host_side(*args.host_side)
        return
    from netns import loopback_sshd

    from edgekit.api import build
    from edgekit.demo_data import digits_model_path

    with tempfile.TemporaryDirectory(prefix="ek-result-memory-") as tmp, loopback_sshd(Path(tmp)) as ssh:
        root = Path(tmp)
        size = write_body(root / "body.json", args.mb)
        agent = root / "agent.py"
        agent.write_text(f"BODY = {str(root / 'body.json')!r}\n" + STAND_IN_AGENT)
        python = root / "python"
        python.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} {agent} "$@"\n')  # drops `-c WRAPPER`
        python.chmod(0o755)
        artifact = build(digits_model_path(), "x86-ort", root / "artifact")
        server = ssh.devices[0]
        blocks = [
            f'[[device]]\nname = "box-{i}"\nhost = "127.0.0.1"\nport = {server.port}\nuser = "{ssh.user}"\n'
            f'key = "{ssh.client_key}"\nknown_hosts = "{ssh.known_hosts}"\nworkdir = "{root / f"box-{i}"}"\n'
            f'python = "{python}"\ntarget = "x86-ort"\n'
            for i in range(args.devices)
        ]
        fleet = root / "fleet.toml"
        fleet.write_text("\n".join(blocks))
        out = subprocess.run(
            [sys.executable, __file__, "--host-side", str(fleet), str(artifact.path), str(root / "results.db")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if out.returncode != 0:
            raise SystemExit(f"host side failed:\n{out.stderr[-3000:]}")
        figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.devices} devices, each result {size / 1e6:.0f} MB ({figures['seconds']:.1f} s)")
    print(f"host RSS after imports: {figures['imports_mb']:.0f} MB (anchor)")
    print(f"host peak RSS:          {figures['peak_mb']:.0f} MB (budget {BUDGET_MB:.0f} MB)")
    print(f"peak / budget:          {figures['peak_mb'] / BUDGET_MB:.2f}")
    print(f"statuses {figures['statuses']}, inference samples kept {figures['samples_kept']}")
    if any(figures["errors"]):
        print(f"first errors: {figures['errors']}")


if __name__ == "__main__":
    main()
