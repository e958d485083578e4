"""Comparison of a tensor against its reference: SQNR, cosine similarity, max abs error, top-k agreement.

One layer used by calibration reports, target verification and on-device accuracy alike, so "SQNR"
means the same number everywhere. Python 3.8-compatible, numpy only.

Identical arrays have an infinite SQNR. The functions here return float('inf') for it; JSON cannot
carry infinity, so `json_sqnr` (used by every result writer) turns it into SQNR_IDENTICAL_DB (999.0)
and minus infinity (a reference of all zeros against a non-zero output) into -999.0: a number, so
thresholds such as `sqnr_db >= 30` keep working on the host without special cases.
"""

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

SQNR_IDENTICAL_DB = 999.0


class CompareError(ValueError):
    """Two tensors that cannot be compared (shape mismatch, empty, bad k)."""


def _pair(ref: Any, test: Any) -> Tuple[np.ndarray, np.ndarray]:
    ref_a = np.asarray(ref, dtype=np.float64)
    test_a = np.asarray(test, dtype=np.float64)
    if ref_a.shape != test_a.shape:
        raise CompareError(
            "shape mismatch: reference %s vs output %s; compare tensors of the same shape "
            "(check the reference file belongs to this model)" % (ref_a.shape, test_a.shape)
        )
    if ref_a.size == 0:
        raise CompareError("cannot compare empty tensors (shape %s)" % (ref_a.shape,))
    return ref_a, test_a


def _sqnr_from_energies(signal: float, noise: float) -> float:
    if noise == 0.0:
        return float("inf")  # identical (also when both are all zeros)
    if signal == 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def _cosine_from_sums(dot: float, ref_sq: float, test_sq: float) -> float:
    if ref_sq == 0.0 and test_sq == 0.0:
        return 1.0  # two zero tensors agree perfectly
    if ref_sq == 0.0 or test_sq == 0.0:
        return 0.0
    value = dot / math.sqrt(ref_sq * test_sq)
    # clip rounding overshoot (1.0000000002) but let a NaN through: min/max would hide it
    return value if math.isnan(value) else max(-1.0, min(1.0, value))


def sqnr_db(ref: Any, test: Any) -> float:
    """Signal-to-quantization-noise ratio in dB: 10*log10(sum(ref^2) / sum((ref - test)^2))."""
    ref_a, test_a = _pair(ref, test)
    return _sqnr_from_energies(float(np.sum(ref_a * ref_a)), float(np.sum((ref_a - test_a) ** 2)))


def cosine(ref: Any, test: Any) -> float:
    """Cosine similarity of the two tensors, flattened; 1.0 for two zero tensors."""
    ref_a, test_a = _pair(ref, test)
    ref_f, test_f = ref_a.ravel(), test_a.ravel()
    return _cosine_from_sums(float(ref_f @ test_f), float(ref_f @ ref_f), float(test_f @ test_f))


def max_abs_error(ref: Any, test: Any) -> float:
    """Largest absolute elementwise difference."""
    ref_a, test_a = _pair(ref, test)
    return float(np.max(np.abs(ref_a - test_a)))


def _rows(logits: Any, what: str) -> np.ndarray:
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim == 0 or array.size == 0:
        raise CompareError("%s logits must have a class axis (last axis), got shape %s" % (what, array.shape))
    return array.reshape(-1, array.shape[-1])


def topk_agreement(ref_logits: Any, test_logits: Any, k: int = 1) -> float:
    """Fraction of rows whose reference top-1 class is among the test's top-k classes.

    The last axis holds the classes; leading axes are rows. k=1 is plain argmax agreement.
    """
    ref_rows, test_rows = _rows(ref_logits, "reference"), _rows(test_logits, "output")
    if ref_rows.shape != test_rows.shape:
        raise CompareError(
            "shape mismatch: reference logits %s vs output logits %s" % (np.shape(ref_logits), np.shape(test_logits))
        )
    if int(k) < 1:
        raise CompareError("top-k agreement needs k >= 1, got %r" % (k,))
    k = min(int(k), test_rows.shape[1])
    ref_top1 = np.argmax(ref_rows, axis=1)
    # argpartition: the k largest without sorting every class
    test_topk = np.argpartition(-test_rows, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(test_topk == ref_top1[:, None], axis=1)))


def compare(ref: Any, test: Any, topk: Optional[int] = None) -> Dict[str, Any]:
    """All the comparison numbers for one pair of tensors (SQNR may be +-inf; see json_sqnr)."""
    ref_a, test_a = _pair(ref, test)
    diff = ref_a - test_a
    ref_f, test_f = ref_a.ravel(), test_a.ravel()
    result: Dict[str, Any] = {
        "sqnr_db": _sqnr_from_energies(float(ref_f @ ref_f), float(np.sum(diff * diff))),
        "cosine": _cosine_from_sums(float(ref_f @ test_f), float(ref_f @ ref_f), float(test_f @ test_f)),
        "max_abs_error": float(np.max(np.abs(diff))),
        "mean_abs_error": float(np.mean(np.abs(diff))),
    }
    if topk is not None:
        result["top%d_agreement" % topk] = topk_agreement(ref_a, test_a, topk)
    return result


def json_sqnr(value: Optional[float]) -> Optional[float]:
    """SQNR made JSON-safe: +-inf -> +-SQNR_IDENTICAL_DB, NaN -> None."""
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return SQNR_IDENTICAL_DB if value > 0 else -SQNR_IDENTICAL_DB
    return float(value)


def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


class ErrorAccumulator(object):
    """Streaming comparison over many frames: energies and sums are pooled, so the final SQNR and
    cosine are those of all frames concatenated (not an average of per-frame dB values)."""

    def __init__(self) -> None:
        self.count = 0
        self._signal = 0.0
        self._noise = 0.0
        self._dot = 0.0
        self._test_sq = 0.0
        self._max_abs = 0.0

    def update(self, ref: Any, test: Any) -> None:
        ref_a, test_a = _pair(ref, test)
        ref_f, test_f = ref_a.ravel(), test_a.ravel()
        diff = ref_f - test_f
        self._signal += float(ref_f @ ref_f)
        self._noise += float(diff @ diff)
        self._dot += float(ref_f @ test_f)
        self._test_sq += float(test_f @ test_f)
        largest = float(np.max(np.abs(diff)))
        # max() would silently skip a NaN; a NaN output must stay visible in the pooled result
        self._max_abs = largest if math.isnan(largest) or largest > self._max_abs else self._max_abs
        self.count += 1

    def summary(self) -> Dict[str, Any]:
        """JSON-safe pooled numbers; None values when nothing was compared."""
        if self.count == 0:
            return {"count": 0, "sqnr_db": None, "cosine": None, "max_abs_error": None}
        return {
            "count": self.count,
            "sqnr_db": json_sqnr(_sqnr_from_energies(self._signal, self._noise)),
            "cosine": _finite_or_none(_cosine_from_sums(self._dot, self._signal, self._test_sq)),
            "max_abs_error": None if math.isnan(self._max_abs) else self._max_abs,
        }
