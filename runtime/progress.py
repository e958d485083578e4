"""Progress lines the agent writes while it runs, for the host's progress bar and its no-progress watchdog.

With `--progress`, the agent prints one line to stdout whenever its phase or frame count changes, at most
every `interval_s`:

    EDGEKIT-PROGRESS {"phase": "run", "done": 340, "total": 1000, "elapsed_s": 0.42}

phase is `load` (opening the engine: a TensorRT build can take minutes), `warmup` or `run`; `done` counts the
frames of that phase, `total` is the frames asked for (null: the whole source or a duration) and `elapsed_s` the
phase's seconds so far, on the device's clock. A thread samples the harness's counters, so nothing is added to
the frame loop. Python 3.8-compatible.
"""

import json
import sys
import threading
import time
from typing import Any, Callable, Optional, TextIO

PREFIX = "EDGEKIT-PROGRESS "
PHASES = ("load", "warmup", "run")


class ProgressReporter(object):
    """Writes a progress line when `snapshot()` changes; `snapshot` returns (phase, done, total, elapsed_s)."""

    def __init__(
        self,
        snapshot: Callable[[], Any],
        stream: Optional[TextIO] = None,
        interval_s: float = 0.5,
    ) -> None:
        self._snapshot = snapshot
        self._stream = stream if stream is not None else sys.stdout
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._last: Optional[Any] = None
        self._thread = threading.Thread(target=self._loop, name="edgekit-progress", daemon=True)

    def __enter__(self) -> "ProgressReporter":
        self.report()  # `load` at once: the host knows the agent is up
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.report()  # the final count

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.report()

    def report(self) -> None:
        try:
            phase, done, total, elapsed = self._snapshot()
        except Exception:  # a counter read mid-update: the next tick reads it again
            return
        if (phase, done, total) == self._last:
            return
        self._last = (phase, done, total)
        line = {"phase": phase, "done": int(done), "total": total, "elapsed_s": round(max(elapsed, 0.0), 3)}
        try:
            self._stream.write(PREFIX + json.dumps(line) + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # the host went away: the run goes on and its result is still written
            self._stop.set()


class RunTracker(object):
    """What the reporter samples: `load` until the agent hands it the harness, then the harness's counters."""

    def __init__(self) -> None:
        self.harness: Optional[Any] = None
        self._started = time.perf_counter()

    def snapshot(self) -> Any:
        harness = self.harness
        return harness.progress() if harness is not None else ("load", 0, None, time.perf_counter() - self._started)
