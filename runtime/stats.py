"""Latency summaries: mean, percentiles and spread of a list of samples in milliseconds."""

from typing import Dict, Optional, Sequence

import numpy as np

SUMMARY_KEYS = ("mean", "p50", "p90", "p99", "std", "min", "max", "count")


def summarize(samples_ms: Sequence[float]) -> Dict[str, Optional[float]]:
    """Summarize samples; an empty list gives count 0 and None for every statistic."""
    values = np.asarray(samples_ms, dtype=np.float64).ravel()
    if values.size == 0:
        summary: Dict[str, Optional[float]] = dict.fromkeys(SUMMARY_KEYS)
        summary["count"] = 0
        return summary
    # one call for all three percentiles; numpy's default (linear) interpolation, as every report expects
    p50, p90, p99 = np.percentile(values, [50.0, 90.0, 99.0])
    return {
        "mean": float(values.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "count": int(values.size),
    }
