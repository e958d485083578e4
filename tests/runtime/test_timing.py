"""`agent --time-model`: one model timed by the device's engine, on given inputs or seeded random ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.demo_data import digits_model_path
from edgekit.runtime.agent import main
from edgekit.runtime.engines import EngineError
from edgekit.runtime.timing import time_model


def test_time_model_on_given_and_random_inputs(tmp_path, capsys):
    given = tmp_path / "inputs.npz"
    np.savez(given, input=np.zeros((1, 1, 28, 28), np.float32))
    for inputs in (str(given), None):
        timing = time_model(str(digits_model_path()), "onnxruntime", runs=3, threads=1, inputs_path=inputs)
        assert timing["median_ms"] > 0 and timing["runs"] == 3 and timing["engine"] == "onnxruntime"
    assert main(["--time-model", str(digits_model_path()), "--engine", "onnxruntime", "--runs", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"] == 2
    np.savez(given, other=np.zeros(3, np.float32))
    with pytest.raises(EngineError, match="has no input"):
        time_model(str(digits_model_path()), "onnxruntime", inputs_path=str(given))
    assert main(["--time-model", str(tmp_path / "missing.onnx"), "--engine", "onnxruntime"]) == 1
