"""Device-side summaries (`actwidget._summary`): per-call records and batched columns,
checked against float64 torch on the same values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actwidget._summary import (
    H_BAD,
    H_NEAR,
    S_COUNT,
    S_HIST,
    S_M2,
    S_SUM,
    CallRecord,
    Probe,
    build_columns,
    flat_float,
    histogram,
    moments,
)
from actwidget.stats import HIST, Field, StatsConfig

LINEAR = StatsConfig(hist="linear")
LOG = StatsConfig()


def probe(config: StatsConfig = LOG, name: str = "layer", channels_first: bool = False) -> Probe:
    return Probe(0, name, config, channels_first)


def columns(records: list[CallRecord], config: StatsConfig = LOG, grads=()) -> np.ndarray:
    layers, rows = build_columns(list(records), list(grads), config)
    assert (layers == 0).all()
    return rows


def direct(x: torch.Tensor, config: StatsConfig) -> dict:
    """What one column must hold, computed plainly in float64."""
    x = x.double().reshape(-1)
    fin = x[x.isfinite()]
    a = fin.abs()
    if config.hist == "linear":
        hist = torch.histc(a.clamp(max=config.hist_max), config.bins, 0, config.hist_max)
    else:
        edges = torch.tensor(config.edges[1:-1], dtype=torch.float64)
        hist = torch.bincount(torch.bucketize(a, edges, right=True), minlength=config.bins)
    return {
        "mean": fin.mean().item(),
        "std": fin.std().item() if fin.numel() > 1 else float("nan"),
        "near": (x.float().abs() <= config.near_zero).sum().item(),  # in float32, as recorded
        "bad": (~x.isfinite()).sum().item(),
        "hist": hist.double().numpy(),
    }


def summarize(samples: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    """Moments and histogram of each row: a moments row, then a histogram row."""
    m = moments(samples)
    return torch.cat([m, histogram(samples, config).to(m.dtype)], 1)


def std_of(c: np.ndarray) -> float:
    return float(np.sqrt(c[Field.M2] / (c[Field.COUNT] - 1)))


def test_flat_float():
    x = torch.randn(2, 3, 4)
    f = flat_float(x)
    assert f.shape == (24,) and f.data_ptr() == x.data_ptr()  # a view, no copy
    t = x.transpose(0, 2)
    assert torch.equal(flat_float(t), t.reshape(-1))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        y = flat_float(x.to(dtype))
        assert y.dtype == torch.float32 and torch.equal(y, x.to(dtype).float().reshape(-1))
    w = torch.randn(3, requires_grad=True) * 2
    assert not flat_float(w).requires_grad


def test_positions_are_fixed_random_and_distinct_per_layer():
    n, p = 10_000, Probe(0, "layer", StatsConfig(sample_size=256), False)
    idx = p.positions((100, 100))
    assert 240 <= idx.numel() <= 256 and idx.min() >= 0 and idx.max() < n
    assert (idx[1:] > idx[:-1]).all()  # sorted, distinct
    assert idx.min() < n // 20 and idx.max() > n - n // 20  # spread over the activation
    assert torch.equal(p.positions((100, 100)), idx)  # the same positions every call
    other = Probe(0, "other layer", StatsConfig(sample_size=256), False).positions((100, 100))
    assert not torch.equal(other, idx)  # another layer, other positions
    x = torch.randn(100, 100)
    torch.testing.assert_close(p.forward(x, 0).sample, x.reshape(-1)[idx])
    for m in range(20, 60):
        p.forward(torch.randn(m, 300), 0)
    assert len(p._plans) <= 9  # the plan cache stays small


@pytest.mark.parametrize("name", ["layers.0", "3 (ReLU)", "blocks.1.conv"])
def test_the_sample_sees_every_channel_and_column(name):
    """A stride near a multiple of a map's size would see a few channels only (it read
    0.26 here for the 1/16 of zero channels, with the layer named "blocks.1.conv")."""
    x = torch.ones(256, 64, 28, 28)
    x[:, ::16] = 0.0  # one channel in 16 is zero
    x[..., 0] = 0.0  # and one column in 28
    p = probe(name=name, channels_first=True)
    c = columns([p.forward(x, 0)])[0]
    true = 1 / 16 + 15 / 16 / 28
    se = (true * (1 - true) / 1024) ** 0.5
    assert abs(c[Field.NEAR_ZERO] / x.numel() - true) < 4 * se


def test_small_activation_is_copied_whole_and_exact():
    x = torch.randn(8, 16)
    rec = probe().forward(x, batch=3)
    assert rec.sums is None and torch.equal(rec.sample, x.reshape(-1))
    assert rec.sample.data_ptr() != x.data_ptr()  # a copy: later in-place changes don't leak
    before = x.clone()
    x.add_(100.0)
    c = columns([rec])[0]
    d = direct(before, LOG)
    assert c[Field.STEP_FIRST] == 3 and c[Field.NUMEL] == 128 and c[Field.NONFINITE] == 0
    assert c[Field.MEAN] == pytest.approx(d["mean"], rel=1e-6, abs=1e-7)
    assert std_of(c) == pytest.approx(d["std"], rel=1e-6)


@pytest.mark.parametrize("config", [LOG, LINEAR, StatsConfig(hist="linear", bins=7, hist_max=1.5)])
def test_summarize_equals_direct(config):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 500, generator=g) * torch.linspace(0.01, 8, 6)[:, None]
    x[0, :10] = torch.tensor([0.0, -0.0, 0.05, -0.05, 0.0500001, 0.25, 9.99, 10.0, -12, 1e30])
    x[1, ::7] = float("nan")
    x[2, 3], x[2, 4] = float("inf"), -float("inf")
    x[3] = float("nan")  # nothing finite
    x[4] = x[4].relu()  # many exact zeros, like a ReLU layer
    out = summarize(x, config)
    assert out.shape == (6, S_HIST + config.bins) and out.dtype == torch.float64
    for row, xr in zip(out, x, strict=True):
        d = direct(xr, config)
        n = row[S_COUNT].item()
        assert n == xr.numel() - d["bad"] and row[4 + H_BAD].item() == d["bad"]
        assert row[4 + H_NEAR].item() == d["near"]
        np.testing.assert_array_equal(row[S_HIST:].numpy(), d["hist"])
        if n:
            assert row[S_SUM].item() / n == pytest.approx(d["mean"], rel=1e-9, abs=1e-12)
        if n > 1:
            assert (row[S_M2].item() / (n - 1)) ** 0.5 == pytest.approx(d["std"], rel=1e-9)


@pytest.mark.parametrize(
    "config",
    [StatsConfig(sample_size=None), StatsConfig(sample_size=None, hist="linear")],
    ids=["log", "linear"],
)
def test_exact_mode_counts_every_value(config):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 8, 12, 12, generator=g).relu() * 3 - 0.01  # 36,864 values
    flat = x.view(-1)
    flat[:6] = torch.tensor([0.0, -0.0, 0.05, -0.05, 1e30, 3e38])
    flat[100::997] = float("nan")
    flat[7], flat[8] = float("inf"), -float("inf")
    p = probe(config, channels_first=True)
    p.shift = 0.0
    c = columns([p.forward(x, 0)], config)[0]
    d = direct(x, config)
    assert c[Field.NONFINITE] == d["bad"] and c[Field.NEAR_ZERO] == d["near"]
    np.testing.assert_array_equal(c[HIST:], d["hist"])
    flat[4:6] = torch.tensor([1e3, -2e3])  # squares of ~1e30 would overflow the float32 sums
    c = columns([p.forward(x, 1)], config)[0]
    d = direct(x, config)
    assert c[Field.MEAN] == pytest.approx(d["mean"], rel=1e-5)  # float32 sums of finite values
    assert std_of(c) == pytest.approx(d["std"], rel=1e-5)


def test_log_bins_put_each_power_of_two_in_its_row():
    config = StatsConfig(log_range=(-2, 2))  # bins: 0 | [1/4,1/2) [1/2,1) [1,2) [2,4) | >= 4
    x = torch.tensor([[0.0, 0.1, 0.25, 0.3, 0.5, 1.0, -1.5, 2.0, 3.99, 4.0, 1e9]])
    hist = summarize(x, config)[0, S_HIST:].numpy()
    np.testing.assert_array_equal(hist, [2, 2, 1, 2, 2, 2])


@pytest.mark.parametrize("config", [LOG, LINEAR])
def test_large_layer_exact_moments_sampled_histogram(config):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, 20, 20, generator=g).relu() * 2 + 0.25  # 819,200 values
    p = probe(config, channels_first=True)
    recs = [p.forward(x, 0)]
    assert recs[0].sums is not None and recs[0].sample.numel() <= config.sample_size
    c = columns(recs, config)[0]
    d = direct(x, config)
    assert c[Field.NUMEL] == x.numel() == c[Field.COUNT] and c[Field.NONFINITE] == 0
    assert c[Field.MEAN] == pytest.approx(d["mean"], rel=1e-5)
    assert std_of(c) == pytest.approx(d["std"], rel=1e-4)  # exact, not sampled
    assert c[HIST:].sum() == pytest.approx(x.numel())  # scaled to the full size
    tv = np.abs(c[HIST:] - d["hist"]).sum() / 2 / x.numel()
    assert tv < 0.07  # ~1024 sampled values
    assert c[Field.NEAR_ZERO] / x.numel() == pytest.approx(d["near"] / x.numel(), abs=0.04)


def test_offset_layer_keeps_a_small_std_exactly():
    g = torch.Generator().manual_seed(2)
    p = probe()
    recs = []
    for b in range(3):
        x = 1e4 + 0.01 * torch.randn(256, 4096, generator=g)
        recs.append(p.forward(x, b))
        c = columns(recs[-1:])[0]
        assert std_of(c) == pytest.approx(x.double().std().item(), rel=1e-2), b
        assert c[Field.MEAN] == pytest.approx(x.double().mean().item(), rel=1e-9)
        p.shift = float(c[Field.MEAN])  # what the recorder does after a flush


def test_values_up_to_float32_max_are_finite_and_not_counted_bad():
    x = torch.randn(128, 1024)
    x[5, 7] = 3.0e38
    x[9, 9] = -3.0e38
    x[:, 100] = 1e30
    c = columns([probe().forward(x, 0)])[0]
    assert c[Field.NONFINITE] == 0 and c[Field.COUNT] == x.numel()
    assert np.isfinite(c[Field.MEAN]) and np.isfinite(c[Field.M2])


def test_float64_outputs_stay_exact():
    x = (torch.randn(64, 4096, dtype=torch.float64) * 1e-3).relu()
    c = columns([probe().forward(x, 0)])[0]
    assert c[Field.MEAN] == pytest.approx(x.mean().item(), rel=1e-5)
    assert std_of(c) == pytest.approx(x.std().item(), rel=1e-4)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["sampled", "missed"])
def test_a_single_nonfinite_value_anywhere_is_counted(value, where):
    x = torch.randn(256, 8, 14, 14)
    p = probe(channels_first=True)
    sampled = p.positions(x.shape).tolist()
    missed = sorted(set(range(sampled[17], sampled[18] + 2)) - set(sampled))
    i = sampled[17] if where == "sampled" else missed[0]
    x.view(-1)[i] = value
    c = columns([p.forward(x, 0)])[0]
    assert c[Field.NONFINITE] >= 1
    finite = x[x.isfinite()].double()
    assert c[Field.MEAN] == pytest.approx(finite.mean().item(), abs=0.15)  # from the sample
    assert np.isfinite(std_of(c))


def test_dead_units_channels_and_features():
    x = torch.randn(32, 6, 5, 5).relu()
    x[:, 2] = 0.0  # channel 2 dead for every example
    x[:, 4] = 0.01  # near zero everywhere
    x[0, 4, 0, 0] = 1.0  # ... but one example lights it up: alive
    c = columns([probe(channels_first=True).forward(x, 0)])[0]
    assert c[Field.UNITS] == 6 and c[Field.DEAD] == 1
    feats = torch.randn(16, 10).relu()
    feats[:, [1, 3, 5]] = -1.0
    c = columns([probe().forward(feats, 0)])[0]
    assert c[Field.UNITS] == 10 and c[Field.DEAD] == 3
    seq = torch.randn(4, 7, 12)  # (batch, time, features): units are the features
    seq[..., 0] = 0.0
    c = columns([probe().forward(seq, 0)])[0]
    assert c[Field.UNITS] == 12 and c[Field.DEAD] == 1


@pytest.mark.parametrize("config", [LOG, StatsConfig(sample_size=None)], ids=["default", "exact"])
def test_gradient_columns(config):
    g = torch.randn(64, 300) * 0.1 + 0.02
    g2 = g.clone()
    g2[3, 3] = float("nan")
    p = probe(config)
    rows = columns([], grads=[p.backward(g, 5), p.backward(g2, 6)])
    ok, bad = rows
    d = g.double()
    assert ok[Field.STEP_FIRST] == 5 and ok[Field.NUMEL] == 0 and ok[Field.G_NONFINITE] == 0
    assert ok[Field.G_MEAN] == pytest.approx(d.mean().item(), rel=1e-4)
    assert (ok[Field.G_M2] / (ok[Field.G_COUNT] - 1)) ** 0.5 == pytest.approx(
        d.std().item(), rel=1e-4
    )
    # mean |g|: exact in exact mode; else from ~1024 strided values (a few % here)
    rel = 1e-4 if config.sample_size is None else 0.05
    assert ok[Field.G_ABS] / ok[Field.G_COUNT] == pytest.approx(d.abs().mean().item(), rel=rel)
    assert bad[Field.G_NONFINITE] >= 1 and bad[Field.G_COUNT] == 0


def test_small_gradients_are_kept_whole():
    g = torch.randn(8, 16) - 0.5  # below sample_size: mean |g| exact
    ok = columns([], grads=[probe().backward(g, 0)])[0]
    assert ok[Field.G_ABS] / ok[Field.G_COUNT] == pytest.approx(g.double().abs().mean().item())


def test_many_records_of_many_shapes_in_one_transfer(monkeypatch):
    p, q = Probe(0, "a", LOG, False), Probe(1, "b", LOG, True)
    xs = [torch.randn(16, 30), torch.randn(300, 40), torch.randn(8, 3, 40, 40), torch.randn(4, 5)]
    recs = [p.forward(xs[0], 0), p.forward(xs[1], 1), q.forward(xs[2], 0), q.forward(xs[3], 1)]
    calls = []
    real = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a: calls.append(1) or real(self, *a))
    layers, rows = build_columns(recs, [], LOG)
    assert len(calls) == 1
    assert list(layers) == [0, 0, 1, 1]
    for row, x in zip(rows, xs, strict=True):
        assert row[Field.MEAN] == pytest.approx(x.double().mean().item(), rel=1e-5, abs=1e-6)
        assert row[Field.NUMEL] == x.numel()
