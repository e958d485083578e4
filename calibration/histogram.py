"""A fixed-size histogram of a stream of signed values whose range grows by exact re-binning."""

from __future__ import annotations

import math

import numpy as np

from edgekit.errors import CalibrationError

__all__ = ["StreamingHistogram"]

# Range used when everything seen so far is zero: small enough that any real value re-bins it away,
# large enough that bins/2/R stays finite in float32.
_RANGE_FLOOR = 1e-30

# Values are binned in chunks that fit in L2 cache: measured about 1.4x faster than one big pass,
# and the temporaries stay a few hundred KB whatever the batch size.
_CHUNK = 1 << 16


def finite_extremes(values: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """The finite values of a flat float array, how many were NaN/Inf, and their min and max.

    min/max spot NaN/Inf cheaply and are needed by the caller anyway, so each is computed once.
    """
    if values.size == 0:
        return values, 0, math.inf, -math.inf
    lo, hi = values.min(), values.max()
    if np.isfinite(lo) and np.isfinite(hi):
        return values, 0, float(lo), float(hi)
    kept = values[np.isfinite(values)]
    if kept.size == 0:
        return kept, int(values.size), math.inf, -math.inf
    return kept, int(values.size - kept.size), float(kept.min()), float(kept.max())


def as_flat_float(x: np.ndarray) -> np.ndarray:
    """`x` as a flat float32/float64 array (a view when possible); other dtypes are converted."""
    values = np.asarray(x)
    if values.dtype.kind == "c":
        raise TypeError(f"observers take real-valued tensors, got dtype {values.dtype}")
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float32 if values.dtype == np.float16 else np.float64)
    return values.reshape(-1)


class StreamingHistogram:
    """Counts of signed values over [-R, R] in a fixed number of bins; R grows by doubling.

    The first non-empty batch sets R to its largest |x|. When a later value exceeds R, R doubles as
    often as needed and every old bin is added into the one new bin that contains it, so the counts
    are exactly those a histogram built at the final range would hold: nothing is invented and the
    memory never grows. That holds because 0 is always a bin edge, bins are [a, b) (so the edges of
    the wider bins are edges of the narrower ones), and values exactly at +R, the top of the range,
    are held apart until R grows and they fall on an edge of the wider bins; readers count them in
    the last bin.

    NaN and +-Inf are counted in `nonfinite` and never binned; `min`, `max` and `count` are exact.
    """

    def __init__(self, bins: int = 4096, *, initial_range: float | None = None) -> None:
        if not isinstance(bins, (int, np.integer)) or bins < 2 or bins % 2:
            raise CalibrationError(f"bins must be an even integer >= 2, got {bins!r}")
        self._bins = int(bins)
        # One slot past the last bin holds the values exactly at +R: bins are [a, b), and keeping +R apart
        # lets it re-bin exactly when R grows (it lands on an edge of the wider bins).
        self._counts = np.zeros(self._bins + 1, dtype=np.int64)
        self._range = 0.0  # 0 until the first finite value (or initial_range) fixes it
        if initial_range is not None:
            if not (math.isfinite(initial_range) and initial_range > 0):
                raise CalibrationError(f"initial_range must be a positive finite number, got {initial_range!r}")
            self._range = float(initial_range)
        self._min = math.inf
        self._max = -math.inf
        self._count = 0
        self._nonfinite = 0

    # ---- state -------------------------------------------------------------------------------------

    @property
    def bins(self) -> int:
        return self._bins

    @property
    def range(self) -> float:
        """R: the histogram covers [-R, R]; 0.0 before the first finite value."""
        return self._range

    @property
    def bin_width(self) -> float:
        return 2.0 * self._range / self._bins

    @property
    def min(self) -> float:
        """Exact smallest finite value seen (+inf when none)."""
        return self._min

    @property
    def max(self) -> float:
        """Exact largest finite value seen (-inf when none)."""
        return self._max

    @property
    def count(self) -> int:
        """Number of finite values binned."""
        return self._count

    @property
    def nonfinite(self) -> int:
        """Number of NaN/+-Inf values seen and left out of the histogram."""
        return self._nonfinite

    @property
    def empty(self) -> bool:
        return self._count == 0

    @property
    def edges(self) -> np.ndarray:
        """The bins + 1 edges, from -R to R."""
        return np.linspace(-self._range, self._range, self._bins + 1)

    @property
    def counts(self) -> np.ndarray:
        """A copy of the bin counts (int64)."""
        return self._folded()

    @property
    def nbytes(self) -> int:
        """Size of the state: the counts plus five scalars; independent of how much was seen."""
        return int(self._counts.nbytes) + 5 * 8  # bins + 1 counts (see __init__)

    def abs_counts(self) -> np.ndarray:
        """The histogram of |x|: bins/2 bins over [0, R] (negative bins folded onto positive ones)."""
        half = self._bins // 2
        counts = self._folded()
        return counts[half:] + counts[:half][::-1]

    def _folded(self) -> np.ndarray:
        """The bins counts, with the values at +R counted in the last bin."""
        counts = self._counts[: self._bins].copy()
        counts[-1] += self._counts[self._bins]
        return counts

    def abs_edges(self) -> np.ndarray:
        """The bins/2 + 1 edges of `abs_counts`, from 0 to R."""
        return np.linspace(0.0, self._range, self._bins // 2 + 1)

    def copy(self) -> StreamingHistogram:
        other = StreamingHistogram.__new__(StreamingHistogram)
        other.__dict__.update(self.__dict__)
        other._counts = self._counts.copy()
        return other

    # ---- feeding -----------------------------------------------------------------------------------

    def update(self, x: np.ndarray) -> None:
        """Add every value of `x` (any shape; float32 stays float32, other dtypes are converted)."""
        values, nonfinite, lo, hi = finite_extremes(as_flat_float(x))
        self._nonfinite += nonfinite
        if values.size == 0:
            return
        self._count += int(values.size)
        self._min = min(self._min, lo)
        self._max = max(self._max, hi)
        largest = max(-lo, hi)
        if self._range == 0.0:
            self._range = max(largest, _RANGE_FLOOR)
        elif largest > self._range:
            self._grow_to(largest)
        self._accumulate(values)

    def merge(self, other: StreamingHistogram) -> None:
        """Add another histogram's values (a shard of the same stream) into this one.

        Exact when the two ranges differ by a power of two (always the case for shards started with
        the same `initial_range`). Otherwise the histogram with the smaller range is moved onto the
        larger range bin by bin, each bin going whole to the bin that holds its centre: a value moves
        by at most half of one of its own (narrower) bins.
        """
        if not isinstance(other, StreamingHistogram):
            raise TypeError(f"can only merge another StreamingHistogram, got {type(other).__name__}")
        if other._bins != self._bins:
            raise CalibrationError(f"cannot merge histograms with {self._bins} and {other._bins} bins")
        self._nonfinite += other._nonfinite
        if other._count == 0:
            return
        if self._count == 0:
            nonfinite = self._nonfinite
            self.__dict__.update(other.copy().__dict__)
            self._nonfinite = nonfinite
            return
        if other._range > self._range:
            self._counts = _moved_counts(self._counts, self._range, other._range)
            self._range = other._range
            self._counts += other._counts
        else:
            self._counts += _moved_counts(other._counts, other._range, self._range)
        self._count += other._count
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def _grow_to(self, largest: float) -> None:
        doublings = max(1, math.ceil(math.log2(largest / self._range)))
        while self._range * 2.0**doublings < largest:  # guard against log2 rounding
            doublings += 1
        self._counts = _shifted_counts(self._counts, doublings)
        self._range *= 2.0**doublings

    def _accumulate(self, values: np.ndarray) -> None:
        half = self._bins // 2
        dtype = values.dtype.type
        scale = dtype(half / self._range)
        # Bins are [a, b) with 0 on an edge: index = floor(x * scale) + bins/2. The floor comes before the
        # shift so float rounding of the sum cannot move a value across an edge; three cheap passes and a
        # cast (about 3x faster than ceil/copysign arithmetic). |x| <= R: the index stops at the +R slot.
        shift, top = dtype(half), self._bins
        for start in range(0, values.size, _CHUNK):
            t = values[start : start + _CHUNK] * scale
            np.floor(t, out=t)
            t += shift
            index = t.astype(np.intp)
            np.minimum(index, top, out=index)
            self._counts += np.bincount(index, minlength=top + 1)

    # ---- reading -----------------------------------------------------------------------------------

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the values seen, interpolated within its bin.

        Uses numpy's rank convention (q/100 * (count - 1)) and spreads a bin's values evenly over it;
        the answer lies within one bin width of the true order statistic and inside [min, max], which
        percentiles 0 and 100 return exactly.
        """
        self._check_readable(q)
        if q == 0.0 or q == 100.0:
            return self._min if q == 0.0 else self._max
        value = _interpolated_percentile(self._folded(), self.edges, self._count, q)
        return float(min(max(value, self._min), self._max))

    def abs_percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of |x|, interpolated within its bin, at most max |x|."""
        self._check_readable(q)
        value = _interpolated_percentile(self.abs_counts(), self.abs_edges(), self._count, q)
        return float(min(max(value, 0.0), max(-self._min, self._max)))

    def _check_readable(self, q: float) -> None:
        if not 0.0 <= q <= 100.0:
            raise CalibrationError(f"percentile must be within [0, 100], got {q!r}")
        if self._count == 0:
            raise CalibrationError("the histogram has seen no finite values")

    def __repr__(self) -> str:
        return (
            f"StreamingHistogram(bins={self._bins}, range={self._range:g}, count={self._count}, "
            f"nonfinite={self._nonfinite})"
        )


def _shifted_counts(counts: np.ndarray, doublings: int) -> np.ndarray:
    """Counts re-binned onto a range 2**doublings times wider (the exact pairwise merge, repeated)."""
    size = counts.size  # bins + 1: the last slot holds the values at +R
    half = (size - 1) // 2
    # old bin m (relative to 0) lies inside new bin floor(m / 2**d): an arithmetic right shift; +R
    # (m = bins/2) lands on the edge bins/2 >> d of the wider bins, exactly
    relative = np.arange(size, dtype=np.int64) - half
    target = (relative >> min(doublings, 62)) + half
    moved = np.zeros(size, dtype=np.int64)
    np.add.at(moved, target, counts)
    return moved


def _moved_counts(counts: np.ndarray, from_range: float, to_range: float) -> np.ndarray:
    """Counts of a histogram over [-from_range, from_range] placed onto [-to_range, to_range]."""
    if to_range == from_range:
        return counts.copy()
    doublings = round(math.log2(to_range / from_range))
    if doublings >= 1 and from_range * 2.0**doublings == to_range:
        return _shifted_counts(counts, doublings)
    bins = counts.size - 1  # the last slot holds the values at +R
    centres = (np.arange(bins + 1) + 0.5 - bins // 2) * (2.0 * from_range / bins)
    centres[-1] = from_range
    target = np.floor(centres * (bins / (2.0 * to_range))).astype(np.int64) + bins // 2
    moved = np.zeros(bins + 1, dtype=np.int64)
    np.add.at(moved, np.clip(target, 0, bins), counts)
    return moved


def _interpolated_percentile(counts: np.ndarray, edges: np.ndarray, total: int, q: float) -> float:
    rank = q / 100.0 * (total - 1)  # 0-based position in the sorted values, as np.percentile
    cumulative = np.cumsum(counts)
    j = int(np.searchsorted(cumulative, rank, side="right"))
    j = min(j, counts.size - 1)
    before = cumulative[j] - counts[j]
    inside = counts[j]
    fraction = (rank - before + 0.5) / inside if inside else 0.5
    width = edges[j + 1] - edges[j]
    return float(edges[j] + min(max(fraction, 0.0), 1.0) * width)
