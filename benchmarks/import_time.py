"""Claim: `import edgekit` and `edgekit --help` take under 0.5 s.

Anchor: a bare `python -c pass` in the same run, so interpreter start-up is visible separately.
Run: .venv/bin/python benchmarks/import_time.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import median, print_table

ROUNDS = 15


def time_command(command: list[str]) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return median(samples)


def main() -> None:
    edgekit_cli = str(Path(sys.executable).with_name("edgekit"))
    if not Path(edgekit_cli).exists():
        edgekit_cli = shutil.which("edgekit") or "edgekit"
    bare = time_command([sys.executable, "-c", "pass"])
    imported = time_command([sys.executable, "-c", "import edgekit"])
    api = time_command([sys.executable, "-c", "import edgekit; edgekit.Model"])
    help_ = time_command([edgekit_cli, "--help"])
    rows = [
        ["python -c pass (anchor)", f"{bare:.3f}", "1.00"],
        ["import edgekit", f"{imported:.3f}", f"{imported / bare:.2f}"],
        ["import edgekit; edgekit.Model (loads onnx)", f"{api:.3f}", f"{api / bare:.2f}"],
        ["edgekit --help", f"{help_:.3f}", f"{help_ / bare:.2f}"],
    ]
    print_table(
        f"start-up, median of {ROUNDS} runs (s); target < 0.5 s", ["command", "median s", "x bare python"], rows
    )
    verdict = "PASS" if max(imported, help_) < 0.5 else "FAIL"
    print(f"\nimport edgekit: {imported:.3f} s, edgekit --help: {help_:.3f} s -> {verdict}")


if __name__ == "__main__":
    main()
