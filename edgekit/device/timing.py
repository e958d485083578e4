"""The latency plan's clock on a fleet device: candidate models timed by the agent on the device that will run
the artifact (`edgekit quantize --latency-plan --latency-device NAME --fleet FILE`).

One SSH connection for the whole search: the agent is pushed once (by content, as for runs), the calibration
sample once, then each candidate model is written into a private timing folder, timed with
`agent --time-model` (runtime/timing.py) and removed; the folder goes at the end. The device's answer is one JSON
object, checked field by field.
"""

from __future__ import annotations

import io
import math
import secrets
from typing import Any

import numpy as np
import onnx

from edgekit.device.ssh.exec import quote_argv
from edgekit.device.ssh.facts import json_object
from edgekit.errors import DeviceError

TIME_LIMIT_S = 600.0  # one candidate: load + 3 warm-up + the timed runs, even on a slow board


class DeviceTimer:
    """`timer(model, feed) -> median ms` on the device behind `transport` (an open-able SshTransport)."""

    def __init__(self, transport: Any, *, engine: str = "onnxruntime", runs: int = 15, threads: int = 1) -> None:
        self.transport, self.engine, self.runs, self.threads = transport, engine, runs, threads
        self.folder = ""
        self._agent = ""
        self._count = 0
        self._inputs: tuple[int, str] | None = None  # (id of the feed, its path on the device)

    @property
    def name(self) -> str:
        return str(self.transport.name)

    def __enter__(self) -> DeviceTimer:
        self.transport.__enter__()
        self._agent = self.transport.push_agent().remote_path
        self.folder = f"{self.transport.workdir}/runs/timing-{secrets.token_hex(8)}"
        rc, _, err = self.transport.exec(["mkdir", "-p", "-m", "700", self.folder], timeout=30)
        if rc != 0:
            raise DeviceError(f"device {self.name}: cannot create {self.folder}: {err.strip()}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.folder:
                self.transport.exec(["rm", "-rf", "--", self.folder], timeout=60)
        finally:
            self.transport.__exit__(*exc_info)

    def _put(self, data: bytes, name: str) -> str:
        path = f"{self.folder}/{name}"
        try:
            self.transport.sftp.putfo(io.BytesIO(data), path)
        except OSError as exc:
            raise DeviceError(f"device {self.name}: cannot write {path} ({exc}); check its free space") from exc
        return path

    def _inputs_for(self, feed: dict[str, np.ndarray]) -> str:
        if self._inputs is None or self._inputs[0] != id(feed):
            buffer = io.BytesIO()
            np.savez(buffer, **feed)
            self._count += 1
            self._inputs = (id(feed), self._put(buffer.getvalue(), f"inputs-{self._count}.npz"))
        return self._inputs[1]

    def __call__(self, model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
        inputs = self._inputs_for(feed)
        self._count += 1
        path = self._put(model.SerializeToString(), f"candidate-{self._count}.onnx")
        argv = [*self.transport.python_argv(), self._agent, "--time-model", path, "--engine", self.engine]
        argv += ["--runs", str(self.runs), "--threads", str(self.threads), "--inputs", inputs]
        try:
            rc, out, err = self.transport.exec(argv, timeout=TIME_LIMIT_S)
        finally:
            self.transport.exec(["rm", "-f", "--", path], timeout=60)
        if rc != 0:
            tail = " | ".join(err.strip().splitlines()[-3:])
            raise DeviceError(f"device {self.name}: timing a candidate model failed ({quote_argv(argv[:2])}): {tail}")
        return parse_timing(out, self.name, self.runs)


def parse_timing(out: str, device: str, runs: int) -> float:
    """The median from the agent's `--time-model` answer (its last stdout line), refused unless it is a JSON
    object whose `median_ms` is a positive finite number and whose `runs` are the runs asked for."""
    lines = out.strip().splitlines()
    data = json_object(lines[-1]) if lines else None
    median = data.get("median_ms") if data is not None else None
    valid = isinstance(median, (int, float)) and not isinstance(median, bool) and math.isfinite(median) and median > 0
    if not valid or data.get("runs") != runs:
        raise DeviceError(f"device {device}: its timing answer is not usable: {out.strip()[-200:]!r}")
    return float(median)
