"""Fixtures for the calibration tests: the shipped digits model and real held-out digits as tensors."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.demo_data import digits_model_path, preprocessed_heldout_digits
from edgekit.model import Model


@pytest.fixture(scope="session")
def digits_model() -> Model:
    return Model.load(digits_model_path())


@pytest.fixture(scope="session")
def digits_tensors() -> tuple[np.ndarray, np.ndarray]:
    """All 1,000 held-out digits, preprocessed by the agent's code, and their labels."""
    return preprocessed_heldout_digits()
