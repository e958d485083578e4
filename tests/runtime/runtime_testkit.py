"""Builders for the runtime tests: a real tiny ONNX classifier, artifact folders, videos, image folders.

A uniquely named module (not conftest) so that test folders of other packages cannot shadow it."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.runtime import agent

# The classifier below scores a frame by its mean colour: class 0 red, 1 green, 2 blue, 3 black.
CLASS_NAMES = ["red", "green", "blue", "black"]
BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "black": (0, 0, 0)}
SIZE = 16


def classifier_model(classes: int = 4, size: int = SIZE) -> onnx.ModelProto:
    """Conv(1x1 identity) -> GlobalAveragePool -> Flatten -> Gemm: logits from the mean R, G, B."""
    conv_w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    gemm_w = np.zeros((classes, 3), np.float32)
    gemm_b = np.zeros((classes,), np.float32)
    for c in range(min(classes, 3)):
        gemm_w[c, c] = 1.0  # R, G, B after RGB preprocessing
    if classes > 3:
        gemm_w[3, :] = -1.0
        gemm_b[3] = 0.5  # wins only when the frame is dark
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "conv_w"], ["conv"]),
            helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["logits"], transB=1),
        ],
        "colour_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(gemm_w, "gemm_w"),
            numpy_helper.from_array(gemm_b, "gemm_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def two_output_model() -> onnx.ModelProto:
    """MatMul and a ReLU of it: two raw outputs for reference comparison."""
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 10.0 - 0.5
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["features"]),
            helper.make_node("Relu", ["features"], ["relu"]),
        ],
        "two_outputs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("relu", TensorProto.FLOAT, [1, 4]),
        ],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def preprocess_dict(**overrides):
    spec = {
        "resize": [SIZE, SIZE],
        "resize_mode": "stretch",
        "crop": None,
        "color": "RGB",
        "scale": 1.0 / 255.0,
        "mean": [0.0],
        "std": [1.0],
        "layout": "NCHW",
        "dtype": "float32",
        "interpolation": "area",
    }
    spec.update(overrides)
    return spec


def make_artifact(folder: Path, model=None, model_bytes=None, class_names=CLASS_NAMES, **manifest_overrides) -> Path:
    """An artifact folder: model.onnx plus a manifest whose `files` hash matches what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    data = model_bytes if model_bytes is not None else (model or classifier_model()).SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    manifest = {
        "schema": "edgekit.artifact",
        "version": 1,
        "target": "x86-ort",
        "engine": "onnxruntime",
        "precision": "fp32",
        "model_file": "model.onnx",
        "inputs": [{"name": "input", "shape": ["batch", 3, SIZE, SIZE], "dtype": "float32", "layout": "NCHW"}],
        "outputs": [{"name": "logits", "shape": ["batch", 4], "dtype": "float32"}],
        "preprocess": preprocess_dict(),
        "class_names": class_names,
        "source_model_sha256": None,
        "quant_spec_sha256": None,
        "tools": {},
        "files": {"model.onnx": hashlib.sha256(data).hexdigest()},
        "not_honoured": [],
    }
    manifest.update(manifest_overrides)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def solid(colour: str, size: int = 32) -> np.ndarray:
    """A frame of one colour: a colour name, a class index as a string ("3": black), or grey otherwise."""
    if colour.isdigit() and int(colour) < len(CLASS_NAMES):
        colour = CLASS_NAMES[int(colour)]
    frame = np.zeros((size, size, 3), np.uint8)
    frame[:] = BGR.get(colour, (128, 128, 128))
    return frame


def write_video(path: Path, colours, size: int = 32, fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (size, size))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} here"
    for colour in colours:
        writer.write(solid(colour, size))
    writer.release()
    return path


def write_image_folder(root: Path, by_class=None, flat=None) -> Path:
    """Class sub-folders ({"red": 3, ...} images each) or a flat list of colours."""
    root.mkdir(parents=True, exist_ok=True)
    for name, count in (by_class or {}).items():
        (root / name).mkdir(exist_ok=True)
        for i in range(count):
            cv2.imwrite(str(root / name / f"{i:03d}.png"), solid(name))
    for i, colour in enumerate(flat or []):
        cv2.imwrite(str(root / f"{i:03d}.png"), solid(colour))
    return root


def make_plan(artifact: Path, source: dict, **overrides) -> dict:
    plan = {
        "schema": "edgekit.plan",
        "version": 1,
        "run_id": "test-run",
        "artifact_dir": str(artifact),
        "source": source,
        "frames": None,
        "duration_s": None,
        "warmup": 2,
        "mode": "sequential",
        "queue_size": 4,
        "engine": {"name": "onnxruntime", "threads": 1, "options": {}},
        "postprocess": {"kind": "classification", "top_k": 2},
        "labels": None,
        "reference": None,
        "power": {"probe": None},
        "keep_samples": True,
    }
    plan.update(overrides)
    return plan


def run_agent(tmp_path: Path, plan: dict):
    """Run the agent's command line in-process; returns (exit code, result dict)."""
    plan_path = tmp_path / "plan.json"
    result_path = tmp_path / "result.json"
    plan_path.write_text(json.dumps(plan))
    code = agent.main(["--plan", str(plan_path), "--result", str(result_path)])
    text = result_path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    return code, json.loads(text)
