"""Plan validation (errors name the field and the fix) and manifest loading (schema, safe model path)."""

import copy
import json
import os

import pytest
from runtime_testkit import make_artifact

from edgekit.runtime.manifest import ManifestError, artifact_id, canonical_json, load_manifest
from edgekit.runtime.plan import Plan, PlanError, load_plan

BASE = {
    "schema": "edgekit.plan",
    "version": 1,
    "artifact_dir": "/data/artifact",
    "source": {"kind": "video", "uri": "/data/clip.mp4"},
}


_DROP = object()


def plan_with(**changes):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is _DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_minimal_plan_gets_defaults():
    plan = Plan.from_dict(BASE)
    assert plan.warmup == 10 and plan.mode == "sequential" and plan.queue_size == 4
    assert plan.frames is None and plan.duration_s is None and plan.labels is None
    assert plan.engine_name is None and plan.engine_threads is None and plan.engine_options == {}
    assert plan.postprocess == {"kind": "classify", "keep_outputs": True} and plan.postprocess_kind == "classify"
    assert plan.keep_outputs is True and plan.label_masks is None
    assert plan.keep_samples is True and plan.power_probe is None and plan.run_id is None
    assert plan.source.kind == "video" and not plan.source.live and plan.source.loop is False


def test_full_plan_from_contract_example():
    data = plan_with(
        run_id="r1",
        frames=300,
        duration_s=None,
        warmup=0,
        mode="pipelined",
        queue_size=2,
        engine={"name": "onnxruntime", "threads": 2, "options": {"providers": ["CPUExecutionProvider"]}},
        postprocess={"kind": "classification", "top_k": 3},
        labels=[3, 7, 1],
        reference=None,
        power={"probe": None},
        keep_samples=False,
    )
    plan = Plan.from_dict(data)
    assert plan.run_id == "r1" and plan.frames == 300 and plan.mode == "pipelined" and plan.engine_threads == 2
    assert plan.labels == [3, 7, 1] and plan.postprocess["top_k"] == 3 and plan.keep_samples is False
    # "classification" is what plans said before tasks: read as classify, the settings kept as given
    assert plan.postprocess == {"kind": "classify", "top_k": 3, "keep_outputs": True}


@pytest.mark.parametrize(
    "data, message",
    [
        (plan_with(schema="edgekit.result"), "plan schema is 'edgekit.result'"),
        (plan_with(version=2), "plan version 2 is newer than this agent's \\(1\\)"),
        (plan_with(version=_DROP), "plan version is missing"),
        (plan_with(version="1"), "plan version must be an integer"),
        (plan_with(extra_key=1), "plan has unknown key 'extra_key'"),
        (plan_with(artifact_dir=""), "plan artifact_dir must be a non-empty string"),
        (plan_with(artifact_dir=_DROP), "plan artifact_dir is missing"),
        (plan_with(source=None), "plan source is missing"),
        (plan_with(source={"kind": "webcam", "uri": "0"}), "source kind is 'webcam'; use one of video"),
        (plan_with(source={"kind": "video", "uri": "a.mp4", "fps": 30}), "source has unknown key 'fps'"),
        (plan_with(source={"kind": "video", "uri": ""}), "source uri for 'video'"),
        (plan_with(source={"kind": "video", "uri": "a.mp4", "loop": "yes"}), "source loop must be true or false"),
        (plan_with(frames=True), "plan frames must be an integer >= 1"),
        (plan_with(frames=0), "plan frames must be an integer >= 1"),
        (plan_with(warmup=-1), "plan warmup must be an integer >= 0"),
        (plan_with(duration_s=0), "plan duration_s must be a number > 0"),
        (plan_with(mode="parallel"), "plan mode is 'parallel'; use one of sequential, pipelined"),
        (plan_with(queue_size=0), "plan queue_size must be an integer >= 1"),
        (plan_with(engine={"name": "onnxruntime", "thread": 2}), "engine has unknown key 'thread'"),
        (plan_with(engine={"threads": 0}), "engine threads must be an integer >= 1"),
        (plan_with(engine={"options": []}), "engine options must be a JSON object"),
        (plan_with(postprocess={"kind": "detection"}), "postprocess kind is 'detection'; use one of classify, detect"),
        (plan_with(postprocess={"kind": 3}), "postprocess kind is 3"),
        (plan_with(postprocess=[1]), "plan postprocess must be a JSON object"),
        (plan_with(postprocess={"kind": "detect", "keep_outputs": "yes"}), "keep_outputs must be true or false"),
        (plan_with(label_masks=3), "plan label_masks must be a string or null"),
        (plan_with(labels=[1, "cat"]), "plan labels\\[1\\] is 'cat'"),
        (plan_with(labels=[1, -2]), "plan labels\\[1\\] is -2"),
        (plan_with(labels="1,2"), "plan labels must be a list"),
        (plan_with(power={"probe": 3}), "power probe must be a string or null"),
        (plan_with(keep_samples="yes"), "plan keep_samples must be true or false"),
        (plan_with(source={"kind": "camera", "uri": 0}), "live and never ends: set plan frames or duration_s"),
        (plan_with(source={"kind": "video", "uri": "a.mp4", "loop": True}), "source.loop is true: set plan frames"),
        (plan_with(source={"kind": "camera", "uri": 0}, frames=5, labels=[1]), "labels need a file source"),
        (plan_with(source={"kind": "camera", "uri": -1}, frames=5), "camera must be an index >= 0"),
        (plan_with(source={"kind": "rtsp", "uri": "http://x"}, frames=5), "must start with rtsp://"),
        (
            plan_with(labels=[1], postprocess={"kind": "raw"}),
            "labels \\(class indices.*are for postprocess.kind 'classify'",
        ),
        (plan_with(labels=[1], postprocess={"kind": "detect"}), "are for postprocess.kind 'classify', not 'detect'"),
        (plan_with(reference="ref.npz"), "reference \\(reference outputs.*are for postprocess.kind 'raw'"),
        (plan_with(label_masks="masks"), "label_masks \\(a folder.*are for postprocess.kind 'segment', not 'classify'"),
        (
            plan_with(source={"kind": "camera", "uri": 0}, frames=5, postprocess={"kind": "segment"}, label_masks="m"),
            "label_masks need a file source",
        ),
        (
            plan_with(
                source={"kind": "rtsp", "uri": "rtsp://cam"}, frames=5, postprocess={"kind": "raw"}, reference="r"
            ),
            "reference need a file source",
        ),
        ([1, 2], "a plan must be a JSON object"),
    ],
)
def test_plan_errors_name_the_field(data, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_dict(data)


def test_unknown_key_message_lists_known_keys():
    with pytest.raises(PlanError) as info:
        Plan.from_dict(plan_with(frame=3))
    assert "'frame'" in str(info.value) and "frames" in str(info.value) and "spelling" in str(info.value)


def test_camera_index_string_and_relative_paths(tmp_path):
    plan = Plan.from_dict(plan_with(source={"kind": "camera", "uri": "2"}, duration_s=1))
    assert plan.source.uri == 2 and plan.source.live
    data = plan_with(
        artifact_dir="artifact",
        source={"kind": "images", "uri": "frames"},
        postprocess={"kind": "raw"},
        reference="ref.npz",
    )
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    plan = load_plan(str(path))
    assert plan.artifact_dir == str(tmp_path / "artifact")
    assert plan.source.uri == str(tmp_path / "frames") and plan.reference == str(tmp_path / "ref.npz")
    data.update(postprocess={"kind": "segment", "mode": "argmax"}, reference=None, label_masks="masks")
    path.write_text(json.dumps(data))
    plan = load_plan(str(path))
    assert plan.label_masks == str(tmp_path / "masks") and plan.postprocess_kind == "segment"
    assert plan.postprocess == {"kind": "segment", "mode": "argmax", "keep_outputs": True}


@pytest.mark.parametrize("kind", ["classify", "detect", "segment", "text-detect", "raw"])
def test_every_task_is_a_postprocess_kind(kind):
    plan = Plan.from_dict(plan_with(postprocess={"kind": kind, "keep_outputs": False}))
    assert plan.postprocess_kind == kind and plan.keep_outputs is False


def test_load_plan_file_errors(tmp_path):
    with pytest.raises(PlanError, match="cannot read plan file"):
        load_plan(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_plan(str(bad))


# -- manifest ------------------------------------------------------------------------------------------


def test_manifest_loads_and_id_is_canonical_sha(tmp_path):
    folder = make_artifact(tmp_path / "a")
    manifest = load_manifest(str(folder))
    data = json.loads((folder / "manifest.json").read_text())
    assert manifest.model_path == os.path.realpath(str(folder / "model.onnx"))
    assert manifest.engine == "onnxruntime" and manifest.class_names[0] == "red"
    assert manifest.inputs[0]["name"] == "input" and manifest.outputs[0]["name"] == "logits"
    assert manifest.preprocess.resize == [16, 16]
    assert canonical_json(data) == json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert manifest.id == artifact_id(data) and len(manifest.id) == 64


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"schema": "edgekit.plan"}, "schema 'edgekit.plan'"),
        ({"version": 3}, "version 3 is newer than this agent's \\(1\\)"),
        ({"model_file": "../model.onnx"}, "must be a relative path inside the artifact folder"),
        ({"model_file": "/etc/passwd"}, "must be a relative path inside the artifact folder"),
        ({"model_file": "other.onnx"}, "other.onnx named by .* does not exist"),
        ({"inputs": []}, "inputs must be a non-empty list"),
        ({"outputs": [{"shape": [1]}]}, "outputs\\[0\\] must be an object with a string name"),
        ({"preprocess": {"color": "CMYK"}}, "preprocess: preprocess color 'CMYK'"),
        ({"class_names": [1, 2]}, "class_names must be a list of strings"),
        ({"files": {"model.onnx": "0" * 64}}, "has sha256 .* but the manifest says 0000"),
        ({"files": {"weights.bin": "0" * 64}}, "weights.bin listed in the manifest is missing"),
    ],
)
def test_manifest_errors(tmp_path, overrides, message):
    folder = make_artifact(tmp_path / "a", **overrides)
    with pytest.raises(ManifestError, match=message):
        load_manifest(str(folder))


def test_manifest_missing_folder_and_bad_json(tmp_path):
    with pytest.raises(ManifestError, match="artifact folder .* does not exist"):
        load_manifest(str(tmp_path / "nope"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.json").write_text("[")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(str(tmp_path / "a"))


def test_manifest_symlink_escaping_the_folder_is_refused(tmp_path):
    folder = make_artifact(tmp_path / "a", model_file="link.onnx", files={})
    (tmp_path / "outside.onnx").write_bytes(b"x")
    os.symlink(str(tmp_path / "outside.onnx"), str(folder / "link.onnx"))
    with pytest.raises(ManifestError, match="resolves outside the artifact folder"):
        load_manifest(str(folder))
