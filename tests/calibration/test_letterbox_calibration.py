"""Letterbox preprocessing on the host: calibration reads frames through the agent's own preprocess, so a
letterboxed detector is calibrated on exactly the padded tensors the device will feed it."""

from __future__ import annotations

import cv2
import numpy as np

from edgekit.calibration.calibrate import calibrate
from edgekit.calibration.data import load_calibration_data
from edgekit.model import Model
from edgekit.runtime.preprocess import PreprocessSpec, preprocess

LETTERBOX = {"resize": [16, 16], "resize_mode": "letterbox", "scale": 1.0 / 255.0, "color": "RGB"}


def _images(folder, sizes):
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = []
    for index, (height, width) in enumerate(sizes):
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{index:02d}.png"), frame)
        frames.append(frame)
    return frames


def test_calibration_feeds_are_the_letterboxed_frames(tmp_path):
    frames = _images(tmp_path / "calib", [(20, 40), (40, 20), (16, 16), (9, 31)])
    spec = PreprocessSpec(**LETTERBOX)
    data = load_calibration_data(tmp_path / "calib", spec=spec, input_name="input")
    feeds = [feed["input"] for feed in data.feeds]
    assert data.count == 4 and [f.shape for f in feeds] == [(1, 3, 16, 16)] * 4
    for frame, feed in zip(frames, feeds, strict=True):
        np.testing.assert_array_equal(feed, preprocess(frame, spec))
    # the wide frame is 16x8 after the resize: four rows of grey (114 / 255) above and below
    np.testing.assert_allclose(feeds[0][0, :, :4], 114 / 255.0, rtol=1e-6)
    np.testing.assert_allclose(feeds[1][0, :, :, :4], 114 / 255.0, rtol=1e-6)


def test_calibrate_a_letterboxed_model(tmp_path, classifier_path):
    _images(tmp_path / "calib", [(20, 40), (40, 20), (30, 30)])
    model = Model.load(classifier_path, preprocess=dict(LETTERBOX))
    assert model.preprocess.resize_mode == "letterbox"
    calibration = calibrate(model, tmp_path / "calib", progress=False)
    assert calibration.samples == 3
