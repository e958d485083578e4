"""`RunSettings`: how to run an artifact, in one typed value shared by `edgekit.run`, `run_fleet`, the CLI
and `make_plan`, instead of the same keyword list repeated through each of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.device.watch import LOAD_S, STALL_S, ProgressListener, RunWatch


@dataclass(frozen=True)
class RunSettings:
    """What a run measures and how; every field has the default `edgekit run` uses.

    Most fields go into the plan the agent runs (docs/contracts.md); `timeout_s`, `stall_s` and `load_s` stay
    with the host, which watches the agent's progress (edgekit/device/watch.py).
    `labels` may be a file (a JSON list or one integer per line): `edgekit.run` reads it and checks it
    against the model's classes before anything runs.
    """

    frames: int | None = None
    """Frames to time; None times a file source to its end (a live source needs frames or duration_s)."""
    duration_s: float | None = None
    """Stop timing after this many seconds (None: no time limit)."""
    warmup: int = 10
    """Untimed frames run first, one at a time, so the engine is warm when timing starts."""
    pipelined: bool = False
    """Capture, preprocess and inference in their own threads (throughput) instead of one after another."""
    queue_size: int = 4
    """Frames that may wait between pipelined stages."""
    threads: int | None = None
    """Engine threads (None: the engine's own default)."""
    engine_options: Mapping[str, Any] | None = None
    """Options for the device's engine, e.g. {"delegate": "nnapi"} (TFLite), {"compute_units": "CPU_AND_NE"}."""
    loop: bool = False
    """Restart a file source at its end until `frames` or `duration_s` are done."""
    labels: list[int] | str | Path | None = None
    """Per-frame class labels for accuracy, or a file holding them."""
    power_probe: str | None = None
    """Power probe on the device: "auto", "jetson-ina3221", "x86-rapl", ... (None: no power)."""
    timeout_s: float | None = None
    """Seconds before the host stops the agent whatever it is doing (None: no overall limit, the watchdog
    below stops a hung run); what it measured until then is kept (status `partial`)."""
    stall_s: float = STALL_S
    """Seconds without a finished frame (warm-up or timed) before the host stops the run as hung."""
    load_s: float = LOAD_S
    """Seconds the agent may take to start and load the engine (a TensorRT engine builds on the device)."""
    keep_samples: bool = True
    """Keep every per-frame latency in the result (False: summaries only, a much smaller result)."""
    postprocess: str = "classification"
    """What the outputs are: "classification" (top-k, accuracy against labels) or "raw" (compared to `reference`)."""
    top_k: int = 5
    """Classes kept per frame for classification."""
    reference: str | None = None
    """With postprocess "raw": the FP32 reference outputs (.npz) to compare against."""
    task: dict | None = None
    """The run's task config, laid over the artifact's (e.g. {"task": "detect", "conf": 0.3}; settings alone
    change the artifact's task); `edgekit.run` fills it with the checked full config before the run."""
    label_masks: str | Path | None = None
    """With task segment: a folder of PNG label masks named like the images (pixel = class index, 255 =
    ignore); the device scores mIoU against them."""

    def watch(self, on_progress: ProgressListener | None = None) -> RunWatch:
        """The watchdog for one run with these settings; `on_progress` sees each progress line."""
        return RunWatch(stall_s=self.stall_s, load_s=self.load_s, on_progress=on_progress)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def merged(cls, settings: RunSettings | None, fields: Mapping[str, Any], *, caller: str) -> RunSettings:
        """`settings` (or the defaults) with `fields` replaced; an unknown name is a TypeError that lists the
        known ones, as a misspelt keyword argument would be."""
        unknown = sorted(set(fields) - set(cls.field_names()))
        if unknown:
            raise TypeError(
                f"{caller}() got an unexpected keyword argument {unknown[0]!r}; "
                f"run settings are: {', '.join(cls.field_names())}"
            )
        return dataclasses.replace(settings or cls(), **fields)
