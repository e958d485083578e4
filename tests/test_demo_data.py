"""The embedded demo's shipped model and held-out digits, end to end through a real video file."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekit.demo_data import (
    digits_model_path,
    labels_path_for,
    load_heldout_digits,
    read_labels,
    render_digits_video,
)
from edgekit.runtime.preprocess import PreprocessSpec, preprocess


@pytest.fixture(scope="module")
def model_meta() -> dict[str, str]:
    model = onnx.load(str(digits_model_path()))
    return {p.key: p.value for p in model.metadata_props}


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(digits_model_path()), providers=["CPUExecutionProvider"])


def test_heldout_digits_shape_and_labels() -> None:
    images, labels = load_heldout_digits()
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    assert images.ndim == 3 and images.shape[1:] == (28, 28)
    assert labels.shape == (images.shape[0],)
    assert images.shape[0] == 1000
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels, minlength=10).tolist() == [100] * 10  # stratified split
    assert images.max() > 200 and np.median(images) == 0  # white digits on black, as in MNIST


def test_model_is_self_contained_with_valid_metadata(model_meta: dict[str, str]) -> None:
    path = digits_model_path()
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) in (17, 18)

    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["batch", 1, 28, 28] and out_dims == ["batch", 10]

    spec_dict = json.loads(model_meta["edgekit.preprocess"])
    spec = PreprocessSpec.from_dict(spec_dict)
    assert spec.to_dict() == spec_dict
    assert spec.resize == [28, 28] and spec.color == "GRAY" and spec.layout == "NCHW"
    assert spec.dtype == "float32" and spec.interpolation == "area" and spec.crop is None
    assert spec.scale == pytest.approx(1 / 255)
    assert 0.05 < spec.mean[0] < 0.25 and 0.2 < spec.std[0] < 0.45
    assert json.loads(model_meta["edgekit.class_names"]) == [str(i) for i in range(10)]
    training = json.loads(model_meta["edgekit.training"])
    assert training["heldout_accuracy"] >= 0.95 and training["epochs"] > 0


def test_model_accuracy_on_heldout_npz(model_meta: dict[str, str], session: ort.InferenceSession) -> None:
    images, labels = load_heldout_digits()
    spec = PreprocessSpec.from_dict(json.loads(model_meta["edgekit.preprocess"]))
    batch = np.concatenate([preprocess(image, spec) for image in images])
    logits = session.run(["logits"], {"input": batch})[0]
    assert logits.shape == (len(images), 10)
    accuracy = float((logits.argmax(1) == labels).mean())
    assert accuracy >= 0.95
    # The accuracy stored in the model is the one measured here.
    assert accuracy == pytest.approx(json.loads(model_meta["edgekit.training"])["heldout_accuracy"], abs=1e-3)


def test_rendered_video_round_trip_keeps_accuracy(
    tmp_path, model_meta: dict[str, str], session: ort.InferenceSession
) -> None:
    images, labels = load_heldout_digits()
    images, labels = images[:50], labels[:50]
    video = render_digits_video(images, labels, tmp_path / "digits.mp4", frame_size=(112, 112), fps=30)
    assert video == tmp_path / "digits.mp4" and video.stat().st_size > 0
    assert labels_path_for(video) == tmp_path / "digits.mp4.labels.json"
    assert read_labels(video) == read_labels(labels_path_for(video)) == [int(v) for v in labels]

    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened()
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 50
    assert all(f.shape == (112, 112, 3) and f.dtype == np.uint8 for f in frames)

    spec = PreprocessSpec.from_dict(json.loads(model_meta["edgekit.preprocess"]))
    batch = np.concatenate([preprocess(frame, spec) for frame in frames])
    assert batch.shape == (50, 1, 28, 28) and batch.dtype == np.float32
    predictions = session.run(["logits"], {"input": batch})[0].argmax(1)
    accuracy = float((predictions == np.asarray(read_labels(video))).mean())
    assert accuracy >= 0.9


def test_render_is_deterministic(tmp_path) -> None:
    images, labels = load_heldout_digits()
    first = render_digits_video(images[:10], labels[:10], tmp_path / "a.mp4", frame_size=(64, 64))
    second = render_digits_video(images[:10], labels[:10], tmp_path / "b.mp4", frame_size=(64, 64))
    assert first.read_bytes() == second.read_bytes()
    noisy = render_digits_video(images[:3], labels[:3], tmp_path / "n.mp4", noise_std=10.0, seed=1)
    noisy_again = render_digits_video(images[:3], labels[:3], tmp_path / "m.mp4", noise_std=10.0, seed=1)
    assert noisy.read_bytes() == noisy_again.read_bytes()


def test_render_rejects_bad_input(tmp_path) -> None:
    images, labels = load_heldout_digits()
    with pytest.raises(ValueError, match="labels"):
        render_digits_video(images[:3], labels[:2], tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="uint8"):
        render_digits_video(images[:3].astype(np.float32), labels[:3], tmp_path / "x.mp4")
    bad = tmp_path / "bad.labels.json"
    bad.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="list of integers"):
        read_labels(bad)
