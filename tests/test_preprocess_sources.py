"""One order for a model's preprocessing, key by key: --preprocess, edgekit's metadata, an exporter's, the input,
the default; `edgekit inspect` says where each value came from, and --help and errors list the valid values."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.errors import ModelError
from edgekit.model import Model
from edgekit.preprocess_sources import DEFAULT, EDGEKIT_METADATA, FROM_INPUT, GIVEN
from edgekit.runtime.preprocess import RESIZE_MODES


def invoke(*args: object):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, [str(a) for a in args])


def test_an_exporters_keys_the_inputs_and_the_defaults_each_keep_their_source(
    tmp_path, ultralytics_metadata, detector_factory, classifier_factory
):
    model = Model.load(detector_factory(tmp_path / "yolo.onnx", metadata=ultralytics_metadata))
    sources = model.preprocess_sources
    assert model.preprocess.resize_mode == "letterbox" and sources["resize_mode"] == "ultralytics metadata"
    assert sources["resize"] == sources["pad_value"] == "ultralytics metadata"
    assert sources["layout"] == sources["dtype"] == FROM_INPUT and sources["interpolation"] == DEFAULT
    # --preprocess changes only its keys: the letterbox stays, its size is the user's
    model.override_preprocess({"resize": [64, 64]})
    assert model.preprocess.resize == [64, 64] and model.preprocess.resize_mode == "letterbox"
    assert model.preprocess_sources["resize"] == GIVEN and model.preprocess_sources["resize_mode"] != GIVEN


def test_edgekit_metadata_beats_the_input_and_a_bad_value_names_the_choices(tmp_path, classifier_factory):
    plain = Model.load(classifier_factory(tmp_path / "c.onnx"))
    assert plain.preprocess_sources["resize"] == FROM_INPUT and plain.preprocess_sources["mean"] == DEFAULT
    plain.preprocess = {"resize": [8, 8], "mean": [0.5]}
    saved = Model.load(plain.save(tmp_path / "saved.onnx"))
    assert saved.preprocess.mean == [0.5] and set(saved.preprocess_sources.values()) == {EDGEKIT_METADATA}
    with pytest.raises(ModelError) as raised:
        saved.override_preprocess({"resize_mode": "fit"})
    assert all(mode in str(raised.value) for mode in RESIZE_MODES) and "--preprocess" in str(raised.value)


def test_inspect_says_where_each_value_came_from(tmp_path, ultralytics_metadata, detector_factory):
    path = detector_factory(tmp_path / "yolo.onnx", metadata=ultralytics_metadata)
    shown = invoke("inspect", path, "--preprocess", '{"mean": [0.1, 0.2, 0.3]}')
    assert shown.exit_code == 0, shown.output
    lines = {line.split()[1]: line for line in shown.output.splitlines() if line.startswith("│   ")}
    assert "letterbox (from Ultralytics' metadata)" in lines["resize_mode"]
    assert "[0.1, 0.2, 0.3] (given with --preprocess)" in lines["mean"]
    assert "NCHW (from the model's input)" in lines["layout"]
    assert "linear (default: the model carries none — set it with --preprocess)" in lines["interpolation"]
    report = json.loads(invoke("inspect", path, "--json").output)
    assert report["preprocess_sources"]["resize_mode"] == "ultralytics metadata"


def test_help_and_errors_list_the_enumerated_values(tmp_path, classifier_factory):
    for command in ("build", "quantize", "inspect"):
        text = " ".join(invoke(command, "--help").output.split())
        assert "resize_mode: stretch | shorter_side | letterbox" in text, command
        assert "color: RGB | BGR | GRAY" in text and "layout: NCHW | NHWC" in text
    model = classifier_factory(tmp_path / "c.onnx")
    bad = invoke("build", model, "--preprocess", '{"color": "RBG"}', "-o", tmp_path / "a")
    assert bad.exit_code == 2 and "use one of RGB, BGR, GRAY" in bad.output
