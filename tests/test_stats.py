"""The host-side stats store: exact pairwise merging, bounded memory, coarsening, save/load."""

from __future__ import annotations

import itertools
import json
import re

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
    cols[:, S.Field.BATCH_SUM] = cols[:, S.Field.BATCH_FIRST] = cols[:, S.Field.BATCH_LAST] = steps
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
    assert np.all(np.diff(s.batch) > 0), "steps increase"
    assert np.all(cols[1:, S.Field.BATCH_FIRST] == cols[:-1, S.Field.BATCH_LAST] + 1), (
        "no gap, no overlap"
    )
    assert cols[0, S.Field.BATCH_FIRST] == 0 and cols[-1, S.Field.BATCH_LAST] == last_step


def test_config_defaults_and_widths():
    assert StatsConfig().width == S.HIST + 34  # log bins: 2**-24 .. 2**8, zero and overflow
    assert StatsConfig(hist="linear").width == S.HIST + 40
    assert StatsConfig(log_range=[-4, 4]).log_range == (-4, 4)
    StatsConfig(sample_size=None)
    StatsConfig(near_zero=0, sample_size=16, capacity=2, hist="linear", bins=1, hist_max=1e-30)
    StatsConfig(capacity=1 << 16)  # 65536 columns of 51 fields: within the 64 MiB
    StatsConfig(hist="linear", bins=4096, capacity=2000)


# (settings, error type, what the message must say: the allowed range or choice)
BAD_CONFIGS = [
    (dict(near_zero=float("nan")), ValueError, r"near_zero must be a finite number in \[0"),
    (dict(near_zero=float("inf")), ValueError, r"near_zero must be a finite number in \[0"),
    (dict(near_zero=-1), ValueError, r"near_zero must be a finite number in \[0\.0, "),
    (dict(near_zero="0.1"), TypeError, r"near_zero must be a finite number in"),
    (dict(hist_max=float("inf")), ValueError, r"hist_max must be a finite number in \(0\.0, "),
    (dict(hist_max=float("nan")), ValueError, r"hist_max must be a finite number in"),
    (dict(hist_max=0), ValueError, r"hist_max must be a finite number in \(0\.0, "),
    (dict(hist_max="1"), TypeError, r"hist_max must be a finite number"),
    (dict(hist_max=True), TypeError, r"hist_max must be a finite number"),
    (dict(sample_size=1), ValueError, r"sample_size must be in \[16, 1048576\], got 1"),
    (dict(sample_size=0), ValueError, r"sample_size must be in \[16, 1048576\]"),
    (dict(sample_size=-5), ValueError, r"sample_size must be in \[16, 1048576\]"),
    (dict(sample_size=1 << 24), ValueError, r"sample_size must be in \[16, 1048576\]"),
    (dict(sample_size=100.0), TypeError, r"sample_size must be an int in \[16, 1048576\]"),
    (dict(sample_size=2048.5), TypeError, r"sample_size must be an int in"),
    (dict(sample_size="2048"), TypeError, r"sample_size must be an int in"),
    (dict(hist="linear", bins=4.5), TypeError, r"bins must be an int in \[1, 4096\]"),
    (dict(hist="linear", bins=40.0), TypeError, r"bins must be an int in \[1, 4096\]"),
    (dict(hist="linear", bins=10**8), ValueError, r"bins must be in \[1, 4096\], got 100000000"),
    (dict(hist="linear", bins=0), ValueError, r"bins must be in \[1, 4096\]"),
    (dict(hist="log", bins=12), ValueError, r"bins is one per power of two .* \(34 for"),
    (dict(hist="cubic"), ValueError, r'hist must be "log" or "linear"'),
    (dict(log_range=(8, -24)), ValueError, r"log_range\[1\] must be in \[9, 127\]"),
    (dict(log_range=(-200, 8)), ValueError, r"log_range\[0\] must be in \[-126, 126\]"),
    (dict(log_range=(-24.5, 8)), TypeError, r"log_range\[0\] must be an int"),
    (dict(log_range=(-24, 8, 1)), TypeError, r"log_range must be a pair of ints"),
    (dict(log_range=None), TypeError, r"log_range must be a pair of ints"),
    (dict(capacity=3), ValueError, r"capacity must be even"),
    (dict(capacity=0), ValueError, r"capacity must be in \[2, 65536\]"),
    (dict(capacity=1 << 20), ValueError, r"capacity must be in \[2, 65536\]"),
    (dict(capacity=True), TypeError, r"capacity must be an int in \[2, 65536\]"),
    (dict(capacity=64.0), TypeError, r"capacity must be an int"),
    (
        dict(hist="linear", bins=4096, capacity=1 << 16),  # 2 GiB per layer
        ValueError,
        r"capacity \* \(bins \+ 17\) must be at most 8388608 \(64 MiB per layer\)",
    ),
    (dict(exact_moments="yes"), TypeError, r"exact_moments must be True or False"),
    (dict(grads=1), TypeError, r"grads must be True or False"),
]


@pytest.mark.parametrize("settings, error, message", BAD_CONFIGS)
def test_config_rejects_bad_settings_saying_the_allowed_range(settings, error, message):
    with pytest.raises(error, match=message):
        StatsConfig(**settings)


def test_config_stores_plain_numbers_and_survives_a_file(tmp_path):
    cfg = StatsConfig(
        hist="linear",
        bins=np.int32(8),
        hist_max=np.float32(2.5),
        near_zero=np.float16(0.25),
        capacity=np.int64(6),
        sample_size=np.uint16(100),
    )
    for name, kind in (("bins", int), ("capacity", int), ("sample_size", int)):
        assert type(getattr(cfg, name)) is kind, name
    assert type(cfg.hist_max) is float and type(cfg.near_zero) is float
    assert (cfg.bins, cfg.hist_max, cfg.near_zero, cfg.capacity) == (8, 2.5, 0.25, 6)
    rs = RunStats(cfg)
    rs.layer("a")
    assert RunStats.load(rs.save(tmp_path / "np.npz")).config == cfg  # JSON-serialisable
    log = StatsConfig(log_range=(np.int8(-8), np.int64(4)))
    assert log.log_range == (-8, 4) and all(type(v) is int for v in log.log_range)


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
        S.Field.BATCH_SUM,
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
        lo, hi = int(c[S.Field.BATCH_FIRST]), int(c[S.Field.BATCH_LAST]) + 1
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
    np.testing.assert_array_equal(s.batch, [0, 1, 2, 3, 4])
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
        assert row[S.Field.BATCH_SUM] == sum(range(lo, hi))
        assert (row[S.Field.BATCH_FIRST], row[S.Field.BATCH_LAST]) == (lo, hi - 1)
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
        S.Field.BATCH_SUM,
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


# --- Damaged and inconsistent files: one error type, naming the file and the problem ------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A real run saved by a recorder: 3 layers, two fits, a nonfinite alert."""
    import torch

    from actwidget.recorder import StatsHooks

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    hooks = StatsHooks(model=model, config=StatsConfig(capacity=8))
    for fit in range(2):
        with hooks:
            for step in range(10):
                x = torch.randn(4, 6)
                if fit == 1 and step == 4:
                    x[0, 0] = float("nan")
                with torch.no_grad():
                    model(x)
                hooks.end_batch()
    assert len(hooks.alerts) >= 1 and len(hooks.stats.fits) == 2
    path = hooks.stats.save(tmp_path_factory.mktemp("saved") / "run.npz")
    return path, RunStats.load(path)


def same_stats(a: RunStats, b: RunStats) -> bool:
    return (
        list(a) == list(b)
        and a.config == b.config
        and a.fits == b.fits
        and len(a.alerts) == len(b.alerts)
        and all(np.array_equal(a[n].columns, b[n].columns, equal_nan=True) for n in a)
    )


def offsets(n: int) -> list[int]:
    """Byte offsets to damage in an n-byte file: all of the first and last 100 bytes (zip
    headers, the header array's header, the central directory), every 6th in between."""
    return sorted({*range(min(n, 100)), *range(max(n - 100, 0), n), *range(0, n, 6)})


def load_error(path) -> str:
    """The message of the `StatsFileError` loading `path` raises (any other error fails)."""
    with pytest.raises(S.StatsFileError) as e:
        RunStats.load(path)
    assert str(path) in str(e.value)
    return str(e.value)


def test_a_loaded_file_works_everywhere(saved):
    _, back = saved
    assert list(back) == ["0 (Linear)", "1 (ReLU)", "2 (Linear)"]
    assert back.fits == [S.FitMark(1, 0), S.FitMark(2, 10)] and back.batches == 20
    assert back.alerts[0].kind == "nonfinite" and back.alerts[0].fit == 2
    for s in back.values():
        assert len(s) == 5 and s.batches.sum() == 20  # 20 batches in 5 columns of 4
        assert s.mean.shape == s.std.shape == s.near_zero.shape == (5,)
        assert s.hist.shape == (5, back.config.bins)
        np.testing.assert_allclose(s.hist.sum(1), s.numel - s.nonfinite, rtol=1e-9)


def test_truncated_files_raise_stats_file_error_at_every_length(saved, tmp_path):
    path, _ = saved
    raw = path.read_bytes()
    bad = tmp_path / "cut.npz"
    for n in offsets(len(raw)):  # lengths from empty to one byte short
        bad.write_bytes(raw[:n])
        assert "or truncated or corrupted" in load_error(bad)


def test_corrupted_bytes_raise_stats_file_error_or_change_nothing(saved, tmp_path):
    path, original = saved
    raw = path.read_bytes()
    bad = tmp_path / "flipped.npz"
    failed = tried = 0
    for offset in offsets(len(raw)):
        for mask in (0xFF, 0x01) if offset % 2 else (0xFF,):
            tried += 1
            flipped = bytearray(raw)
            flipped[offset] ^= mask
            bad.write_bytes(flipped)
            try:
                back = RunStats.load(bad)
            except S.StatsFileError as e:
                assert str(bad) in str(e)
                failed += 1
            else:  # a byte no reader checks (a zip timestamp, ...): the same stats
                assert same_stats(back, original), offset
    assert failed > 0.6 * tried  # most bytes are checked (CRC, zip structure, header)


def test_a_corrupted_layer_is_named(saved, tmp_path):
    import zipfile

    path, _ = saved
    info = zipfile.ZipFile(path).getinfo("layer1.npy")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0x55  # inside the compressed data
    bad = tmp_path / "layer.npz"
    bad.write_bytes(raw)
    pattern = r"layer '1 \(ReLU\)' \(array layer1\) is corrupted \((zlib\.error|(zipfile\.)?BadZip)"
    assert re.search(pattern, load_error(bad))


def rewrite(src, dst, change=None, drop=(), **arrays):
    """Copy the npz `src` to `dst` with its header changed by `change(header)` and arrays
    replaced, added (`arrays`) or dropped (`drop`)."""
    with np.load(src) as data:
        out = {k: data[k] for k in data.files if k not in drop}
    header = json.loads(str(out["meta"]))
    if change is not None:
        change(header)
    out["meta"] = np.array(json.dumps(header))
    out.update(arrays)
    np.savez(dst, **out)
    return dst


def set_key(key, value):
    return lambda h: h.__setitem__(key, value)


def set_config(**kw):
    return lambda h: h["config"].update(kw)


CFG_WIDTH = StatsConfig(capacity=8).width
GOOD_COLS = np.zeros((2, CFG_WIDTH))
GOOD_COLS[:, S.Field.BATCHES] = 1
GOOD_COLS[:, S.Field.BATCH_FIRST] = GOOD_COLS[:, S.Field.BATCH_LAST] = [0, 1]


def with_field(field, values, cols=GOOD_COLS):
    out = cols.copy()
    out[:, field] = values
    return out


INCONSISTENT = [
    # (header change, array changes, what the message says)
    (
        None,
        dict(layer1=np.zeros((3, CFG_WIDTH - 1))),
        r"layer '1 \(ReLU\)' has columns of shape \(3, 50\)",
    ),
    (None, dict(layer1=np.zeros(CFG_WIDTH)), r"layer '1 \(ReLU\)' has columns of shape \(51,\)"),
    (None, dict(layer1=np.zeros((1, 2, CFG_WIDTH))), r"has columns of shape \(1, 2, 51\)"),
    (None, dict(layer1=np.zeros((2, CFG_WIDTH), int)), r"\(int64\); expected \(n, 51\) floats"),
    (None, dict(layer1=np.zeros((2, CFG_WIDTH), complex)), r"expected \(n, 51\) floats"),
    (None, dict(layer1=np.zeros((10, CFG_WIDTH))), r"10 columns, more than the capacity 8"),
    (None, dict(layer1=np.zeros((2, CFG_WIDTH))), r"column 0, BATCHES: .*without batches"),
    (
        None,
        dict(layer1=with_field(S.Field.COUNT, [1, np.nan])),
        r"column 1, COUNT: not a finite count >= 0",
    ),
    (None, dict(layer1=with_field(S.Field.NUMEL, [1, -1])), r"column 1, NUMEL: not a finite count"),
    (
        None,
        dict(layer1=with_field(S.HIST + 3, [np.inf, 0])),
        r"column 0, hist bin 3: not a finite count",
    ),
    (
        None,
        dict(layer1=with_field(S.Field.BATCH_LAST, [0, 0.5])),
        r"column 1, BATCH_LAST: not a whole number",
    ),
    (
        None,
        dict(layer1=with_field(S.Field.BATCH_FIRST, [0, 0])),
        r"column 1, BATCH_FIRST: batch indices overlap",
    ),
    (
        None,
        dict(layer1=with_field(S.Field.BATCH_FIRST, [3, 1])),
        r"column 0, BATCH_FIRST: batch indices overlap or go backwards",
    ),
    (
        None,
        dict(layer1=with_field(S.Field.M2, [0, -2.0])),
        r"column 1, M2: not a finite sum of squares >= 0",
    ),
    (None, dict(layer1=with_field(S.Field.BATCHES, [1, 2.0**60])), r"BATCHES: not a whole number"),
    (None, dict(layer3=GOOD_COLS), r"arrays \['layer3'\] that the header does not name"),
    (
        set_key("layers", ["0 (Linear)", "1 (ReLU)", "2 (Linear)", "3 (Extra)"]),
        {},
        r"layer '3 \(Extra\)' \(array layer3\) is missing",
    ),
    (set_key("layers", ["a", "a", "b"]), {}, r"bad header: layer names repeat"),
    (set_key("layers", "abc"), {}, r"bad header: layers must be a list of names"),
    (set_key("layers", [1, 2, 3]), {}, r"bad header: layers must be a list of names"),
    (set_key("config", None), {}, r"bad header: config: "),
    (lambda h: h.pop("config"), {}, r"bad header: no config"),
    (set_config(capacity=7), {}, r"bad header: config: capacity must be even"),
    (set_config(near_zero=None), {}, r"bad header: config: near_zero must be a finite number"),
    (set_config(unknown=1), {}, r"bad header: config: .*unknown"),
    (
        set_config(log_range=[-24, 9], bins=None),
        {},
        r"layer '0 \(Linear\)' has columns of shape \(5, 51\).*\(n, 52\)",
    ),
    (set_key("fits", [[1, 0], [3, 10]]), {}, r"bad header: fit 2 is \[3, 10\]"),
    (set_key("fits", [[1, 5], [2, 1]]), {}, r"bad header: fit 2 is \[2, 1\]"),
    (set_key("fits", [[1, 0.5]]), {}, r"bad header: fit 1 is \[1, 0.5\]"),
    (set_key("fits", [[1]]), {}, r"bad header: fit 1 is \[1\]"),
    (set_key("alerts", {"kind": "x"}), {}, r"bad header: alerts must be a list"),
    (set_key("alerts", [{"kind": "nonfinite"}]), {}, r"bad header: alert 0: "),
    (set_key("alerts", ["nonfinite"]), {}, r"bad header: alert 0: not an alert"),
    (lambda h: h["alerts"][0].update(batch="4"), {}, r"bad header: alert 0: batch, fit and epoch"),
    (
        lambda h: h["alerts"][0].update(value="big"),
        {},
        r"bad header: alert 0: value must be a number",
    ),
    (lambda h: h["alerts"][0].update(extra=1), {}, r"bad header: alert 0: not an alert"),
    (
        set_key("format", "actwidget-stats/99"),
        {},
        r"not an actwidget stats file \(format 'actwidget-stats/99'\)",
    ),
    (None, dict(meta=np.array(b"{}")), r"not an actwidget stats file \(no text header\)"),
    (None, dict(meta=np.array(["{}", "{}"])), r"not an actwidget stats file \(no text header\)"),
    (None, dict(meta=np.array("[1, 2]")), r"not an actwidget stats file \(format 'list'\)"),
]


@pytest.mark.parametrize("change, arrays, message", INCONSISTENT)
def test_inconsistent_files_are_refused_at_load(saved, tmp_path, change, arrays, message):
    path, _ = saved
    bad = rewrite(path, tmp_path / "bad.npz", change, **arrays)
    assert re.search(message, load_error(bad)), load_error(bad)


def test_counts_a_rounding_error_below_zero_load(saved, tmp_path):
    """Scaled estimates (sampled NaN/inf counts) may leave COUNT at -1e-12: still valid."""
    path, original = saved
    cols = original["1 (ReLU)"].columns.copy()
    cols[0, S.Field.COUNT] = -2e-12 * cols[0, S.Field.NUMEL]
    back = RunStats.load(rewrite(path, tmp_path / "rounded.npz", layer1=cols))
    assert back["1 (ReLU)"].columns[0, S.Field.COUNT] < 0
    cols[0, S.Field.COUNT] = -1e-6 * cols[0, S.Field.NUMEL]
    bad = rewrite(path, tmp_path / "negative.npz", layer1=cols)
    assert "column 0, COUNT: not a finite count >= 0" in load_error(bad)


def test_missing_arrays_and_pickles_are_refused(saved, tmp_path):
    path, _ = saved
    missing = rewrite(path, tmp_path / "missing.npz", drop=["layer2"])
    assert "layer '2 (Linear)' (array layer2) is missing" in load_error(missing)
    no_meta = rewrite(path, tmp_path / "no_meta.npz")
    with np.load(no_meta) as data:
        np.savez(no_meta, **{k: data[k] for k in data.files if k != "meta"})
    assert "not an actwidget stats file (no header)" in load_error(no_meta)
    pickled = rewrite(path, tmp_path / "pickled.npz", layer0=np.array([{"a": 1}], dtype=object))
    assert re.search(r"layer '0 \(Linear\)' \(array layer0\) is corrupted .*pickle",
                     load_error(pickled))  # fmt: skip
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "truncated or corrupted" in load_error(tmp_path / "empty.npz")
    with pytest.raises(FileNotFoundError):
        RunStats.load(tmp_path / "nothing.npz")
