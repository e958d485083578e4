"""The harness on real sources and a real engine: sequential and pipelined timing, drops, errors, shutdown."""

import threading
import time

import cv2
import numpy as np
import pytest
from runtime_testkit import CLASS_NAMES, classifier_model, preprocess_dict, write_image_folder

from edgekit.runtime.engines import open_engine
from edgekit.runtime.harness import Harness, make_preprocessor
from edgekit.runtime.postprocess import Classification
from edgekit.runtime.preprocess import PreprocessSpec
from edgekit.runtime.sources import Source, open_source

SPEC = PreprocessSpec.from_dict(preprocess_dict())


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(classifier_model().SerializeToString())
    with open_engine("onnxruntime", str(path), {"threads": 1}) as opened:
        yield opened


class SyntheticCamera(Source):
    """A live source that never waits: every read returns a new frame at once, like a fast camera."""

    kind = "camera"
    live = True

    def __next__(self):
        self.position += 1
        frame = np.zeros((32, 32, 3), np.uint8)
        frame[:] = (0, 0, 255)
        return frame, None


def harness_threads():
    return [t for t in threading.enumerate() if t.name.startswith("edgekit-")]


def check_samples(m, count):
    assert m.timed == count
    for stage in ("capture", "preprocess", "inference", "postprocess", "end_to_end"):
        assert len(m.samples[stage]) == count
        assert all(v >= 0.0 for v in m.samples[stage])
    for i in range(count):
        stages = sum(m.samples[s][i] for s in ("capture", "preprocess", "inference", "postprocess"))
        assert m.samples["end_to_end"][i] >= stages * 0.999


def test_sequential_times_every_frame(engine, colour_video):
    path, labels = colour_video
    post = Classification(top_k=1)
    with open_source("video", str(path), labels=labels) as source:
        m = Harness(source, engine, make_preprocessor(SPEC), post, warmup=3).run()
    check_samples(m, 12)  # warm-up frames come first and the file restarts: every frame is timed
    assert m.status == "ok" and m.warmup == 3 and m.dropped == 0 and not m.errors
    assert post.summary()["count"] == 12 and post.summary()["top1"] == 1.0
    assert m.throughput_fps == pytest.approx(12 / m.wall_s)
    # sequential: end-to-end is exactly the sum of the stages
    assert m.samples["end_to_end"][0] == pytest.approx(
        sum(m.samples[s][0] for s in ("capture", "preprocess", "inference", "postprocess")), abs=1e-6
    )


def test_pipelined_file_source_never_drops(engine, colour_video):
    path, labels = colour_video

    def slow_preprocess(frame):
        time.sleep(0.002)  # a slow stage makes the capture queue fill up
        return make_preprocessor(SPEC)(frame)

    post = Classification()
    with open_source("video", str(path), labels=labels, loop=True) as source:
        m = Harness(source, engine, slow_preprocess, post, mode="pipelined", frames=30, queue_size=1).run()
    check_samples(m, 30)
    assert m.status == "ok" and m.dropped == 0 and post.summary()["top1"] == 1.0
    assert not harness_threads()


def test_pipelined_live_source_drops_oldest(engine):
    def slow_preprocess(frame):
        time.sleep(0.003)
        return make_preprocessor(SPEC)(frame)

    m = Harness(
        SyntheticCamera(), engine, slow_preprocess, Classification(), mode="pipelined", frames=15, queue_size=2
    ).run()
    check_samples(m, 15)
    assert m.status == "ok" and m.dropped > 0
    assert not harness_threads()


def test_live_sequential_duration(engine):
    m = Harness(SyntheticCamera(), engine, make_preprocessor(SPEC), Classification(), duration_s=0.15, warmup=2).run()
    assert m.status == "ok" and m.timed > 5 and m.warmup == 2
    assert m.wall_s < 0.3


def test_pipelined_duration_on_looping_file(engine, tmp_path):
    root = write_image_folder(tmp_path / "imgs", flat=["red", "green"])
    with open_source("images", str(root), loop=True) as source:
        m = Harness(source, engine, make_preprocessor(SPEC), Classification(), mode="pipelined", duration_s=0.15).run()
    assert m.status == "ok" and m.timed > 5 and m.wall_s < 0.5
    assert not harness_threads()


def test_warmup_wraps_a_short_source_and_short_source_warns(engine, tmp_path):
    root = write_image_folder(tmp_path / "imgs", flat=["red", "green", "blue"])
    with open_source("images", str(root)) as source:
        m = Harness(source, engine, make_preprocessor(SPEC), Classification(), warmup=7, frames=5).run()
    assert m.warmup == 7 and m.timed == 3 and m.status == "ok"
    assert "ended after 3 of the 5 frames" in m.warnings[0]


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_inference_error_mid_run_keeps_earlier_frames(engine, tmp_path, mode):
    root = write_image_folder(tmp_path / "imgs", flat=[CLASS_NAMES[i % 4] for i in range(10)])
    calls = [0]

    def breaks_at_frame_six(frame):
        calls[0] += 1
        tensor = make_preprocessor(SPEC)(frame)
        # after warm-up (2 frames), the sixth timed frame gets a tensor the model rejects
        return tensor[:, :, :8] if calls[0] == 2 + 6 else tensor

    with open_source("images", str(root)) as source:
        m = Harness(source, engine, breaks_at_frame_six, Classification(), mode=mode, warmup=2).run()
    assert m.status == "partial" and m.timed == 5
    assert m.errors[0]["stage"] == "inference" and m.errors[0]["frame"] == 5
    assert "input" in m.errors[0]["message"]
    check_samples(m, 5)
    assert not harness_threads()


def test_warmup_error_is_reported_with_stage(engine, tmp_path):
    root = write_image_folder(tmp_path / "imgs", flat=["red", "red"])
    with open_source("images", str(root)) as source:
        # the second image disappears after the folder was scanned (a card pulled, a file deleted)
        source.items[1] = (str(tmp_path / "gone.png"), None)
        source.rewind()
        m = Harness(source, engine, make_preprocessor(SPEC), Classification(), warmup=3).run()
    assert m.status == "error" and m.timed == 0 and m.warmup == 1
    assert m.errors[0]["stage"] == "capture" and m.errors[0]["frame"] is None
    assert (
        m.errors[0]["message"].startswith("warm-up frame 2: cannot read image") and "gone.png" in m.errors[0]["message"]
    )


def test_bad_settings(engine):
    with pytest.raises(ValueError, match="mode 'batch'"):
        Harness(SyntheticCamera(), engine, make_preprocessor(None), Classification(), mode="batch")
    with pytest.raises(ValueError, match="queue_size"):
        Harness(SyntheticCamera(), engine, make_preprocessor(None), Classification(), queue_size=0)
    raw = make_preprocessor(None)(np.zeros((4, 4, 3), np.uint8))
    assert raw.shape == (1, 4, 4, 3) and raw.dtype == np.uint8


class RecordingPostprocessor(Classification):
    """Classification that notes what the harness hands it per frame, and takes a known time doing it."""

    def __init__(self):
        Classification.__init__(self)
        self.calls = []

    def process(self, outputs, label, position, record=True, frame_size=None):
        self.calls.append((position, record, frame_size))
        time.sleep(0.004)  # the postprocess stage must be timed for real: at least this long
        return Classification.process(self, outputs, label, position, record, frame_size)


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_postprocessor_gets_each_frames_size(engine, tmp_path, mode):
    root = tmp_path / "imgs"
    root.mkdir()
    sizes = [(32, 32), (48, 64), (20, 10), (64, 48)]
    for index, (height, width) in enumerate(sizes):
        cv2.imwrite(str(root / f"{index:03d}.png"), np.full((height, width, 3), 60 * index, np.uint8))
    post = RecordingPostprocessor()
    with open_source("images", str(root)) as source:
        m = Harness(source, engine, make_preprocessor(SPEC), post, mode=mode, warmup=2).run()
    assert m.status == "ok" and m.timed == 4
    warmup, timed = post.calls[:2], post.calls[2:]
    assert warmup == [(0, False, sizes[0]), (1, False, sizes[1])]
    assert [(p, r, s) for p, r, s in timed] == [(i, True, sizes[i]) for i in range(4)]
    assert min(m.samples["postprocess"]) >= 4.0
