"""PreprocessSpec and preprocess(): every step against hand-computed expectations, and bad specs."""

import json

import cv2
import numpy as np
import pytest

from edgekit.runtime.preprocess import PreprocessError, PreprocessSpec, preprocess


def bgr(height=4, width=6):
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = 10  # B
    frame[..., 1] = 20  # G
    frame[..., 2] = 30  # R
    return frame


def test_rgb_nchw_float_scale_mean_std():
    spec = PreprocessSpec(color="RGB", scale=1.0, mean=[30.0, 20.0, 10.0], std=[2.0, 4.0, 5.0])
    out = preprocess(bgr(), spec)
    assert out.shape == (1, 3, 4, 6) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.all(out == 0.0)  # R-30, G-20, B-10 after the swap to RGB
    spec = PreprocessSpec(color="RGB", scale=1.0 / 255.0)
    out = preprocess(bgr(), spec)
    np.testing.assert_allclose(out[0, :, 0, 0], [30 / 255.0, 20 / 255.0, 10 / 255.0], rtol=1e-6)


def test_bgr_keeps_channel_order_and_nhwc_layout():
    out = preprocess(bgr(), PreprocessSpec(color="BGR", scale=1.0, layout="NHWC"))
    assert out.shape == (1, 4, 6, 3)
    assert out[0, 0, 0].tolist() == [10.0, 20.0, 30.0]


def test_gray_from_bgr_and_from_gray_and_bgra():
    spec = PreprocessSpec(color="GRAY", scale=1.0)
    out = preprocess(bgr(), spec)
    assert out.shape == (1, 1, 4, 6)
    expected = cv2.cvtColor(bgr(), cv2.COLOR_BGR2GRAY)[0, 0]
    assert out[0, 0, 0, 0] == expected
    gray = np.full((4, 6), 7, np.uint8)
    assert preprocess(gray, spec)[0, 0, 0, 0] == 7.0
    assert preprocess(gray[:, :, None], PreprocessSpec(color="RGB", scale=1.0)).shape == (1, 3, 4, 6)
    bgra = np.concatenate([bgr(), np.full((4, 6, 1), 99, np.uint8)], axis=2)
    assert preprocess(bgra, PreprocessSpec(color="BGR", scale=1.0))[0, :, 0, 0].tolist() == [10.0, 20.0, 30.0]
    assert preprocess(bgra, PreprocessSpec(color="RGB", scale=1.0))[0, :, 0, 0].tolist() == [30.0, 20.0, 10.0]


def test_resize_stretch_and_interpolations():
    frame = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    for interpolation in ("nearest", "linear", "area", "cubic"):
        out = preprocess(frame, PreprocessSpec(resize=[8, 12], interpolation=interpolation, color="BGR", scale=1.0))
        assert out.shape == (1, 3, 8, 12)
    expected = cv2.resize(frame, (12, 8), interpolation=cv2.INTER_AREA)
    out = preprocess(frame, PreprocessSpec(resize=[8, 12], interpolation="area", color="BGR", scale=1.0))
    np.testing.assert_array_equal(out[0].transpose(1, 2, 0), expected.astype(np.float32))


def test_shorter_side_resize_then_centre_crop():
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, 38:42] = 255  # a bright stripe in the middle survives the centre crop
    spec = PreprocessSpec(resize=[20, 20], resize_mode="shorter_side", crop=[16, 16], color="GRAY", scale=1.0)
    out = preprocess(frame, spec)
    assert out.shape == (1, 1, 16, 16)
    # 40x80 -> 20x40, crop rows 2..18 and columns 12..28: the stripe (columns 19..21) is in the middle
    assert out[0, 0, :, 7:9].min() > 200 and out[0, 0, :, 0].max() == 0


def test_crop_larger_than_frame_is_an_error():
    with pytest.raises(PreprocessError, match="crop 10x10 is larger"):
        preprocess(np.zeros((4, 4, 3), np.uint8), PreprocessSpec(crop=[10, 10]))


def test_integer_dtypes():
    frame = bgr()
    raw = preprocess(frame, PreprocessSpec(color="BGR", scale=1.0, dtype="uint8"))
    assert raw.dtype == np.uint8 and raw[0, :, 0, 0].tolist() == [10, 20, 30]
    signed = preprocess(frame, PreprocessSpec(color="BGR", scale=1.0, dtype="int8"))
    assert signed.dtype == np.int8 and signed[0, :, 0, 0].tolist() == [-118, -108, -98]
    # a normalisation that leaves the range saturates and rounds, never wraps around
    frame[..., 0] = 255
    clipped = preprocess(frame, PreprocessSpec(color="BGR", scale=2.0, dtype="uint8"))
    assert clipped[0, :, 0, 0].tolist() == [255, 40, 60]
    half = preprocess(frame, PreprocessSpec(color="BGR", scale=1.0, mean=[0.5], dtype="int8"))
    assert half[0, 1, 0, 0] == 20  # 19.5 rounds to even
    assert preprocess(frame, PreprocessSpec(dtype="float16")).dtype == np.float16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"color": "YUV"}, "color"),
        ({"layout": "CHW"}, "layout"),
        ({"dtype": "float64"}, "dtype"),
        ({"resize_mode": "fit"}, "resize_mode 'fit': use one of stretch, shorter_side, letterbox"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"mean": [0.1, 0.2]}, "mean has 2 values"),
        ({"color": "GRAY", "std": [1.0, 1.0, 1.0]}, "std has 3 values"),
        ({"std": [1.0, 0.0, 1.0]}, "std contains 0"),
        ({"resize": [10]}, "resize must be"),
        ({"crop": [0, 4]}, "crop must be"),
    ],
)
def test_bad_specs_name_the_field(kwargs, message):
    with pytest.raises(PreprocessError, match=message):
        PreprocessSpec(**kwargs)


def test_dict_round_trip_unknown_and_malformed_keys():
    spec = PreprocessSpec(resize=[8, 8], crop=[6, 6], color="gray", mean=[0.5], std=[0.25], layout="nhwc")
    assert spec.color == "GRAY" and spec.layout == "NHWC"
    again = PreprocessSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.channels == 1 and "GRAY" in repr(again)
    with pytest.raises(PreprocessError, match="unknown keys \\['size'\\]"):
        PreprocessSpec.from_dict({"size": [8, 8]})
    with pytest.raises(PreprocessError, match="malformed"):
        PreprocessSpec.from_dict({"mean": None})
    with pytest.raises(PreprocessError, match="JSON object"):
        PreprocessSpec.from_dict([1, 2])


def test_bad_frames():
    spec = PreprocessSpec()
    with pytest.raises(PreprocessError, match="non-empty"):
        preprocess(np.zeros((0, 4, 3), np.uint8), spec)
    with pytest.raises(PreprocessError, match="non-empty"):
        preprocess("not an image", spec)
    with pytest.raises(PreprocessError, match="shape \\(4, 4, 2\\)"):
        preprocess(np.zeros((4, 4, 2), np.uint8), spec)
