"""The agent's task plumbing: the plan's postprocess block, the artifact's geometry and the label masks reach
the postprocessor; outputs it refuses stop the run before any frame; what it keeps becomes task_output."""

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from runtime_testkit import SIZE, make_artifact, make_plan, preprocess_dict, run_agent

from edgekit.runtime import agent
from edgekit.runtime.postprocess import PostprocessError


class FakeDetector:
    """Stands in for runtime.tasks' detector: records what the agent and harness hand it."""

    kind = "detect"

    def __init__(self, config, output_names, reference_path=None, geometry=None, label_masks=None):
        self.config = config
        self.output_names = list(output_names)
        self.reference_path = reference_path
        self.geometry = geometry
        self.label_masks = label_masks
        self.checked = None
        self.frames = []
        self.refuse = config.get("refuse")

    def check_outputs(self, shapes):
        self.checked = shapes
        if self.refuse:
            raise PostprocessError(f"outputs {shapes} do not fit decoder {self.refuse}")

    def process(self, outputs, label, position, record=True, frame_size=None):
        if record:
            self.frames.append((position, frame_size))

    def summary(self):
        return {"kind": "detect", "count": len(self.frames), "detections": 0, "per_frame_mean": 0.0}

    def task_output(self):
        if not self.frames:
            return None
        return {
            "kind": "detect",
            "frames": [{"frame": p, "size": list(s), "boxes": []} for p, s in self.frames],
            "count": 0,
            "truncated": False,
        }


@pytest.fixture
def made(monkeypatch):
    made = []

    def factory(*args, **kwargs):
        made.append(FakeDetector(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(agent, "make_postprocessor", factory)
    return made


def write_sized_images(root, sizes):
    root.mkdir()
    for index, (height, width) in enumerate(sizes):
        cv2.imwrite(str(root / f"{index:03d}.png"), np.full((height, width, 3), 40 * index, np.uint8))
    return root


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_postprocessor_gets_the_plan_geometry_masks_and_frame_sizes(tmp_path, made, mode):
    artifact = make_artifact(tmp_path / "artifact", preprocess=preprocess_dict(resize_mode="letterbox"))
    sizes = [(48, 64), (64, 48), (30, 30)]
    root = write_sized_images(tmp_path / "imgs", sizes)
    post = {"kind": "detect", "conf": 0.4, "keep_outputs": True}
    plan = make_plan(artifact, {"kind": "images", "uri": str(root)}, postprocess=post, mode=mode)
    code, result = run_agent(tmp_path, plan)
    assert code == 0 and result["status"] == "ok", result["errors"]
    (detector,) = made
    assert detector.config == post and detector.output_names == ["logits"] and detector.label_masks is None
    assert detector.checked == [["batch", 4]]  # the engine's output shapes, before the first frame
    geometry = detector.geometry(48, 64)  # the artifact's letterbox: 64x48 fits 16x12 in the 16x16 input
    assert geometry.input_size == (SIZE, SIZE) and geometry.offset == (0.0, 2.0) and geometry.scale == (0.25, 0.25)
    assert detector.frames == [(i, sizes[i]) for i in range(3)]
    assert result["task_output"] == {
        "kind": "detect",
        "frames": [{"frame": i, "size": list(sizes[i]), "boxes": []} for i in range(3)],
        "count": 0,
        "truncated": False,
    }
    assert result["accuracy"]["kind"] == "detect"
    assert "0.00 detections/frame" in agent.summary_line(result)


def test_outputs_the_task_refuses_stop_the_run_before_any_frame(tmp_path, made):
    artifact = make_artifact(tmp_path / "artifact")
    root = write_sized_images(tmp_path / "imgs", [(32, 32)])
    plan = make_plan(artifact, {"kind": "images", "uri": str(root)}, postprocess={"kind": "detect", "refuse": "ssd"})
    code, result = run_agent(tmp_path, plan)
    assert code == 1 and result["status"] == "error" and result["frames"]["timed"] == 0
    assert result["errors"][0]["stage"] == "postprocess"
    assert "outputs [['batch', 4]] do not fit decoder ssd" in result["errors"][0]["message"]
    assert made[0].frames == [] and result["task_output"] is None


def test_label_masks_and_no_preprocess_reach_the_postprocessor(tmp_path, made):
    artifact = make_artifact(tmp_path / "artifact", preprocess=None)
    (tmp_path / "masks").mkdir()
    plan = make_plan(
        artifact,
        {"kind": "images", "uri": str(write_sized_images(tmp_path / "imgs", [(SIZE, SIZE)]))},
        postprocess={"kind": "segment"},
        label_masks=str(tmp_path / "masks"),
    )
    run_agent(tmp_path, plan)  # a raw BGR frame into a float model fails; the postprocessor was made first
    assert made[0].label_masks == str(tmp_path / "masks") and made[0].geometry is None


def test_a_postprocessor_without_task_methods_gives_no_task_output(tmp_path):
    artifact = make_artifact(tmp_path / "artifact")
    root = write_sized_images(tmp_path / "imgs", [(32, 32), (20, 40)])
    plan = make_plan(artifact, {"kind": "images", "uri": str(root)}, postprocess={"kind": "classify", "top_k": 2})
    code, result = run_agent(tmp_path, plan)
    assert code == 0 and result["task_output"] is None


def test_a_failing_task_output_is_a_warning_not_a_lost_run(tmp_path, made, monkeypatch):
    monkeypatch.setattr(FakeDetector, "task_output", lambda self: 1 / 0)
    artifact = make_artifact(tmp_path / "artifact")
    root = write_sized_images(tmp_path / "imgs", [(32, 32)])
    code, result = run_agent(
        tmp_path, make_plan(artifact, {"kind": "images", "uri": str(root)}, postprocess={"kind": "detect"})
    )
    assert code == 0 and result["task_output"] is None
    assert "task_output not read: ZeroDivisionError" in result["warnings"][0]


def constant_detector(rows: np.ndarray) -> onnx.ModelProto:
    """A "detector" whose output is always `rows` ([1, 4 + nc, N], YOLOv8 layout), whatever the frame."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["rows", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(rows.shape))],
        [numpy_helper.from_array(rows, "rows"), numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("mode", ["sequential", "pipelined"])
def test_detections_come_back_in_frame_pixels_through_the_letterbox(tmp_path, mode):
    pytest.importorskip("edgekit.runtime.tasks")  # the task decoders (merged from their own branch)
    rows = np.zeros((1, 6, 8), np.float32)  # cx, cy, w, h, score class 0, score class 1 for 8 candidates
    rows[0, :, 0] = [8.0, 8.0, 4.0, 2.0, 0.9, 0.1]  # the box (6, 7)-(10, 9) in the 16x16 input
    rows[0, :, 1] = [8.0, 8.0, 4.0, 2.0, 0.0, 0.05]  # below conf
    rows[0, :, 2] = [4.0, 4.0, 2.0, 2.0, 0.2, 0.6]  # (3, 3)-(5, 5): in the grey bar above a landscape frame
    artifact = make_artifact(
        tmp_path / "artifact",
        model=constant_detector(rows),
        class_names=None,
        preprocess=preprocess_dict(resize_mode="letterbox"),
        outputs=[{"name": "output0", "shape": [1, 6, 8], "dtype": "float32"}],
    )
    root = write_sized_images(tmp_path / "imgs", [(480, 640), (640, 480)])
    post = {"kind": "detect", "decoder": "yolo-anchor-free", "conf": 0.25}
    code, result = run_agent(
        tmp_path, make_plan(artifact, {"kind": "images", "uri": str(root)}, postprocess=post, mode=mode)
    )
    assert code == 0 and result["status"] == "ok", result["errors"]
    landscape, portrait = result["task_output"]["frames"]
    # 640x480 -> 16x12 at scale 1/40, 2 rows of grey above: input (x, y) is frame (40 x, 40 (y - 2))
    assert landscape["size"] == [480, 640] and portrait["size"] == [640, 480]
    np.testing.assert_allclose(landscape["boxes"][0][:4], [240, 200, 400, 280], atol=0.01)
    assert landscape["boxes"][0][4:] == [pytest.approx(0.9), 0]
    np.testing.assert_allclose(landscape["boxes"][1][:4], [120, 40, 200, 120], atol=0.01)
    # the portrait frame has the bars at its sides: input (x, y) is frame (40 (x - 2), 40 y)
    np.testing.assert_allclose(portrait["boxes"][0][:4], [160, 280, 320, 360], atol=0.01)
    assert result["task_output"]["count"] == 4 and result["accuracy"]["detections"] == 4
