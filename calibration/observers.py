"""Streaming range observers: each sees one activation batch at a time and proposes a clipping range.

Every observer keeps a state of constant size (a few scalars, or one fixed-size histogram), ignores
NaN/Inf values while counting them, and can merge with a twin fed another shard of the data. They are
registered by name so that the CLI (`edgekit observers`) and the QuantSpec can refer to them:

    obs = get_observer("entropy", name="conv1_out")
    for batch in activations:
        obs.update(batch)
    lo, hi = obs.compute_range(symmetric=True, num_bits=8)

The quantizer an observer aims for is the usual uniform one: symmetric ranges [-T, T] map onto the
2**(b-1) - 1 positive and negative integer levels (int8: -127..127), asymmetric ranges [lo, hi] onto
2**b levels with an integer zero point, so lo <= 0 <= hi always holds and 0 is exactly representable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from edgekit.calibration.histogram import StreamingHistogram, as_flat_float, finite_extremes
from edgekit.errors import CalibrationError

__all__ = [
    "EntropyObserver",
    "HistogramObserver",
    "MinMaxObserver",
    "MseObserver",
    "Observer",
    "ObserverInfo",
    "PercentileObserver",
    "get_observer",
    "kl_divergence_curve",
    "list_observers",
    "observer_names",
    "quantization_mse",
    "register_observer",
]

# ---- registry ----------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Observer]] = {}

_ObserverClass = TypeVar("_ObserverClass", bound="type[Observer]")


@dataclass(frozen=True)
class ObserverInfo:
    """What `edgekit observers` prints for one observer."""

    name: str
    description: str
    settings: dict[str, Any]


def register_observer(name: str) -> Callable[[_ObserverClass], _ObserverClass]:
    """Class decorator: make an Observer subclass available as `get_observer(name)`.

    The class must be constructible with keyword settings only, each with a default (the defaults are what
    `list_observers` shows); its docstring's first line is its description.
    """
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise CalibrationError(f"observer names are lowercase words like 'minmax', got {name!r}")

    def decorate(cls: _ObserverClass) -> _ObserverClass:
        if not (isinstance(cls, type) and issubclass(cls, Observer)):
            raise TypeError(f"@register_observer({name!r}) decorates Observer subclasses, not {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise CalibrationError(f"observer name {name!r} is already taken by {_REGISTRY[name].__qualname__}")
        cls.kind = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def observer_names() -> list[str]:
    """Registered observer names, in registration order."""
    return list(_REGISTRY)


def list_observers() -> list[ObserverInfo]:
    """Name, one-line description and default settings of every registered observer."""
    return [ObserverInfo(name, cls.description(), cls().settings()) for name, cls in _REGISTRY.items()]


def get_observer(name: str, /, **settings: Any) -> Observer:
    """A new observer of the registered kind `name`; `settings` are its options plus an optional `name=`
    (the tensor it watches, used in messages)."""
    cls = _REGISTRY.get(name)
    if cls is None:
        known = ", ".join(_REGISTRY) or "none"
        raise CalibrationError(f"unknown observer {name!r}; registered observers: {known}")
    allowed = set(cls().settings())
    unknown = sorted(set(settings) - allowed - {"name"})
    if unknown:
        raise CalibrationError(
            f"observer {name!r} has no setting {', '.join(map(repr, unknown))}; "
            f"its settings are: {', '.join(sorted(allowed)) or 'none'}"
        )
    return cls(**settings)


# ---- base class --------------------------------------------------------------------------------------


class Observer:
    """Base class: watches one tensor's values batch by batch and proposes a clipping range for it.

    Subclasses implement the `_*_impl` methods and the state properties; the public methods here do the
    checking once (Polygraphy's runner pattern), so each observer stays short.
    """

    kind: ClassVar[str] = ""  # the registry name, set by @register_observer

    def __init__(self, *, name: str | None = None) -> None:
        self.name = name
        self._batches = 0

    @classmethod
    def description(cls) -> str:
        """The first line of the class docstring."""
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]

    # public, checked ----------------------------------------------------------------------------------

    def update(self, x: np.ndarray) -> None:
        """Observe one batch: a real-valued array of any shape. NaN/Inf values are counted, not used."""
        values = as_flat_float(x)
        self._batches += 1
        self._update_impl(values)

    def merge(self, other: Observer) -> None:
        """Fold in a twin observer (same kind and settings) that watched another shard of the data."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        if other.settings() != self.settings():
            raise CalibrationError(
                f"cannot merge observers of {self._label()} with different settings: "
                f"{self.settings()} vs {other.settings()}"
            )
        self._batches += other._batches
        self._merge_impl(other)

    def compute_range(self, *, symmetric: bool, num_bits: int = 8, unsigned: bool = False) -> tuple[float, float]:
        """The clipping range (lo, hi) for a `num_bits` quantizer; lo <= 0 <= hi.

        symmetric: (-T, T). Asymmetric: the observer's best (lo, hi), which is (0, hi) for a tensor that
        was never negative. `unsigned` says the integers are uint (it changes which levels exist only for
        observers that model them; the range of an asymmetric quantizer does not depend on it).
        """
        if not isinstance(num_bits, (int, np.integer)) or not 2 <= num_bits <= 16:
            raise CalibrationError(f"num_bits must be an integer within [2, 16], got {num_bits!r}")
        self._require_finite()
        lo, hi = self._compute_range_impl(bool(symmetric), int(num_bits), bool(unsigned))
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if symmetric:
            hi = max(-lo, hi)
            lo = -hi
        return lo + 0.0, hi + 0.0  # + 0.0 turns -0.0 into 0.0

    @property
    def observed_range(self) -> tuple[float, float]:
        """Exact (min, max) of the finite values seen."""
        self._require_finite()
        return self._observed_range_impl()

    @property
    def batches(self) -> int:
        """How many batches were observed (merged twins included)."""
        return self._batches

    def _label(self) -> str:
        return f"tensor {self.name!r}" if self.name else "an unnamed tensor"

    def _require_finite(self) -> None:
        if self.count == 0:
            raise CalibrationError(
                f"{self._label()} never received finite values ({self.batches} batches, {self.nonfinite} NaN/Inf "
                f"values) so no range can be computed; check the calibration inputs and preprocessing, or keep "
                f"this tensor in float"
            )

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({settings}{', ' if settings else ''}name={self.name!r}, count={self.count})"

    # for subclasses ------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The observer's options, JSON-safe; recorded in the QuantSpec beside the range."""
        return {}

    @property
    def count(self) -> int:
        """Number of finite values seen."""
        raise NotImplementedError

    @property
    def nonfinite(self) -> int:
        """Number of NaN/+-Inf values seen and ignored."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Size of the observer's state in bytes; does not grow with the number of values seen."""
        raise NotImplementedError

    def _update_impl(self, values: np.ndarray) -> None:
        """Observe a flat float array (NaN/Inf included)."""
        raise NotImplementedError

    def _merge_impl(self, other: Observer) -> None:
        raise NotImplementedError

    def _observed_range_impl(self) -> tuple[float, float]:
        raise NotImplementedError

    def _compute_range_impl(self, symmetric: bool, num_bits: int, unsigned: bool) -> tuple[float, float]:
        raise NotImplementedError


# ---- observers ---------------------------------------------------------------------------------------


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Exact running min/max; the cheapest, and every outlier widens the range."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self._min = math.inf
        self._max = -math.inf
        self._count = 0
        self._nonfinite = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def nonfinite(self) -> int:
        return self._nonfinite

    @property
    def nbytes(self) -> int:
        return 4 * 8

    def _update_impl(self, values: np.ndarray) -> None:
        # finite_extremes already reads min and max (to spot NaN/Inf): two passes over the batch, not four
        values, nonfinite, lo, hi = finite_extremes(values)
        self._nonfinite += nonfinite
        if values.size:
            self._count += int(values.size)
            self._min = min(self._min, lo)
            self._max = max(self._max, hi)

    def _merge_impl(self, other: Observer) -> None:
        assert isinstance(other, MinMaxObserver)
        self._count += other._count
        self._nonfinite += other._nonfinite
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def _observed_range_impl(self) -> tuple[float, float]:
        return self._min, self._max

    def _compute_range_impl(self, symmetric: bool, num_bits: int, unsigned: bool) -> tuple[float, float]:
        return self._min, self._max


class HistogramObserver(Observer):
    """Base for observers that keep a StreamingHistogram with `bins` bins of |x| (2 * bins signed)."""

    def __init__(self, *, bins: int = 2048, name: str | None = None) -> None:
        super().__init__(name=name)
        if not isinstance(bins, (int, np.integer)) or bins < 16:
            raise CalibrationError(f"bins (of |x|) must be an integer >= 16, got {bins!r}")
        self._bins = int(bins)
        self._hist = StreamingHistogram(2 * self._bins)

    @property
    def histogram(self) -> StreamingHistogram:
        """The histogram itself (read it, do not feed it)."""
        return self._hist

    def settings(self) -> dict[str, Any]:
        return {"bins": self._bins}

    @property
    def count(self) -> int:
        return self._hist.count

    @property
    def nonfinite(self) -> int:
        return self._hist.nonfinite

    @property
    def nbytes(self) -> int:
        return self._hist.nbytes

    def _update_impl(self, values: np.ndarray) -> None:
        self._hist.update(values)

    def _merge_impl(self, other: Observer) -> None:
        assert isinstance(other, HistogramObserver)
        self._hist.merge(other._hist)

    def _observed_range_impl(self) -> tuple[float, float]:
        return self._hist.min, self._hist.max

    @property
    def _max_abs(self) -> float:
        return max(-self._hist.min, self._hist.max)


@register_observer("percentile")
class PercentileObserver(HistogramObserver):
    """Clips at a percentile of the values (|x| when symmetric), read from a streaming histogram."""

    def __init__(self, *, percentile: float = 99.99, bins: int = 2048, name: str | None = None) -> None:
        super().__init__(bins=bins, name=name)
        try:
            value = float(percentile)
        except (TypeError, ValueError):
            value = math.nan  # not a number: refused below like one out of range
        if not 50.0 < value <= 100.0:
            raise CalibrationError(f"percentile must be within (50, 100], got {percentile!r}")
        self._percentile = value

    def settings(self) -> dict[str, Any]:
        return {"percentile": self._percentile, "bins": self._bins}

    def _compute_range_impl(self, symmetric: bool, num_bits: int, unsigned: bool) -> tuple[float, float]:
        if symmetric:
            t = self._hist.abs_percentile(self._percentile)
            return -t, t
        return self._hist.percentile(100.0 - self._percentile), self._hist.percentile(self._percentile)


NEAR_ONE_SIDED = 1 / 16  # a side this much smaller than the other is kept whole (entropy, asymmetric)


@register_observer("entropy")
class EntropyObserver(HistogramObserver):
    """TensorRT's entropy calibration: the |x| threshold whose 8-bit copy has least KL divergence."""

    # Szymon Migacz, "8-bit Inference with TensorRT" (GTC 2017); see kl_divergence_curve. Two departures
    # forced by streaming: the |x| histogram spans [0, R] with max|x| <= R < 2 max|x| (TensorRT spans exactly
    # [0, max|x|], which needs a second pass), so between half and all of the bins hold data; and T is capped
    # at max|x|. Asymmetric on a tensor of both signs gives [-T, T]: the |x| histogram cannot tell the sides.
    # A spike of exact zeros (ReLU outputs: often half the values) sits in bin 0 and pulls T far down
    # (T = 0.92 where max is 3.97 on the demo's first ReLU: top-1 fell from 98% to 48%). So by default
    # bin 0 takes bin 1's count, as NVIDIA's pytorch-quantization does; zero_bin="keep" follows the talk.

    ZERO_BIN_MODES: ClassVar[tuple[str, ...]] = ("like_bin1", "keep")

    def __init__(
        self,
        *,
        bins: int = 2048,
        num_quantized_bins: int | None = None,
        zero_bin: str = "like_bin1",
        name: str | None = None,
    ) -> None:
        super().__init__(bins=bins, name=name)
        if zero_bin not in self.ZERO_BIN_MODES:
            raise CalibrationError(f"zero_bin must be one of {self.ZERO_BIN_MODES}, got {zero_bin!r}")
        self._zero_bin = zero_bin
        if num_quantized_bins is not None and not (
            isinstance(num_quantized_bins, (int, np.integer)) and 2 <= num_quantized_bins < self._bins
        ):
            raise CalibrationError(
                f"num_quantized_bins must be None or an integer within [2, bins - 1], got {num_quantized_bins!r}"
            )
        self._num_quantized_bins = None if num_quantized_bins is None else int(num_quantized_bins)

    def settings(self) -> dict[str, Any]:
        return {"bins": self._bins, "num_quantized_bins": self._num_quantized_bins, "zero_bin": self._zero_bin}

    def quantized_bins(self, *, one_sided: bool, num_bits: int = 8) -> int:
        """Levels that cover [0, T]: the setting, else 2**(b-1) (128 for int8) for a range that is
        symmetric about 0, and 2**b (256) for a one-sided [0, T] range (uint8, or int8 with zero point -128).
        """
        if self._num_quantized_bins is not None:
            return self._num_quantized_bins
        return min(2 ** (num_bits if one_sided else num_bits - 1), self._bins // 2)

    def threshold(self, *, one_sided: bool = False, num_bits: int = 8) -> float:
        """T, the |x| clipping threshold with the least KL divergence (at most max|x|)."""
        self._require_finite()
        counts = self._hist.abs_counts()
        if self._zero_bin == "like_bin1" and counts.size > 1:
            counts = counts.copy()
            counts[0] = counts[1]
        levels = self.quantized_bins(one_sided=one_sided, num_bits=num_bits)
        candidates, divergence = kl_divergence_curve(counts, levels)
        best = int(candidates[int(np.argmin(divergence))])
        width = self._hist.range / counts.size
        return min((best + 0.5) * width, self._max_abs)

    def _compute_range_impl(self, symmetric: bool, num_bits: int, unsigned: bool) -> tuple[float, float]:
        lo, hi = self._hist.min, self._hist.max
        # Asymmetric with a small lobe on one side (SiLU's and GELU's minimum -0.28 below a maximum of 97):
        # the search runs one-sided on the large side and the small side keeps its whole range. [-T, T] there
        # spent half the grid on values that do not exist (YOLOv8n's first SiLU: [-12, 12] for -0.28..97).
        minority, majority = sorted((max(-lo, 0.0), max(hi, 0.0)))
        one_sided = not symmetric and minority <= NEAR_ONE_SIDED * majority
        t = self.threshold(one_sided=one_sided, num_bits=num_bits)
        if one_sided:
            return (min(lo, 0.0), t) if hi >= -lo else (-t, max(hi, 0.0))
        return -t, t


@register_observer("mse")
class MseObserver(HistogramObserver):
    """The range with least expected quantization error (clipping + rounding) over the histogram."""

    # Expected error of the uniform quantizer, with each bin's values spread evenly over the bin (exact
    # integrals, see quantization_mse). Symmetric, or asymmetric on a tensor of one sign: T among the |x|
    # bin edges from bin 32 up to max|x|, and max|x| itself (every 8th first, then all 16 around the best).
    # Asymmetric on a tensor of both signs: a 2-D search over the step s (coarse then fine, spans from
    # (max - min)/64 to max - min) and every integer zero point z, i.e. over ranges [-z s, (2**b - 1 - z) s]
    # on the quantizer's own grid. A curve with several far-apart minima may keep a local one.

    START_BIN: ClassVar[int] = 32
    COARSE: ClassVar[int] = 8  # first every 8th candidate, then every candidate around the best of those
    STEP_CANDIDATES: ClassVar[int] = 64

    def _compute_range_impl(self, symmetric: bool, num_bits: int, unsigned: bool) -> tuple[float, float]:
        lo, hi = self._hist.min, self._hist.max
        if symmetric or lo >= 0.0 or hi <= 0.0:
            steps = 2 ** (num_bits - 1) - 1 if symmetric else 2**num_bits - 1
            t = self._best_threshold(steps)
            if symmetric:
                return -t, t
            return (0.0, t) if lo >= 0.0 else (-t, 0.0)
        return self._best_affine_range(2**num_bits - 1)

    def _best_threshold(self, steps: int) -> float:
        """T minimising the error of the grid {0, T/steps, ..., T} (mirrored when symmetric) on |x|."""
        edges, counts = self._hist.abs_edges(), self._hist.abs_counts()
        largest = self._max_abs
        if largest == 0.0:
            return 0.0
        inside = edges[self.START_BIN : -1]
        candidates = np.append(inside[inside < largest], largest)

        def error(t: np.ndarray) -> np.ndarray:
            return quantization_mse(edges, counts, np.zeros_like(t), t, t / steps)

        coarse = np.arange(0, candidates.size, self.COARSE)
        best = int(coarse[int(np.argmin(error(candidates[coarse])))])
        fine = candidates[max(best - self.COARSE, 0) : best + self.COARSE + 1]
        return float(fine[int(np.argmin(error(fine)))])

    def _best_affine_range(self, steps: int) -> tuple[float, float]:
        """(lo, hi) = (-z s, (steps - z) s) minimising the error over steps s and every zero point z."""
        edges, counts = self._hist.edges, self._hist.counts
        span = self._hist.max - self._hist.min
        # every zero point up to 10 bits; beyond, 1025 of them evenly spread (keeps the search small)
        zero_point = np.unique(np.round(np.linspace(0.0, steps, min(steps + 1, 1025))))

        def search(step: np.ndarray) -> tuple[float, int, int]:
            lo = -zero_point[None, :] * step[:, None]
            hi = (steps - zero_point)[None, :] * step[:, None]
            error = quantization_mse(edges, counts, lo, hi, step)
            k, z = np.unravel_index(int(np.argmin(error)), error.shape)
            return float(error[k, z]), int(k), int(z)

        # coarse: spans from (max - min)/64 to (max - min), 64 geometric steps (6.8% apart); then 33 steps
        # between the coarse neighbours of the best one (0.4% apart)
        coarse = np.geomspace(span / 64.0, span, self.STEP_CANDIDATES) / steps
        _, k, _ = search(coarse)
        fine = np.linspace(coarse[max(k - 1, 0)], coarse[min(k + 1, coarse.size - 1)], 33)
        _, k, z = search(fine)
        z_best = float(zero_point[z])
        return -z_best * float(fine[k]), (steps - z_best) * float(fine[k])


# ---- the two searches, usable on any histogram ----------------------------------------------------------


def kl_divergence_curve(abs_counts: np.ndarray, num_quantized_bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """KL(P || Q) for every i in range(num_quantized_bins, len(abs_counts)), as the GTC 2017 talk defines:

    P = the first i bins, with the count of all bins from i on added to bin i-1; Q = the same first i bins
    (without the outliers) merged into `num_quantized_bins` groups (bin j goes to group j * levels // i,
    as NVIDIA's pytorch-quantization does), each group's mass then spread evenly over its non-empty bins;
    both normalised. Empty bins of P contribute 0; a non-empty P bin facing an empty Q bin (bin i-1 empty
    but outliers present) makes the divergence infinite, so that i is never chosen.

    Returns (i, divergence) as two arrays. All candidates at once, O(len * levels) with prefix sums.
    """
    b = np.asarray(abs_counts, dtype=np.float64)
    n, levels = b.size, int(num_quantized_bins)
    if not 1 <= levels < n:
        raise CalibrationError(f"num_quantized_bins must be within [1, {n - 1}], got {num_quantized_bins!r}")
    i = np.arange(levels, n)
    total = b.sum()
    if total <= 0:
        return i, np.zeros(i.size)
    positive = b > 0
    cum = np.concatenate(([0.0], np.cumsum(b)))
    cum_nonzero = np.concatenate(([0], np.cumsum(positive)))
    b_log_b = np.zeros(n)
    b_log_b[positive] = b[positive] * np.log(b[positive])
    cum_b_log_b = np.concatenate(([0.0], np.cumsum(b_log_b)))

    # group g of candidate i holds bins ceil(g*i/levels) .. ceil((g+1)*i/levels) - 1
    g = np.arange(levels + 1)
    bounds = -((-g[None, :] * i[:, None]) // levels)
    group_sum = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
    group_nonzero = cum_nonzero[bounds[:, 1:]] - cum_nonzero[bounds[:, :-1]]
    # each non-empty bin of a group gets Q mass group_sum / group_nonzero (before normalisation)
    share = np.divide(group_sum, group_nonzero, out=np.zeros_like(group_sum), where=group_nonzero > 0)
    log_share = np.log(share, out=np.zeros_like(share), where=share > 0)
    sum_b_log_share = (group_sum * log_share).sum(axis=1)  # = sum over bins j < i of b_j log share_g(j)

    head_total = cum[i]  # S_i: mass of the first i bins, the normaliser of Q
    outliers = total - head_total
    last = b[i - 1]
    last_log_share = log_share[np.arange(i.size), ((i - 1) * levels) // i]
    log_total = math.log(total)
    log_head = np.log(head_total, out=np.zeros_like(head_total), where=head_total > 0)

    # sum over j < i-1 with b_j > 0 of (b_j/N) log((b_j/N) / (share_j/S_i)), then the last bin with outliers
    body = (cum_b_log_b[i - 1] - (sum_b_log_share - last * last_log_share)) - (head_total - last) * (
        log_total - log_head
    )
    p_last = last + outliers
    log_p_last = np.log(p_last, out=np.zeros_like(p_last), where=p_last > 0)
    tail = p_last * (log_p_last - log_total - last_log_share + log_head)
    divergence = (body + np.where(last > 0, tail, 0.0)) / total
    divergence[(last == 0) & (outliers > 0)] = np.inf
    divergence[head_total == 0] = np.inf
    return i, np.maximum(divergence, 0.0)


class _BinDensity:
    """The density a histogram implies when each bin's count is spread evenly over the bin."""

    def __init__(self, edges: np.ndarray, counts: np.ndarray) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        self.width = float(self.edges[1] - self.edges[0])
        self.density = counts / self.width
        a, b = self.edges[:-1], self.edges[1:]
        self.m0 = np.concatenate(([0.0], np.cumsum(counts)))
        self.m1 = np.concatenate(([0.0], np.cumsum(counts * (a + b) / 2.0)))
        self.m2 = np.concatenate(([0.0], np.cumsum(counts * (a * a + a * b + b * b) / 3.0)))

    def _locate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.clip(x, self.edges[0], self.edges[-1])
        j = np.clip(((x - self.edges[0]) / self.width).astype(np.intp), 0, self.density.size - 1)
        return x, j

    def moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integrals of 1, t and t**2 times the density from the lowest edge up to x."""
        x, j = self._locate(x)
        a, d = self.edges[j], self.density[j]
        return (
            self.m0[j] + d * (x - a),
            self.m1[j] + d * (x * x - a * a) / 2.0,
            self.m2[j] + d * (x**3 - a**3) / 3.0,
        )

    def clipping_error(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Sum of squared distances to lo of the mass below lo, and to hi of the mass above hi."""
        m0l, m1l, m2l = self.moments(lo)
        m0h, m1h, m2h = self.moments(hi)
        below = m2l - 2.0 * lo * m1l + lo * lo * m0l
        above = (self.m2[-1] - m2h) - 2.0 * hi * (self.m1[-1] - m1h) + hi * hi * (self.m0[-1] - m0h)
        return np.maximum(below, 0.0) + np.maximum(above, 0.0)

    def rounding_error(self, lo: np.ndarray, hi: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Sum of squared rounding errors of the mass in [lo, hi] on the grid step * Z.

        step has shape (K,); lo and hi shape (K, M). Exact for the piecewise-uniform density:
        the integral of (t - s round(t/s))**2 from 0 is s**3 (k/12 + ((r - 1/2)**3 + 1/8)/3) with
        t/s + 1/2 = k + r, k an integer and 0 <= r < 1.
        """
        s = step[:, None]
        whole, frac = self._grid_position(self.edges[None, :], s)
        per_bin = self.density * s**3 * (np.diff(whole, axis=1) / 12.0 + np.diff(frac, axis=1))
        prefix = np.concatenate((np.zeros((s.shape[0], 1)), np.cumsum(per_bin, axis=1)), axis=1)

        def integral_to(x: np.ndarray) -> np.ndarray:
            x, j = self._locate(x)
            whole_x, frac_x = self._grid_position(x, s)
            partial = (
                (whole_x - np.take_along_axis(whole, j, axis=1)) / 12.0 + frac_x - np.take_along_axis(frac, j, axis=1)
            )
            return np.take_along_axis(prefix, j, axis=1) + self.density[j] * s**3 * partial

        return np.maximum(integral_to(hi) - integral_to(lo), 0.0)

    @staticmethod
    def _grid_position(x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = x / s + 0.5
        k = np.floor(y)
        r = y - k
        return k, ((r - 0.5) ** 3 + 0.125) / 3.0


def quantization_mse(
    edges: np.ndarray, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, step: np.ndarray, *, chunk: int = 64
) -> np.ndarray:
    """Expected squared error per value of quantizing the histogram's values onto {lo, lo + step, ..., hi}.

    Values outside [lo, hi] are clipped to it; those inside are rounded to the nearest multiple of step
    (lo and hi should be multiples of step, as they are for any integer zero point). Each bin's count is
    taken as spread evenly over the bin and the integrals are exact for that density.

    step has shape (K,); lo and hi shape (K,) or (K, M): M candidate ranges per step. Returns lo's shape.
    """
    density = _BinDensity(edges, counts)
    step = np.asarray(step, dtype=np.float64).reshape(-1)
    lo, hi = np.broadcast_arrays(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
    if lo.shape[:1] != step.shape:
        raise CalibrationError(f"lo/hi must have one row per step: shapes {lo.shape} and {step.shape}")
    lo2, hi2 = lo.reshape(step.size, -1), hi.reshape(step.size, -1)
    error = np.empty(lo2.shape)
    for start in range(0, step.size, chunk):
        rows = slice(start, start + chunk)
        error[rows] = density.rounding_error(lo2[rows], hi2[rows], step[rows])
    error += density.clipping_error(lo2, hi2)
    total = max(float(density.m0[-1]), 1.0)
    return (error / total).reshape(lo.shape)
