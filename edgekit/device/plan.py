"""Build the plan the device agent runs (docs/contracts.md), from what the user asked on the host."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import RunError

PLAN_SCHEMA = "edgekit.plan"
PLAN_VERSION = 1
LIVE_KINDS = ("camera", "gstreamer", "rtsp")


def new_run_id() -> str:
    """Sortable and short: UTC yymmdd-HHMMSS plus 4 random hex digits."""
    return time.strftime("%y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


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
        return self.kind in LIVE_KINDS

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


def make_plan(
    artifact_dir: str,
    source: Source,
    *,
    run_id: str | None = None,
    frames: int | None = None,
    duration_s: float | None = None,
    warmup: int = 10,
    pipelined: bool = False,
    queue_size: int = 4,
    engine: str = "onnxruntime",
    threads: int | None = None,
    engine_options: dict[str, Any] | None = None,
    postprocess: str = "classification",
    top_k: int = 5,
    labels: list[int] | None = None,
    reference: str | None = None,
    power_probe: str | None = None,
    keep_samples: bool = True,
) -> dict[str, Any]:
    if source.live and frames is None and duration_s is None:
        raise RunError(f"a live {source.kind} source never ends: pass --frames N or --duration S")
    if source.live and source.loop:
        raise RunError(f"--loop restarts a file at its end; a live {source.kind} source has no end to restart")
    if frames is not None and frames <= 0:
        raise RunError(f"--frames must be positive, got {frames}")
    if warmup < 0:
        raise RunError(f"--warmup must be zero or more, got {warmup}")
    return {
        "schema": PLAN_SCHEMA,
        "version": PLAN_VERSION,
        "run_id": run_id or new_run_id(),
        "artifact_dir": artifact_dir,
        "source": source.to_dict(),
        "frames": frames,
        "duration_s": duration_s,
        "warmup": warmup,
        "mode": "pipelined" if pipelined else "sequential",
        "queue_size": queue_size,
        "engine": {"name": engine, "threads": threads, "options": engine_options or {}},
        "postprocess": {"kind": postprocess, "top_k": top_k},
        "labels": labels,
        "reference": reference,
        "power": {"probe": power_probe},
        "keep_samples": keep_samples,
    }
