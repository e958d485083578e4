"""Calibration data: image folders, video files, .npy/.npz tensors or any Python iterable, as model feeds.

Frames are preprocessed by the device agent's own code (`edgekit.runtime.preprocess`), so the tensors
calibration sees are byte-for-byte the tensors the device will see.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import CalibrationDataError
from edgekit.runtime.preprocess import PreprocessSpec, preprocess

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mjpeg", ".mjpg"}


@dataclass
class CalibrationData:
    """Feeds for the model, how many there will be (when known), and what was skipped."""

    feeds: Iterator[dict[str, np.ndarray]]
    count: int | None
    description: str
    skipped: list[str]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _folder_feeds(files: list[Path], spec: PreprocessSpec, input_name: str, skipped: list[str]) -> Iterator[dict]:
    import cv2

    used = 0
    for path in files:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            skipped.append(str(path))
            continue
        used += 1
        yield {input_name: preprocess(frame, spec)}
    if used == 0:
        raise CalibrationDataError(
            f"none of the {len(files)} image files could be decoded (e.g. {files[0]}); check the calibration folder"
        )


def _video_feeds(path: Path, spec: PreprocessSpec, input_name: str, limit: int | None) -> Iterator[dict]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise CalibrationDataError(f"cannot open video {path}; OpenCV reads mp4v, MJPG and H.264 files")
    used = 0
    try:
        while limit is None or used < limit:
            ok, frame = capture.read()
            if not ok:
                break
            used += 1
            yield {input_name: preprocess(frame, spec)}
    finally:
        capture.release()
    if used == 0:
        raise CalibrationDataError(f"video {path} has no readable frames")


def _array_feeds(arrays: np.ndarray, input_name: str, batch: int) -> Iterator[dict]:
    for start in range(0, len(arrays), batch):
        yield {input_name: np.ascontiguousarray(arrays[start : start + batch])}


def _iterable_feeds(items: Iterable[Any], input_name: str) -> Iterator[dict]:
    for item in items:
        if isinstance(item, dict):
            yield {k: np.asarray(v) for k, v in item.items()}
        else:
            array = np.asarray(item[0] if isinstance(item, tuple) else item)
            yield {input_name: array}


def load_calibration_data(
    source: str | Path | np.ndarray | Iterable[Any],
    *,
    spec: PreprocessSpec | None,
    input_name: str,
    limit: int | None = None,
    batch: int = 1,
) -> CalibrationData:
    """Turn what the user gave into model feeds.

    A folder is searched recursively for images (undecodable ones are skipped and counted); a video
    gives its frames; `.npy` holds ready tensors (N, ...) and `.npz` one array per input name (or a
    single array); an array or any iterable of arrays / (array, label) / {input: array} is used as is.
    """
    skipped: list[str] = []
    if isinstance(source, np.ndarray):
        arrays = source[:limit] if limit else source
        return CalibrationData(_array_feeds(arrays, input_name, batch), -(-len(arrays) // batch), "array", skipped)
    if not isinstance(source, (str, Path)):
        return CalibrationData(_limited(_iterable_feeds(source, input_name), limit), limit, "iterable", skipped)

    path = Path(source)
    if not path.exists():
        raise CalibrationDataError(f"calibration data {path} does not exist; pass a folder of images, a video or .npy")
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise CalibrationDataError(
                f"calibration folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "put a few hundred representative images in it"
            )
        files = files[:limit] if limit else files
        _need_spec(spec, path)
        return CalibrationData(_folder_feeds(files, spec, input_name, skipped), len(files), f"folder {path}", skipped)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CalibrationDataError(f"cannot read {path}: {exc}") from exc
        if suffix == ".npz":
            if input_name in loaded.files:
                loaded = loaded[input_name]
            elif len(loaded.files) == 1:
                loaded = loaded[loaded.files[0]]
            else:
                raise CalibrationDataError(f"{path} holds {loaded.files}; name one array {input_name!r}")
        arrays = loaded[:limit] if limit else loaded
        if len(arrays) == 0:
            raise CalibrationDataError(f"{path} holds no samples")
        count = -(-len(arrays) // batch)
        return CalibrationData(_array_feeds(arrays, input_name, batch), count, f"tensors {path}", skipped)
    if suffix in VIDEO_SUFFIXES:
        _need_spec(spec, path)
        return CalibrationData(_video_feeds(path, spec, input_name, limit), limit, f"video {path}", skipped)
    raise CalibrationDataError(
        f"calibration data {path}: use a folder of images, a video ({', '.join(sorted(VIDEO_SUFFIXES))}), .npy or .npz"
    )


def _need_spec(spec: PreprocessSpec | None, path: Path) -> None:
    if spec is None:
        raise CalibrationDataError(
            f"images from {path} need a preprocessing spec, and the model has none; set model.preprocess "
            "(or pass ready tensors as .npy)"
        )


def _limited(feeds: Iterator[dict], limit: int | None) -> Iterator[dict]:
    for index, feed in enumerate(feeds):
        if limit is not None and index >= limit:
            return
        yield feed


def warn_skipped(skipped: list[str]) -> None:
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} calibration images that could not be decoded, e.g. {skipped[0]}", stacklevel=2
        )


def load_labelled(
    source: str | Path,
    *,
    spec: PreprocessSpec,
    input_name: str,
    labels: list[int] | None = None,
    class_names: list[str] | None = None,
    limit: int | None = None,
) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    """Labelled feeds for accuracy budgets: an image folder with class sub-folders, or a video plus
    per-frame labels. Frames are read and preprocessed by the device agent's own code."""
    from edgekit.runtime.sources import SourceError, open_source

    path = Path(source)
    kind = "images" if path.is_dir() else "video"
    feeds: list[dict[str, np.ndarray]] = []
    found: list[int] = []
    try:
        with open_source(kind, str(path), labels=labels, class_names=class_names) as frames:
            for frame, label in frames:
                if label is None:
                    raise CalibrationDataError(
                        f"{path} gives frames without labels; use class sub-folders or pass per-frame labels"
                    )
                feeds.append({input_name: preprocess(frame, spec)})
                found.append(int(label))
                if limit and len(feeds) >= limit:
                    break
    except SourceError as exc:
        raise CalibrationDataError(str(exc)) from exc
    if not feeds:
        raise CalibrationDataError(f"{path} gave no labelled samples")
    return feeds, found
