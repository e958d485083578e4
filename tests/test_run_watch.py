"""The agent's progress lines and the host's watchdog that reads them: parsing (device text is not trusted),
the stall and load allowances, the words a progress bar shows, and the agent's reporter."""

from __future__ import annotations

import io
import json

import pytest

from edgekit.device.watch import RunProgress, RunWatch, parse_progress
from edgekit.runtime.progress import PREFIX, ProgressReporter, RunTracker


def _line(**fields) -> bytes:
    return (PREFIX + json.dumps(fields)).encode()


def test_progress_lines_are_checked_field_by_field():
    assert parse_progress(_line(phase="run", done=3, total=10, elapsed_s=0.5)) == RunProgress("run", 3, 10, 0.5)
    assert parse_progress(_line(phase="warmup", done=0, total=None, elapsed_s=0)) == RunProgress("warmup", 0, None)
    hostile = [
        b"frames 3/10",
        _line(phase="../../etc", done=1, total=2, elapsed_s=1),
        _line(phase="run", done=-1, total=2, elapsed_s=1),
        _line(phase="run", done=True, total=2, elapsed_s=1),
        _line(phase="run", done=1, total="2", elapsed_s=1),
        _line(phase="run", done=1, total=2, elapsed_s=float("nan")),
        _line(phase="run", done=1, total=2, elapsed_s=[1]),
        (PREFIX + "[1, 2]").encode(),
        (PREFIX + "{not json").encode(),
        PREFIX.encode() + b"\xff\xfe",
        _line(phase="run", done=1, total=2, elapsed_s=1, pad="x" * 5000),
    ]
    assert [parse_progress(line) for line in hostile] == [None] * len(hostile)


def test_progress_in_words_for_the_bar():
    assert RunProgress("start").describe() == "starting"
    assert RunProgress("load").describe() == "loading the engine"
    assert RunProgress("warmup", 3, 10, 0.1).describe() == "warmup 3/10 frames"
    assert RunProgress("run", 500, 1000, 2.0).describe() == "run 500/1000 frames, 250 fps, 2 s left"
    assert RunProgress("run", 500, None, 2.0).describe() == "run 500 frames, 250 fps"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watch_stops_a_run_whose_frames_stop_and_gives_the_engine_its_load_time():
    clock, seen = _Clock(), []
    watch = RunWatch(stall_s=10, load_s=100, on_progress=seen.append, clock=clock)
    watch.start()
    clock.now = 99
    assert watch.overdue() is None  # still within the load allowance
    watch.feed(_line(phase="warmup", done=1, total=2, elapsed_s=0.1)[:20])  # a line may arrive in pieces
    watch.feed(_line(phase="warmup", done=1, total=2, elapsed_s=0.1)[20:] + b"\n")
    assert seen == [RunProgress("warmup", 1, 2, 0.1)]
    clock.now = 105
    assert watch.overdue() is None
    watch.feed(_line(phase="run", done=7, total=None, elapsed_s=1.0) + b"\nnoise\n")
    clock.now = 114
    assert watch.overdue() is None
    watch.feed(_line(phase="run", done=7, total=None, elapsed_s=9.0) + b"\n")  # no new frame: no reset
    clock.now = 116
    message = watch.overdue()
    assert message and "no frame finished for 10 s (run 7 frames" in message and "--stall-timeout" in message


def test_watch_names_an_engine_that_never_finishes_loading():
    clock = _Clock()
    watch = RunWatch(stall_s=1, load_s=30, clock=clock)
    watch.start()
    watch.feed(_line(phase="load", done=0, total=None, elapsed_s=0) + b"\n")
    clock.now = 31
    message = watch.overdue()
    assert message and "within 30 s (still loading the engine)" in message and "--load-timeout" in message
    with pytest.raises(ValueError):
        RunWatch(stall_s=0)


def test_the_agent_reports_only_changes():
    class Harness:
        state = ("warmup", 0, 2, 0.1)

        def progress(self):
            return self.state

    stream, tracker = io.StringIO(), RunTracker()
    reporter = ProgressReporter(tracker.snapshot, stream, interval_s=60)
    reporter.report()
    tracker.harness = harness = Harness()
    reporter.report()
    reporter.report()  # unchanged: nothing written
    harness.state = ("run", 5, None, 0.5)
    reporter.report()
    phases = [parse_progress(line.encode()) for line in stream.getvalue().splitlines()]
    assert [(p.phase, p.done, p.total) for p in phases] == [("load", 0, None), ("warmup", 0, 2), ("run", 5, None)]
    assert phases[2].fps == 10.0  # frames over the phase's own seconds, as the device's clock counts them
