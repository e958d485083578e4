"""stats.summarize and the comparison layer (compare.py)."""

import json
import math

import numpy as np
import pytest

from edgekit.runtime.compare import (
    SQNR_IDENTICAL_DB,
    CompareError,
    ErrorAccumulator,
    compare,
    cosine,
    json_sqnr,
    max_abs_error,
    sqnr_db,
    topk_agreement,
)
from edgekit.runtime.stats import summarize


def test_summarize_known_values():
    summary = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert summary["count"] == 5 and summary["min"] == 1.0 and summary["max"] == 100.0
    assert summary["p50"] == 3.0 and summary["mean"] == 22.0
    assert summary["p90"] == pytest.approx(float(np.percentile([1, 2, 3, 4, 100], 90)))
    assert summary["std"] == pytest.approx(float(np.std([1, 2, 3, 4, 100])))
    assert all(type(summary[k]) is float for k in ("mean", "p50", "p90", "p99", "std", "min", "max"))
    json.dumps(summary)


def test_summarize_empty():
    summary = summarize([])
    assert summary["count"] == 0
    assert all(summary[k] is None for k in ("mean", "p50", "p90", "p99", "std", "min", "max"))


def test_sqnr_known_value_and_identical():
    ref = np.ones(100, np.float32)
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)  # noise power 1/100 of the signal
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(np.zeros(3), np.ones(3)) == float("-inf")
    assert json_sqnr(float("inf")) == SQNR_IDENTICAL_DB
    assert json_sqnr(float("-inf")) == -SQNR_IDENTICAL_DB
    assert json_sqnr(float("nan")) is None and json_sqnr(12.5) == 12.5


def test_cosine_and_max_abs():
    assert cosine([1.0, 0.0], [0.0, 2.0]) == 0.0
    assert cosine([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.0)
    assert cosine([1.0, 2.0], [-1.0, -2.0]) == pytest.approx(-1.0)
    assert cosine([0.0, 0.0], [0.0, 0.0]) == 1.0 and cosine([0.0, 0.0], [1.0, 0.0]) == 0.0
    assert max_abs_error([[1.0, 2.0]], [[1.5, 0.0]]) == 2.0


def test_shape_mismatch_and_empty_are_clear_errors():
    with pytest.raises(CompareError, match=r"shape mismatch: reference \(3,\) vs output \(1, 3\)"):
        sqnr_db(np.zeros(3), np.zeros((1, 3)))
    with pytest.raises(CompareError, match="empty"):
        cosine(np.zeros(0), np.zeros(0))
    with pytest.raises(CompareError, match="class axis"):
        topk_agreement(np.float32(1.0), np.float32(1.0))
    with pytest.raises(CompareError, match="k >= 1"):
        topk_agreement(np.zeros((2, 3)), np.zeros((2, 3)), k=0)
    with pytest.raises(CompareError, match="shape mismatch"):
        topk_agreement(np.zeros((2, 3)), np.zeros((2, 4)))


def test_topk_agreement():
    ref = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    test = np.array([[0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.3, 0.6]])
    assert topk_agreement(ref, test, k=1) == pytest.approx(2.0 / 3.0)
    assert topk_agreement(ref, test, k=2) == 1.0
    assert topk_agreement(ref, test, k=50) == 1.0  # k beyond the classes is all of them


def test_compare_bundle():
    ref = np.array([[1.0, 2.0, 3.0]])
    result = compare(ref, ref + 0.1, topk=1)
    assert set(result) == {"sqnr_db", "cosine", "max_abs_error", "mean_abs_error", "top1_agreement"}
    assert result["max_abs_error"] == pytest.approx(0.1) and result["top1_agreement"] == 1.0
    assert math.isinf(compare(ref, ref)["sqnr_db"])


def test_accumulator_pools_frames():
    rng = np.random.default_rng(1)
    refs = [rng.standard_normal(8) for _ in range(5)]
    tests = [r + rng.normal(0, 0.05, 8) for r in refs]
    acc = ErrorAccumulator()
    for r, t in zip(refs, tests, strict=True):
        acc.update(r, t)
    pooled = compare(np.concatenate(refs), np.concatenate(tests))
    summary = acc.summary()
    assert summary["count"] == 5
    assert summary["sqnr_db"] == pytest.approx(pooled["sqnr_db"])
    assert summary["cosine"] == pytest.approx(pooled["cosine"])
    assert summary["max_abs_error"] == pytest.approx(pooled["max_abs_error"])
    assert ErrorAccumulator().summary()["sqnr_db"] is None


def test_accumulator_identical_and_nan_stay_json_safe():
    acc = ErrorAccumulator()
    acc.update([1.0, 2.0], [1.0, 2.0])
    assert acc.summary()["sqnr_db"] == SQNR_IDENTICAL_DB
    acc.update([1.0, 2.0], [float("nan"), 2.0])
    acc.update([1.0, 2.0], [1.0, 2.5])
    summary = acc.summary()
    assert summary["max_abs_error"] is None and summary["sqnr_db"] is None and summary["cosine"] is None
    json.dumps(summary, allow_nan=False)
