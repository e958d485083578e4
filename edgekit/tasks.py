"""Tasks on the host: what a model's outputs mean and how they are decoded, as one JSON object (ISSUE14,
docs/contracts.md): `{"task": "detect", "decoder": "yolo-anchor-free", "conf": 0.25, ...}`.

The same object is stored in the ONNX metadata (`edgekit.task`), copied into the artifact manifest
(`"task"`) and sent to the agent in the plan, which checks it again against the outputs it sees. Here the
host fills the defaults and refuses what can never run, in words that name the option (`--task`,
`--postprocess`), before anything is built or pushed. Light on purpose: no numpy, no onnx.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgekit.errors import EdgekitError, RunError
from edgekit.runtime.postprocess import PostprocessError
from edgekit.runtime.tasks import DECODERS, TASKS
from edgekit.runtime.tasks import TASK_ALIASES as ALIASES
from edgekit.runtime.tasks import task_config as device_task_config

EXAMPLE = '{"task": "detect", "conf": 0.3}'
__all__ = ["DECODERS", "TASKS", "apply_overrides", "guess_task", "overrides", "run_task", "task_config"]


def task_names() -> str:
    return ", ".join(TASKS)


def task_config(data: Mapping[str, Any] | str, *, where: str, error: type[EdgekitError] = EdgekitError) -> dict:
    """`data` (a task name, or an object with "task" and its settings) as the full task config: defaults
    filled, every value checked by the agent's own validator (`edgekit.runtime.tasks.task_config`, so host
    and device never disagree). A problem is an `error` that starts with `where` and names the key."""
    if isinstance(data, str):
        data = {"task": data}
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a task name or a JSON object such as '{EXAMPLE}', got {data!r}")
    if "task" not in data:
        raise error(f"{where} names no task: add \"task\", one of {task_names()} (e.g. '{EXAMPLE}')")
    if ALIASES.get(data["task"], data["task"]) not in TASKS:
        raise error(f"{where}: unknown task {data['task']!r}; the tasks are {task_names()}")
    try:
        return device_task_config(dict(data))
    except PostprocessError as exc:
        raise error(f"{where}: {exc}") from None


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
