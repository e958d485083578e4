"""Letterbox resize against an independent transcription of Ultralytics' LetterBox, and Geometry: model-input
pixels back to frame pixels for every resize mode, checked against where the image content really lands."""

import cv2
import numpy as np
import pytest

from edgekit.runtime.preprocess import PreprocessError, PreprocessSpec, preprocess


def ultralytics_letterbox(image, new_shape, stride=None, color=(114, 114, 114)):
    """ultralytics.data.augment.LetterBox(new_shape, auto=stride is not None, center=True, stride=stride),
    written out from its source: the reference the agent's letterbox must match pixel for pixel."""
    shape = image.shape[:2]
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if stride is not None:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        image = cv2.resize(image, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color), (top, left)


def raw_spec(**kwargs):
    """uint8 HWC output in RGB: the letterboxed image itself, comparable with the reference."""
    return PreprocessSpec(color="RGB", scale=1.0, dtype="uint8", layout="NHWC", **kwargs)


def photo(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "frame_size, new_shape, stride",
    [
        ((480, 640), (320, 320), None),  # landscape camera into a square input: bars top and bottom
        ((640, 480), (320, 320), None),  # portrait: bars left and right
        ((100, 301), (64, 64), None),  # an odd padding: the extra pixel goes to the bottom
        ((50, 30), (320, 320), None),  # upscaling
        ((320, 320), (320, 320), None),  # nothing to do
        ((480, 640), (640, 640), 32),  # stride: 640x480 fits in 480x640 exactly
        ((500, 640), (640, 640), 32),  # stride: padded to 512 rows
        ((333, 517), (416, 416), 32),
    ],
)
def test_letterbox_matches_ultralytics(frame_size, new_shape, stride):
    frame = photo(*frame_size)
    spec = raw_spec(resize=list(new_shape), resize_mode="letterbox", stride=stride)
    ours = preprocess(frame, spec)[0]
    expected, _ = ultralytics_letterbox(frame, new_shape, stride)
    expected = cv2.cvtColor(expected, cv2.COLOR_BGR2RGB)  # Ultralytics letterboxes BGR, then swaps
    assert ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)
    assert spec.geometry(*frame_size).input_size == ours.shape[:2]
    if stride is None:
        assert ours.shape[:2] == new_shape and spec.fixed_input_size == new_shape
    else:
        assert ours.shape[0] % stride == 0 and ours.shape[1] % stride == 0 and spec.fixed_input_size is None


def test_letterbox_pad_colour_and_content_placement():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :, 2] = 200  # a red frame (BGR)
    out = preprocess(frame, raw_spec(resize=[320, 320], resize_mode="letterbox"))[0]
    # 640x480 -> 320x240, centred: 40 rows of grey above and below
    assert (out[:40] == 114).all() and (out[280:] == 114).all()
    assert (out[40:280] == [200, 0, 0]).all()  # RGB now
    coloured = preprocess(frame, raw_spec(resize=[320, 320], resize_mode="letterbox", pad_value=[0, 128, 255]))[0]
    assert coloured[0, 0].tolist() == [0, 128, 255] and coloured[-1, -1].tolist() == [0, 128, 255]
    gray = PreprocessSpec(color="GRAY", scale=1.0, dtype="uint8", resize=[32, 32], resize_mode="letterbox")
    tall = preprocess(np.full((64, 16, 3), 255, np.uint8), gray)[0, 0]
    # 16x64 -> 8x32, 12 columns of grey either side
    assert (tall[:, :12] == 114).all() and (tall[:, 20:] == 114).all() and (tall[:, 12:20] == 255).all()


def test_letterbox_feeds_a_normalised_float_input():
    spec = PreprocessSpec(resize=[32, 32], resize_mode="letterbox", pad_value=0)
    out = preprocess(np.full((16, 32, 3), 255, np.uint8), spec)
    assert out.shape == (1, 3, 32, 32) and out.dtype == np.float32
    assert out[0, :, :8].max() == 0.0 and out[0, :, 8:24].min() == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resize_mode": "letterbox"}, "letterbox needs resize"),
        ({"resize": [8, 8], "resize_mode": "letterbox", "crop": [4, 4]}, "crop does not go with resize_mode letterbox"),
        ({"resize": [8, 8], "stride": 32}, "stride is for resize_mode letterbox"),
        ({"resize": [8, 8], "pad_value": 0}, "pad_value is for resize_mode letterbox"),
        ({"resize": [8, 8], "resize_mode": "letterbox", "stride": 0}, "stride must be an integer >= 1"),
        ({"resize": [8, 8], "resize_mode": "letterbox", "stride": True}, "stride must be an integer >= 1"),
        ({"resize": [8, 8], "resize_mode": "letterbox", "pad_value": 300}, "pad_value must be a number from 0 to 255"),
        ({"resize": [8, 8], "resize_mode": "letterbox", "pad_value": [1, 2]}, "pad_value must be"),
        ({"pad_value": "grey"}, "pad_value must be"),
    ],
)
def test_bad_letterbox_specs_name_the_field(kwargs, message):
    with pytest.raises(PreprocessError, match=message):
        PreprocessSpec(**kwargs)


def test_letterbox_keys_round_trip_and_old_specs_still_load():
    spec = PreprocessSpec(resize=[64, 64], resize_mode="letterbox", pad_value=[1, 2, 3], stride=32)
    again = PreprocessSpec.from_dict(spec.to_dict())
    assert again == spec and again.to_dict()["pad_value"] == [1, 2, 3] and again.stride == 32
    assert set(spec.to_dict()) == set(PreprocessSpec().to_dict()) | {"pad_value", "stride"}
    old = PreprocessSpec.from_dict({"resize": [8, 8], "resize_mode": "stretch"})  # written before letterbox
    assert old.pad_value == 114 and old.stride is None
    # every other mode writes the keys it always wrote: its JSON, and the artifact id, stay the same
    assert "pad_value" not in old.to_dict() and "stride" not in old.to_dict()
    assert PreprocessSpec.from_dict({"pad_value": None}).pad_value == 114


# -- Geometry ------------------------------------------------------------------------------------------

MODES = {
    "stretch": dict(resize=[48, 40]),
    "shorter_side + crop": dict(resize=[40, 40], resize_mode="shorter_side", crop=[32, 36]),
    "letterbox": dict(resize=[64, 64], resize_mode="letterbox"),
    "letterbox + stride": dict(resize=[64, 64], resize_mode="letterbox", stride=16),
    "no resize": dict(),
    "crop only": dict(crop=[50, 60]),
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("frame_size", [(90, 120), (120, 90), (61, 97)])
def test_points_round_trip_frame_input_frame(mode, frame_size):
    spec = raw_spec(**MODES[mode])
    geometry = spec.geometry(*frame_size)
    assert geometry.input_size == preprocess(photo(*frame_size), spec).shape[1:3]
    height, width = frame_size
    rng = np.random.default_rng(1)
    points = rng.uniform([0, 0], [width, height], (400, 2))
    inside = geometry.to_input(points)
    in_h, in_w = geometry.input_size
    # a centre crop cuts part of the frame away: only points that land in the input can come back
    seen = (inside[:, 0] >= 0) & (inside[:, 0] <= in_w) & (inside[:, 1] >= 0) & (inside[:, 1] <= in_h)
    assert seen.sum() > 10
    np.testing.assert_allclose(geometry.to_frame(inside[seen]), points[seen], atol=1e-9)
    boxes = np.concatenate([points[seen][:5], points[seen][5:10]], axis=1)
    mapped = geometry.to_frame_boxes(np.concatenate([inside[seen][:5], inside[seen][5:10]], axis=1))
    np.testing.assert_allclose(mapped, boxes, atol=1e-9)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_to_input_is_where_the_content_lands(mode):
    """A white square drawn in the frame: its centre in the preprocessed input is where Geometry says."""
    spec = raw_spec(interpolation="nearest", **MODES[mode])
    frame = np.zeros((90, 120, 3), np.uint8)
    frame[40:56, 50:70] = 255  # centre (60, 48) in continuous (x, y) coordinates
    out = preprocess(frame, spec)[0, :, :, 0]
    ys, xs = np.nonzero(out > 127)
    found = [(xs.min() + xs.max() + 1) / 2.0, (ys.min() + ys.max() + 1) / 2.0]
    expected = spec.geometry(90, 120).to_input(np.array([60.0, 48.0]))
    np.testing.assert_allclose(found, expected, atol=1.0)


def test_letterbox_geometry_values_and_clipping():
    spec = raw_spec(resize=[320, 320], resize_mode="letterbox")
    geometry = spec.geometry(480, 640)
    assert geometry.scale == (0.5, 0.5) and geometry.offset == (0.0, 40.0) and geometry.input_size == (320, 320)
    # a box reaching into the grey bars comes back clipped to the frame
    boxes = np.array([[-10.0, 10.0, 100.0, 300.0], [0.0, 40.0, 320.0, 280.0]], np.float32)
    mapped = geometry.to_frame_boxes(boxes)
    assert mapped.dtype == np.float32
    np.testing.assert_allclose(mapped, [[0, 0, 200, 480], [0, 0, 640, 480]])
    assert geometry.to_frame_boxes(np.zeros((0, 4), np.float32)).shape == (0, 4)
    assert geometry.to_frame(np.array([[[160.0, 160.0]] * 4])).shape == (1, 4, 2)  # polygons keep their shape
    assert "input_size=(320, 320)" in repr(geometry)


def test_geometry_bad_input():
    geometry = PreprocessSpec(resize=[8, 8]).geometry(16, 16)
    with pytest.raises(PreprocessError, match=r"boxes must be \[K, 4\]"):
        geometry.to_frame_boxes(np.zeros((3, 5)))
    with pytest.raises(PreprocessError, match=r"points must be \[\.\.\., 2\]"):
        geometry.to_frame(np.zeros((3, 3)))
    with pytest.raises(PreprocessError, match="crop 10x10 is larger"):
        PreprocessSpec(crop=[10, 10]).geometry(4, 4)
    with pytest.raises(PreprocessError, match="frame size must be positive"):
        PreprocessSpec().geometry(0, 4)
