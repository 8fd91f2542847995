"""Device-side sampling and batched summaries (`actwidget._summary`) against direct torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actwidget import stats as S
from actwidget._summary import BAD, NZ, S1, S2, H, Sampler, flat_float, summarize, to_columns
from actwidget.stats import StatsConfig

CFG = StatsConfig()


def direct_row(x: torch.Tensor, config: StatsConfig = CFG) -> dict:
    """What one summary row must hold, computed plainly with torch (float64)."""
    finite = x[x.isfinite()]  # float32, like the activation
    a = finite.abs()
    return {
        "s1": finite.double().sum().item(),
        "s2": (finite.double() ** 2).sum().item(),
        "near": (a <= config.near_zero).sum().item(),
        "bad": (~x.isfinite()).sum().item(),
        "hist": torch.histc(a.clamp(max=config.hist_max), config.bins, 0, config.hist_max),
    }


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


def test_sampler_small_activation_is_copied_whole():
    x = torch.randn(100)
    sample, sums = Sampler("a", 100)(x)
    assert sums is None and torch.equal(sample, x)
    assert sample.data_ptr() != x.data_ptr()  # a copy: later in-place changes do not leak
    x.zero_()
    assert sample.abs().sum() > 0


def test_sampler_fixed_positions_and_exact_sums():
    n, size = 10_000, 256
    sampler = Sampler("layer", size)
    x = torch.arange(n, dtype=torch.float32)
    sample, sums = sampler(x)
    assert sums is not None and size * 0.8 <= sample.numel() <= size  # about `size` values
    idx = sample.long()
    assert torch.equal(sample, x[idx])
    steps = idx.diff()
    assert (steps == steps[0]).all() and steps[0] >= n // size  # one fixed stride
    step = int(steps[0])
    assert all(step % d for d in range(2, int(step**0.5) + 1))  # a prime one
    assert idx.min() < steps[0] and idx.max() > n - steps[0] - 1  # spread over the activation
    exact = torch.stack([x.sum(), (x.double() ** 2).sum().float()])
    torch.testing.assert_close(torch.stack(list(sums)), exact)
    y = torch.randn(n)
    again, _ = sampler(y)
    assert torch.equal(again, y[idx])  # the same positions every call
    assert sampler(y, sums=False)[1] is None  # exact sums only when asked for
    other, _ = Sampler("other layer", size)(x)
    assert not torch.equal(other, sample)  # a different offset per layer
    assert torch.equal(Sampler("layer", size)(x)[0], sample)  # and reproducible
    y[idx] = 7.0
    assert sampler(y)[0].eq(7).all()  # a copy of the positions at call time


def test_sampler_position_cache_is_bounded():
    sampler = Sampler("a", 8)
    for n in range(20, 60):
        sample, _ = sampler(torch.arange(n, dtype=torch.float32))
        assert sample.max() < n
    assert len(sampler._slices) <= 9


def make_rows(rows: int = 6, k: int = 500) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, k, generator=g) * torch.linspace(0.01, 8, rows)[:, None]
    x[0, :10] = torch.tensor([0.0, -0.0, 0.05, -0.05, 0.0500001, 0.25, 9.99, 10.0, -12, 1e30])
    x[1, ::7] = float("nan")
    x[2, 3] = float("inf")
    x[2, 4] = -float("inf")
    x[3] = float("nan")  # nothing finite
    x[4] = x[4].relu()  # many exact zeros, like a ReLU layer
    return x


@pytest.mark.parametrize("config", [CFG, StatsConfig(bins=7, hist_max=1.5, near_zero=0.3)])
def test_summarize_equals_direct_torch(config):
    x = make_rows()  # holds 1e30: its square overflows float32, so sum in float64
    out = summarize(x, config, precise=True)
    assert out.shape == (len(x), H + config.bins) and out.dtype == torch.float64
    for row, xr in zip(out, x, strict=True):
        d = direct_row(xr, config)
        assert row[S1].item() == pytest.approx(d["s1"], rel=1e-5, abs=1e-3)
        assert row[S2].item() == pytest.approx(d["s2"], rel=1e-5)
        assert row[NZ].item() == d["near"]
        assert row[BAD].item() == d["bad"]
        assert torch.equal(row[H:], d["hist"].double())
        assert row[H:].sum().item() == xr.numel() - d["bad"]
    assert out[3, BAD] == x.shape[1] and out[3, H:].sum() == 0 and out[3, S1] == 0


def test_to_columns_exact_rows():
    x = make_rows()
    summary = summarize(x, CFG, precise=True).numpy()
    full = np.full((len(x), 2), np.nan)
    k = x.shape[1]
    cols = to_columns(summary, full, np.full(len(x), k), np.full(len(x), k), np.arange(len(x)))
    assert cols.shape == (len(x), CFG.width)
    for c, xr in zip(cols, x, strict=True):
        finite = xr[xr.isfinite()].double()
        assert c[S.NUMEL] == k and c[S.BATCHES] == 1
        assert c[S.COUNT] == finite.numel() and c[S.NONFINITE] == k - finite.numel()
        if finite.numel():
            assert c[S.MEAN] == pytest.approx(finite.mean().item(), rel=1e-5, abs=1e-6)
            m2 = ((finite - finite.mean()) ** 2).sum().item()
            assert c[S.M2] == pytest.approx(m2, rel=1e-4)
        else:
            assert np.isnan(c[S.MEAN]) and c[S.M2] == 0
    np.testing.assert_array_equal(cols[:, S.STEP_FIRST], np.arange(len(x)))


def test_to_columns_scales_sampled_counts_and_uses_exact_sums():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40_000, generator=g) + 0.5
    sample, sums = Sampler("big", 4000)(x)
    k = sample.numel()
    summary = summarize(sample[None], CFG).numpy()
    full = torch.stack(list(sums))[None].double().numpy()
    cols = to_columns(summary, full, np.array([40_000]), [k], [7])
    c = cols[0]
    assert c[S.NUMEL] == 40_000 and c[S.COUNT] == 40_000 and c[S.NONFINITE] == 0
    assert c[S.HIST :].sum() == pytest.approx(40_000)  # scaled to the full size
    assert c[S.MEAN] == pytest.approx(x.double().mean().item(), rel=1e-5)
    var = c[S.M2] / (c[S.COUNT] - 1)
    assert var == pytest.approx(x.double().var().item(), rel=1e-4)
    truth = torch.histc(x.abs().clamp(max=10), 40, 0, 10).double().numpy() / 40_000
    assert np.abs(c[S.HIST :] / 40_000 - truth).max() < 0.03  # 4000 samples: std err <= 0.008
    near = (x.abs() <= CFG.near_zero).double().mean().item()
    assert c[S.NEAR_ZERO] / 40_000 == pytest.approx(near, abs=0.015)


def test_to_columns_falls_back_to_the_sample_when_sums_are_not_finite():
    sample = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [1.0, 2.0, 3.0, 4.0]])
    summary = summarize(sample, CFG).numpy()
    full = np.array([[np.nan, np.nan], [np.inf, np.inf]])  # a NaN in the layer; overflow
    cols = to_columns(summary, full, np.array([400, 800]), np.array([4, 4]), np.array([0, 1]))
    # Row 0: 1 bad value of 4 sampled, scaled by 100; moments from the 3 finite sampled values.
    assert cols[0, S.NONFINITE] == 100 and cols[0, S.COUNT] == 300
    assert cols[0, S.MEAN] == pytest.approx(2.0)
    assert cols[0, S.M2] / (cols[0, S.COUNT] - 1) == pytest.approx(200 / 299)
    # Row 1: nothing bad in the sample, yet the exact sums overflowed: at least one counted.
    assert cols[1, S.NONFINITE] == 1 and np.isfinite(cols[1, S.MEAN])
    assert cols[1, S.MEAN] == pytest.approx(2.5)
    assert cols[1, S.HIST :].sum() == 800


def test_to_columns_without_exact_sums_uses_the_sample():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40_000, generator=g) * 2 + 1
    sample, _ = Sampler("big", 4000)(x, sums=False)
    summary = summarize(sample[None], CFG).numpy()
    cols = to_columns(
        summary, np.full((1, 2), np.nan), np.array([40_000]), [sample.numel()], [0], [False]
    )
    c = cols[0]
    assert c[S.NONFINITE] == 0 and c[S.COUNT] == 40_000  # no NaN seen, none assumed
    assert c[S.MEAN] == pytest.approx(sample.double().mean().item(), rel=1e-6)
    assert c[S.MEAN] == pytest.approx(1.0, abs=0.1)  # 4000 values: std err 0.03
    assert np.sqrt(c[S.M2] / (c[S.COUNT] - 1)) == pytest.approx(2.0, rel=0.05)


def test_to_columns_counts_a_nan_outside_the_sample():
    sample = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    summary = summarize(sample, CFG).numpy()
    cols = to_columns(summary, np.array([[np.nan, np.nan]]), np.array([400]), [4], [0])
    assert cols[0, S.NONFINITE] >= 1 and cols[0, S.COUNT] == 399
    assert cols[0, S.MEAN] == pytest.approx(2.5)
