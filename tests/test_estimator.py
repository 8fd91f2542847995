"""The estimator on its own: plans, buckets, sample positions, the shift rule, and the two
ways a call is summarised (eager slots folded at the boundary, and `accumulate` as compiled
code runs it), checked against float64 torch and against each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actwidget._fold import Filled, Folder, UnitSums
from actwidget.estimator import (
    DEAD_BELOW,
    Acc,
    Scratch,
    Slots,
    acc_width,
    accumulate,
    bucket_bins,
    jitter,
    next_shift,
    plan,
)
from actwidget.recorder._columns import columns
from actwidget.stats import Field, StatsConfig

LOG, LINEAR = StatsConfig(), StatsConfig(hist="linear", bins=8, hist_max=2.0)
EXACT = StatsConfig(sample_size=None)


@pytest.mark.parametrize(
    ("shape", "channels_first", "view", "sum_dim", "units", "div"),
    [
        ((8, 4, 16, 16), False, (32, 256), 1, 4, 1),  # images: a row per (sample, channel)
        ((8, 4, 2, 2), False, (8, 16), 0, 4, 4),  # small maps: columns, 4 per channel
        ((8, 3, 200, 200), False, (8 * 3 * 200, 200), 1, 3, 200),  # long maps: split rows
        ((8, 5, 64), True, (40, 64), 1, 5, 1),  # channels-first sequences (Conv1d)
        ((8, 12, 64), False, (96, 64), 0, 64, 1),  # tokens: a column per feature
        ((32, 10), False, (32, 10), 0, 10, 1),
        ((100,), False, (1, 100), 1, 0, 1),  # no units
    ],
)
def test_plans_lay_partials_along_memory_one_unit_each(
    shape, channels_first, view, sum_dim, units, div
):
    p = plan(shape, channels_first, jitter("x", 64))
    assert (p.view, p.sum_dim, p.units, p.div) == (view, sum_dim, units, div)
    assert p.view[0] * p.view[1] == math.prod(shape)
    assert p.view[1] <= 16_384 or units == 0
    if units:  # every partial sum is of values of one unit
        owner = torch.empty(shape, dtype=torch.long)
        idx = [slice(None)] * len(shape)
        for u in range(units):
            idx[1 if len(shape) >= 4 or channels_first else -1] = u
            owner[tuple(idx)] = u
        owner = owner.reshape(view)
        per_partial = owner if sum_dim == 1 else owner.T
        partial_unit = (torch.arange(p.partials) // p.div) % p.units
        assert (per_partial == partial_unit[:, None]).all()


def test_sample_positions_are_one_per_stratum_and_differ_between_layers():
    k, n = 256, 10_000
    a = (jitter("a", k) * (n / k)).long()
    b = (jitter("b", k) * (n / k)).long()
    i = torch.arange(k, dtype=torch.float64)
    assert ((a >= (i * n / k).floor()) & (a < (i + 1) * n / k)).all()  # one in each stratum
    assert (a[1:] > a[:-1]).all() and a.max() < n
    assert not torch.equal(a, b)
    assert torch.equal(a, (jitter("a", k) * (n / k)).long())  # the same every time


def test_sample_estimates_are_unbiased_where_a_stride_would_alias():
    # 1 zero channel in 16 of 28 x 28 maps: a stride of a feature map's multiple sees
    # a few channels only; strata with a random offset see them all in proportion.
    x = torch.rand(256, 16, 28, 28) + 0.5
    x[:, 3] = 0
    p = plan(x.shape, False, jitter("conv", 1024))
    got = (x.reshape(-1)[p.sample] <= 0.05).double().mean().item()
    assert got == pytest.approx(1 / 16, abs=0.02)


@pytest.mark.parametrize("config", [LOG, LINEAR])
def test_keys_fold_to_near_zero_nonfinite_and_the_histogram(config):
    bins = bucket_bins(config)
    a = torch.tensor([0.0, -0.0, 1e-30, 0.01, config.near_zero, 0.0500001, -0.3, 1.0, 2.0, 7.5,
                      1e20, -1e-45, float("nan"), float("inf"), -float("inf")])  # fmt: skip
    counts = torch.bincount(bins.keys(a), minlength=bins.size).double()
    near, bad, *hist = (counts @ bins.fold).tolist()
    assert near == (a.abs() <= config.near_zero).sum().item()
    assert bad == 3
    fin = a[a.isfinite()].double().abs()
    if config.hist == "log":
        want = np.searchsorted(config.edges[1:-1], fin.numpy(), side="right")
    else:
        want = np.minimum(np.floor(fin.numpy() * config.bins / config.hist_max), config.bins - 1)
    np.testing.assert_array_equal(hist, np.bincount(want.astype(int), minlength=config.bins))


def test_the_shift_follows_the_mean_only_when_it_dwarfs_the_spread():
    assert next_shift(None, 0.3, 1.0, True) == 0.0
    assert next_shift(None, 100.0, 1.0, True) == 100.0
    assert next_shift(100.0, 100.05, 1.0, True) is None  # drifted less than 0.1 std
    assert next_shift(100.0, 100.5, 1.0, True) == 100.5
    assert next_shift(100.0, 0.1, 1.0, True) == 0.0
    assert next_shift(0.0, math.nan, 1.0, True) is None
    assert next_shift(None, 5.0, math.nan, False) is None


def fold_one(x: torch.Tensor, config: StatsConfig, name: str = "layer", shift: float = 0.0):
    """One call through the eager path: record into slots, fold, turn into a column."""
    bins = bucket_bins(config)
    exact = config.sample_size is None
    p = plan(x.shape, False, jitter(name, config.sample_size or 1024), exact)
    slots = Slots(p, exact, x.device, bins)
    acc = torch.zeros(1, acc_width(config), dtype=torch.float64)
    acc[0, Acc.SHIFT] = shift
    slots.record(x.float().contiguous(), shift, Scratch())
    Folder(config, bins).fold(acc, [Filled(0, slots, True, False)])
    return acc


def traced_one(x: torch.Tensor, config: StatsConfig, name: str = "layer", shift: float = 0.0):
    """The same call as compiled code adds it (run eagerly here)."""
    exact = config.sample_size is None
    p = plan(x.shape, False, jitter(name, config.sample_size or 1024), exact)
    acc = torch.zeros(1, acc_width(config), dtype=torch.float64)
    acc[0, Acc.SHIFT] = shift
    accumulate(acc[0], x.float(), p, bucket_bins(config), exact, config.near_zero)
    return acc


def column(acc: torch.Tensor, config: StatsConfig) -> np.ndarray:
    layers, cols = columns(acc.numpy(), 0, config)
    assert layers.tolist() == [0]
    return cols[0]


@pytest.mark.parametrize("config", [LOG, EXACT, LINEAR])
@pytest.mark.parametrize("shape", [(64, 64), (16, 8, 12, 12), (3000, 40), (7,), (512, 3, 33)])
def test_eager_and_traced_summaries_agree_and_match_float64(config, shape):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 2 + 0.5).relu()
    x.view(-1)[::97] = 0.03
    shift = 0.25
    eager, traced = (
        column(fold_one(x, config, shift=shift), config),
        column(traced_one(x, config, shift=shift), config),
    )
    a = x.double().reshape(-1)
    assert eager[Field.NUMEL] == traced[Field.NUMEL] == a.numel()
    for c in (eager, traced):
        assert c[Field.MEAN] == pytest.approx(a.mean().item(), rel=1e-7)
        assert math.sqrt(c[Field.M2] / (a.numel() - 1)) == pytest.approx(a.std().item(), rel=2e-7)
    np.testing.assert_allclose(eager[Field.NEAR_ZERO :], traced[Field.NEAR_ZERO :], rtol=1e-9)
    whole = a.numel() <= (config.sample_size or 0) or config.sample_size is None
    if whole:
        assert eager[Field.NEAR_ZERO] == (a.float() <= config.near_zero).sum().item()


def test_dead_units_are_units_that_gave_nothing_in_non_negative_calls():
    x = torch.rand(32, 6, 5, 5)
    x[:, 2] = 0  # dead
    x[:, 4] *= 1e-7  # responds, but at 1e-7 of the others: below DEAD_BELOW of the mean unit
    x[:, 5] *= 1e-3  # small, alive
    c = column(fold_one(x, LOG), LOG)
    assert c[Field.UNITS] == 6 and c[Field.DEAD] == 2
    assert DEAD_BELOW < 1e-3
    small = torch.rand(32, 6, 5, 5) * 0.002  # a uniformly small layer: no dead unit
    c = column(fold_one(small, LOG), LOG)
    assert c[Field.DEAD] == 0
    signed = torch.randn(32, 6, 5, 5)  # values of both signs: not judged
    assert column(fold_one(signed, LOG), LOG)[Field.UNITS] == 0


def test_unit_sums_hold_each_layers_per_unit_totals_of_its_judged_calls():
    """Under torch.distributed the fold also keeps per-unit totals (what the ranks pool)."""
    bins, units = bucket_bins(LOG), UnitSums(torch.device("cpu"))
    acc = torch.zeros(2, acc_width(LOG), dtype=torch.float64)
    acc[1, Acc.SHIFT] = 0.5  # centred sums: the totals are raw all the same
    folder = Folder(LOG, bins)

    def call(row: int, x: torch.Tensor) -> None:
        slots = Slots(plan(x.shape, False, jitter("l", 1024), False), False, x.device, bins)
        slots.record(x.contiguous(), float(acc[row, Acc.SHIFT]), Scratch())
        folder.fold(acc, [Filled(row, slots, True, False)], units)

    a, b = torch.rand(16, 3, 4, 4), torch.rand(8, 5)
    call(0, a)
    call(1, b)
    call(0, a)  # a second call of the batch adds to the same totals
    call(1, -b)  # values < 0: not judged, adds nothing
    buf, segments = units.take()
    assert segments == {0: (0, 3), 1: (3, 5)}
    torch.testing.assert_close(buf[:3], 2 * a.double().sum((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(buf[3:], b.double().sum(0), rtol=1e-6, atol=0)
    assert units.buf.abs().sum() == 0  # zeroed for the next batch
    call(1, torch.rand(8, 7))  # another unit count: a new segment, the old one dropped
    _, segments = units.take()
    assert segments == {0: (0, 3), 1: (8, 7)}


def test_nonfinite_values_are_seen_exactly_and_moments_fall_back_to_the_sample():
    x = torch.randn(200, 300)
    x[17, 5] = float("nan")
    for config in (LOG, EXACT):
        c = column(fold_one(x, config), config)
        assert c[Field.NONFINITE] >= 1
        fin = x.double().reshape(-1)
        fin = fin[fin.isfinite()]
        if config is EXACT:  # exact: count, and moments over the finite values
            assert c[Field.NONFINITE] == 1
            assert c[Field.MEAN] == pytest.approx(fin.mean().item(), abs=1e-9)
        else:  # from the sample: within its standard error
            assert abs(c[Field.MEAN] - fin.mean().item()) < 6 / math.sqrt(1024)


def test_exact_mode_handles_values_up_to_float32_max():
    x = torch.full((100, 1000), 3e38)
    x[::2] = -3e38
    c = column(fold_one(x, EXACT), EXACT)
    a = x.double().reshape(-1)
    assert c[Field.NONFINITE] == 0
    assert c[Field.MEAN] == pytest.approx(a.mean().item(), abs=1e30)
    assert math.sqrt(c[Field.M2] / (a.numel() - 1)) == pytest.approx(a.std().item(), rel=1e-9)
