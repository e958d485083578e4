"""What the command modules share: the console, the one-line error handler, the results store, KEY=VALUE
and JSON option parsing, and options several commands take.

Only click is imported at module level: `edgekit --help` must not load rich, numpy or an engine.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def fail_cleanly(func: F) -> F:
    """Show an EdgekitError as one clear line (exit 2) instead of a traceback; a run stopped by a signal
    (RunInterrupted) as one line per device with what was kept, exiting 128 + the signal (130 for Ctrl-C,
    143 for SIGTERM) like a process that signal ended."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from edgekit.errors import EdgekitError, RunInterrupted
        from edgekit.runtime.preprocess import PreprocessError

        try:
            return func(*args, **kwargs)
        except RunInterrupted as exc:
            _print_interrupted(exc)
            sys.exit(128 + exc.signum)
        except (EdgekitError, PreprocessError) as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _print_interrupted(exc: Any) -> None:
    from edgekit.console_text import printable
    from edgekit.device.results import signal_name

    click.secho(f"stopped by {signal_name(exc.signum)}; every agent was stopped:", fg="yellow", err=True)
    for record in exc.records:
        frames = (record.result.get("frames") or {}).get("timed", 0)
        kept = f", {frames} frames timed and stored" if frames else ""
        line = f"  {record.device}: {record.result.get('status', '?')} (run {record.run_id}{kept})"
        click.echo(printable(line), err=True)


class SignalInterrupt(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C's KeyboardInterrupt would be, so a run stops the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stops_on_signals(func: F) -> F:
    """While `func` runs, SIGTERM and SIGHUP (what `timeout`, systemd, CI runners and a closed terminal send)
    stop it like Ctrl-C: agents are stopped and what they measured is stored, instead of the process dying
    with its agents left running."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal

        def interrupt(signum: int, frame: Any) -> None:
            raise SignalInterrupt(signum)

        caught = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
        previous = {s: signal.signal(s, interrupt) for s in caught}
        try:
            return func(*args, **kwargs)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    return wrapper  # type: ignore[return-value]


def make_console() -> Any:
    """A rich Console on this moment's stdout; piped output gets $COLUMNS (default 140) instead of rich's
    80-column default. The stream is bound now: a fleet thread silencing pycocotools swaps the process-wide
    sys.stdout for a moment, and a console that follows sys.stdout lost the line it printed then."""
    from edgekit.console_text import plain_console

    out = sys.stdout
    if out.isatty():
        return plain_console(file=out)
    return plain_console(file=out, width=int(os.environ.get("COLUMNS", 0)) or 140)


def open_store(db: str | None) -> Any:
    """The results store at `db` (None: $EDGEKIT_DB or the default path)."""
    from edgekit.store import ResultsStore

    return ResultsStore(db)


def parse_key_values(
    items: Iterable[str], *, option_name: str, example: str, json_values: bool = True
) -> dict[str, Any]:
    """KEY=VALUE items of a repeatable option as a dict (a later key wins). A value that reads as JSON (a
    number, true/false, null, a list) becomes that, any other value stays text; with `json_values=False`
    every value stays text (for options whose owner reads text by its own types, like `build -O`). A
    missing '=' or an empty key is an EdgekitError naming `option_name` and showing `example`."""
    from edgekit.errors import EdgekitError

    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EdgekitError(f"{option_name} {item!r}: write KEY=VALUE, e.g. {example}")
        if not json_values:
            parsed[key.strip()] = value.strip()
            continue
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    return parsed


def parse_json_object(text: str, *, option_name: str) -> dict[str, Any]:
    """An option's JSON object (e.g. --preprocess); anything else is an EdgekitError naming the option."""
    from edgekit.errors import EdgekitError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{option_name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise EdgekitError(f"{option_name} must be a JSON object such as '{{\"resize\": [224, 224]}}', got {text!r}")
    return value


def task_options(func: F) -> F:
    """--task NAME and --postprocess JSON, shared by build and run."""
    func = click.option(
        "--postprocess",
        "postprocess_json",
        default=None,
        metavar="JSON",
        help='Task settings, e.g. \'{"conf": 0.3, "iou": 0.5}\' for detect, \'{"top_k": 3}\' for classify; '
        "they change the task the model (or artifact) carries, or the one --task names.",
    )(func)
    return click.option(
        "--task",
        default=None,
        metavar="NAME",
        help="What the outputs are: classify, detect, segment, text-detect or raw (default: the model's task, "
        "read from its metadata).",
    )(func)


def build_options_option(help: str) -> Callable[[F], F]:
    """-O/--option KEY=VALUE (repeatable): build options of a target, as text its Options read by their types."""
    return click.option("-O", "--option", "option_items", multiple=True, metavar="KEY=VALUE", help=help)


def build_option_values(items: Iterable[str], example: str) -> dict[str, str]:
    """The -O items as {key: text} (a target's Options parse the text by their field types)."""
    return parse_key_values(items, option_name="-O", example=example, json_values=False)


def _preprocess_help() -> str:
    from edgekit.preprocess_sources import enumerated_help

    return (
        "Preprocessing keys laid over what the model carries (its metadata, an exporter's, its input), e.g. "
        '\'{"resize": [640, 640], "resize_mode": "letterbox"}\' or \'{"mean": [0.485, 0.456, 0.406], "std": [0.229, '
        "0.224, 0.225]}'; keys left out keep the model's values (`edgekit inspect MODEL` shows each with its source). "
        "Keys: resize, resize_mode, crop, color, scale, mean, std, layout, dtype, interpolation, pad_value, stride; "
        f"{enumerated_help()}."
    )


preprocess_option = click.option(
    "--preprocess", "preprocess_json", default=None, metavar="JSON", help=_preprocess_help()
)


def with_preprocess(model: Any, preprocess_json: str | None) -> Any:
    """`model` with the --preprocess keys laid over what it carries (edgekit.preprocess_sources' order)."""
    if preprocess_json:
        model.override_preprocess(parse_json_object(preprocess_json, option_name="--preprocess"))
    return model


db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default=None,
    help="Results database (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db).",
)
