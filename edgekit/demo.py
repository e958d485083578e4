"""`edgekit demo`: the main job end to end on the embedded digits models and real held-out digits
(`run_demo`: the classifier; `run_detect_demo`: the detector, with exact COCO labels)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgekit.api import RunRecord, build, run
from edgekit.model import Model
from edgekit.store import ResultsStore


def run_demo(
    *,
    workdir: str | Path | None = None,
    frames: int | None = None,
    pipelined: bool = False,
    store: ResultsStore | None = None,
    console: Any = None,
    int8: bool = False,
) -> list[RunRecord]:
    """Render the held-out digits into a video, build the x86-ort artifact, run it here, store the run.

    With `int8`, also calibrate on the video's first 100 frames, build the int8 artifact and run it the
    same way, so FP32 and INT8 are measured side by side."""
    from edgekit.console_text import plain_console
    from edgekit.demo_data import digits_model_path, load_heldout_digits, render_digits_video

    console = console or plain_console()
    workdir = Path(workdir) if workdir else Path(tempfile.gettempdir()) / "edgekit-demo"
    workdir.mkdir(parents=True, exist_ok=True)

    model = Model.load(digits_model_path())
    console.print(f"model   {digits_model_path().name}: {model.inputs[0].shape} -> {model.outputs[0].shape}")
    images, labels = load_heldout_digits()
    with console.status(f"rendering {len(images)} held-out digits into a video"):
        video = render_digits_video(images, labels, workdir / "heldout_digits.mp4")
    console.print(f"source  {video} ({len(images)} frames of real held-out MNIST digits)")
    precisions = ["fp32", "int8"] if int8 else ["fp32"]
    records = []
    for precision in precisions:
        with console.status(f"building the x86-ort/{precision} artifact"):
            calib = {"calib": video, "observer": "percentile", "calib_limit": 100} if precision == "int8" else {}
            artifact = build(model, "x86-ort", workdir / f"artifact-x86-ort-{precision}", precision=precision, **calib)
        console.print(f"artifact {artifact.id[:16]} (x86-ort/{precision}) in {artifact.path}")
        with console.status(f"running the camera pipeline on this machine ({precision})"):
            records.append(
                run(artifact, video, labels=[int(v) for v in labels], frames=frames, pipelined=pipelined, store=store)
            )
    return records


def run_detect_demo(
    *,
    workdir: str | Path | None = None,
    frames: int | None = None,
    count: int = 300,
    pipelined: bool = False,
    store: ResultsStore | None = None,
    console: Any = None,
    int8: bool = False,
) -> list[RunRecord]:
    """Render `count` held-out detection frames (1-4 real held-out MNIST digits each, exact boxes) into a video
    with its COCO annotations, build the x86-ort artifact of the shipped digit detector, run it here with the
    annotations so the run reports mAP, and store the run.

    With `int8`, also calibrate on the video's frames, build the int8 artifact and run it the same way."""
    from edgekit.console_text import plain_console
    from edgekit.demo_data import detector_model_path, render_detection_frames

    console = console or plain_console()
    workdir = Path(workdir) if workdir else Path(tempfile.gettempdir()) / "edgekit-demo-detect"
    workdir.mkdir(parents=True, exist_ok=True)

    model = Model.load(detector_model_path())
    console.print(f"model   {detector_model_path().name}: {model.inputs[0].shape} -> {model.outputs[0].shape}")
    with console.status(f"rendering {count} frames of held-out digits with their boxes"):
        video, annotations = render_detection_frames(workdir / "heldout_detect.mp4", count)
    console.print(f"source  {video} ({count} frames of real held-out MNIST digits), labels {annotations.name}")
    records = []
    for precision in ["fp32", "int8"] if int8 else ["fp32"]:
        with console.status(f"building the x86-ort/{precision} artifact"):
            calib = {"calib": video, "observer": "percentile"} if precision == "int8" else {}
            artifact = build(model, "x86-ort", workdir / f"artifact-x86-ort-{precision}", precision=precision, **calib)
        console.print(f"artifact {artifact.id[:16]} (x86-ort/{precision}) in {artifact.path}")
        with console.status(f"running the camera pipeline on this machine ({precision})"):
            records.append(
                run(artifact, video, annotations=str(annotations), frames=frames, pipelined=pipelined, store=store)
            )
    return records
