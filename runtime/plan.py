"""The run plan: parse and validate the JSON object the host sends, into a small `Plan`.

Every error names the field and says what to write instead, because the person reading it is
usually looking at a fleet log, not at this code. Python 3.8-compatible.
"""

import os
from typing import Any, Dict, List, Optional, Union

from .power import available_probes
from .tasks import TASKS

PLAN_SCHEMA = "edgekit.plan"
PLAN_VERSION = 1

SOURCE_KINDS = ("video", "images", "camera", "gstreamer", "rtsp")
FILE_SOURCE_KINDS = ("video", "images")
LIVE_SOURCE_KINDS = ("camera", "gstreamer", "rtsp")
MODES = ("sequential", "pipelined")
# the plan's postprocess.kind is the task (runtime/tasks: the same names); "classification" is the kind
# plans had before tasks, still read as "classify"
POSTPROCESS_KINDS = TASKS  # the task names: the plan's postprocess kind is the task
POSTPROCESS_ALIASES = {"classification": "classify"}

_TOP_KEYS = (
    "schema",
    "version",
    "run_id",
    "artifact_dir",
    "source",
    "frames",
    "duration_s",
    "warmup",
    "mode",
    "queue_size",
    "engine",
    "postprocess",
    "labels",
    "reference",
    "label_masks",
    "power",
    "keep_samples",
)
_SOURCE_KEYS = ("kind", "uri", "loop")
_ENGINE_KEYS = ("name", "threads", "options")
_POWER_KEYS = ("probe", "interval_s", "idle_s", "sysfs_root")
POWER_AUTO = "auto"  # power.probe: detect the probe from the files present


class PlanError(ValueError):
    """A plan that this agent cannot run; the message names the field and the fix."""


class SourceSpec(object):
    """Where frames come from: kind, uri (path, camera index, pipeline string or URL), loop."""

    def __init__(self, kind: str, uri: Union[str, int], loop: bool = False) -> None:
        self.kind = kind
        self.uri = uri
        self.loop = loop

    @property
    def live(self) -> bool:
        return self.kind in LIVE_SOURCE_KINDS

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "uri": self.uri, "loop": self.loop}


class Plan(object):
    """A validated plan. Attributes mirror the JSON keys (docs/contracts.md)."""

    def __init__(self, data: Dict[str, Any], base_dir: Optional[str] = None) -> None:
        _reject_unknown(data, _TOP_KEYS, "plan")
        schema = data.get("schema")
        if schema != PLAN_SCHEMA:
            raise PlanError("plan schema is %r; this agent reads %r documents" % (schema, PLAN_SCHEMA))
        version = _int(data, "version", "plan", minimum=1, required=True)
        if version > PLAN_VERSION:
            raise PlanError(
                "plan version %d is newer than this agent's (%d): update the agent on the device"
                % (version, PLAN_VERSION)
            )
        self.version: int = version
        self.run_id: Optional[str] = _optional_str(data, "run_id", "plan")
        artifact_dir = _str(data, "artifact_dir", "plan")
        self.artifact_dir: str = _resolve(artifact_dir, base_dir)

        self.source: SourceSpec = _parse_source(data.get("source"), base_dir)
        self.frames: Optional[int] = _int(data, "frames", "plan", minimum=1)
        self.duration_s: Optional[float] = _positive_number(data, "duration_s", "plan")
        warmup = _int(data, "warmup", "plan", minimum=0)
        self.warmup: int = 10 if warmup is None else warmup
        self.mode: str = _choice(data, "mode", "plan", MODES, "sequential")
        queue_size = _int(data, "queue_size", "plan", minimum=1)
        self.queue_size: int = 4 if queue_size is None else queue_size

        engine = _object(data, "engine", "plan")
        _reject_unknown(engine, _ENGINE_KEYS, "engine")
        self.engine_name: Optional[str] = _optional_str(engine, "name", "engine")
        self.engine_threads: Optional[int] = _int(engine, "threads", "engine", minimum=1)
        self.engine_options: Dict[str, Any] = _object(engine, "options", "engine")

        # the task config with `kind` and `keep_outputs`; the task's own settings are checked by the
        # postprocessor (runtime.tasks.task_config), which names the key
        self.postprocess: Dict[str, Any] = _parse_postprocess(data.get("postprocess"))
        self.postprocess_kind: str = self.postprocess["kind"]
        self.keep_outputs: bool = self.postprocess["keep_outputs"]

        self.labels: Optional[List[int]] = _labels(data.get("labels"))
        reference = _optional_str(data, "reference", "plan")
        self.reference: Optional[str] = _resolve(reference, base_dir) if reference else None
        label_masks = _optional_str(data, "label_masks", "plan")
        self.label_masks: Optional[str] = _resolve(label_masks, base_dir) if label_masks else None

        power = _object(data, "power", "plan")
        _reject_unknown(power, _POWER_KEYS, "power")
        self.power_probe: Optional[str] = _optional_str(power, "probe", "power")
        if (
            self.power_probe is not None
            and self.power_probe != POWER_AUTO
            and self.power_probe not in available_probes()
        ):
            raise PlanError(
                "power probe is %r; use null, %r or one of %s"
                % (self.power_probe, POWER_AUTO, ", ".join(available_probes()))
            )
        interval = _positive_number(power, "interval_s", "power")
        self.power_interval_s: float = 0.05 if interval is None else interval
        idle = _non_negative_number(power, "idle_s", "power")
        self.power_idle_s: float = 1.0 if idle is None else idle
        root = power.get("sysfs_root")
        if root is not None and (not isinstance(root, str) or not root):
            raise PlanError("power sysfs_root must be a non-empty path or null, got %r" % (root,))
        self.power_sysfs_root: str = _resolve(root, base_dir) if root else "/"

        keep = data.get("keep_samples", True)
        if not isinstance(keep, bool):
            raise PlanError("plan keep_samples must be true or false, got %r" % (keep,))
        self.keep_samples: bool = keep
        self._check_combinations()

    def _check_combinations(self) -> None:
        self._check_source()
        self._check_task_inputs()

    def _check_source(self) -> None:
        if self.source.live and self.frames is None and self.duration_s is None:
            raise PlanError("source.kind %r is live and never ends: set plan frames or duration_s" % self.source.kind)
        if self.source.loop and self.frames is None and self.duration_s is None:
            raise PlanError("source.loop is true: set plan frames or duration_s so the run ends")
        if self.source.loop and self.source.live:
            raise PlanError("source.loop only applies to video and images sources; remove it for %r" % self.source.kind)

    def _check_task_inputs(self) -> None:
        """Labels, reference outputs and label masks each belong to one task, and to a file source, whose
        frames they are matched to by position."""
        kind = self.postprocess_kind
        for key, value, task, what in (
            ("labels", self.labels, "classify", "class indices, one per frame"),
            ("reference", self.reference, "raw", "reference outputs, compared with the raw outputs"),
            ("label_masks", self.label_masks, "segment", "a folder of class-index PNGs, one per image"),
        ):
            if value is None:
                continue
            if kind != task:
                raise PlanError(
                    "plan %s (%s) are for postprocess.kind %r, not %r: remove them or change the kind"
                    % (key, what, task, kind)
                )
            if self.source.live:
                raise PlanError(
                    "plan %s need a file source (video or images), not %r: a live source has no fixed frame "
                    "order to match them to" % (key, self.source.kind)
                )

    @classmethod
    def from_dict(cls, data: Any, base_dir: Optional[str] = None) -> "Plan":
        """Validate `data`; relative paths are taken relative to `base_dir` (the plan file's folder)."""
        if not isinstance(data, dict):
            raise PlanError("a plan must be a JSON object, got %s" % type(data).__name__)
        return cls(data, base_dir)


def load_plan(path: str) -> Plan:
    """Read and validate a plan file; relative paths inside it are relative to its folder."""
    import json

    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise PlanError("cannot read plan file %s: %s" % (path, exc.strerror or exc)) from exc
    except ValueError as exc:
        raise PlanError("plan file %s is not valid JSON: %s" % (path, exc)) from exc
    return Plan.from_dict(data, os.path.dirname(os.path.abspath(path)))


def _reject_unknown(data: Dict[str, Any], known: Any, where: str) -> None:
    for key in sorted(data):
        if key not in known:
            raise PlanError(
                "%s has unknown key %r; known keys: %s (check the spelling, or update the agent)"
                % (where, key, ", ".join(known))
            )


def _resolve(path: str, base_dir: Optional[str]) -> str:
    if base_dir is None or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def _str(data: Dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        raise PlanError("%s %s is missing; it must be a non-empty string" % (where, key))
    if not isinstance(value, str) or not value:
        raise PlanError("%s %s must be a non-empty string, got %r" % (where, key, value))
    return value


def _optional_str(data: Dict[str, Any], key: str, where: str) -> Optional[str]:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise PlanError("%s %s must be a string or null, got %r" % (where, key, value))
    return value


def _int(data: Dict[str, Any], key: str, where: str, minimum: int, required: bool = False) -> Optional[int]:
    value = data.get(key)
    if value is None:
        if required:
            raise PlanError("%s %s is missing; it must be an integer >= %d" % (where, key, minimum))
        return None
    # bool is an int subclass in Python; `true` is never a frame count
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(
            "%s %s must be an integer >= %d%s, got %r" % (where, key, minimum, "" if required else " or null", value)
        )
    return value


def _positive_number(data: Dict[str, Any], key: str, where: str) -> Optional[float]:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise PlanError("%s %s must be a number > 0 or null, got %r" % (where, key, value))
    return float(value)


def _non_negative_number(data: Dict[str, Any], key: str, where: str) -> Optional[float]:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise PlanError("%s %s must be a finite number >= 0 or null, got %r" % (where, key, value))
    return float(value)


def _choice(data: Dict[str, Any], key: str, where: str, choices: Any, default: str) -> str:
    value = data.get(key, default)
    if value is None:
        value = default
    if value not in choices:
        raise PlanError("%s %s is %r; use one of %s" % (where, key, value, ", ".join(choices)))
    return value


def _object(data: Dict[str, Any], key: str, where: str) -> Dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PlanError("%s %s must be a JSON object or null, got %r" % (where, key, value))
    return value


def _parse_postprocess(value: Any) -> Dict[str, Any]:
    """The postprocess block: `kind` (a task; "classification" is read as "classify", null or absent is
    classify), `keep_outputs` (default true) and the task's settings, kept as given."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise PlanError("plan postprocess must be a JSON object or null, got %r" % (value,))
    post = dict(value)
    kind = post.get("kind")
    kind = "classify" if kind is None else POSTPROCESS_ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if kind not in POSTPROCESS_KINDS:
        raise PlanError(
            "postprocess kind is %r; use one of %s (the task: classification is read as classify)"
            % (post.get("kind"), ", ".join(POSTPROCESS_KINDS))
        )
    keep = post.get("keep_outputs", True)
    if not isinstance(keep, bool):
        raise PlanError("postprocess keep_outputs must be true or false, got %r" % (keep,))
    post["kind"] = kind
    post["keep_outputs"] = keep
    return post


def _parse_source(data: Any, base_dir: Optional[str]) -> SourceSpec:
    if not isinstance(data, dict):
        raise PlanError('plan source is missing or not an object; e.g. {"kind": "video", "uri": "/path/clip.mp4"}')
    _reject_unknown(data, _SOURCE_KEYS, "source")
    kind = data.get("kind")
    if kind not in SOURCE_KINDS:
        raise PlanError("source kind is %r; use one of %s" % (kind, ", ".join(SOURCE_KINDS)))
    uri = data.get("uri")
    loop = data.get("loop", False)
    if loop is None:
        loop = False
    if not isinstance(loop, bool):
        raise PlanError("source loop must be true or false, got %r" % (loop,))
    if kind == "camera":
        # an index (0, "0") or a device path ("/dev/video0")
        if isinstance(uri, str) and uri.strip().isdigit():
            uri = int(uri.strip())
        if isinstance(uri, bool) or not isinstance(uri, (int, str)) or uri == "" or (isinstance(uri, int) and uri < 0):
            raise PlanError("source uri for a camera must be an index >= 0 or a device path, got %r" % (uri,))
        return SourceSpec(kind, uri, loop)
    if not isinstance(uri, str) or not uri:
        raise PlanError("source uri for %r must be a non-empty string, got %r" % (kind, uri))
    if kind == "rtsp" and not uri.lower().startswith(("rtsp://", "rtsps://")):
        raise PlanError("source uri for 'rtsp' must start with rtsp:// or rtsps://, got %r" % uri)
    if kind in FILE_SOURCE_KINDS:
        uri = _resolve(uri, base_dir)
    return SourceSpec(kind, uri, loop)


def _labels(value: Any) -> Optional[List[int]]:
    if value is None:
        return None
    if not isinstance(value, list):
        raise PlanError(
            "plan labels must be a list of class indices (one per frame) or null, got %s" % type(value).__name__
        )
    for position, label in enumerate(value):
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise PlanError(
                "plan labels[%d] is %r; labels must be class indices (integers >= 0), one per frame" % (position, label)
            )
    return list(value)
