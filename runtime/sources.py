"""Frame sources through OpenCV: video files, image folders, cameras, GStreamer pipelines, RTSP streams.

Each source is an iterator of `(frame_bgr_uint8, label_or_None)` with `live`, `position` (index of
the last frame within the current pass), `rewind()` for file sources and `close()`. Python 3.8-compatible;
OpenCV is imported when a source is opened, not when this module is.
"""

import os
import re
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from .media import diagnose_video

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")
VIDEO_FORMATS_HINT = (
    "OpenCV reads MPEG-4 Part 2 (mp4v), Motion JPEG (MJPG) and H.264 video files; re-encode with e.g. "
    "`ffmpeg -i in -c:v mjpeg out.avi`"
)
# OpenCV's own open/read timeouts for network streams, so a dead camera fails in seconds, not minutes
NETWORK_TIMEOUT_MS = 5000

Frame = Tuple[np.ndarray, Optional[int]]


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message names it and says what to do."""


def _cv2() -> Any:
    # ffmpeg's own log lines ("moov atom not found") would reach the terminal; our errors say the cause instead
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2  # lazily: only sources need OpenCV

    return cv2


def _video_cause(path: str) -> str:
    """The cause read from the file's own bytes (runtime/media.py), else the formats OpenCV reads."""
    return diagnose_video(path) or VIDEO_FORMATS_HINT


def redact_uri(uri: str) -> str:
    # never print a camera password into a result file
    return re.sub(r"//[^/@]*@", "//***@", uri)


class Source(object):
    """Base class: an iterator of (frame, label) pairs."""

    kind = "source"
    live = False

    def __init__(self) -> None:
        self.position = -1

    def __iter__(self) -> "Source":
        return self

    def __next__(self) -> Frame:
        raise NotImplementedError

    def rewind(self) -> None:
        """Start again from the first frame (file sources only)."""
        raise SourceError("a %s source cannot be rewound" % self.kind)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.kind

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _CaptureSource(Source):
    """Shared by the cv2.VideoCapture-backed sources."""

    def __init__(self) -> None:
        Source.__init__(self)
        self._capture: Any = None

    def _read(self) -> Optional[np.ndarray]:
        ok, frame = self._capture.read()
        return frame if ok and frame is not None else None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class VideoFileSource(_CaptureSource):
    """A video file; labels (one per frame) come from the plan."""

    kind = "video"

    def __init__(self, path: str, loop: bool = False, labels: Optional[Sequence[int]] = None) -> None:
        _CaptureSource.__init__(self)
        self.path = path
        self.loop = loop
        self.labels = list(labels) if labels is not None else None
        if not os.path.isfile(path):
            raise SourceError("video file %s does not exist: push it to the device or fix source.uri" % path)
        self._pending: Optional[np.ndarray] = None
        self._open()
        self.frame_count: Optional[int] = self._reported_frame_count()

    def _open(self) -> None:
        self.close()
        cv2 = _cv2()
        self._capture = cv2.VideoCapture(self.path)
        if not self._capture.isOpened():
            self.close()
            raise SourceError("cannot open video file %s: %s" % (self.path, _video_cause(self.path)))
        # read one frame now, so an undecodable file fails at open time rather than mid-run
        self._pending = self._read()
        if self._pending is None:
            self.close()
            raise SourceError("cannot decode any frame of video file %s: %s" % (self.path, _video_cause(self.path)))
        self.position = -1

    def _reported_frame_count(self) -> Optional[int]:
        count = int(self._capture.get(_cv2().CAP_PROP_FRAME_COUNT)) if self._capture is not None else 0
        return count if count > 0 else None  # containers may not know; a hint for messages only

    def rewind(self) -> None:
        self._open()

    def __next__(self) -> Frame:
        if self._capture is None:
            raise StopIteration
        frame = self._pending
        self._pending = None
        if frame is None:
            frame = self._read()
        if frame is None:
            self._check_label_count_at_end()
            if not self.loop:
                raise StopIteration
            self._open()
            frame, self._pending = self._pending, None
        self.position += 1
        return frame, self._label()

    def _label(self) -> Optional[int]:
        if self.labels is None:
            return None
        if self.position >= len(self.labels):
            raise SourceError(
                "video %s has more frames than the %d labels in the plan (frame %d has no label; the file "
                "reports %s frames): give one label per frame"
                % (self.path, len(self.labels), self.position + 1, self.frame_count or "an unknown number of")
            )
        return self.labels[self.position]

    def _check_label_count_at_end(self) -> None:
        frames = self.position + 1
        if self.labels is not None and frames != len(self.labels):
            raise SourceError(
                "video %s has %d frames but the plan gives %d labels: give one label per frame"
                % (self.path, frames, len(self.labels))
            )

    def describe(self) -> str:
        return "video %s" % self.path


class ImageFolderSource(Source):
    """A folder of images, sorted by name. Class sub-folders label their images (by class_names or
    integer folder names); a flat folder is unlabelled unless the plan gives one label per image."""

    kind = "images"

    def __init__(
        self,
        folder: str,
        loop: bool = False,
        labels: Optional[Sequence[int]] = None,
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        Source.__init__(self)
        self.folder = folder
        self.loop = loop
        if not os.path.isdir(folder):
            raise SourceError("image folder %s does not exist: push it to the device or fix source.uri" % folder)
        self.items: List[Tuple[str, Optional[int]]] = self._scan(folder, labels, list(class_names or []))
        self.frame_count: Optional[int] = len(self.items)
        self._pending = self._load(0)  # an unreadable first image fails at open time

    @staticmethod
    def _images_in(folder: str) -> List[str]:
        names = sorted(os.listdir(folder))
        return [
            os.path.join(folder, n)
            for n in names
            if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
        ]

    def _scan(
        self, folder: str, labels: Optional[Sequence[int]], class_names: List[str]
    ) -> List[Tuple[str, Optional[int]]]:
        flat = self._images_in(folder)
        class_dirs = [
            d for d in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, d)) and not d.startswith(".")
        ]
        class_dirs = [d for d in class_dirs if self._images_in(os.path.join(folder, d))]
        if flat and class_dirs:
            raise SourceError(
                "image folder %s has both images and class sub-folders (%s): use one layout"
                % (folder, ", ".join(class_dirs))
            )
        if class_dirs:
            if labels is not None:
                raise SourceError(
                    "image folder %s labels itself through its class sub-folders: remove labels from the plan" % folder
                )
            items: List[Tuple[str, Optional[int]]] = []
            for name in class_dirs:
                label = self._class_index(name, class_names)
                items.extend((path, label) for path in self._images_in(os.path.join(folder, name)))
            return items
        if not flat:
            raise SourceError(
                "image folder %s holds no images (%s), neither directly nor in class sub-folders"
                % (folder, ", ".join(IMAGE_EXTENSIONS))
            )
        if labels is not None and len(labels) != len(flat):
            raise SourceError(
                "image folder %s has %d images but the plan gives %d labels: give one label per image (sorted by name)"
                % (folder, len(flat), len(labels))
            )
        return [(path, labels[i] if labels is not None else None) for i, path in enumerate(flat)]

    def _class_index(self, name: str, class_names: List[str]) -> int:
        if name in class_names:
            return class_names.index(name)
        if name.isdigit():
            return int(name)
        known = ", ".join(class_names) if class_names else "none (the manifest has no class_names)"
        raise SourceError(
            "class sub-folder %r of %s is neither a class name nor an integer index; class names: %s"
            % (name, self.folder, known)
        )

    def _load(self, index: int) -> np.ndarray:
        cv2 = _cv2()
        path = self.items[index][0]
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            raise SourceError(
                "cannot read image %s: the file is corrupt or not an image OpenCV decodes (PNG, JPEG, BMP, "
                "TIFF, WebP); replace or remove it" % path
            )
        return frame

    def rewind(self) -> None:
        self.position = -1
        self._pending = None

    def __next__(self) -> Frame:
        index = self.position + 1
        if index >= len(self.items):
            if not self.loop:
                raise StopIteration
            index = 0
        frame = self._pending if index == 0 and self._pending is not None else self._load(index)
        self._pending = None
        self.position = index
        return frame, self.items[index][1]

    def describe(self) -> str:
        return "image folder %s" % self.folder


class LiveCaptureSource(_CaptureSource):
    """A camera index or device path, a GStreamer pipeline, or an RTSP URL: never ends, never rewinds."""

    live = True

    def __init__(self, kind: str, uri: Union[int, str]) -> None:
        _CaptureSource.__init__(self)
        self.kind = kind
        self.uri = uri
        cv2 = _cv2()
        if kind == "camera":
            self._capture = cv2.VideoCapture(uri)
            hint = "check the camera is connected (%s exists) and no other process holds it" % (
                "/dev/video%d" % uri if isinstance(uri, int) else uri
            )
        elif kind == "gstreamer":
            if not _opencv_has("GStreamer"):
                raise SourceError(
                    "this OpenCV build has no GStreamer support (cv2.getBuildInformation() says GStreamer: NO): "
                    "install an OpenCV built with GStreamer (on Jetson, JetPack's python3-opencv) or use a "
                    "camera index"
                )
            if "appsink" not in str(uri):
                raise SourceError("GStreamer pipeline %r must end in appsink so OpenCV can take its frames" % uri)
            self._capture = cv2.VideoCapture(uri, cv2.CAP_GSTREAMER)
            hint = "test the pipeline with gst-launch-1.0 (replacing appsink by fakesink)"
        elif kind == "rtsp":
            self._capture = _open_network(cv2, str(uri))
            hint = "check the URL, credentials, and that the camera is reachable from the device"
        else:
            raise SourceError("unknown live source kind %r" % kind)
        if self._capture is None or not self._capture.isOpened():
            self.close()
            raise SourceError("cannot open %s %s: %s" % (kind, self._shown_uri(), hint))

    def _shown_uri(self) -> str:
        return redact_uri(self.uri) if isinstance(self.uri, str) else str(self.uri)

    def __next__(self) -> Frame:
        frame = self._read() if self._capture is not None else None
        if frame is None:
            raise SourceError("%s %s stopped delivering frames" % (self.kind, self._shown_uri()))
        self.position += 1
        return frame, None

    def describe(self) -> str:
        return "%s %s" % (self.kind, self._shown_uri())


def _opencv_has(feature: str) -> bool:
    for line in _cv2().getBuildInformation().splitlines():
        if line.strip().startswith(feature + ":"):
            return "YES" in line.split(":", 1)[1]
    return False


def _open_network(cv2: Any, url: str) -> Any:
    params: List[int] = []
    for name in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
        if hasattr(cv2, name):  # OpenCV >= 4.6
            params += [getattr(cv2, name), NETWORK_TIMEOUT_MS]
    if params:
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG)


def open_source(
    kind: str,
    uri: Union[int, str],
    loop: bool = False,
    labels: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
) -> Source:
    """Open the source a plan names; raises SourceError with what to do when it cannot."""
    if kind == "video":
        return VideoFileSource(str(uri), loop=loop, labels=labels)
    if kind == "images":
        return ImageFolderSource(str(uri), loop=loop, labels=labels, class_names=class_names)
    if kind in ("camera", "gstreamer", "rtsp"):
        if labels is not None:
            raise SourceError("labels need a file source; a %s has no fixed frame order" % kind)
        return LiveCaptureSource(kind, uri)
    raise SourceError("unknown source kind %r; use video, images, camera, gstreamer or rtsp" % kind)
