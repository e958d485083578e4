"""Task configs (defaults, aliases, bad settings named) and outputs refused before the run, shapes named."""

import pytest

from edgekit.runtime.postprocess import PostprocessError
from edgekit.runtime.tasks import DECODERS, TASKS, check_outputs, task_config


def test_defaults_are_filled():
    assert task_config({"task": "detect"}) == {
        "task": "detect",
        "decoder": "yolo-anchor-free",
        "conf": 0.25,
        "iou": 0.45,
        "max_det": 300,
        "class_agnostic": False,
        "num_classes": None,
    }
    assert task_config({"task": "classify"}) == {"task": "classify", "top_k": 5}
    assert task_config({"task": "segment"}) == {
        "task": "segment",
        "mode": "argmax",
        "threshold": 0.5,
        "num_classes": None,
    }
    assert task_config({"task": "text-detect", "unclip_ratio": 2}) == {
        "task": "text-detect",
        "threshold": 0.3,
        "box_threshold": 0.6,
        "unclip_ratio": 2,
        "max_candidates": 1000,
        "min_size": 3,
    }
    assert task_config({"task": "raw"}) == {"task": "raw"}
    ssd = task_config({"task": "detect", "decoder": "ssd"})
    assert ssd["background"] is False
    assert task_config(ssd) == ssd  # a filled config reads back as itself


def test_the_plan_spelling_and_the_old_kind():
    assert task_config({"kind": "classification", "top_k": 2}) == {"task": "classify", "top_k": 2}
    assert task_config({"kind": "detect", "task": "detect"})["task"] == "detect"
    assert task_config({"task": "classify", "kind": "classification"})["task"] == "classify"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "no task given: set task to one of classify, detect, segment, text-detect, raw"),
        ({"task": None}, "no task given"),
        ({"task": "pose"}, "task 'pose' is not one of classify, detect, segment, text-detect, raw"),
        ({"task": "detect", "kind": "segment"}, "task 'detect' and kind 'segment' disagree"),
        ({"task": "detect", "decoder": "yolo-v99"}, "decoder must be one of yolo-anchor-free, yolo-anchor-based"),
        ({"task": "detect", "conf": "0.3"}, "task detect: conf must be a number from 0 to 1, got '0.3'"),
        ({"task": "detect", "max_det": 0}, "max_det must be an integer from 1 up, got 0"),
        ({"task": "detect", "max_det": True}, "max_det must be an integer from 1 up, got True"),
        ({"task": "detect", "class_agnostic": 1}, "class_agnostic must be true or false"),
        ({"task": "detect", "num_classes": 2.5}, "num_classes must be null or an integer from 1 up"),
        ({"task": "detect", "background": True}, "task detect has no setting 'background'"),
        ({"task": "detect", "top_k": 3}, "task detect has no setting 'top_k'; its settings: class_agnostic, conf"),
        ({"task": "segment", "mode": "softmax"}, "mode must be one of argmax, threshold"),
        ({"task": "text-detect", "unclip_ratio": 0}, "unclip_ratio must be a number above 0"),
        ({"task": "text-detect", "threshold": float("nan")}, "threshold must be a number from 0 to 1"),
        ({"task": "raw", "top_k": 1}, "task raw has no setting 'top_k'; its settings: none"),
        ("detect", "the task config must be a JSON object"),
    ],
)
def test_bad_configs_are_named(data, message):
    with pytest.raises(PostprocessError, match=message.replace("(", "\\(").replace(")", "\\)")):
        task_config(data)


def detect(decoder, **settings):
    return dict(task="detect", decoder=decoder, **settings)


@pytest.mark.parametrize(
    ("config", "shapes"),
    [
        (detect("yolo-anchor-free"), [[1, 84, 8400]]),
        (detect("yolo-anchor-free"), [[1, 8400, 84]]),
        (detect("yolo-anchor-free", num_classes=80), [[1, 8400, 84]]),
        (detect("yolo-anchor-free"), [["batch", 84, "anchors"]]),
        (detect("yolo-anchor-free"), [[None, None, None]]),
        (detect("yolo-anchor-free"), [[1, "anchors", 6]]),
        (detect("yolo-anchor-based"), [[1, 25200, 85]]),
        (detect("yolo-anchor-based", num_classes=80), [[1, None, 85]]),
        (detect("end-to-end"), [[1, 300, 6]]),
        (detect("ssd"), [[1, 3000, 4], [1, 3000, 91]]),
        (detect("ssd"), [[1, 3000, 91], [1, 3000, 4]]),
        (detect("ssd", num_classes=91), [[1, None, 4], [1, None, 91]]),
        ({"task": "segment"}, [[1, 21, 520, 520]]),
        ({"task": "segment", "num_classes": 21}, [[1, 21, 520, 520]]),
        ({"task": "segment", "num_classes": 2}, [[1, 1, 256, 256]]),
        ({"task": "segment"}, [[1, 520, 520]]),
        ({"task": "text-detect"}, [[1, 1, 640, 640]]),
        ({"task": "text-detect"}, [["n", 1, "h", "w"]]),
        ({"task": "classify"}, [[1, 1000]]),
        ({"task": "raw"}, []),
    ],
)
def test_outputs_that_fit(config, shapes):
    check_outputs(config, shapes)


@pytest.mark.parametrize(
    ("config", "shapes", "message"),
    [
        (
            detect("yolo-anchor-free"),
            [[1, 1000]],
            "decoder yolo-anchor-free reads outputs\\[0\\] as \\[B, 4\\+nc, N\\]",
        ),
        (detect("yolo-anchor-free"), [[1, 3, 224, 224]], "the model's outputs are \\[1, 3, 224, 224\\]"),
        (detect("yolo-anchor-free"), [[1, 4, 8400]], "outputs are \\[1, 4, 8400\\]"),
        (detect("yolo-anchor-free", num_classes=3), [[1, 84, 8400]], "\\[1, 84, 8400\\]: choose another decoder"),
        (
            detect("yolo-anchor-based"),
            [[1, 25200, 5]],
            "decoder yolo-anchor-based reads outputs\\[0\\] as \\[B, N, 5\\+nc\\]",
        ),
        (detect("yolo-anchor-based", num_classes=20), [[1, 25200, 85]], "num_classes 20, the outputs give 80"),
        (detect("end-to-end"), [[1, 300, 7]], "decoder end-to-end reads .* outputs are \\[1, 300, 7\\]"),
        (detect("end-to-end"), [[300, 6]], "outputs are \\[300, 6\\]"),
        (detect("ssd"), [[1, 3000, 4]], "decoder ssd reads two outputs, boxes \\[B, N, 4\\] and scores"),
        (detect("ssd"), [[1, 3000, 4], [1, 2000, 91]], "outputs are \\[1, 3000, 4\\], \\[1, 2000, 91\\]"),
        (detect("ssd", num_classes=80), [[1, 3000, 4], [1, 3000, 91]], "num_classes 80, the outputs give 91"),
        ({"task": "segment"}, [[1, 1000]], "task segment reads outputs\\[0\\] as \\[B, C, H, W\\]"),
        ({"task": "segment", "num_classes": 19}, [[1, 21, 64, 64]], "num_classes is 19 but outputs\\[0\\] has 21"),
        ({"task": "text-detect"}, [[1, 3, 640, 640]], "task text-detect reads .* outputs are \\[1, 3, 640, 640\\]"),
        ({"task": "classify"}, [], "task classify needs at least one model output"),
    ],
)
def test_outputs_refused_with_their_shapes(config, shapes, message):
    with pytest.raises(PostprocessError, match=message):
        check_outputs(config, shapes)


def test_every_refusal_names_the_other_decoders():
    with pytest.raises(PostprocessError) as caught:
        check_outputs(detect("end-to-end"), [[1, 84, 8400]])
    others = [d for d in DECODERS if d != "end-to-end"]
    assert f"choose another decoder ({', '.join(others)}) or task" in str(caught.value)
    assert set(TASKS) == {"classify", "detect", "segment", "text-detect", "raw"}
