"""Frame sources on real files: mp4v videos and PNG folders; live kinds fail fast and clearly here."""

import re
import time

import cv2
import numpy as np
import pytest
from runtime_testkit import CLASS_NAMES, write_image_folder, write_video

from edgekit.runtime.sources import SourceError, open_source


def colour_of(frame):
    """The class whose colour the frame's mean is closest to (video compression blurs exact values)."""
    mean = frame.reshape(-1, 3).mean(axis=0)
    ref = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "black": (0, 0, 0)}
    return min(ref, key=lambda name: np.abs(mean - ref[name]).sum())


def test_video_frames_labels_and_end(colour_video):
    path, labels = colour_video
    with open_source("video", str(path), labels=labels) as source:
        assert not source.live and source.frame_count == 12
        frames = list(source)
    assert len(frames) == 12
    assert [lab for _, lab in frames] == labels
    assert [colour_of(f) for f, _ in frames] == [CLASS_NAMES[lab] for lab in labels]
    assert frames[0][0].dtype == np.uint8 and frames[0][0].shape == (32, 32, 3)


def test_video_loop_and_rewind(colour_video):
    path, labels = colour_video
    source = open_source("video", str(path), loop=True, labels=labels)
    got = [next(source) for _ in range(30)]
    assert [lab for _, lab in got] == [labels[i % 12] for i in range(30)]
    assert source.position == 30 % 12 - 1
    source.rewind()
    next(source)
    assert source.position == 0
    source.close()


def test_video_more_frames_than_labels_names_both_counts(colour_video):
    path, labels = colour_video
    source = open_source("video", str(path), labels=labels[:5])
    for _ in range(5):
        next(source)
    with pytest.raises(SourceError, match="more frames than the 5 labels .* reports 12 frames"):
        next(source)


def test_video_fewer_frames_than_labels(colour_video):
    path, labels = colour_video
    source = open_source("video", str(path), labels=labels + [0, 1])
    for _ in range(12):
        next(source)
    with pytest.raises(SourceError, match="has 12 frames but the plan gives 14 labels"):
        next(source)


def test_missing_and_unreadable_video(tmp_path):
    with pytest.raises(SourceError, match="video file .*nope.mp4 does not exist"):
        open_source("video", str(tmp_path / "nope.mp4"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01 this is not a video" * 100)
    with pytest.raises(SourceError, match="garbage.mp4.*mp4v.*MJPG.*H.264"):
        open_source("video", str(garbage))


def test_mjpg_video_reads(tmp_path):
    path = write_video(tmp_path / "clip.avi", ["red", "blue"], fourcc="MJPG")
    assert [colour_of(f) for f, _ in open_source("video", str(path))] == ["red", "blue"]


def test_image_folder_class_subfolders(tmp_path):
    root = write_image_folder(tmp_path / "imgs", by_class={"green": 2, "red": 1, "3": 1})
    (root / "notes.txt").write_text("not an image")
    source = open_source("images", str(root), class_names=CLASS_NAMES)
    items = list(source)
    # sorted by folder name ("3" < "green" < "red"); names map through class_names, digits are indices
    assert [lab for _, lab in items] == [3, 1, 1, 0]
    assert [colour_of(f) for f, _ in items] == ["black", "green", "green", "red"]
    assert source.frame_count == 4


def test_image_folder_flat_unlabelled_or_plan_labelled(tmp_path):
    root = write_image_folder(tmp_path / "flat", flat=["blue", "red", "green"])
    assert [lab for _, lab in open_source("images", str(root))] == [None, None, None]
    assert [lab for _, lab in open_source("images", str(root), labels=[2, 0, 1])] == [2, 0, 1]
    with pytest.raises(SourceError, match="has 3 images but the plan gives 2 labels"):
        open_source("images", str(root), labels=[2, 0])
    looped = open_source("images", str(root), loop=True)
    assert len([next(looped) for _ in range(7)]) == 7


def test_image_folder_errors(tmp_path):
    with pytest.raises(SourceError, match="image folder .* does not exist"):
        open_source("images", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="holds no images"):
        open_source("images", str(tmp_path / "empty"))
    mixed = write_image_folder(tmp_path / "mixed", by_class={"red": 1}, flat=["blue"])
    with pytest.raises(SourceError, match="both images and class sub-folders"):
        open_source("images", str(mixed))
    odd = write_image_folder(tmp_path / "odd", by_class={"purple": 1})
    with pytest.raises(SourceError, match="'purple' .* neither a class name nor an integer"):
        open_source("images", str(odd), class_names=CLASS_NAMES)
    labelled = write_image_folder(tmp_path / "labelled", by_class={"red": 1})
    with pytest.raises(SourceError, match="labels itself"):
        open_source("images", str(labelled), labels=[0], class_names=CLASS_NAMES)


def test_corrupt_image_names_the_file(tmp_path):
    root = write_image_folder(tmp_path / "imgs", flat=["red", "red", "red"])
    (root / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    source = open_source("images", str(root))
    next(source)
    with pytest.raises(SourceError, match="cannot read image .*001.png"):
        next(source)
    (root / "000.png").write_bytes(b"broken")
    with pytest.raises(SourceError, match="cannot read image .*000.png"):
        open_source("images", str(root))  # no readable first image: fails at open


def test_grayscale_png_comes_out_bgr(tmp_path):
    (tmp_path / "g").mkdir()
    cv2.imwrite(str(tmp_path / "g" / "a.png"), np.full((8, 8), 50, np.uint8))
    frame, _ = next(open_source("images", str(tmp_path / "g")))
    assert frame.shape == (8, 8, 3)


def _fails_fast(kind, uri, match):
    start = time.perf_counter()
    with pytest.raises(SourceError, match=match):
        open_source(kind, uri)
    assert time.perf_counter() - start < 10.0


def test_missing_camera_fails_fast():
    _fails_fast("camera", 97, "cannot open camera 97: .*/dev/video97")
    _fails_fast("camera", "/dev/video-nonexistent", "cannot open camera /dev/video-nonexistent")


def test_bad_rtsp_url_fails_fast_and_hides_credentials():
    # port 1 on loopback refuses at once; the password must not reach the message
    with pytest.raises(SourceError) as info:
        open_source("rtsp", "rtsp://admin:secret@127.0.0.1:1/stream")
    assert "secret" not in str(info.value) and "rtsp://***@127.0.0.1:1/stream" in str(info.value)
    _fails_fast("rtsp", "rtsp://127.0.0.1:1/none", "cannot open rtsp rtsp://127.0.0.1:1/none: check the URL")


def test_gstreamer_pipeline_error_is_clear():
    has_gstreamer = any(
        line.strip().startswith("GStreamer:") and "YES" in line for line in cv2.getBuildInformation().splitlines()
    )
    if has_gstreamer:
        _fails_fast("gstreamer", "nonexistentelement ! appsink", "cannot open gstreamer")
    else:
        _fails_fast("gstreamer", "videotestsrc ! appsink", "no GStreamer support")
    with pytest.raises(SourceError, match="labels need a file source"):
        open_source("camera", 0, labels=[1])
    with pytest.raises(SourceError, match="unknown source kind"):
        open_source("npz", "x")


def test_a_broken_video_names_its_real_cause_and_ffmpeg_stays_quiet(tmp_path):
    import subprocess
    import sys

    good = tmp_path / "good.mp4"
    write_video(good, ["red", "blue"] * 6)
    data = good.read_bytes()
    cases = {
        "empty.mp4": (b"", "is empty"),
        "cut.mp4": (data[: len(data) // 2], "MP4 file is truncated"),
        "unfinalised.mp4": (data[: data.find(b"moov") - 4], "no index ('moov' box)"),
        "noise.mp4": (bytes(range(256)) * 8, "OpenCV reads MPEG-4 Part 2"),  # unknown bytes: the formats it reads
    }
    for name, (content, cause) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SourceError, match=re.escape(cause)):
            open_source("video", str(tmp_path / name))
    # ffmpeg's own "moov atom not found" does not reach the terminal; our message says it instead
    code = (
        "from edgekit.runtime.sources import open_source, SourceError\n"
        f"try:\n    open_source('video', {str(tmp_path / 'cut.mp4')!r})\nexcept SourceError as e:\n    print(e)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "truncated" in done.stdout and "moov atom" not in done.stderr, done.stderr
