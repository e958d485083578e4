"""Fixtures for the calibration tests: the shipped digits model and real held-out digits as tensors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgekit.demo_data import digits_model_path, load_heldout_digits
from edgekit.model import Model
from edgekit.runtime.preprocess import preprocess


@pytest.fixture(scope="session")
def digits_model() -> Model:
    return Model.load(digits_model_path())


@pytest.fixture(scope="session")
def digits_tensors(digits_model) -> tuple[np.ndarray, np.ndarray]:
    """All 1,000 held-out digits, preprocessed by the agent's code, and their labels."""
    images, labels = load_heldout_digits()
    x = np.concatenate([preprocess(cv2.cvtColor(i, cv2.COLOR_GRAY2BGR), digits_model.preprocess) for i in images])
    return x, labels.astype(np.int64)
