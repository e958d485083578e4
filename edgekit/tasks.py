"""Tasks on the host: what a model's outputs mean and how they are decoded, as one JSON object (ISSUE14,
docs/contracts.md): `{"task": "detect", "decoder": "yolo-anchor-free", "conf": 0.25, ...}`.

The same object is stored in the ONNX metadata (`edgekit.task`), copied into the artifact manifest
(`"task"`) and sent to the agent in the plan, which checks it again against the outputs it sees. Here the
host fills the defaults and refuses what can never run, in words that name the option (`--task`,
`--postprocess`), before anything is built or pushed. Light on purpose: no numpy, no onnx.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edgekit.errors import EdgekitError, RunError

TASKS = ("classify", "detect", "segment", "text-detect", "raw")
DECODERS = ("yolo-anchor-free", "yolo-anchor-based", "end-to-end", "ssd")
SEGMENT_MODES = ("argmax", "threshold")
ALIASES = {"classification": "classify"}  # the plan's old postprocess kind
EXAMPLE = '{"task": "detect", "conf": 0.3}'

Check = Callable[[Any], Any]  # returns the value (normalised) or raises ValueError saying what it wants


def _integer(minimum: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    return check


def _optional(inner: Check) -> Check:
    def check(value: Any) -> Any:
        try:
            return None if value is None else inner(value)
        except ValueError as exc:
            raise ValueError(f"null or {exc}") from None

    return check


def _number(low: float, high: float | None = None, *, open_low: bool = False) -> Check:
    want = f"a number {'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(want)
        if value < low or (open_low and value == low) or (high is not None and value > high):
            raise ValueError(want)
        return value

    return check


def _choice(choices: Sequence[str]) -> Check:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return value

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


_FRACTION = _number(0.0, 1.0)

# Each task's settings with their defaults, in the order ISSUE14.md lists them.
SETTINGS: dict[str, dict[str, tuple[Any, Check]]] = {
    "classify": {"top_k": (5, _integer(1))},
    "detect": {
        "decoder": ("yolo-anchor-free", _choice(DECODERS)),
        "conf": (0.25, _FRACTION),
        "iou": (0.45, _FRACTION),
        "max_det": (300, _integer(1)),
        "class_agnostic": (False, _flag),
        "num_classes": (None, _optional(_integer(1))),
    },
    "segment": {
        "mode": ("argmax", _choice(SEGMENT_MODES)),
        "threshold": (0.5, _FRACTION),
        "num_classes": (None, _optional(_integer(1))),
    },
    "text-detect": {
        "threshold": (0.3, _FRACTION),
        "box_threshold": (0.6, _FRACTION),
        "unclip_ratio": (1.5, _number(0.0, open_low=True)),
        "max_candidates": (1000, _integer(1)),
        "min_size": (3, _number(0.0)),
    },
    "raw": {},
}
# The SSD decoder's one more setting: "background" (score column 0 is the background class).
SSD_SETTINGS: dict[str, tuple[Any, Check]] = {"background": (False, _flag)}


def task_names() -> str:
    return ", ".join(TASKS)


def task_config(data: Mapping[str, Any] | str, *, where: str, error: type[EdgekitError] = EdgekitError) -> dict:
    """`data` (a task name, or an object with "task" and its settings) as the full task config: defaults
    filled, every value checked. A problem is an `error` that starts with `where` and names the key."""
    if isinstance(data, str):
        data = {"task": data}
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a task name or a JSON object such as '{EXAMPLE}', got {data!r}")
    if "task" not in data:
        raise error(f"{where} names no task: add \"task\", one of {task_names()} (e.g. '{EXAMPLE}')")
    name = ALIASES.get(data["task"], data["task"])
    if name not in SETTINGS:
        raise error(f"{where}: unknown task {data['task']!r}; the tasks are {task_names()}")
    settings = SETTINGS[name]
    if name == "detect" and data.get("decoder") == "ssd":
        settings = {**settings, **SSD_SETTINGS}
    unknown = [key for key in data if key != "task" and key not in settings]
    if unknown:
        known = ", ".join(settings) or "none"
        raise error(f"{where}: task {name} has no setting {unknown[0]!r}; its settings are: {known}")
    config: dict[str, Any] = {"task": name}
    for key, (default, check) in settings.items():
        config[key] = _checked(data.get(key, default), check, name, key, where, error)
    return config


def _checked(value: Any, check: Check, task: str, key: str, where: str, error: type[EdgekitError]) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise error(f"{where}: task {task} setting {key!r} must be {exc}, got {value!r}") from None


def overrides(task: str | None, settings: Mapping[str, Any] | None, *, error: type[EdgekitError]) -> dict | None:
    """`--task NAME` and `--postprocess JSON` as one override object (None when neither is given)."""
    if task is None and not settings:
        return None
    merged = dict(settings or {})
    named = merged.get("task")
    if task is not None and named is not None and ALIASES.get(named, named) != ALIASES.get(task, task):
        raise error(f'--task {task} and --postprocess\'s "task": {named!r} disagree; give the task once')
    if task is not None:
        merged["task"] = task
    return merged


def apply_overrides(
    base: Mapping[str, Any] | None,
    given: Mapping[str, Any] | str | None,
    *,
    where: str,
    error: type[EdgekitError] = EdgekitError,
) -> dict | None:
    """The task config `base` with `given` laid over it: a task name in `given` that differs from the base's
    starts from that task's defaults; settings alone change the base's. None when neither has a task."""
    if isinstance(given, str):
        given = {"task": given}
    if not given:
        return dict(base) if base is not None else None
    if not isinstance(given, Mapping):
        raise error(f"{where} must be a task name or a JSON object such as '{EXAMPLE}', got {given!r}")
    name = given.get("task")
    start: Mapping[str, Any] | None = base
    if name is not None and (base is None or ALIASES.get(name, name) != base.get("task")):
        start = {}
    if start is None:
        raise error(
            f"{where}: settings {dict(given)} need a task; the model has none: give one with --task ({task_names()})"
        )
    return task_config({**start, **given}, where=where, error=error)


def classification_shaped(shape: Sequence[Any] | None) -> bool:
    """[B, N] or [B, N, 1, 1] with N >= 2 known: the one output shape that can only be class scores."""
    if not shape or len(shape) not in (2, 4) or not isinstance(shape[1], int) or shape[1] < 2:
        return False
    return len(shape) == 2 or list(shape[2:]) == [1, 1]


def guess_task(output_shapes: Sequence[Sequence[Any] | None]) -> dict | None:
    """A classify task when the model has one classification-shaped output; None in every other case
    (a detector, a segmenter and a text detector can share output shapes, so they are never guessed)."""
    if len(output_shapes) == 1 and classification_shaped(output_shapes[0]):
        return task_config("classify", where="guessed task")
    return None


def run_task(manifest: Mapping[str, Any], given: Mapping[str, Any] | str | None, *, where: str = "task") -> dict:
    """The task config of one run: the artifact's (its manifest `task`, or classify for an artifact built
    before tasks whose first output holds class scores) with `given` laid over it, checked. An artifact
    with no task that is not a classifier must be told one: a RunError lists the tasks and says --task."""
    base = manifest.get("task")
    if base is None:
        outputs = manifest.get("outputs") or []
        base = guess_task([o.get("shape") for o in outputs[:1]]) if len(outputs) >= 1 else None
    config = apply_overrides(base, given, where=where, error=RunError)
    if config is None:
        shapes = ", ".join(f"{o.get('name')} {o.get('shape')}" for o in manifest.get("outputs") or []) or "none"
        raise RunError(
            f"the artifact has no task and its outputs ({shapes}) are not class scores, so edgekit cannot tell "
            f"how to decode them: give one with --task NAME (tasks: {task_names()}) and its settings with "
            f"--postprocess JSON, e.g. --task detect --postprocess '{{\"conf\": 0.3}}'"
        )
    return config
