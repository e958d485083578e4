"""The coverage benchmark's anchors: what a user would pick instead of edgekit for the same models.

- onnx2tf (fp32 TFLite from the same ONNX), in its own venv: it pins TensorFlow, numpy, ONNX Runtime and protobuf
  versions apart from ours; its .tflite is run in LiteRT's interpreter as a user would and compared with ONNX
  Runtime FP32 on the same probe images.
- coremltools' direct conversion of the traced torch module (mlprogram, fp32 and fp16): Core ML cannot predict on
  Linux, so such a cell is "converted", unvalidated.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import coverage_zoo as zoo

ONNX2TF_VENV = Path.home() / ".cache" / "edgekit" / "onnx2tf-venv"
ONNX2TF = "onnx2tf[tensorflow]==2.6.9"
PROBES = 8
FP32_BUDGET = 1e-4  # the fp32 budget: max abs error relative to the reference's range
WORK = Path(tempfile.gettempdir()) / "edgekit-coverage"


def work_dir() -> Path:
    """Where cells build their artifacts (temporary folders inside it)."""
    WORK.mkdir(parents=True, exist_ok=True)
    return WORK


def onnx2tf_cell(worker: Any) -> dict[str, Any]:
    """onnx2tf's fp32 .tflite of the model's ONNX, run in LiteRT against ONNX Runtime FP32 on the probes."""
    path = zoo.onnx_path(worker.entry)
    with tempfile.TemporaryDirectory(dir=work_dir()) as out:
        shape = ",".join(str(v) for v in (1, 3, *worker.entry.size))
        command = [
            str(onnx2tf_binary()),
            "-i",
            str(path),
            "-o",
            out,
            "-ois",
            f"{worker.model.inputs[0].name}:{shape}",
        ]
        done = subprocess.run([*command, "-n"], capture_output=True, text=True, env=_quiet_env())
        produced = sorted(Path(out).glob("*_float32.tflite"))
        if done.returncode != 0 or not produced:
            lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
            error = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
            return {"status": "refused", "message": f"onnx2tf rc {done.returncode}: {error.strip()[:300]}"}
        data = produced[0].read_bytes()
    error, scale = tflite_vs_ort(worker.model, data, worker.probe_inputs())
    relative = error / max(scale, 1e-12)
    validation = {"max_abs_error": error, "reference_abs_max": scale, "inputs": PROBES, "by": "LiteRT vs ORT"}
    return {
        "status": "ok",
        "figure": f"rel {relative:.1e}",
        "passed": relative <= FP32_BUDGET,
        "validation": validation,
    }


def coremltools_cell(worker: Any, precision: str) -> dict[str, Any]:
    """coremltools' direct conversion of the traced torch module (Core ML cannot predict on Linux)."""
    if not worker.entry.has_torch:
        return {"status": "n/a", "message": "no torch module (coremltools 9 has no ONNX frontend)"}
    import warnings

    import coremltools as ct
    import torch

    module, example = zoo.torch_module(worker.entry), zoo.example_input(worker.entry)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        ct.convert(
            traced,
            inputs=[ct.TensorType(name="input", shape=tuple(example.shape))],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            skip_model_load=True,
        )
    return {"status": "converted", "figure": "-", "passed": None}


def tflite_vs_ort(model: Any, data: bytes, inputs: list[Any]) -> tuple[float, float]:
    """Max abs error of an onnx2tf .tflite against ONNX Runtime FP32, and the reference's abs max."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst, scale = 0.0, 0.0
    for x in inputs:
        references = session.run(None, {name: x})
        for reference, output in zip(references, _aligned(litert_run(data, x), references), strict=True):
            worst = max(worst, float(np.abs(output - reference).max()))
            scale = max(scale, float(np.abs(reference).max()))
    return worst, scale


def litert_run(data: bytes, x: Any) -> list[Any]:
    """Run a .tflite in LiteRT's interpreter on an NCHW batch, as a user would: NHWC when its input's last axis is
    the channel axis, the input resized first when its signature is dynamic (onnx2tf 2.x leaves it so)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data, num_threads=1)
    detail = interpreter.get_input_details()[0]
    signature = list(detail.get("shape_signature", detail["shape"]))
    feed = x.transpose(0, 2, 3, 1) if signature[-1] == x.shape[1] and signature[1] != x.shape[1] else x
    if list(detail["shape"]) != list(feed.shape):
        interpreter.resize_tensor_input(detail["index"], list(feed.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], feed.astype(detail["dtype"]))
    interpreter.invoke()
    return [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]


def _aligned(outputs: list[Any], references: list[Any]) -> list[Any]:
    """onnx2tf's outputs in the references' order and layout: matched by element count, NHWC->NCHW or a swapped
    last pair of axes where that gives the reference's shape."""
    left = list(outputs)
    aligned = []
    for reference in references:
        match = next((o for o in left if o.size == reference.size), None)
        if match is None:
            raise ValueError(f"onnx2tf gives no output of {reference.shape}")
        left.remove(match)
        aligned.append(_to_shape(match, reference.shape))
    return aligned


def _to_shape(output: Any, shape: tuple[int, ...]) -> Any:
    if output.shape == shape:
        return output
    if output.ndim == 4 and output.transpose(0, 3, 1, 2).shape == shape:
        return output.transpose(0, 3, 1, 2)
    if output.ndim == 3 and output.transpose(0, 2, 1).shape == shape:
        return output.transpose(0, 2, 1)
    return output.reshape(shape)


def onnx2tf_binary() -> Path:
    """onnx2tf in its own venv (it pins TensorFlow, numpy, onnx apart from ours), created on first use."""
    binary = ONNX2TF_VENV / "bin" / "onnx2tf"
    if binary.exists():
        return binary
    python = next((p for p in ("python3.12", "python3.13") if _runs(p)), None)
    if python is None:
        raise RuntimeError("onnx2tf 2.x needs Python >= 3.12 for its venv; none found")
    subprocess.run([python, "-m", "venv", str(ONNX2TF_VENV)], check=True)
    subprocess.run([str(ONNX2TF_VENV / "bin" / "pip"), "install", "-q", ONNX2TF], check=True)
    return binary


def _runs(python: str) -> bool:
    try:
        return subprocess.run([python, "--version"], capture_output=True).returncode == 0
    except OSError:
        return False


def _quiet_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TQDM_DISABLE": "1"}
