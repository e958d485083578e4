"""The embedded demo's real model and real data: held-out MNIST digits and a digit CNN.

The assets in ``edgekit/assets/`` are made by ``scripts/train_digits_cnn.py`` (see the README there):

- ``digits_cnn.onnx``: a small CNN trained on 4,000 MNIST digits; its ``metadata_props`` carry the
  ``edgekit.preprocess`` spec, the ``edgekit.class_names`` and ``edgekit.training`` facts.
- ``digits_heldout.npz``: the 1,000 digits it never saw (``images`` uint8 [N, 28, 28], ``labels``
  uint8 [N]).

``render_digits_video`` turns digits into a video file plus a labels file, the way a camera pointed at
printed digits would deliver them to the device agent (3-channel BGR frames, one digit per frame).
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "digits_model_path",
    "heldout_digits_path",
    "labels_path_for",
    "load_heldout_digits",
    "preprocessed_heldout_digits",
    "read_labels",
    "render_digits_video",
]

MODEL_FILE = "digits_cnn.onnx"
HELDOUT_FILE = "digits_heldout.npz"
LABELS_SUFFIX = ".labels.json"


def _asset(name: str) -> Path:
    resource = importlib.resources.files("edgekit") / "assets" / name
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(
            f"edgekit demo asset {name} is missing at {path}; regenerate it with: python scripts/train_digits_cnn.py"
        )
    return path


def digits_model_path() -> Path:
    """Path of the shipped digit classifier (ONNX, input ``input`` [batch, 1, 28, 28] float32)."""
    return _asset(MODEL_FILE)


def heldout_digits_path() -> Path:
    """Path of the shipped held-out digits (``.npz`` with ``images`` and ``labels``)."""
    return _asset(HELDOUT_FILE)


def load_heldout_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return the held-out digits: ``images`` uint8 [N, 28, 28] (white on black) and ``labels`` uint8 [N]."""
    with np.load(heldout_digits_path(), allow_pickle=False) as data:
        images = np.asarray(data["images"], dtype=np.uint8)
        labels = np.asarray(data["labels"], dtype=np.uint8)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise ValueError(f"{HELDOUT_FILE}: unexpected shapes images {images.shape}, labels {labels.shape}")
    return images, labels


def preprocessed_heldout_digits(count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` held-out digits (all by default) as the model sees them — float32 [N, 1, 28, 28] made by
    the agent's own preprocessing from the model's embedded spec, as a camera frame would be — and int64 labels."""
    import cv2

    from edgekit.model import Model
    from edgekit.runtime.preprocess import preprocess

    spec = Model.load(digits_model_path()).preprocess
    images, labels = load_heldout_digits()
    images, labels = images[:count], labels[:count]
    x = np.concatenate([preprocess(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), spec) for image in images])
    return x, labels.astype(np.int64)


def labels_path_for(video_path: str | os.PathLike[str]) -> Path:
    """The labels file that sits beside a rendered video: ``<video>.labels.json``."""
    path = Path(video_path)
    return path.with_name(path.name + LABELS_SUFFIX)


def read_labels(path: str | os.PathLike[str]) -> list[int]:
    """Read a labels file (a JSON list of ints, one per frame).

    ``path`` may be the labels file itself or the video it belongs to (then ``<video>.labels.json``).
    """
    path = Path(path)
    if not path.name.endswith(LABELS_SUFFIX):
        path = labels_path_for(path)
    data = json.loads(path.read_text())
    if not isinstance(data, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data):
        raise ValueError(f"{path}: expected a JSON list of integers, one per frame")
    return data


def _render_frame(image: np.ndarray, frame_size: tuple[int, int], noise: np.ndarray | None) -> np.ndarray:
    cv2 = _cv2()
    height, width = frame_size
    frame = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    if noise is not None:
        frame = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)


def render_digits_video(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    out_path: str | os.PathLike[str],
    *,
    frame_size: tuple[int, int] = (112, 112),
    fps: float = 30.0,
    fourcc: str = "mp4v",
    noise_std: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write one video frame per digit, and ``<video>.labels.json`` beside it; return the video path.

    Each grayscale digit (uint8 [H, W], white on black as in MNIST) is upscaled to ``frame_size``
    (height, width) with cubic interpolation and written as a 3-channel BGR frame, as a camera
    would deliver it. ``noise_std`` > 0 adds Gaussian sensor noise (in pixel units) drawn from
    ``numpy.random.default_rng(seed)``; the default is no noise. The output is deterministic.
    """
    cv2 = _cv2()
    images = np.asarray(images)
    label_list = [int(v) for v in np.asarray(labels).reshape(-1)]
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, H, W] array, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if len(label_list) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(label_list)} labels")
    if len(fourcc) != 4:
        raise ValueError(f"fourcc must be 4 characters, got {fourcc!r}")
    height, width = (int(v) for v in frame_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"frame_size must be positive (height, width), got {frame_size}")

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height), True)
    if not writer.isOpened():
        raise RuntimeError(
            f"OpenCV cannot write {out} with fourcc {fourcc!r}; try fourcc='mp4v' with a .mp4 file "
            "or fourcc='MJPG' with a .avi file"
        )
    rng = np.random.default_rng(seed) if noise_std > 0 else None
    try:
        for image in images:
            noise = rng.normal(0.0, noise_std, size=(height, width)).astype(np.float32) if rng else None
            writer.write(_render_frame(image, (height, width), noise))
    finally:
        writer.release()
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"OpenCV wrote no video to {out} (fourcc {fourcc!r})")
    labels_path_for(out).write_text(json.dumps(label_list))
    return out


def _cv2():
    import cv2  # imported lazily: loading the digits or the model path needs no OpenCV

    return cv2
