"""The local transport: this machine is the device; the agent runs in a subprocess.

It takes the same path as the SSH transport (agent zipapp, plan file in, result file out, result
validated), so a local number and a remote number come from the same code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgekit.artifact import Artifact
from edgekit.device.bundle import build_agent_zipapp
from edgekit.device.results import failed_result, validate_result
from edgekit.device.transport import ProgressFn
from edgekit.errors import RunError
from edgekit.hashing import sha256_file


def agent_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "edgekit-agent"


def local_agent() -> Path:
    """The agent zipapp for this edgekit, built once and reused (its name is its content hash)."""
    cache = agent_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkstemp(prefix="agent-", suffix=".pyz", dir=cache)[1])
    build_agent_zipapp(staged)
    final = cache / f"agent-{sha256_file(staged)[:16]}.pyz"
    staged.replace(final)
    return final


class LocalTransport:
    """Runs plans on this machine (a `Transport`); `python` is the interpreter that runs the agent."""

    name = "local"

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(
        self,
        artifact: Artifact,
        plan: dict[str, Any],
        *,
        timeout_s: float = 3600.0,
        progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Run the plan with the agent; return the validated result (never raises for a device failure:
        a crash or a timeout comes back as a result with status `error` and the reason). Nothing is
        pushed, so `progress` is never called."""
        plan = {**plan, "artifact_dir": str(artifact.path.resolve())}
        with tempfile.TemporaryDirectory(prefix="edgekit-run-") as workdir:
            plan_path = Path(workdir) / "plan.json"
            result_path = Path(workdir) / "result.json"
            plan_path.write_text(json.dumps(plan))
            command = [self.python, str(local_agent()), "--plan", str(plan_path), "--result", str(result_path)]
            try:
                completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=workdir)
            except subprocess.TimeoutExpired:
                return failed_result(plan, f"the agent did not finish within {timeout_s:.0f} s; raise --timeout")
            if not result_path.is_file():
                tail = (completed.stderr or "").strip().splitlines()[-5:]
                return failed_result(
                    plan, f"the agent exited with code {completed.returncode} and wrote no result: {' | '.join(tail)}"
                )
            try:
                return validate_result(json.loads(result_path.read_text()), run_id=plan["run_id"])
            except (json.JSONDecodeError, RunError) as exc:
                return failed_result(plan, f"the agent's result could not be used: {exc}")
