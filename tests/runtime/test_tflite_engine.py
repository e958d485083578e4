"""The agent's TFLite engine on real LiteRT: delegates (with a loud CPU fallback), int8 I/O conversion, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (pip install 'edgekit[tflite]')")
pytest.importorskip("tensorflow", reason="needs the tflite extra to make a model (pip install 'edgekit[tflite]')")

from edgekit.demo_data import digits_model_path
from edgekit.model import Model
from edgekit.runtime.engines import EngineError, open_engine
from edgekit.runtime.engines.tflite import NNAPI_DEPRECATED, dequantize_output, quantize_input
from edgekit.targets.onnx_to_tf import to_tflite


@pytest.fixture(scope="module")
def digits_tflite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tfl") / "digits.tflite"
    path.write_bytes(to_tflite(Model.load(digits_model_path()).proto))
    return path


def _frame() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 28, 28, 1)).astype(np.float32)


@pytest.mark.parametrize("delegate", ["xnnpack", "none"])
def test_cpu_paths_agree(digits_tflite: Path, delegate: str) -> None:
    with open_engine("tflite", str(digits_tflite), {"threads": 1, "delegate": delegate}) as engine:
        out = engine.infer({engine.input_names[0]: _frame()})[0]
        facts = engine.facts()
    with open_engine("tflite", str(digits_tflite)) as reference:
        expected = reference.infer({reference.input_names[0]: _frame()})[0]
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert facts["delegate"] == delegate and facts["runtime"] == "ai_edge_litert" and facts["warnings"] == []


@pytest.mark.parametrize("delegate", ["gpu", "nnapi"])
def test_a_phone_delegate_that_does_not_load_falls_back_and_says_so(digits_tflite: Path, delegate: str) -> None:
    # this machine has neither Android's GPU nor its NNAPI delegate library: the real load fails
    with open_engine("tflite", str(digits_tflite), {"delegate": delegate}) as engine:
        out = engine.infer({engine.input_names[0]: _frame()})[0]
        facts = engine.facts()
    assert out.shape == (1, 10)
    assert facts["delegate"] == f"xnnpack (fallback from {delegate})"
    assert any(f"delegate {delegate} did not load" in w for w in facts["warnings"])
    assert (NNAPI_DEPRECATED in facts["warnings"]) == (delegate == "nnapi")


def test_unknown_option_and_corrupt_model(tmp_path: Path, digits_tflite: Path) -> None:
    with pytest.raises(EngineError, match="unknown"):
        open_engine("tflite", str(digits_tflite), {"providers": ["x"]})
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(EngineError, match="bad.tflite"):
        open_engine("tflite", str(bad))


def test_int8_io_round_trip_uses_the_tensor_parameters() -> None:
    x = np.array([-1.0, 0.0, 0.5, 100.0], np.float32)
    q = quantize_input(x, np.dtype(np.int8), 0.01, -3)
    assert q.tolist() == [-103, -3, 47, 127]  # saturates at the int8 range
    np.testing.assert_allclose(dequantize_output(q, 0.01, -3), [-1.0, 0.0, 0.5, 1.3], atol=1e-6)
