"""Watching a running agent: its progress lines feed the host's progress bar and a no-progress watchdog.

The agent (run with `--progress`) prints a line whenever its phase or frame count changes
(edgekit/runtime/progress.py). A run is stopped when nothing has moved for too long: no frame finished for
`stall_s` seconds while warming up or running, or the engine still loading after `load_s` seconds (a TensorRT
engine build on a Jetson takes minutes). That replaces one fixed timeout for every run: a slow device with a
long video is never cut short while it makes progress, and a hung one is stopped within `stall_s`.

Lines come from a device and are not trusted: each is length-bounded, parsed as JSON and checked by field.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgekit.runtime.progress import PHASES, PREFIX

STALL_S = 120.0  # default: seconds without a finished frame before a run counts as hung
LOAD_S = 1800.0  # default: seconds an engine may take to load (TensorRT builds its engine on the device)
_MAX_LINE = 4096  # a progress line is ~100 bytes; anything longer is not one


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands: phase (`start`, `load`, `warmup`, `run`), frames done in it and asked for, and the
    phase's seconds on the device's clock."""

    phase: str
    done: int = 0
    total: int | None = None
    elapsed_s: float = 0.0

    @property
    def fps(self) -> float | None:
        return self.done / self.elapsed_s if self.phase == "run" and self.done and self.elapsed_s > 0 else None

    @property
    def eta_s(self) -> float | None:
        fps = self.fps
        return (self.total - self.done) / fps if fps and self.total is not None else None

    def describe(self) -> str:
        """`run 340/1000 frames, 812 fps, 1 s left`, `warmup 3/10`, `loading the engine`, `starting`."""
        if self.phase in ("start", "load"):
            return "starting" if self.phase == "start" else "loading the engine"
        counted = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        words = [f"{self.phase} {counted} frames"]
        if self.fps is not None:
            words.append(f"{self.fps:,.0f} fps")
        if self.eta_s is not None:
            words.append(f"{math.ceil(self.eta_s)} s left")
        return ", ".join(words)


ProgressListener = Callable[[RunProgress], None]


class RunWatch:
    """Reads an agent's stdout (`feed`, any chunking) and says when the run has stalled (`overdue`)."""

    def __init__(
        self,
        *,
        stall_s: float = STALL_S,
        load_s: float = LOAD_S,
        on_progress: ProgressListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not stall_s > 0 or not load_s > 0:
            raise ValueError(f"stall_s and load_s must be positive, got {stall_s!r} and {load_s!r}")
        self.stall_s, self.load_s = float(stall_s), float(load_s)
        self._on_progress = on_progress
        self._clock = clock
        self._lock = threading.Lock()  # feed() runs in a reader thread, overdue() in the waiting one
        self._pending = b""
        self.progress = RunProgress("start")
        self._moved_at = clock()

    def start(self) -> None:
        """The agent was just started: the allowance counts from now."""
        with self._lock:
            self._moved_at = self._clock()

    def feed(self, data: bytes) -> None:
        """Take a chunk of the agent's stdout; complete progress lines update the state."""
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > _MAX_LINE:
            self._pending = b""
        for line in lines:
            progress = parse_progress(line)
            if progress is not None:
                self._moved(progress)

    def _moved(self, progress: RunProgress) -> None:
        with self._lock:
            previous, self.progress = self.progress, progress
            if (progress.phase, progress.done) != (previous.phase, previous.done):
                self._moved_at = self._clock()
        if self._on_progress is not None:
            self._on_progress(progress)

    def overdue(self) -> str | None:
        """Why the run counts as hung, or None while it is within its allowance."""
        with self._lock:
            progress, idle = self.progress, self._clock() - self._moved_at
        if progress.phase in ("start", "load"):
            if idle <= self.load_s:
                return None
            return (
                f"the agent did not start timing within {self.load_s:g} s (still {progress.describe()}); "
                "raise --load-timeout for an engine that builds for longer"
            )
        if idle <= self.stall_s:
            return None
        return (
            f"no frame finished for {self.stall_s:g} s ({progress.describe()}): the engine or the source hung; "
            "raise --stall-timeout if single frames take this long"
        )


def parse_progress(line: bytes) -> RunProgress | None:
    """A RunProgress from one agent stdout line, or None for anything that is not a valid progress line."""
    if len(line) > _MAX_LINE or not line.startswith(PREFIX.encode()):
        return None
    try:
        data = json.loads(line[len(PREFIX) :].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    phase, done, total, elapsed = data.get("phase"), data.get("done"), data.get("total"), data.get("elapsed_s")
    if phase not in PHASES or not _count(done) or not (total is None or _count(total)):
        return None
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not 0 <= elapsed < 1e9:
        return None
    return RunProgress(phase, done, total, float(elapsed))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 53
