"""Progress of the passes of quantization: one bar per pass (counts, rate, time left), or a callback.

Every pass that runs the model many times (calibration samples, the per-tensor error report, the
sensitivity sweep, the budget search, the latency plan, AdaRound's layers) reports through `pass_progress`.
`progress` is True (a rich bar on the terminal, nothing in a log: rich draws no live display when its
console is not a terminal, and the bar is transient, as `edgekit run`'s is; off altogether there, since a
stopped bar still leaves a blank line), False (silent), or a callable
`progress(pass_name, done, total)` called after each step with done = 1..N (total None where a pass cannot
know its count in advance, like the budget's bisection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

ProgressFn = Callable[[str, int, int | None], None]
Progress = bool | ProgressFn | None


class PassTracker:
    """The steps of one pass: `advance()` after each; `total` may be set once it is known (the bar follows,
    a callback sees it with the next step)."""

    def __init__(self, name: str, total: int | None, report: Callable[[int, int | None], None] | None = None) -> None:
        self.name = name
        self.done = 0
        self._total = total
        self._report = report
        self._bar: Any = None  # (rich Progress, task id) when drawn

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value
        if self._bar is not None:
            self._bar[0].update(self._bar[1], total=value)

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self._report is not None:
            self._report(self.done, self._total)
        if self._bar is not None:
            self._bar[0].update(self._bar[1], completed=self.done)


def _rate_column() -> Any:
    """Steps per second, the way a pass's unit reads ("3.2/s"), blank until rich has measured one."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None:
                return Text("")
            return Text(f"{speed:.3g}/s" if speed >= 1 else f"{1 / speed:.3g} s each")

    return RateColumn()


def make_bar(console: Any = None) -> Any:
    """The rich Progress every quantization pass draws: name, bar, done/total, rate, time left."""
    from rich import get_console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    console = console or get_console()
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), _rate_column())
    # off where the console is no terminal: rich draws nothing live there but still leaves a blank line per bar
    return RichProgress(
        *columns, TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal
    )


@contextlib.contextmanager
def pass_progress(name: str, total: int | None, progress: Progress) -> Iterator[PassTracker]:
    """A tracker for one pass of `total` steps, shown as `progress` says (see the module docstring)."""
    if callable(progress):
        callback = progress
        yield PassTracker(name, total, lambda done, count: callback(name, done, count))
        return
    if not progress:
        yield PassTracker(name, total, None)
        return
    bar = make_bar()
    tracker = PassTracker(name, total)
    tracker._bar = (bar, bar.add_task(name, total=total))
    with bar:
        yield tracker
