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


def test_loop_from_the_settings_counts_like_the_source_loop(tmp_path):
    with pytest.raises(RunError, match="--loop"):
        make_plan("/a", Source("camera", 0), RunSettings(frames=10, loop=True))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    plan = make_plan("/a", Source.parse(video), RunSettings(frames=10, loop=True))
    assert plan["source"]["loop"] is True


def test_every_run_setting_reaches_a_plan_the_agent_accepts(tmp_path):
    from edgekit.runtime.plan import Plan

    (tmp_path / "labels.txt").write_text("1\n2\n")
    settings = RunSettings(
        frames=7,
        duration_s=2.5,
        warmup=0,
        pipelined=True,
        queue_size=2,
        threads=3,
        engine_options={"delegate": "xnnpack"},
        loop=True,
        labels=tmp_path / "labels.txt",
        power_probe="auto",
        keep_samples=False,
        top_k=2,
    )
    data = make_plan("/a", Source("images", "/frames"), settings, run_id="r1", engine="tflite")
    plan = Plan.from_dict(data)  # the device's own validator
    assert (plan.frames, plan.duration_s, plan.warmup, plan.mode, plan.queue_size) == (7, 2.5, 0, "pipelined", 2)
    assert (plan.engine_name, plan.engine_threads, plan.engine_options) == ("tflite", 3, {"delegate": "xnnpack"})
    assert plan.source.loop and plan.labels == [1, 2] and plan.power_probe == "auto"
    assert not plan.keep_samples and plan.postprocess["top_k"] == 2 and plan.run_id == "r1"


def test_an_unknown_run_setting_is_a_type_error_naming_the_known_ones(tmp_path):
    import edgekit
    from edgekit.api import run_fleet

    assert edgekit.RunSettings is RunSettings
    # refused before anything is loaded: the artifact and fleet paths do not exist
    with pytest.raises(TypeError, match=r"run\(\) got an unexpected keyword argument 'frame'.*frames, duration_s"):
        edgekit.run(tmp_path / "none", "clip.mp4", frame=3)
    with pytest.raises(TypeError, match=r"run_fleet\(\) got an unexpected keyword argument 'power'.*power_probe"):
        run_fleet(tmp_path / "none", tmp_path / "fleet.toml", "clip.mp4", power="auto")
    with pytest.raises(TypeError):
        RunSettings.merged(RunSettings(), {"pipelined": True, "bogus": 1}, caller="run")
    assert RunSettings.merged(RunSettings(frames=5), {"pipelined": True}, caller="run") == RunSettings(
        frames=5, pipelined=True
    )


# -- the postprocess block: the run's task ------------------------------------------------------------

DETECT = {"task": "detect", "decoder": "yolo-anchor-free", "conf": 0.3, "iou": 0.45, "max_det": 300}


def test_the_task_the_host_resolved_becomes_the_postprocess_block():
    from edgekit.runtime.plan import Plan

    data = make_plan("/a", Source("images", "/frames"), RunSettings(task=dict(DETECT)))
    assert data["postprocess"] == {
        "kind": "detect",
        "decoder": "yolo-anchor-free",
        "conf": 0.3,
        "iou": 0.45,
        "max_det": 300,
        "keep_outputs": True,
    }
    plan = Plan.from_dict(data)
    assert plan.postprocess_kind == "detect" and plan.keep_outputs and plan.postprocess["conf"] == 0.3
    kept_off = make_plan("/a", Source("images", "/f"), RunSettings(task={**DETECT, "keep_outputs": False}))
    assert kept_off["postprocess"]["keep_outputs"] is False
    classify = make_plan("/a", Source("images", "/f"), RunSettings(task={"task": "classify", "top_k": 3}))
    assert classify["postprocess"] == {"kind": "classify", "top_k": 3}


def test_the_older_postprocess_fields_still_make_a_plan():
    from edgekit.runtime.plan import Plan

    source = Source("images", "/frames")
    assert make_plan("/a", source)["postprocess"] == {"kind": "classify", "top_k": 5}
    assert make_plan("/a", source, RunSettings(top_k=2))["postprocess"] == {"kind": "classify", "top_k": 2}
    raw = make_plan("/a", source, RunSettings(postprocess="raw", reference="/ref.npz"))
    assert raw["postprocess"] == {"kind": "raw"} and raw["reference"] == "/ref.npz"  # raw takes no top_k
    assert Plan.from_dict(raw).postprocess_kind == "raw"


def test_label_masks_go_with_segment_and_a_file_source(tmp_path, monkeypatch):
    from edgekit.runtime.plan import Plan

    masks = tmp_path / "masks"
    masks.mkdir()
    monkeypatch.chdir(tmp_path)
    segment = RunSettings(task={"task": "segment", "mode": "argmax"}, label_masks="masks")
    data = make_plan("/a", Source("images", "/frames"), segment)
    assert data["label_masks"] == str(masks)  # on this machine: absolute, as the agent reads it
    assert data["postprocess"] == {"kind": "segment", "mode": "argmax", "keep_outputs": True}
    assert Plan.from_dict(data).label_masks == str(masks)
    on_device = RunSettings(task={"task": "segment"}, label_masks="/data/masks")
    assert make_plan("/a", Source("images", "/frames"), on_device)["label_masks"] == "/data/masks"
    assert make_plan("/a", Source("images", "/frames"))["label_masks"] is None
    with pytest.raises(RunError, match="label masks score segmentation, and this run's task is detect"):
        make_plan("/a", Source("images", "/f"), RunSettings(task=dict(DETECT), label_masks="masks"))
    with pytest.raises(RunError, match="a live camera source has none"):
        make_plan("/a", Source("camera", 0), RunSettings(task={"task": "segment"}, label_masks="m", frames=5))
    with pytest.raises(RunError, match="class labels score classification, and this run's task is detect"):
        make_plan("/a", Source("images", "/f"), RunSettings(task=dict(DETECT), labels=[1, 2]))


def test_label_masks_and_reference_are_pushed_with_the_plan(monkeypatch, tmp_path):
    from edgekit.device import push

    pushed = []

    def fake_push(transport, path, progress):
        pushed.append(path)
        return f"/device/inputs/{path.name}"

    monkeypatch.setattr(push, "_push_local_path", fake_push)
    plan = {"source": {"kind": "camera", "uri": 0}, "reference": None, "label_masks": str(tmp_path / "masks")}
    out = push.push_plan_inputs(object(), plan)
    assert out["label_masks"] == "/device/inputs/masks" and pushed == [tmp_path / "masks"]
    assert plan["label_masks"] == str(tmp_path / "masks")  # the caller's plan is left as it was


def test_build_calibrates_on_at_most_calib_limit_samples(tmp_path, monkeypatch):
    """`calib_limit` reaches calibration (it used to be accepted and ignored)."""
    import numpy as np

    import edgekit
    from edgekit.calibration import calibrate as calibration
    from edgekit.demo_data import digits_model_path

    seen = []
    real = calibration.calibrate

    def counting(*args, **kwargs):  # the real calibration, with what it was given recorded
        result = real(*args, **kwargs)
        seen.append((kwargs.get("limit"), result.spec.calibration["samples"]))
        return result

    monkeypatch.setattr(calibration, "calibrate", counting)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32))
    edgekit.build(
        digits_model_path(),
        "x86-ort",
        tmp_path / "art",
        precision="int8",
        calib=str(tmp_path / "calib.npy"),
        calib_limit=2,
    )
    assert seen == [(2, 2)]


def test_labels_too_few_for_the_video_are_refused_before_the_run(tmp_path):
    from edgekit.demo_data import load_heldout_digits, render_digits_video
    from edgekit.device.plan import check_labels_cover

    images, labels = load_heldout_digits()
    video = Source.parse(render_digits_video(images[:12], labels[:12], tmp_path / "d.mp4"))
    short = [int(v) for v in labels[:10]]
    with pytest.raises(RunError, match=r"cover 10 frames but 12 frames of video .* --frames 10"):
        check_labels_cover(short, video, None)
    check_labels_cover(short, video, 10)  # only the first 10 are timed
    with pytest.raises(RunError, match="cover 10 frames but 12"):
        check_labels_cover(short, Source(video.kind, video.uri, loop=True), 50)
    check_labels_cover(None, video, None)
