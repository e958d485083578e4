"""Host-side plan building: source kinds, labels files and the checks made before anything runs."""

from __future__ import annotations

import pytest

from edgekit.device.plan import Source, check_labels, make_plan, read_labels
from edgekit.device.settings import RunSettings
from edgekit.errors import RunError


def test_source_kinds_are_inferred(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert Source.parse(0).kind == "camera"
    assert Source.parse("2") == Source("camera", 2)
    assert Source.parse("rtsp://cam.local/stream").kind == "rtsp"
    assert Source.parse("v4l2src ! videoconvert ! appsink").kind == "gstreamer"
    assert Source.parse(str(tmp_path)).kind == "images"
    assert Source.parse(str(video)) == Source("video", str(video.resolve()))


def test_missing_source_is_named(tmp_path):
    with pytest.raises(RunError, match="nothing-here.mp4"):
        Source.parse(str(tmp_path / "nothing-here.mp4"))


def test_live_source_needs_a_frame_count():
    with pytest.raises(RunError, match="--frames"):
        make_plan("/a", Source("camera", 0))
    plan = make_plan("/a", Source("camera", 0), RunSettings(frames=100, pipelined=True))
    assert plan["mode"] == "pipelined" and plan["frames"] == 100 and plan["schema"] == "edgekit.plan"


def test_labels_files_json_and_lines(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2, 3]")
    (tmp_path / "b.txt").write_text("4\n5\n\n6\n")
    assert read_labels(tmp_path / "a.json") == [1, 2, 3]
    assert read_labels(tmp_path / "b.txt") == [4, 5, 6]
    (tmp_path / "c.txt").write_text("cat\n")
    with pytest.raises(RunError, match="c.txt"):
        read_labels(tmp_path / "c.txt")


def test_labels_outside_the_model_classes_are_refused():
    manifest = {"outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]}
    check_labels([0, 9], manifest)
    with pytest.raises(RunError, match="label 12 is outside the model's 10 classes"):
        check_labels([3, 12], manifest, "labels.json")


def test_loop_on_a_live_source_is_refused():
    with pytest.raises(RunError, match="--loop"):
        make_plan("/a", Source("camera", 0, loop=True), RunSettings(frames=10))
