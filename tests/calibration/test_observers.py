"""Streaming histogram and range observers, checked against numpy on known distributions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.calibration.histogram import StreamingHistogram
from edgekit.calibration.observers import (
    EntropyObserver,
    MseObserver,
    Observer,
    get_observer,
    kl_divergence_curve,
    list_observers,
    observer_names,
    quantization_mse,
    register_observer,
)

ALL = ["minmax", "percentile", "entropy", "mse"]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def feed(observer, x: np.ndarray, batches: int):
    for part in np.array_split(x, batches):
        observer.update(part)
    return observer


def fake_quant(x: np.ndarray, lo: float, hi: float, step: float) -> np.ndarray:
    """The quantizer the observers aim for: round to multiples of step, clip to [lo, hi]."""
    return np.clip(np.round(x / step) * step, lo, hi)


def empirical_mse(x: np.ndarray, lo: float, hi: float, step: float) -> float:
    return float(np.mean((fake_quant(x, lo, hi, step) - x) ** 2))


# ---- StreamingHistogram --------------------------------------------------------------------------------


def test_growth_rebins_exactly_like_a_histogram_built_at_the_final_range():
    bins = 4096
    final_range = 16.0  # the stream starts at R = 1 (the -1.0 below) and grows 10x, so R doubles 4 times
    width = 2 * final_range / bins
    small = rng().uniform(-1, 1, 20_000)
    large = rng(1).uniform(-10, 10, 50_000)
    # every value at the centre of a final bin, so no value sits on an edge of any range along the way
    batches = [np.floor(b / width) * width + width / 2 for b in (small, large)]
    batches[0][0] = -1.0  # an edge at every range, and the first batch's largest |x|: R starts at 1
    hist = StreamingHistogram(bins)
    hist.update(batches[0].astype(np.float32))
    assert hist.range == 1.0
    hist.update(batches[1][:100].astype(np.float32))  # |x| < 10: R doubles to 16 in one go
    hist.update(batches[1][100:].astype(np.float32))
    assert hist.range == final_range
    expected, _ = np.histogram(np.concatenate(batches), bins=bins, range=(-final_range, final_range))
    np.testing.assert_array_equal(hist.counts, expected)


def test_growth_is_exact_for_arbitrary_values_too():
    # the bins are closed away from zero, so values on an edge (R itself included) re-bin consistently
    x = rng().standard_normal(200_000).astype(np.float32) * np.float32(3)
    x[::1000] = np.round(x[::1000], 1)  # plenty of values exactly on bin edges
    stream = StreamingHistogram(1024)
    for part in np.array_split(x, 50):  # the first part's max sets R, then it doubles a few times
        stream.update(part)
    at_once = StreamingHistogram(1024, initial_range=stream.range)
    at_once.update(x)
    assert stream.range > np.abs(x[: x.size // 50]).max()
    np.testing.assert_array_equal(stream.counts, at_once.counts)
    assert (stream.min, stream.max, stream.count) == (float(x.min()), float(x.max()), x.size)


def test_merge_of_shards_equals_one_stream():
    x = rng().laplace(0, 1, 300_000).astype(np.float32)
    parts = np.array_split(x, 30)
    single = StreamingHistogram(2048, initial_range=1.0)
    shards = [StreamingHistogram(2048, initial_range=1.0) for _ in range(3)]
    for i, part in enumerate(parts):
        single.update(part)
        shards[i % 3].update(part)
    merged = StreamingHistogram(2048)  # an empty one takes the first shard as it is
    for shard in shards:
        merged.merge(shard)
    assert merged.range == single.range
    np.testing.assert_array_equal(merged.counts, single.counts)
    assert (merged.min, merged.max, merged.count) == (single.min, single.max, single.count)


def test_merge_of_unrelated_ranges_stays_within_a_bin():
    a, b = rng().normal(0, 1, 100_000), rng(1).normal(0, 3, 100_000)
    left, right, both = StreamingHistogram(), StreamingHistogram(), StreamingHistogram()
    left.update(a)
    right.update(b)
    both.update(np.concatenate([b, a]))  # the larger range first: same R as the merge keeps
    left.merge(right)
    assert left.range == right.range == both.range
    assert left.count == both.count and left.counts.sum() == both.count
    for q in (1, 25, 50, 90, 99.9):
        assert abs(left.percentile(q) - both.percentile(q)) <= both.bin_width


def test_memory_is_constant_in_the_number_of_batches():
    hist = StreamingHistogram(4096)
    data = rng().standard_normal((1000, 256)).astype(np.float32)
    for row in data[:10]:
        hist.update(row)
    after_10 = hist.nbytes
    for i, row in enumerate(data[10:]):
        hist.update(row * (1 + i))  # growing range, too
    assert hist.nbytes == after_10 == (4096 + 1) * 8 + 40


def test_nan_and_inf_are_counted_not_binned():
    hist = StreamingHistogram(64)
    hist.update(np.array([np.nan, np.nan]))  # nothing finite yet: no range
    assert hist.range == 0.0 and hist.nonfinite == 2 and hist.empty
    hist.update(np.array([np.inf, -1.0, 2.0, -np.inf, np.nan], dtype=np.float32))
    assert hist.nonfinite == 5
    assert hist.count == 2 and hist.counts.sum() == 2
    assert (hist.min, hist.max, hist.range) == (-1.0, 2.0, 2.0)


def test_all_zero_start_then_real_values():
    hist = StreamingHistogram(256)
    hist.update(np.zeros(1000, dtype=np.float32))
    assert 0 < hist.range <= 1e-29 and hist.percentile(50) == 0.0
    hist.update(np.array([3.0, -3.0]))
    assert hist.range >= 3.0 and hist.count == 1002
    assert hist.counts[128] == 1000 and hist.counts.sum() == 1002  # the zeros stay in [0, w], exactly
    assert hist.percentile(50) == pytest.approx(0.0, abs=hist.bin_width)


def test_percentiles_of_uniform_integers_within_one_bin():
    values = np.repeat(np.arange(-500, 500), 7).astype(np.float64)
    rng().shuffle(values)
    hist = StreamingHistogram(4096)
    for part in np.array_split(values, 10):
        hist.update(part)
    w = hist.bin_width
    for q in (0, 0.1, 1, 10, 33.3, 50, 75, 99, 99.99, 100):
        lower = np.percentile(values, q, method="lower")
        higher = np.percentile(values, q, method="higher")
        assert lower - w <= hist.percentile(q) <= higher + w, q
        a_lower = np.percentile(np.abs(values), q, method="lower")
        a_higher = np.percentile(np.abs(values), q, method="higher")
        assert a_lower - w <= hist.abs_percentile(q) <= a_higher + w, q
    assert hist.percentile(0) == -500 and hist.percentile(100) == 499


def test_abs_counts_fold_the_signed_histogram():
    x = rng().standard_normal(50_000)
    hist = StreamingHistogram(512)
    hist.update(x)
    expected, _ = np.histogram(np.abs(x), bins=256, range=(0, hist.range))
    np.testing.assert_array_equal(hist.abs_counts(), expected)
    assert hist.abs_edges()[-1] == hist.range and hist.edges.size == 513


def test_histogram_rejects_bad_settings():
    with pytest.raises(ValueError, match="even"):
        StreamingHistogram(4095)
    with pytest.raises(ValueError, match="no finite"):
        StreamingHistogram().percentile(50)
    with pytest.raises(ValueError, match="bins"):
        StreamingHistogram(64).merge(StreamingHistogram(128))


# ---- observers -------------------------------------------------------------------------------------------


def test_minmax_is_exact_and_ignores_nonfinite():
    x = rng().normal(1.0, 2.0, (64, 3, 8, 8)).astype(np.float32)
    dirty = x.copy()
    dirty[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    obs = feed(get_observer("minmax", name="conv"), dirty, 8)
    finite = dirty[np.isfinite(dirty)]
    lo, hi = float(finite.min()), float(finite.max())
    assert obs.observed_range == (lo, hi) and obs.nonfinite == 3
    assert obs.compute_range(symmetric=False) == (lo, hi)
    assert obs.compute_range(symmetric=True) == (-max(-lo, hi), max(-lo, hi))
    relu = feed(get_observer("minmax"), np.maximum(x, 0), 4)
    assert relu.compute_range(symmetric=False, unsigned=True) == (0.0, float(x.max()))


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_percentile_matches_numpy_within_a_bin(distribution: str):
    x = (rng().uniform(-2, 5, 400_000) if distribution == "uniform" else rng().normal(0.5, 1, 400_000)).astype(
        np.float32
    )
    obs = feed(get_observer("percentile", percentile=99.9), x, 40)
    w = obs.histogram.bin_width
    lo, hi = obs.compute_range(symmetric=False)
    assert lo == pytest.approx(min(np.percentile(x, 0.1), 0), abs=w)
    assert hi == pytest.approx(np.percentile(x, 99.9), abs=w)
    _, t = obs.compute_range(symmetric=True)
    assert t == pytest.approx(np.percentile(np.abs(x), 99.9), abs=w)
    relu = feed(get_observer("percentile"), np.maximum(x, 0), 10)
    assert relu.compute_range(symmetric=False)[0] == 0.0  # 0 stays inside the range


def _kl_as_in_the_talk(hist: np.ndarray, levels: int) -> dict[int, float]:
    """A line-by-line transcription of the GTC 2017 pseudocode (slow, for comparison)."""
    out = {}
    for i in range(levels, hist.size):
        p = hist[:i].astype(np.float64).copy()
        p[i - 1] += hist[i:].sum()
        raw = hist[:i].astype(np.float64)
        group = np.arange(i) * levels // i  # bin j of the first i goes to quantized level group[j]
        group_sum = np.bincount(group, weights=raw, minlength=levels)
        group_nonzero = np.bincount(group, weights=raw > 0, minlength=levels)
        q = np.where(raw > 0, group_sum[group] / np.maximum(group_nonzero[group], 1), 0.0)  # expand back
        p /= p.sum()
        q /= q.sum()
        used = p > 0
        out[i] = np.inf if np.any(q[used] == 0) else float(np.sum(p[used] * np.log(p[used] / q[used])))
    return out


def test_kl_curve_equals_the_talks_pseudocode():
    g = rng(3)
    hist = g.integers(0, 50, 600)
    hist[g.random(600) < 0.3] = 0  # empty bins, including some candidate last bins
    hist[300:320] = 0
    candidates, divergence = kl_divergence_curve(hist, 128)
    reference = _kl_as_in_the_talk(hist, 128)
    assert list(candidates) == list(reference)
    expected = np.array([reference[i] for i in candidates])
    assert np.array_equal(np.isinf(divergence), np.isinf(expected)) and np.isinf(expected).any()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(divergence[finite], expected[finite], rtol=1e-9, atol=1e-12)


def test_entropy_threshold_on_laplace_is_stable_and_not_minmax():
    thresholds = []
    for seed in range(3):
        x = rng(seed).laplace(0.0, 1.0, 1_000_000).astype(np.float32)
        a = np.abs(x)
        for batches in (1, 100):
            obs = feed(get_observer("entropy"), x, batches)
            lo, hi = obs.compute_range(symmetric=True)
            assert lo == -hi
            # what TensorRT's procedure gives on this histogram: the talk's pseudocode, run directly
            counts = obs.histogram.abs_counts()
            kl = _kl_as_in_the_talk(counts, 128)
            best = min(kl, key=kl.get)
            assert hi == pytest.approx(min((best + 0.5) * obs.histogram.range / 2048, a.max()))
            assert np.percentile(a, 99.99) < hi < 0.9 * a.max()  # clearly inside (p99 is 4.6, max ~15)
            assert hi != -np.min(x) and hi != np.max(x)
            thresholds.append(hi)
    # measured: 10.4 .. 11.3 (b = 1): the KL minimum sits where the tail bins turn sparse
    assert min(thresholds) > 9.5 and max(thresholds) < 12.5
    assert max(thresholds) / min(thresholds) < 1.2


def test_entropy_on_a_non_negative_tensor_is_one_sided():
    x = np.abs(rng().laplace(0.0, 1.0, 200_000)).astype(np.float32)
    obs = feed(EntropyObserver(), x, 5)
    lo, hi = obs.compute_range(symmetric=False)
    assert lo == 0.0 and 0 < hi <= x.max()
    assert obs.quantized_bins(one_sided=True) == 256 and obs.quantized_bins(one_sided=False) == 128
    assert EntropyObserver(num_quantized_bins=64).quantized_bins(one_sided=True) == 64


def test_quantization_mse_model_matches_fake_quantization():
    x = rng().standard_normal(500_000)
    hist = StreamingHistogram(4096)
    hist.update(x)
    for lo, hi, step in [(-4, 4, 4 / 127), (-1, 1, 1 / 127), (-3 * 8 / 255, 5 * 8 / 255, 8 / 255), (0, 4, 4 / 255)]:
        model = quantization_mse(hist.edges, hist.counts, np.array([lo]), np.array([hi]), np.array([step]))[0]
        assert model == pytest.approx(empirical_mse(x, lo, hi, step), rel=2e-3)


def test_mse_symmetric_threshold_on_gaussian_is_the_best_one():
    sigma = 2.0
    x = rng().normal(0.0, sigma, 300_000)
    obs = feed(MseObserver(), x.astype(np.float32), 30)
    _, t = obs.compute_range(symmetric=True, num_bits=8)
    grid = np.linspace(3.0, 5.0, 81) * sigma
    errors = [empirical_mse(x, -c, c, c / 127) for c in grid]
    assert 3.8 * sigma < t < 4.2 * sigma  # ACIQ's optimum for 8-bit Gaussian is 3.92 sigma
    assert empirical_mse(x, -t, t, t / 127) <= 1.02 * min(errors)


def test_mse_on_relu_output_searches_zero_to_t():
    x = np.maximum(rng().standard_normal(300_000), 0.0)
    obs = feed(MseObserver(), x, 10)
    lo, hi = obs.compute_range(symmetric=False, unsigned=True)
    assert lo == 0.0
    grid = np.linspace(2.5, 5.0, 101)
    best = min(empirical_mse(x, 0, c, c / 255) for c in grid)
    assert empirical_mse(x, 0, hi, hi / 255) <= 1.02 * best


def test_mse_asymmetric_search_on_a_skewed_signed_tensor():
    x = rng().gumbel(0.0, 1.0, 40_000) - 0.5  # long right tail, short left one, both signs
    obs = feed(MseObserver(), x, 10)
    lo, hi = obs.compute_range(symmetric=False)
    step = (hi - lo) / 255
    assert lo < 0 < hi and abs(lo / step - round(lo / step)) < 1e-6  # on the grid of an integer zero point
    chosen = empirical_mse(x, lo, hi, step)
    best = min(  # brute force over spans and zero points
        empirical_mse(x, -z * span / 255, (255 - z) * span / 255, span / 255)
        for span in np.linspace(6.0, 16.0, 21)
        for z in range(0, 256, 4)
    )
    assert chosen <= 1.01 * best  # measured: 0.99 (the search is finer than this grid)
    _, t = obs.compute_range(symmetric=True)
    assert chosen < 0.6 * empirical_mse(x, -t, t, 2 * t / 255)  # using both sides freely pays off here


def test_mse_range_widens_with_the_number_of_bits():
    x = rng().gumbel(0.0, 1.0, 100_000) - 0.5
    obs = feed(MseObserver(), x, 4)
    ranges = {bits: obs.compute_range(symmetric=False, num_bits=bits) for bits in (4, 8, 16)}
    assert ranges[4][1] < ranges[8][1] < ranges[16][1]
    np.testing.assert_allclose(ranges[16], obs.observed_range, rtol=0.01)  # 16 bits: rounding is free


def test_one_batch_or_hundred_give_the_same_ranges():
    x = rng().laplace(0.2, 1.0, 400_000).astype(np.float32)
    x[[0, -1]] = x[[int(np.argmax(np.abs(x))), 0]]  # the largest |x| first: both streams end at the same R
    for name in ALL:
        one, many = feed(get_observer(name), x, 1), feed(get_observer(name), x, 100)
        for symmetric in (True, False):
            assert one.compute_range(symmetric=symmetric) == many.compute_range(symmetric=symmetric), name


def test_batch_splits_move_ranges_by_rebinning_granularity_only():
    # 100 batches end at a wider R than 1 batch (R doubles from the first batch's max), so bins differ
    x = rng(4).laplace(0.0, 1.0, 400_000).astype(np.float32)
    # measured over 5 seeds, Gaussian and Laplace: percentile <= 0.1%, mse <= 1.6%, entropy up to 15%:
    # the KL minimum lies where the tail bins turn sparse, so it follows the bin layout (the same data in
    # TensorRT's own layout moves as much between seeds)
    for name, rel in [("minmax", 0.0), ("percentile", 0.005), ("mse", 0.03), ("entropy", 0.2)]:
        one, many = feed(get_observer(name), x, 1), feed(get_observer(name), x, 100)
        if name != "minmax":
            assert many.histogram.range != one.histogram.range
        for symmetric in (True, False):
            a, b = one.compute_range(symmetric=symmetric), many.compute_range(symmetric=symmetric)
            np.testing.assert_allclose(a, b, rtol=rel, atol=0, err_msg=f"{name} symmetric={symmetric}")


@pytest.mark.parametrize("name", ALL)
def test_every_observer_ignores_nonfinite_and_keeps_constant_memory(name: str):
    x = rng().standard_normal((1000, 128)).astype(np.float32)
    clean, dirty = get_observer(name), get_observer(name)
    for i, row in enumerate(x):
        clean.update(row)
        noisy = row.copy()
        noisy[i % 128] = (np.nan, np.inf, -np.inf)[i % 3]
        dirty.update(noisy)
        if i == 9:
            size_after_10 = dirty.nbytes
    assert dirty.nbytes == size_after_10 and dirty.nonfinite == 1000 and clean.nonfinite == 0
    assert dirty.count == clean.count - 1000 and dirty.batches == 1000


@pytest.mark.parametrize("name", ALL)
def test_never_finite_tensor_raises_with_its_name(name: str):
    obs = get_observer(name, name="backbone/conv3_out")
    obs.update(np.full((2, 4), np.nan, dtype=np.float32))
    obs.update(np.array([np.inf]))
    with pytest.raises(ValueError, match=r"tensor 'backbone/conv3_out' never received finite values .*9 NaN/Inf"):
        obs.compute_range(symmetric=True)
    with pytest.raises(ValueError, match="never received finite values"):
        obs.observed_range  # noqa: B018


@pytest.mark.parametrize("name", ALL)
def test_merged_shards_give_the_single_stream_range(name: str):
    x = rng().normal(0.0, 1.0, 200_000).astype(np.float32)
    shards = np.array_split(x, 4)
    for shard in shards:
        shard[0] = -6.0  # every shard starts at the same R, so the merged histogram is the single one
    single = feed(get_observer(name), np.concatenate(shards), 20)
    observers = [feed(get_observer(name), shard, 5) for shard in shards]
    for other in observers[1:]:
        observers[0].merge(other)
    merged = observers[0]
    assert merged.count == single.count and merged.batches == single.batches
    assert merged.observed_range == single.observed_range
    for symmetric in (True, False):
        assert merged.compute_range(symmetric=symmetric) == single.compute_range(symmetric=symmetric)


def test_compute_range_checks_its_arguments():
    obs = get_observer("minmax")
    obs.update(np.zeros(4))
    assert obs.compute_range(symmetric=True) == (0.0, 0.0)
    with pytest.raises(ValueError, match="num_bits"):
        obs.compute_range(symmetric=True, num_bits=1)
    with pytest.raises(TypeError, match="real-valued"):
        obs.update(np.ones(3, dtype=np.complex64))


def test_merge_refuses_other_kinds_and_settings():
    with pytest.raises(TypeError):
        get_observer("minmax").merge(get_observer("mse"))
    with pytest.raises(ValueError, match="different settings"):
        get_observer("percentile", percentile=99.9).merge(get_observer("percentile"))


def test_registry_lists_all_four_with_descriptions():
    assert observer_names()[:4] == ALL
    infos = {info.name: info for info in list_observers()}
    for name in ALL:
        assert infos[name].description and "\n" not in infos[name].description
        json.dumps(infos[name].settings)
        assert get_observer(name).settings() == infos[name].settings
    assert infos["percentile"].settings == {"percentile": 99.99, "bins": 2048}
    assert infos["entropy"].settings == {"bins": 2048, "num_quantized_bins": None, "zero_bin": "like_bin1"}
    assert get_observer("entropy", name="x", bins=1024).histogram.bins == 2048
    with pytest.raises(ValueError, match="unknown observer 'kl'.*minmax, percentile, entropy, mse"):
        get_observer("kl")
    with pytest.raises(ValueError, match="no setting 'percentil'"):
        get_observer("percentile", percentil=99.0)


def test_register_observer_adds_one_name():
    from edgekit.calibration import observers as module

    @register_observer("zero_test")
    class ZeroObserver(Observer):
        """Always the range [0, 0]."""

        count = 1
        nonfinite = 0
        nbytes = 0

        def _update_impl(self, values):
            pass

        def _compute_range_impl(self, symmetric, num_bits, unsigned):
            return 0.0, 0.0

    try:
        assert "zero_test" in observer_names() and ZeroObserver.kind == "zero_test"
        assert get_observer("zero_test").compute_range(symmetric=True) == (0.0, 0.0)
        with pytest.raises(ValueError, match="already taken"):
            register_observer("zero_test")(type("Other", (Observer,), {}))
    finally:
        module._REGISTRY.pop("zero_test")


def test_entropy_zero_spike_no_longer_drags_the_threshold_down():
    """ReLU outputs: half exact zeros. The talk's method clips them hard; bin 0 = bin 1 (the default) does not."""
    rng = np.random.default_rng(3)
    relu = np.maximum(rng.normal(size=400_000), 0).astype(np.float32)
    talk, default = get_observer("entropy", zero_bin="keep"), get_observer("entropy")
    talk.update(relu)
    default.update(relu)
    t_talk = talk.compute_range(symmetric=True)[1]
    t_default = default.compute_range(symmetric=True)[1]
    assert t_talk < 2.5 < 3.5 < t_default
    with pytest.raises(ValueError, match="zero_bin"):
        get_observer("entropy", zero_bin="drop")
