"""The host-side stats store: exact pairwise merging, bounded memory, coarsening, save/load."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from actwidget import stats as S
from actwidget.stats import LayerStats, RunStats, StatsConfig, merge_groups

CFG = StatsConfig(hist="linear", bins=40, hist_max=10.0, near_zero=0.05, capacity=64)


def columns_from_values(vals: np.ndarray, steps: np.ndarray, config: StatsConfig = CFG):
    """One-batch stats columns computed directly (numpy) from raw values, one row of `vals` each.

    NaN/inf in `vals` are non-finite values; a row with no finite value has a NaN mean.
    """
    n, k = vals.shape
    finite = np.isfinite(vals)
    count = finite.sum(1).astype(float)
    v0 = np.where(finite, vals, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, v0.sum(1) / count, np.nan)
    dev = np.where(finite, vals - np.nan_to_num(mean)[:, None], 0.0)
    a = np.abs(v0)
    b = np.minimum(np.floor(a * config.bins / config.hist_max), config.bins - 1).astype(int)
    b = np.where(finite, b, config.bins) + np.arange(n)[:, None] * (config.bins + 1)
    hist = np.bincount(b.ravel(), minlength=n * (config.bins + 1)).reshape(n, -1)[:, :-1]
    cols = np.zeros((n, config.width))
    cols[:, S.Field.BATCHES] = 1
    cols[:, S.Field.STEP_SUM] = cols[:, S.Field.STEP_FIRST] = cols[:, S.Field.STEP_LAST] = steps
    cols[:, S.Field.NUMEL] = k
    cols[:, S.Field.COUNT] = count
    cols[:, S.Field.MEAN] = mean
    cols[:, S.Field.M2] = (dev * dev).sum(1)
    cols[:, S.Field.NEAR_ZERO] = ((a <= config.near_zero) & finite).sum(1)
    cols[:, S.Field.NONFINITE] = k - count
    cols[:, S.Field.G_MEAN] = np.nan  # no gradient recorded
    cols[:, S.HIST :] = hist
    return cols


def random_values(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Values with varying scale and offset per row, a few NaN/inf, and some all-NaN rows."""
    vals = rng.normal(rng.normal(0, 2, (n, 1)), rng.uniform(0.01, 5, (n, 1)), (n, k))
    vals[rng.random((n, k)) < 0.01] = np.nan
    vals[rng.random((n, k)) < 0.005] = np.inf
    vals[rng.random(n) < 0.01] = np.nan
    return vals


def pooled(cols: np.ndarray) -> tuple[float, float]:
    """Overall mean and unbiased variance pooled from columns (Chan's formula)."""
    n = cols[:, S.Field.COUNT]
    has = n > 0
    mean = np.where(has, cols[:, S.Field.MEAN], 0.0)
    tot = n.sum()
    gmean = (n * mean).sum() / tot
    m2 = (np.where(has, cols[:, S.Field.M2], 0.0) + n * (mean - gmean) ** 2).sum()
    return gmean, m2 / (tot - 1)


def check_invariants(s: LayerStats, last_step: float) -> None:
    cols = s.columns
    assert 1 <= len(s) <= s.config.capacity
    w = s.batches_per_column
    assert w & (w - 1) == 0  # a power of two
    assert np.all(s.batches[:-1] == w), "all full columns span the same number of batches"
    assert 1 <= s.batches[-1] <= w
    assert np.all(np.diff(s.step) > 0), "steps increase"
    assert np.all(cols[1:, S.Field.STEP_FIRST] == cols[:-1, S.Field.STEP_LAST] + 1), (
        "no gap, no overlap"
    )
    assert cols[0, S.Field.STEP_FIRST] == 0 and cols[-1, S.Field.STEP_LAST] == last_step


def test_config_validation():
    assert StatsConfig().width == S.HIST + 34  # log bins: 2**-24 .. 2**8, zero and overflow
    assert StatsConfig(hist="linear").width == S.HIST + 40
    for bad in (
        dict(hist="linear", bins=0),
        dict(hist="linear", bins=10**8),
        dict(hist="log", bins=12),
        dict(hist="cubic"),
        dict(hist_max=0),
        dict(hist_max=float("inf")),
        dict(near_zero=-1),
        dict(near_zero=float("nan")),
        dict(capacity=3),
        dict(capacity=0),
        dict(sample_size=0),
        dict(sample_size=1),
        dict(log_range=(8, -24)),
    ):
        with pytest.raises(ValueError, match=r"must|bins|hist"):
            StatsConfig(**bad)
    for bad in (dict(hist="linear", bins=4.5), dict(sample_size=100.0), dict(capacity=True),
                dict(exact_moments="yes"), dict(hist_max="1")):  # fmt: skip
        with pytest.raises(TypeError, match="must be"):
            StatsConfig(**bad)
    StatsConfig(sample_size=None)


def test_bin_edges_and_labels():
    log = StatsConfig()
    assert log.edges[0] == 0 and log.edges[1] == 2.0**-24 and log.edges[-2] == 2.0**8
    assert np.isinf(log.edges[-1]) and len(log.edges) == log.bins + 1
    assert log.bin_label(0) == "0" and log.bin_label(1) == "2^-24" and log.bin_label(33) == "2^8"
    lin = StatsConfig(hist="linear", bins=4, hist_max=2.0)
    np.testing.assert_array_equal(lin.edges, [0, 0.5, 1, 1.5, 2])
    assert lin.bin_label(1) == "0.5"


def test_pairwise_merging_keeps_totals_for_100k_batches():
    rng = np.random.default_rng(0)
    n, k = 10**5, 8
    vals = random_values(rng, n, k)
    inputs = columns_from_values(vals, np.arange(n))
    s = LayerStats("x", CFG)
    sizes = rng.integers(1, 3000, 200)
    bounds = np.minimum(np.r_[0, np.cumsum(sizes)], n)
    bounds = np.unique(np.r_[bounds, 1, 2, 3, 64, 65, n])  # also single-column appends
    for lo, hi in itertools.pairwise(bounds):
        s.append(inputs[lo:hi])
        check_invariants(s, hi - 1)
    cols = s.columns
    assert s.batches_per_column == 2048  # 10**5 / 64 rounded up to a power of two
    for field in (
        S.Field.BATCHES,
        S.Field.NUMEL,
        S.Field.COUNT,
        S.Field.NEAR_ZERO,
        S.Field.NONFINITE,
        S.Field.STEP_SUM,
    ):
        assert cols[:, field].sum() == inputs[:, field].sum(), field
    np.testing.assert_array_equal(cols[:, S.HIST :].sum(0), inputs[:, S.HIST :].sum(0))
    assert cols[:, S.Field.NUMEL].sum() == n * k
    # Overall mean and variance equal those of the raw values.
    finite = vals[np.isfinite(vals)]
    mean, var = pooled(cols)
    assert mean == pytest.approx(finite.mean(), rel=1e-9, abs=1e-12)
    assert var == pytest.approx(finite.var(ddof=1), rel=1e-9)
    # And each column's moments equal those of the raw values it spans.
    for c in cols[[0, 7, -1]]:
        lo, hi = int(c[S.Field.STEP_FIRST]), int(c[S.Field.STEP_LAST]) + 1
        part = vals[lo:hi][np.isfinite(vals[lo:hi])]
        assert c[S.Field.COUNT] == part.size
        assert c[S.Field.MEAN] == pytest.approx(part.mean(), rel=1e-9, abs=1e-12)
        assert c[S.Field.M2] == pytest.approx(((part - part.mean()) ** 2).sum(), rel=1e-9)


def test_append_one_at_a_time_matches_bulk():
    rng = np.random.default_rng(1)
    inputs = columns_from_values(random_values(rng, 300, 5), np.arange(300))
    one, bulk = LayerStats("a", CFG), LayerStats("b", CFG)
    for i in range(300):
        one.append(inputs[i : i + 1])
    bulk.append(inputs)
    assert one.batches_per_column == bulk.batches_per_column == 8
    np.testing.assert_allclose(one.columns, bulk.columns, rtol=1e-12, equal_nan=True)


def test_calls_of_the_same_step_combine_into_one_batch():
    rng = np.random.default_rng(2)
    vals = random_values(rng, 9, 6)
    steps = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    s = LayerStats("x", CFG)
    s.append(columns_from_values(vals[:4], steps[:4]))  # ends inside step 2
    s.append(columns_from_values(vals[4:], steps[4:]))  # continues step 2
    assert len(s) == 5
    np.testing.assert_array_equal(s.batches, 1)
    np.testing.assert_array_equal(s.step, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(s.numel, [12, 6, 18, 6, 12])
    for step in range(5):
        joined = columns_from_values(vals[steps == step].reshape(1, -1), [step])[0]
        np.testing.assert_allclose(s.columns[step], joined, rtol=1e-12, equal_nan=True)


def test_merge_groups_equals_direct_computation():
    rng = np.random.default_rng(3)
    vals = random_values(rng, 50, 7)
    vals[10] = np.nan  # a column with no finite value inside a group
    vals[11] = np.nan
    cols = columns_from_values(vals, np.arange(50))
    starts = np.array([0, 1, 5, 11, 12, 30, 49])
    out = merge_groups(cols, starts)
    ends = np.r_[starts[1:], 50]
    for row, lo, hi in zip(out, starts, ends, strict=True):
        direct = columns_from_values(vals[lo:hi].reshape(1, -1), [0])[0]
        for f in (S.Field.NUMEL, S.Field.COUNT, S.Field.NEAR_ZERO, S.Field.NONFINITE):
            assert row[f] == direct[f]
        np.testing.assert_array_equal(row[S.HIST :], direct[S.HIST :])
        assert row[S.Field.MEAN] == pytest.approx(
            direct[S.Field.MEAN], rel=1e-10, abs=1e-12, nan_ok=True
        )
        assert row[S.Field.M2] == pytest.approx(direct[S.Field.M2], rel=1e-10)
        assert row[S.Field.BATCHES] == hi - lo
        assert row[S.Field.STEP_SUM] == sum(range(lo, hi))
        assert (row[S.Field.STEP_FIRST], row[S.Field.STEP_LAST]) == (lo, hi - 1)
    only_nan = merge_groups(cols[10:12], np.array([0]))
    assert only_nan[0, S.Field.COUNT] == 0 and np.isnan(only_nan[0, S.Field.MEAN])
    assert only_nan[0, S.Field.M2] == 0 and only_nan[0, S.Field.NONFINITE] == 14


def test_series_properties():
    vals = np.array([[0.0, 0.01, -3.0, 12.0], [1.0, np.nan, np.inf, 2.0], [5.0] * 4])
    s = LayerStats("x", CFG)
    s.append(columns_from_values(vals, np.arange(3)))
    np.testing.assert_allclose(s.mean, [9.01 / 4, 1.5, 5.0])
    np.testing.assert_allclose(s.std, [np.std(vals[0], ddof=1), np.sqrt(0.5), 0.0], atol=1e-12)
    np.testing.assert_array_equal(s.near_zero, [0.5, 0, 0])
    np.testing.assert_array_equal(s.nonfinite, [0, 2, 0])
    np.testing.assert_array_equal(s.numel, [4, 4, 4])
    np.testing.assert_array_equal(s.hist[0, [0, 12, 39]], [2, 1, 1])  # 12 > hist_max: last bin
    np.testing.assert_array_equal(s.hist.sum(1), [4, 2, 4])  # finite values only
    np.testing.assert_array_equal(s.moments, np.stack([s.mean, s.std], 1))
    np.testing.assert_array_equal(s.hists, s.hist)
    one = LayerStats("y", CFG)
    one.append(columns_from_values(np.array([[1.0, np.nan]]), [0]))
    assert np.isnan(one.std[0])  # a single finite value has no unbiased std
    assert "columns=3" in repr(s) and "batches=3" in repr(s)


def test_coarsened_merges_exactly_and_leaves_the_original():
    rng = np.random.default_rng(4)
    vals = random_values(rng, 200, 5)
    inputs = columns_from_values(vals, np.arange(200))
    s = LayerStats("x", CFG)
    s.append(inputs)
    before = s.columns.copy()
    assert len(s) == 50 and s.batches_per_column == 4
    c = s.coarsened(20)
    assert len(c) == 13 and c.batches_per_column == 16
    np.testing.assert_array_equal(c.batches, [16] * 12 + [8])
    np.testing.assert_array_equal(s.columns, before)  # the original is unchanged
    assert len(s.coarsened(50)) == 50 and len(s.coarsened(1)) == 1
    for f in (
        S.Field.BATCHES,
        S.Field.NUMEL,
        S.Field.COUNT,
        S.Field.NEAR_ZERO,
        S.Field.NONFINITE,
        S.Field.STEP_SUM,
    ):
        assert c.columns[:, f].sum() == inputs[:, f].sum()
    np.testing.assert_array_equal(c.hist.sum(0), inputs[:, S.HIST :].sum(0))
    mean, var = pooled(c.columns)
    finite = vals[np.isfinite(vals)]
    assert mean == pytest.approx(finite.mean(), rel=1e-10)
    assert var == pytest.approx(finite.var(ddof=1), rel=1e-10)
    # Appending to a coarsened copy continues with its coarser columns.
    more = columns_from_values(random_values(rng, 40, 5), np.arange(200, 240))
    c.append(more)
    check_invariants(c, 239)


def test_run_stats_layers_version_and_clear():
    rs = RunStats(CFG)
    v = rs.version
    s = rs.layer("a")
    assert rs.layer("a") is s and list(rs) == ["a"] and len(rs) == 1 and rs["a"] is s
    rs.append("b", columns_from_values(np.ones((2, 3)), np.arange(2)))
    assert rs.version > v and len(rs["b"]) == 2
    with pytest.raises(KeyError):
        rs["c"]
    rs.clear()
    assert len(rs) == 0
    assert RunStats().config == StatsConfig()


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    cfg = StatsConfig(
        hist="linear", bins=8, hist_max=2.0, near_zero=0.1, capacity=4, sample_size=None
    )
    rs = RunStats(cfg)
    rs.append(
        "layers.0 (Conv2dWithReLU)", columns_from_values(random_values(rng, 9, 5), range(9), cfg)
    )
    rs.append("b'", columns_from_values(random_values(rng, 3, 4), range(3), cfg))
    rs.layer("empty")
    path = rs.save(tmp_path / "run.npz")
    assert path == tmp_path / "run.npz"
    back = RunStats.load(path)
    assert back.config == cfg
    assert list(back) == list(rs)
    for name in rs:
        np.testing.assert_array_equal(back[name].columns, rs[name].columns)
        assert back[name].config == cfg and back[name].name == name
        assert back[name].batches_per_column == rs[name].batches_per_column
    assert back["layers.0 (Conv2dWithReLU)"].batches_per_column == 4
    assert back["empty"].columns.shape == (0, cfg.width)
    back.append("b'", columns_from_values(np.ones((1, 4)), [3], cfg))  # loaded stats grow on
    assert back["b'"].batches.sum() == 4


@pytest.mark.parametrize(
    "arrays",
    [
        {"x": np.arange(3)},  # no meta at all
        {"meta": np.array('{"format": "other/1"}')},
        {"meta": np.array("not json")},
        {"meta": np.arange(3)},
    ],
)
def test_load_rejects_other_npz(tmp_path, arrays):
    path = tmp_path / "other.npz"
    np.savez(path, **arrays)
    with pytest.raises(S.StatsFileError, match=r"not (a readable )?(an )?actwidget stats file"):
        RunStats.load(path)


def test_load_rejects_other_files(tmp_path):
    npy, text = tmp_path / "a.npy", tmp_path / "a.txt"
    np.save(npy, np.arange(3))
    text.write_text("hello")
    for path in (npy, text):
        with pytest.raises(
            S.StatsFileError,
            match=r"not (a readable )?(an )?actwidget stats file",
        ):
            RunStats.load(path)
