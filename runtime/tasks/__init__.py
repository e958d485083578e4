"""Vision tasks after inference: the task config (one JSON object, the same in the ONNX metadata under
`edgekit.task`, in the artifact manifest as `task` and in the plan as `postprocess` with `kind` for `task`)
and which model outputs each task and decoder reads.

`task_config` fills the defaults and refuses a bad setting by name; `check_outputs` refuses, before the run,
outputs that do not fit the chosen decoder. Python 3.8-compatible; the decoders (detect, nms, segment, text)
need numpy and OpenCV, this module needs neither.
"""

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..postprocess import PostprocessError

TASKS = ("classify", "detect", "segment", "text-detect", "raw")
DECODERS = ("yolo-anchor-free", "yolo-anchor-based", "end-to-end", "ssd")
SEGMENT_MODES = ("argmax", "threshold")
TASK_ALIASES = {"classification": "classify"}  # the plan's kind before tasks existed

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "classify": {"top_k": 5},
    "detect": {
        "decoder": "yolo-anchor-free",
        "conf": 0.25,
        "iou": 0.45,
        "max_det": 300,
        "class_agnostic": False,
        "num_classes": None,
    },
    "segment": {"mode": "argmax", "threshold": 0.5, "num_classes": None},
    "text-detect": {"threshold": 0.3, "box_threshold": 0.6, "unclip_ratio": 1.5, "max_candidates": 1000, "min_size": 3},
    "raw": {},
}
# "background": the ssd decoder's score column 0 is the background class (ignored, class ids kept as they are)
SSD_DEFAULTS: Dict[str, Any] = {"background": False}

Shape = Sequence[Any]  # ints, or None / str for a dynamic axis (as engines report them)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fraction(value: Any) -> Optional[str]:
    return None if _number(value) and 0 <= value <= 1 else "a number from 0 to 1"


def _positive(value: Any) -> Optional[str]:
    return None if _number(value) and value > 0 else "a number above 0"


def _non_negative(value: Any) -> Optional[str]:
    return None if _number(value) and value >= 0 else "a number from 0 up"


def _count(value: Any) -> Optional[str]:
    return None if _integer(value) and value >= 1 else "an integer from 1 up"


def _optional_count(value: Any) -> Optional[str]:
    return None if value is None or (_integer(value) and value >= 1) else "null or an integer from 1 up"


def _flag(value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else "true or false"


def _one_of(choices: Sequence[str]) -> Callable[[Any], Optional[str]]:
    return lambda value: None if value in choices else "one of %s" % ", ".join(choices)


# each check returns None for a good value, else what the value must be
_CHECKS: Dict[str, Callable[[Any], Optional[str]]] = {
    "top_k": _count,
    "decoder": _one_of(DECODERS),
    "conf": _fraction,
    "iou": _fraction,
    "max_det": _count,
    "class_agnostic": _flag,
    "num_classes": _optional_count,
    "background": _flag,
    "mode": _one_of(SEGMENT_MODES),
    "threshold": _fraction,
    "box_threshold": _fraction,
    "unclip_ratio": _positive,
    "max_candidates": _count,
    "min_size": _non_negative,
}


def _task_name(data: Dict[str, Any]) -> str:
    names = [data[key] for key in ("task", "kind") if key in data]
    if not names or names[0] is None:
        raise PostprocessError("no task given: set task to one of %s" % ", ".join(TASKS))
    if len(names) == 2 and TASK_ALIASES.get(names[0], names[0]) != TASK_ALIASES.get(names[1], names[1]):
        raise PostprocessError("task %r and kind %r disagree: give one of them" % (names[0], names[1]))
    name = TASK_ALIASES.get(names[0], names[0])
    if name not in TASKS:
        raise PostprocessError("task %r is not one of %s" % (names[0], ", ".join(TASKS)))
    return name


def task_config(data: Any) -> Dict[str, Any]:
    """The task config with its defaults filled in; `kind` (the plan's spelling) is taken for `task`.

    Raises PostprocessError naming the task or the setting that is wrong and what it must be."""
    if not isinstance(data, dict):
        raise PostprocessError("the task config must be a JSON object, got %r" % (data,))
    name = _task_name(data)
    settings = dict(DEFAULTS[name])
    if name == "detect" and data.get("decoder") == "ssd":
        settings.update(SSD_DEFAULTS)
    for key, value in data.items():
        if key in ("task", "kind"):
            continue
        if key not in settings:
            raise PostprocessError(
                "task %s has no setting %r; its settings: %s" % (name, key, ", ".join(sorted(settings)) or "none")
            )
        problem = _CHECKS[key](value)
        if problem is not None:
            raise PostprocessError("task %s: %s must be %s, got %r" % (name, key, problem, value))
        settings[key] = value
    config = {"task": name}
    config.update(settings)
    return config


def check_outputs(config: Dict[str, Any], output_shapes: Sequence[Shape]) -> None:
    """Refuse outputs that the task (and its decoder) cannot read, naming the shapes; run at engine open."""
    config = task_config(config)
    task = config["task"]
    shapes = [list(shape) for shape in output_shapes]
    if task != "raw" and not shapes:
        raise PostprocessError("task %s needs at least one model output; the model has none" % task)
    if task == "detect":
        from .detect import check_shapes  # numpy: not needed to validate a config on the host

        check_shapes(config, shapes)
    elif task == "segment":
        _check_segment(config, shapes)
    elif task == "text-detect":
        _check_text(shapes)


def describe_shapes(shapes: Sequence[Shape]) -> str:
    """`[1, 84, 8400], [1, 3]`: the shapes as a user reads them, dynamic axes as `?`."""
    if not shapes:
        return "none"
    return ", ".join("[%s]" % ", ".join(str(d) if _integer(d) else "?" for d in shape) for shape in shapes)


def known(dim: Any) -> Optional[int]:
    """An axis length, or None for a dynamic axis."""
    return dim if _integer(dim) and dim >= 0 else None


def _check_segment(config: Dict[str, Any], shapes: List[List[Any]]) -> None:
    first = shapes[0]
    layout = "outputs[0] as [B, C, H, W] scores (or [B, H, W] classes / one probability map)"
    if len(first) not in (3, 4):
        raise PostprocessError(
            "task segment reads %s; the model's outputs are %s: check the task" % (layout, describe_shapes(shapes))
        )
    channels = known(first[1]) if len(first) == 4 else None
    wanted = config["num_classes"]
    if config["mode"] == "argmax" and wanted is not None and channels not in (None, 1, wanted):
        raise PostprocessError(
            "task segment: num_classes is %d but outputs[0] has %d channels (shapes %s): fix num_classes"
            % (wanted, channels, describe_shapes(shapes))
        )


def _check_text(shapes: List[List[Any]]) -> None:
    first = shapes[0]
    fits = len(first) == 3 or (len(first) == 4 and known(first[1]) in (None, 1))
    if not fits:
        raise PostprocessError(
            "task text-detect reads outputs[0] as one DB probability map [B, 1, H, W]; the model's outputs "
            "are %s: check the task" % describe_shapes(shapes)
        )
