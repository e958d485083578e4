"""Build the plan the device agent runs (docs/contracts.md), from what the user asked on the host.

The plan's schema, version and source kinds are the agent's own (`edgekit.runtime.plan`), which
validates the plan on the device; here the host refuses early, in CLI words, what can never run.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.device.settings import RunSettings
from edgekit.errors import RunError
from edgekit.runtime.plan import LIVE_SOURCE_KINDS, PLAN_SCHEMA, PLAN_VERSION, POSTPROCESS_ALIASES

# tasks whose postprocessor keeps per-frame outputs (task_output): boxes, polygons, class histograms
TASKS_WITH_OUTPUTS = ("detect", "segment", "text-detect")


def new_run_id() -> str:
    """Sortable by time and unique: UTC yymmdd-HHMMSS plus 64 random bits (16 hex digits), so runs started in
    the same second on a fleet of thousands collide with odds below 1e-12 (4 hex digits collided 39 % of the
    time at 256 devices)."""
    return time.strftime("%y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(8)


@dataclass(frozen=True)
class Source:
    """Where frames come from. `kind` is video, images, camera, gstreamer or rtsp."""

    kind: str
    uri: str | int
    loop: bool = False

    @classmethod
    def parse(cls, text: str | Path | int, *, loop: bool = False) -> Source:
        """Infer the kind: an integer is a camera, `rtsp://` a stream, `!` a GStreamer pipeline, a folder
        of images, any other path a video file."""
        if isinstance(text, int) or (isinstance(text, str) and text.isdigit()):
            return cls("camera", int(text), loop)
        text = str(text)
        if text.startswith(("rtsp://", "rtsps://")):
            return cls("rtsp", text, loop)
        if "!" in text:
            return cls("gstreamer", text, loop)
        path = Path(text).expanduser()
        if path.is_dir():
            return cls("images", str(path.resolve()), loop)
        if path.is_file():
            return cls("video", str(path.resolve()), loop)
        raise RunError(
            f"source {text!r} is not a file, a folder, a camera index, an rtsp:// URL or a GStreamer pipeline; "
            "check the path"
        )

    @classmethod
    def on_device(cls, text: str, *, loop: bool = False) -> Source:
        """A source that exists on the device only (its camera, its files): nothing is checked here.
        A path ending in / is an image folder, any other path a video file."""
        if text.isdigit() or text.startswith(("rtsp://", "rtsps://")) or "!" in text:
            return cls.parse(text, loop=loop)
        return cls("images" if text.endswith("/") else "video", text, loop)

    @property
    def live(self) -> bool:
        return self.kind in LIVE_SOURCE_KINDS

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "uri": self.uri, "loop": self.loop}


def read_labels(path: str | Path) -> list[int]:
    """Per-frame labels: a JSON list of ints, or a text file with one int per line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RunError(f"cannot read labels file {path}: {exc}") from exc
    try:
        labels = json.loads(text) if text.lstrip().startswith("[") else [line.strip() for line in text.splitlines()]
        labels = [int(v) for v in labels if v != ""]
    except (ValueError, TypeError) as exc:
        raise RunError(
            f"labels file {path} must be a JSON list of class indices or one integer per line ({exc})"
        ) from exc
    if not labels:
        raise RunError(f"labels file {path} holds no labels")
    return labels


def check_labels(labels: list[int], manifest: dict[str, Any], labels_path: str | Path = "labels") -> None:
    """Refuse labels that cannot match the model's outputs, before anything is pushed or run."""
    outputs = manifest.get("outputs") or []
    shape = outputs[0].get("shape") if outputs else None
    classes = shape[-1] if shape and isinstance(shape[-1], int) else None
    if classes is not None:
        bad = [v for v in labels if v < 0 or v >= classes]
        if bad:
            raise RunError(
                f"{labels_path}: label {bad[0]} is outside the model's {classes} classes (0..{classes - 1}); "
                "check that the labels belong to this model"
            )


def resolve_labels(labels: list[int] | str | Path | None, manifest: dict[str, Any]) -> list[int] | None:
    """Labels as a list: read from a file when given a path, and checked against the model's classes."""
    if isinstance(labels, (str, Path)):
        path = labels
        labels = read_labels(path)
        check_labels(labels, manifest, path)
    elif labels is not None:
        check_labels(labels, manifest)
    return labels


def check_labels_cover(labels: list[int] | None, source: Source, frames: int | None) -> None:
    """Refuse, before anything runs, labels too few for the frames of a host video that will be scored (the
    agent would otherwise stop at the first unlabelled frame). The count is the container's; where it does
    not know one, the agent checks as it goes. Image folders are checked by the agent at open."""
    if labels is None or source.kind != "video" or not isinstance(source.uri, str) or not Path(source.uri).is_file():
        return
    import cv2

    capture = cv2.VideoCapture(source.uri)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    if count <= 0:
        return
    needed = count if frames is None or (source.loop and frames >= count) else min(frames, count)
    if len(labels) < needed:
        raise RunError(
            f"the labels cover {len(labels)} frames but {needed} frames of video {source.uri} would be scored (it "
            f"has {count}): give one label per frame, or time fewer with --frames {len(labels)}"
        )


def postprocess_block(settings: RunSettings) -> dict[str, Any]:
    """The plan's postprocess block: the task config the host resolved (`settings.task`, its "task" as
    "kind"), or what the older fields say (`postprocess` classification or raw, `top_k`). Tasks with
    per-frame outputs keep them (`keep_outputs`), so the host can score and draw them."""
    config = dict(settings.task or {})
    kind = config.pop("task", None) or config.pop("kind", None) or settings.postprocess
    kind = POSTPROCESS_ALIASES.get(kind, kind)
    if kind == "classify" and settings.task is None:
        config["top_k"] = settings.top_k
    if kind in TASKS_WITH_OUTPUTS:
        config.setdefault("keep_outputs", True)
    return {"kind": kind, **config}


def _label_masks(settings: RunSettings, kind: str, source: Source) -> str | None:
    """The label masks' folder for the plan: absolute when it is on this machine (the agent reads relative
    paths from the plan's folder), as given when it only exists on the device."""
    if settings.label_masks is None:
        return None
    if kind != "segment":
        raise RunError(f"label masks score segmentation, and this run's task is {kind}: drop them or set task segment")
    if source.live:
        raise RunError(f"label masks are matched to images by position; a live {source.kind} source has none")
    path = Path(settings.label_masks).expanduser()
    return str(path.resolve()) if path.exists() else str(settings.label_masks)


def make_plan(
    artifact_dir: str,
    source: Source,
    settings: RunSettings | None = None,
    *,
    run_id: str | None = None,
    engine: str = "onnxruntime",
) -> dict[str, Any]:
    """The plan for one run of the artifact in `artifact_dir` (a device path: transports replace it) on
    `source`, by `engine`. `settings.loop` or `source.loop` restarts a file source; labels given as a path
    are read here (use `resolve_labels` to check them against the model first)."""
    settings = settings or RunSettings()
    loop = source.loop or settings.loop
    if source.live and settings.frames is None and settings.duration_s is None:
        raise RunError(f"a live {source.kind} source never ends: pass --frames N or --duration S")
    if source.live and loop:
        raise RunError(f"--loop restarts a file at its end; a live {source.kind} source has no end to restart")
    if settings.frames is not None and settings.frames <= 0:
        raise RunError(f"--frames must be positive, got {settings.frames}")
    if settings.warmup < 0:
        raise RunError(f"--warmup must be zero or more, got {settings.warmup}")
    labels = read_labels(settings.labels) if isinstance(settings.labels, (str, Path)) else settings.labels
    postprocess = postprocess_block(settings)
    if labels is not None and postprocess["kind"] != "classify":
        raise RunError(
            f"per-frame class labels score classification, and this run's task is {postprocess['kind']}: "
            "drop the labels (detections are scored against COCO annotations on the host)"
        )
    label_masks = _label_masks(settings, postprocess["kind"], source)
    return {
        "schema": PLAN_SCHEMA,
        "version": PLAN_VERSION,
        "run_id": run_id or new_run_id(),
        "artifact_dir": artifact_dir,
        "source": {**source.to_dict(), "loop": loop},
        "frames": settings.frames,
        "duration_s": settings.duration_s,
        "warmup": settings.warmup,
        "mode": "pipelined" if settings.pipelined else "sequential",
        "queue_size": settings.queue_size,
        "engine": {"name": engine, "threads": settings.threads, "options": dict(settings.engine_options or {})},
        "postprocess": postprocess,
        "labels": labels,
        "reference": settings.reference,
        "label_masks": label_masks,
        "power": {"probe": settings.power_probe},
        "keep_samples": settings.keep_samples,
    }
