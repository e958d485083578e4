"""Shared fixtures: small real ONNX models and an isolated results store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_classifier(path: Path, *, classes: int = 4, channels: int = 3, size: int = 16, seed: int = 0) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: a real, tiny image classifier."""
    rng = np.random.default_rng(seed)
    weights = {
        "conv_w": rng.normal(size=(8, channels, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(size=(8,)).astype(np.float32),
        "fc_w": rng.normal(size=(classes, 8)).astype(np.float32),
        "fc_b": rng.normal(size=(classes,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.save(model, path)
    return path


# What an Ultralytics export (YOLOv8/11) writes into the ONNX metadata: str() of each value.
ULTRALYTICS_METADATA = {
    "description": "Ultralytics YOLOv8n model trained on tests.yaml",
    "author": "Ultralytics",
    "version": "8.3.0",
    "license": "AGPL-3.0 License (https://ultralytics.com/license)",
    "stride": "8",
    "task": "detect",
    "batch": "1",
    "imgsz": "[32, 32]",
    "names": "{0: 'cat', 1: 'dog', 2: \"bird's nest\"}",
    "args": "{'batch': 1, 'half': False, 'int8': False, 'dynamic': False, 'nms': False}",
    "channels": "3",
}


def make_detector(
    path: Path,
    *,
    classes: int = 3,
    size: int | str = 32,
    layout: str = "anchor-free",
    metadata: dict[str, str] | None = None,
) -> Path:
    """A tiny YOLO-shaped detector: a strided Conv whose channels are the per-anchor values, flattened to
    [1, 4+nc, N] ("anchor-free", YOLOv8), [1, N, 4+nc] ("transposed"), [1, N, 5+nc] ("anchor-based", YOLOv5)
    or [1, N, 6] ("end-to-end"), with `metadata` (e.g. ULTRALYTICS_METADATA) as its metadata_props."""
    values = {"anchor-free": 4 + classes, "transposed": 4 + classes, "anchor-based": 5 + classes, "end-to-end": 6}
    channels = values[layout]
    cells = (size // 8) ** 2 if isinstance(size, int) else None
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(size=(channels, 3, 8, 8)).astype(np.float32),
        "shape": np.array([1, channels, -1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["conv"], strides=[8, 8], name="head"),
        helper.make_node("Reshape", ["conv", "shape"], ["flat"], name="flatten"),
    ]
    output_shape: list = [1, channels, cells if cells else "anchors"]
    if layout == "anchor-free":
        nodes.append(helper.make_node("Sigmoid", ["flat"], ["output0"], name="scores"))
    else:
        nodes.append(helper.make_node("Transpose", ["flat"], ["output0"], perm=[0, 2, 1], name="transpose"))
        output_shape = [1, output_shape[2], channels]
    graph = helper.make_graph(
        nodes,
        "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


@pytest.fixture
def ultralytics_metadata() -> dict[str, str]:
    """The metadata an Ultralytics detector export carries (3 classes, imgsz 32)."""
    return dict(ULTRALYTICS_METADATA)


@pytest.fixture
def detector_factory():
    """`make_detector` for tests that need a YOLO-shaped model."""
    return make_detector


@pytest.fixture
def classifier_path(tmp_path: Path) -> Path:
    return make_classifier(tmp_path / "tiny.onnx")


@pytest.fixture
def classifier_factory():
    """`make_classifier` for tests that need other sizes (a fixture, so no test imports conftest)."""
    return make_classifier


@pytest.fixture(autouse=True)
def isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own results database, so no test writes to the user's."""
    db = tmp_path / "results.db"
    monkeypatch.setenv("EDGEKIT_DB", str(db))
    return db


_TORCHVISION_OPS = None  # keeps the torch.library that declares torchvision's C++ op schemas alive


def _declare_torchvision_ops() -> None:
    """PyPI's torchvision is a CUDA build whose C++ ops cannot load beside torch's CPU wheel, and its import
    (which timm does) registers meta kernels for them; declaring the two op schemas it looks up lets the pure
    Python model definitions import. Nothing here runs those ops."""
    global _TORCHVISION_OPS
    import glob
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if _TORCHVISION_OPS is not None or spec is None or not spec.submodule_search_locations:
        return
    for library in glob.glob(f"{spec.submodule_search_locations[0]}/_C*.so"):
        try:
            torch.ops.load_library(library)  # a CPU build's ops load: nothing to declare
            return
        except OSError:
            pass
    _TORCHVISION_OPS = torch.library.Library("torchvision", "DEF")
    _TORCHVISION_OPS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_OPS.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def make_timm_model(name: str, size: int, *, seed: int = 0, **kwargs):
    """A timm architecture with seeded random weights (nothing downloaded), in eval mode, and its ONNX export
    (opset 17, dynamic batch) at `size` x `size`: (torch module, onnx.ModelProto)."""
    import io

    torch = pytest.importorskip("torch")
    _declare_torchvision_ops()
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    module = timm.create_model(name, pretrained=False, **kwargs).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        torch.zeros(1, 3, size, size),
        buffer,
        opset_version=17,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return module, onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="session")
def timm_factory():
    """`make_timm_model`: real architectures (timm) with seeded random weights and their ONNX exports."""
    return make_timm_model


@pytest.fixture(scope="session")
def torchvision_ops() -> None:
    """torchvision (and what imports it: timm, ultralytics) importable beside the CPU torch (see above)."""
    pytest.importorskip("torch")
    _declare_torchvision_ops()
