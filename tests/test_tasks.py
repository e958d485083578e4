"""Tasks on the host: the task config (defaults, checks), where a model's task comes from (edgekit's metadata,
Ultralytics' and YOLOv5's, a guess from the outputs), overrides through the API and the CLI, the run's task."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgekit.api import build, run
from edgekit.artifact import Artifact
from edgekit.cli import main
from edgekit.errors import ModelError, RunError
from edgekit.exporter_metadata import ULTRALYTICS, YOLOV5
from edgekit.model import DEFAULT_FOR_INPUT, EDGEKIT_METADATA, GIVEN, GUESSED_FROM_OUTPUTS, TASK_KEY, Model
from edgekit.runtime.preprocess import RESIZE_MODES
from edgekit.tasks import TASKS, run_task, task_config

DETECT_DEFAULTS = {
    "task": "detect",
    "decoder": "yolo-anchor-free",
    "conf": 0.25,
    "iou": 0.45,
    "max_det": 300,
    "class_agnostic": False,
    "num_classes": None,
}


def invoke(*args: object):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, [str(a) for a in args])


# -- the task config ------------------------------------------------------------------------------------------


def test_every_task_fills_its_defaults():
    assert task_config("classify", where="t") == {"task": "classify", "top_k": 5}
    assert task_config({"task": "detect"}, where="t") == DETECT_DEFAULTS
    assert task_config("segment", where="t") == {
        "task": "segment",
        "mode": "argmax",
        "threshold": 0.5,
        "num_classes": None,
    }
    assert task_config("text-detect", where="t") == {
        "task": "text-detect",
        "threshold": 0.3,
        "box_threshold": 0.6,
        "unclip_ratio": 1.5,
        "max_candidates": 1000,
        "min_size": 3,
    }
    assert task_config("raw", where="t") == {"task": "raw"}
    assert task_config({"task": "classification", "top_k": 3}, where="t") == {"task": "classify", "top_k": 3}
    ssd = task_config({"task": "detect", "decoder": "ssd", "background": True, "conf": 1}, where="t")
    assert ssd["background"] is True and ssd["conf"] == 1
    assert task_config({"task": "detect", "decoder": "ssd"}, where="t")["background"] is False


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        ("track", "unknown task 'track'; the tasks are classify, detect, segment, text-detect, raw"),
        ({"conf": 0.3}, 'names no task: add "task", one of classify, detect'),
        (
            {"task": "detect", "confidence": 0.3},
            "task detect has no setting 'confidence'; its settings: class_agnostic, conf",
        ),
        ({"task": "raw", "top_k": 3}, "task raw has no setting 'top_k'; its settings: none"),
        ({"task": "detect", "conf": 2}, "conf must be a number from 0 to 1, got 2"),
        ({"task": "detect", "iou": float("nan")}, "iou must be a number from 0 to 1, got nan"),
        ({"task": "detect", "background": True}, "task detect has no setting 'background'"),  # ssd only
        ({"task": "detect", "max_det": 0}, "max_det must be an integer from 1 up, got 0"),
        (
            {"task": "detect", "decoder": "yolox"},
            "decoder must be one of yolo-anchor-free, yolo-anchor-based",
        ),
        ({"task": "detect", "class_agnostic": "yes"}, "class_agnostic must be true or false"),
        ({"task": "segment", "num_classes": 1.5}, "num_classes must be null or an integer from 1 up"),
        ({"task": "text-detect", "unclip_ratio": 0}, "unclip_ratio must be a number above 0"),
        ({"task": "classify", "top_k": True}, "top_k must be an integer from 1 up, got True"),
        (["detect"], "must be a task name or a JSON object"),
    ],
)
def test_a_bad_task_config_is_named(data, phrase):
    with pytest.raises(ModelError) as error:
        task_config(data, where="Model.task", error=ModelError)
    assert str(error.value).startswith("Model.task") and phrase in str(error.value)


# -- where a model's task comes from ---------------------------------------------------------------------------


def test_an_ultralytics_detector_is_read_from_its_metadata(ultralytics_metadata, detector_factory, tmp_path):
    model = Model.load(detector_factory(tmp_path / "yolo.onnx", metadata=ultralytics_metadata))
    assert model.task == {**DETECT_DEFAULTS, "num_classes": 3}
    assert model.task_source == ULTRALYTICS
    assert model.class_names == ["cat", "dog", "bird's nest"] and model.class_names_source == ULTRALYTICS
    if "letterbox" in RESIZE_MODES:  # MERGE: always true once the letterbox resize mode has landed
        assert model.preprocess_source == ULTRALYTICS
        spec = model.preprocess.to_dict()
        assert spec["resize"] == [32, 32] and spec["resize_mode"] == "letterbox" and spec["pad_value"] == 114
        assert spec["stride"] is None  # a fixed input is padded to exactly imgsz, as Ultralytics does for ONNX
        assert (spec["color"], spec["scale"], spec["mean"], spec["std"]) == ("RGB", 1 / 255, [0.0], [1.0])
    else:
        assert model.preprocess_source == DEFAULT_FOR_INPUT
        assert any("letterbox" in note for note in model.metadata_notes)


@pytest.mark.parametrize(
    ("layout", "extra", "decoder"),
    [
        ("transposed", {}, "yolo-anchor-free"),  # [1, N, 4+nc]
        ("end-to-end", {"args": "{'nms': True, 'batch': 1}"}, "end-to-end"),  # exported with nms=True
        ("end-to-end", {"args": "{'batch': 1}"}, "end-to-end"),  # YOLOv10: [1, N, 6], no flag
    ],
)
def test_the_ultralytics_decoder_follows_the_output_layout(
    ultralytics_metadata, detector_factory, tmp_path, layout, extra, decoder
):
    path = detector_factory(tmp_path / "yolo.onnx", layout=layout, metadata={**ultralytics_metadata, **extra})
    assert Model.load(path).task["decoder"] == decoder


def test_an_ultralytics_classifier_gets_classify_and_its_centre_crop(
    ultralytics_metadata, tmp_path, classifier_factory
):
    path = classifier_factory(tmp_path / "cls.onnx", classes=3, size=32)
    proto = onnx.load(path)
    for key, value in {**ultralytics_metadata, "task": "classify", "stride": "1"}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, path)
    model = Model.load(path)
    assert model.task == {"task": "classify", "top_k": 5} and model.task_source == ULTRALYTICS
    spec = model.preprocess
    assert (spec.resize, spec.resize_mode, spec.crop, spec.mean, spec.std) == (
        [32, 32],
        "shorter_side",
        [32, 32],
        [0.0],
        [1.0],
    )
    assert model.preprocess_source == ULTRALYTICS


def test_an_ultralytics_task_without_a_decoder_is_named_not_guessed(ultralytics_metadata, detector_factory, tmp_path):
    model = Model.load(detector_factory(tmp_path / "pose.onnx", metadata={**ultralytics_metadata, "task": "pose"}))
    assert model.task is None and model.task_source is None
    assert model.class_names == ["cat", "dog", "bird's nest"]  # still read
    assert any("Ultralytics task 'pose' has no edgekit decoder" in note for note in model.metadata_notes)


def test_yolov5_metadata_gives_the_task_from_the_output_shape(detector_factory, tmp_path):
    yolov5 = {"stride": "32", "names": "['cat', 'dog', 'bird']"}  # what yolov5's export.py writes: no task
    model = Model.load(detector_factory(tmp_path / "v5.onnx", layout="anchor-based", metadata=yolov5))
    assert model.task == {**DETECT_DEFAULTS, "decoder": "yolo-anchor-based", "num_classes": 3}
    assert model.task_source == YOLOV5 and model.class_names == ["cat", "dog", "bird"]
    other = Model.load(detector_factory(tmp_path / "v5x.onnx", metadata={**yolov5, "names": "['a', 'b']"}))
    assert other.task is None and any("fits no YOLO layout" in note for note in other.metadata_notes)


def test_metadata_names_are_parsed_never_evaluated(ultralytics_metadata, detector_factory, tmp_path):
    marker = tmp_path / "evaluated"
    code = f"open({str(marker)!r}, 'w')"
    model = Model.load(detector_factory(tmp_path / "y.onnx", metadata={**ultralytics_metadata, "names": code}))
    assert not marker.exists()
    assert model.class_names is None and any("class names not read" in note for note in model.metadata_notes)
    assert model.task == {**DETECT_DEFAULTS}  # the class count is unknown, so is num_classes


def test_a_classifier_is_guessed_and_a_detector_is_not(classifier_path, detector_factory, tmp_path):
    classifier = Model.load(classifier_path)
    assert classifier.task == {"task": "classify", "top_k": 5} and classifier.task_source == GUESSED_FROM_OUTPUTS
    assert classifier.preprocess_source == DEFAULT_FOR_INPUT
    detector = Model.load(detector_factory(tmp_path / "d.onnx"))
    assert detector.task is None and detector.task_source is None and detector.class_names_source is None


def test_the_task_travels_in_edgekit_metadata_and_wins_over_the_exporters(
    ultralytics_metadata, detector_factory, tmp_path
):
    model = Model.load(detector_factory(tmp_path / "yolo.onnx", metadata=ultralytics_metadata))
    before = model.sha256
    model.task = {"task": "detect", "conf": 0.5, "num_classes": 3}
    assert model.task == {**DETECT_DEFAULTS, "conf": 0.5, "num_classes": 3} and model.task_source == GIVEN
    again = Model.load(model.save(tmp_path / "saved.onnx"))
    assert again.task == model.task and again.task_source == EDGEKIT_METADATA
    assert again.sha256 == before  # metadata does not change the model's identity
    props = {p.key: p.value for p in onnx.load(tmp_path / "saved.onnx").metadata_props}
    assert json.loads(props[TASK_KEY])["conf"] == 0.5
    model.task = None
    assert model.task_source is None
    assert TASK_KEY not in {p.key for p in onnx.load(model.save(tmp_path / "none.onnx")).metadata_props}


def test_a_guessed_task_is_not_written_as_if_read(classifier_path, tmp_path):
    saved = Model.load(classifier_path).save(tmp_path / "saved.onnx")
    assert TASK_KEY not in {p.key for p in onnx.load(saved).metadata_props}
    assert Model.load(saved).task_source == GUESSED_FROM_OUTPUTS


def test_a_task_given_to_load_wins(ultralytics_metadata, detector_factory, tmp_path):
    model = Model.load(detector_factory(tmp_path / "d.onnx", metadata=ultralytics_metadata), task="raw")
    assert model.task == {"task": "raw"} and model.task_source == GIVEN


def test_a_bad_task_is_a_model_error(classifier_path, tmp_path):
    model = Model.load(classifier_path)
    with pytest.raises(ModelError, match="Model.task: unknown task 'detection'; the tasks are classify, detect"):
        model.task = "detection"
    with pytest.raises(ModelError, match="Model.task: task classify has no setting 'conf'"):
        model.task = {"task": "classify", "conf": 0.3}
    proto = onnx.load(classifier_path)
    proto.metadata_props.add(key=TASK_KEY, value='{"task": "keypoints"}')
    onnx.save(proto, tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match=r"bad.onnx: metadata 'edgekit.task': unknown task 'keypoints'"):
        Model.load(tmp_path / "bad.onnx")


# -- overrides: build and run ------------------------------------------------------------------------------


def test_build_writes_the_task_into_the_manifest_and_takes_overrides(
    ultralytics_metadata, detector_factory, classifier_path, tmp_path
):
    path = detector_factory(tmp_path / "yolo.onnx", metadata=ultralytics_metadata)
    assert build(path, out=tmp_path / "a").manifest["task"] == {**DETECT_DEFAULTS, "num_classes": 3}
    model = Model.load(path)
    changed = build(model, out=tmp_path / "b", postprocess={"conf": 0.4, "class_agnostic": True}).manifest["task"]
    assert changed == {**DETECT_DEFAULTS, "num_classes": 3, "conf": 0.4, "class_agnostic": True}
    assert model.task["conf"] == 0.25 and model.task_source == ULTRALYTICS  # the caller's model is left as it was
    assert build(path, out=tmp_path / "c", task="raw").manifest["task"] == {"task": "raw"}
    assert build(classifier_path, out=tmp_path / "d").manifest["task"] == {"task": "classify", "top_k": 5}
    with pytest.raises(ModelError, match="need a task; the model has none: give one with --task"):
        build(detector_factory(tmp_path / "plain.onnx"), out=tmp_path / "e", postprocess={"conf": 0.3})


def manifest_of(task: dict | None, shape: list) -> dict:
    return {"task": task, "outputs": [{"name": "output0", "shape": shape, "dtype": "float32"}]}


def test_the_run_task_is_the_artifacts_with_the_overrides():
    detect = {**DETECT_DEFAULTS, "num_classes": 3}
    assert run_task(manifest_of(detect, [1, 7, 16]), None) == detect
    assert run_task(manifest_of(detect, [1, 7, 16]), {"conf": 0.5})["conf"] == 0.5
    assert run_task(manifest_of(detect, [1, 7, 16]), {"task": "raw"}) == {"task": "raw"}
    assert run_task(manifest_of(detect, [1, 7, 16]), "detect") == detect  # the same task keeps its settings
    # an artifact built before tasks: a classifier stays one
    assert run_task(manifest_of(None, ["batch", 10]), {"top_k": 3}) == {"task": "classify", "top_k": 3}
    assert run_task(manifest_of(None, [1, 7, 16]), {"task": "detect"}) == DETECT_DEFAULTS
    with pytest.raises(RunError, match="task detect has no setting 'top_k'"):
        run_task(manifest_of(detect, [1, 7, 16]), {"top_k": 3})


def test_a_run_of_a_detector_with_no_task_is_refused_before_it_runs(detector_factory, tmp_path):
    artifact = build(detector_factory(tmp_path / "plain.onnx"), out=tmp_path / "art")
    assert artifact.manifest["task"] is None
    with pytest.raises(RunError) as error:
        run(artifact, tmp_path / "not-even-a-source.mp4")
    message = str(error.value)
    assert "output0 [1, 7, 16]" in message and "--task NAME" in message
    assert all(task in message for task in TASKS)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (32, 32))
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer.write(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    writer.release()
    return path


def test_cli_build_and_run_take_task_and_postprocess(classifier_path, detector_factory, video, tmp_path):
    built = invoke("build", detector_factory(tmp_path / "d.onnx"), "-o", tmp_path / "art", "--task", "detect")
    assert built.exit_code == 0, built.output
    assert "task detect (given)" in built.output
    tuned = invoke(
        "build", tmp_path / "d.onnx", "-o", tmp_path / "tuned", "--task", "detect", "--postprocess", '{"iou": 0.6}'
    )
    assert Artifact.load(tmp_path / "tuned").manifest["task"] == {**DETECT_DEFAULTS, "iou": 0.6}, tuned.output
    invoke("build", classifier_path, "-o", tmp_path / "cls")
    ran = invoke("run", tmp_path / "cls", "--source", video, "--warmup", "0", "--postprocess", '{"top_k": 2}')
    assert ran.exit_code == 0, ran.output
    refused = invoke("run", tmp_path / "cls", "--source", video, "--postprocess", '{"conf": 0.3}')
    assert refused.exit_code == 2 and "task classify has no setting 'conf'" in refused.output


def test_inspect_shows_the_task_the_class_names_and_where_they_came_from(
    ultralytics_metadata, detector_factory, classifier_path, tmp_path
):
    path = detector_factory(tmp_path / "yolo.onnx", metadata=ultralytics_metadata)
    shown = invoke("inspect", path)
    assert shown.exit_code == 0, shown.output
    assert 'detect (ultralytics metadata): decoder "yolo-anchor-free", conf 0.25' in shown.output
    assert "3 (ultralytics metadata): cat, dog, bird's nest" in shown.output
    report = json.loads(invoke("inspect", path, "--json").output)
    assert report["task"] == {**DETECT_DEFAULTS, "num_classes": 3} and report["task_source"] == ULTRALYTICS
    assert report["class_names"] == {"count": 3, "source": ULTRALYTICS}
    plain = invoke("inspect", classifier_path)
    assert "(default: the model carries none — set it with --preprocess)" in plain.output
    assert "classify (guessed from the outputs): top_k 5" in plain.output
    none = invoke("inspect", detector_factory(tmp_path / "plain.onnx"))
    assert "none: give one with --task" in none.output
    plain_json = json.loads(invoke("inspect", classifier_path, "--json").output)
    assert plain_json["preprocess_source"] == DEFAULT_FOR_INPUT and plain_json["class_names"]["count"] == 0
