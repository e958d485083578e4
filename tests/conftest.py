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
