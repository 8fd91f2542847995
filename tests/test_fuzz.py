"""Random outputs through `StatsHooks` hooks (property-based, reproducible).

A module returns a generated output: any shape (empty and 0-d included), dtype, layout
(strided views: transposed, sliced, expanded, channels_last; sparse COO/CSR, meta, nested,
quantized) and values (NaN, +-inf, float32's max, subnormals, large offsets with small
spread, magnitudes 2**-30..2**30), bare or inside a tuple/dict/list, with or without a
backward pass. Whatever it is, the hooks never raise inside the forward (nor when the fit
ends, nor warn); what cannot be summarised is skipped with one warning naming the layer;
what is recorded matches float64 arithmetic on the same values within the documented bounds:

- numel exact. NaN/inf count: exact up to `sample_size` values and in exact mode; above, >= 1
  exactly when there is any (a NaN/inf makes its run's partial sum non-finite), else 0 (or
  >= 1 where float32 partial sums of finite values overflow: values near float32's max).
- mean, std: float32 partial sums of runs of at most 16384 values, added in float64, centred
  on a shift: within 1e-6 of the spread (mean) and 2e-6 relative (std) of float64 over every
  value. Where the activation holds NaN/inf (default mode), squares overflow float32, or the
  sums cannot resolve the spread next to the offset, from the sample (two-pass float64: exact
  when the sample is the whole activation; else within Z standard errors).
- near-zero fraction and |a| histogram: exact up to `sample_size` values and in exact mode;
  above, from the stratified sample, scaled: within Z standard errors of its effective size.
- dead units: per unit (channels of 4-d+ outputs, else the last dimension), in calls whose
  sampled values are all >= 0: units whose total is at most 1e-4 of the mean unit's.
Values are summarised as float32 (float64 ones beyond its range count as non-finite;
|a| <= near_zero is compared in float32).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from actwidget.estimator import (
    DEAD_BELOW,
    FALLBACK_SAMPLE,
    first_shift,
    jitter,
    next_shift,
    plan,
)
from actwidget.recorder import StatsHooks
from actwidget.stats import StatsConfig

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's, when reading

F32_MAX = float(torch.finfo(torch.float32).max)
F64 = torch.float64
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SPECIALS = [math.nan, math.inf, -math.inf, F32_MAX, -F32_MAX, 1e-40, -1e-42, 0.0, -0.0, 1e300]
CONFIGS = {
    "default": StatsConfig(),
    "default + gradients": StatsConfig(grads=True),
    "exact": StatsConfig(sample_size=None, grads=True),
    "linear": StatsConfig(hist="linear", bins=16, hist_max=4.0, near_zero=0.25),
    "sampled moments": StatsConfig(exact_moments=False, sample_size=512),
}
Z = 6.0  # standard errors allowed for sampled estimates
MAX_NUMEL = 20_000


class Emit(nn.Module):
    """A layer whose output is whatever the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.out = None

    def forward(self, x):
        return self.out


# --- generated outputs ---------------------------------------------------------------------
@st.composite
def shapes(draw, min_ndim: int = 1) -> list[int]:
    dims = draw(st.lists(st.integers(1, 40), min_size=min_ndim, max_size=4))
    if draw(st.booleans()):  # large: sampled rather than whole
        dims[-1] *= draw(st.integers(50, 500))
    while math.prod(dims) > MAX_NUMEL:
        dims[dims.index(max(dims))] //= 2
    return dims


@st.composite
def values(draw, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """Random values of a shape: normal, constant, offset, tiny or wide-ranging, with a few
    special values at random places."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    mode = draw(st.sampled_from(["normal", "constant", "offset", "tiny", "magnitudes"]))
    n = math.prod(shape)
    if mode == "normal":
        loc, scale = draw(st.sampled_from([0.0, 0.5, -3.0])), draw(st.sampled_from([1e-3, 1, 50]))
        x = loc + scale * torch.randn(n, generator=g, dtype=F64)
    elif mode == "constant":
        x = torch.full((n,), draw(st.sampled_from([0.0, 0.01, -1.0, 2.0**-30, 3e5])), dtype=F64)
    elif mode == "offset":  # large offset, small spread
        loc = draw(st.sampled_from([1e3, -2.5e4, 1e6]))
        x = loc + draw(st.sampled_from([1e-2, 1.0])) * torch.randn(n, generator=g, dtype=F64)
    elif mode == "tiny":  # near float32's subnormals
        x = 1e-39 * torch.randn(n, generator=g, dtype=F64)
    else:  # magnitudes 2**-30 .. 2**30, both signs
        e = torch.empty(n, dtype=F64).uniform_(-30, 30, generator=g)
        x = torch.sign(torch.randn(n, generator=g, dtype=F64)) * 2.0**e
    specials = draw(st.lists(st.sampled_from(SPECIALS), max_size=3)) if n else []
    for v in specials:
        x[draw(st.integers(0, n - 1))] = v
    return x.to(dtype).reshape(shape)


@st.composite
def dense(draw) -> torch.Tensor:
    """A floating strided tensor in one of several layouts (views of a base tensor)."""
    dtype = draw(st.sampled_from(FLOATS))
    layout = draw(
        st.sampled_from(["contiguous", "transposed", "sliced", "expanded", "channels_last"])
    )
    shape = draw(shapes(min_ndim=4 if layout == "channels_last" else 1))
    if layout == "transposed" and len(shape) >= 2:
        base = draw(values(shape[::-1], dtype))
        return base.permute(*reversed(range(len(shape))))
    if layout == "sliced":  # every other value along a dimension, from an offset
        d = draw(st.integers(0, len(shape) - 1))
        big = list(shape)
        big[d] = 2 * shape[d] + 1
        return draw(values(big, dtype))[(slice(None),) * d + (slice(1, None, 2),)]
    if layout == "expanded":  # a dimension of stride 0
        d = draw(st.integers(0, len(shape) - 1))
        one = list(shape)
        one[d] = 1
        return draw(values(one, dtype)).expand(*shape)
    x = draw(values(shape, dtype))
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x


@st.composite
def unsummarisable(draw) -> torch.Tensor:
    """Outputs the hooks cannot summarise: each must be skipped with one warning."""
    kinds = ["int", "bool", "complex", "coo", "csr", "meta", "nested", "quantized", "empty"]
    kind = draw(st.sampled_from([*kinds, "0-d"]))
    with warnings.catch_warnings():  # torch's beta/prototype notices for these layouts
        warnings.simplefilter("ignore")
        if kind == "int":
            dtype = draw(st.sampled_from([torch.int8, torch.uint8, torch.int32, torch.int64]))
            return torch.randint(0, 100, draw(shapes()), dtype=dtype)
        if kind == "bool":
            return torch.rand(draw(shapes())) > 0.5
        if kind == "complex":
            dtype = draw(st.sampled_from([torch.complex64, torch.complex128]))
            return torch.randn(draw(shapes()), dtype=dtype)
        if kind in ("coo", "csr"):
            x = draw(values(draw(shapes(min_ndim=2))[:2], draw(st.sampled_from(FLOATS[2:]))))
            return x.to_sparse() if kind == "coo" else x.to_sparse_csr()
        if kind == "meta":
            return torch.empty(draw(shapes()), device="meta", dtype=draw(st.sampled_from(FLOATS)))
        if kind == "nested":
            return torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)])
        if kind == "quantized":
            return torch.quantize_per_tensor(torch.randn(draw(shapes())), 0.1, 0, torch.qint8)
        if kind == "empty":
            shape = draw(shapes())
            shape[draw(st.integers(0, len(shape) - 1))] = 0
            return torch.empty(shape, dtype=draw(st.sampled_from(FLOATS)))
        return torch.tensor(draw(st.floats(allow_nan=True)), dtype=draw(st.sampled_from(FLOATS)))


def wrapped(draw, t: torch.Tensor, later_float: bool = True):
    """The tensor as the layer's output: bare, or the first float tensor of a container
    (`later_float`: maybe followed by another float tensor, which must not be recorded)."""
    how = draw(st.sampled_from(["bare", "bare", "tuple", "dict"] + ["list"] * later_float))
    if how == "tuple":
        return (t, torch.arange(3))
    if how == "dict":
        return {"ids": torch.arange(3), "out": t}
    if how == "list":
        return [torch.ones(2, dtype=torch.int64), t, torch.randn(2)]
    return t


# --- the float64 reference -------------------------------------------------------------------
def sampled(shape: tuple[int, ...], name: str, config: StatsConfig) -> slice | torch.Tensor:
    """The flat positions the recorder samples in an activation (all when it is small; in
    exact mode, the 1024 values kept for the sign test and the moments' fallback)."""
    n = int(np.prod(shape))
    k = config.sample_size or FALLBACK_SAMPLE
    if n <= k:
        return slice(0, n, 1)
    return (jitter(name, k) * (n / k)).long().clamp(max=n - 1)


def effective_size(t: torch.Tensor, where: slice | torch.Tensor) -> float:
    """Kish's effective size of the sample at flat positions `where` of `t`: the positions
    of a view may hit the same stored value several times (stride-0 dimensions)."""
    storage = t.untyped_storage().nbytes() // t.element_size()
    index = torch.as_strided(torch.arange(storage), t.shape, t.stride(), t.storage_offset())
    _, counts = index.reshape(-1)[where].unique(return_counts=True)
    w = counts.double()
    return float(w.sum() ** 2 / (w * w).sum())


def histogram(a: np.ndarray, config: StatsConfig) -> np.ndarray:
    """Counts of |a| per bin (finite values only)."""
    if config.hist == "linear":
        b = np.minimum(np.floor(a * (config.bins / config.hist_max)), config.bins - 1)
    else:
        b = np.searchsorted(config.edges[1:-1], a, side="right")
    return np.bincount(b.astype(np.int64), minlength=config.bins).astype(float)


def dead_units(x32: torch.Tensor, sample: np.ndarray) -> float:
    """The dead-unit fraction of one call: NaN unless its sampled values are all >= 0;
    else the units (channels of 4-d+ outputs, else the last dim) whose total is at most
    DEAD_BELOW x the mean unit's."""
    if x32.ndim < 2 or not (sample.size and sample.min() >= 0):
        return math.nan
    a = x32.double()
    per = a.transpose(0, 1).reshape(a.shape[1], -1) if a.ndim >= 4 else a.reshape(-1, a.shape[-1]).T
    sums = per.sum(1)
    return float((sums <= DEAD_BELOW * sums.sum() / len(sums)).double().mean())


def shifts(tensors: list[torch.Tensor], s, name: str, config: StatsConfig) -> list[float]:
    """What each call's sums were centred on: the first call on its sample's mean
    (`estimator.first_shift`); later ones where `estimator.next_shift` moved it."""
    out: list[float] = []
    current: float | None = None
    for i, t in enumerate(tensors):
        if current is None:
            x = t.detach().float()
            k = config.sample_size or FALLBACK_SAMPLE
            current = first_shift(x, plan(x.shape, False, jitter(name, k)))
        out.append(current)
        if i < len(s):
            n = s.numel[i] - s.nonfinite[i]
            var = float(s.std[i]) ** 2 if n > 1 else math.nan
            new = next_shift(current, float(s.mean[i]), var, n > 1)
            current = new if new is not None else current
    return out


def check_column(s, i: int, t: torch.Tensor, name: str, config: StatsConfig, shift: float):
    """Column i of layer stats `s` against float64 arithmetic on the values of `t`."""
    x32 = t.detach().float()
    a = x32.reshape(-1).double().numpy()
    n = a.size
    finite = np.isfinite(a)
    fin = a[finite]
    bad = n - fin.size
    where = sampled(tuple(t.shape), name, config)
    sample = a[where]
    whole = isinstance(where, slice)
    exact_mode = config.sample_size is None
    counted = whole or exact_mode
    assert s.numel[i] == n
    huge = np.abs(fin).max(initial=0) >= 1e30  # float32 partial sums may overflow
    if counted:
        assert s.nonfinite[i] == bad
    elif bad:
        assert 1 <= s.nonfinite[i] <= n
    else:
        assert s.nonfinite[i] == 0 or huge
    # Near-zero fraction and histogram (|a| <= near_zero is compared in float32).
    near = np.abs(a) <= np.float32(config.near_zero)
    hist = histogram(np.abs(fin), config) / n
    if counted:
        assert s.near_zero[i] == pytest.approx(near.mean(), abs=1e-12)
        edge = 0 if config.hist == "log" else _near_edges(np.abs(fin), config)
        assert np.abs(s.hist[i] / n - hist).sum() <= 2 * edge / n + 1e-12
    else:
        k_eff = effective_size(t, where)

        def within(estimate, p):
            return abs(estimate - p) <= Z * math.sqrt(p * (1 - p) / k_eff) + 2 / k_eff

        assert within(s.near_zero[i], near.mean())
        got = s.hist[i] / n
        for b in range(config.bins):
            assert within(got[b], hist[b]), (b, got[b], hist[b])
    # Dead units (not judged where a value may be NaN: a NaN unit is not dead).
    if finite.all():
        want = dead_units(x32, sample)
        assert (math.isnan(want) and np.isnan(s.dead[i])) or s.dead[i] == pytest.approx(want)
    # Mean and std of the finite values.
    if fin.size == 0:
        assert np.isnan(s.mean[i])
        return
    path = moments_path(x32, a, shift, bad and not exact_mode)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        spread = (fin.mean() - shift) ** 2 / fin.var() if fin.var() > 0 else 0.0
    offset = 0.0 if exact_mode else float(min(spread, 1e30))
    if path != "sample" and exact_moments_ok(s.mean[i], s.std[i], fin, offset):
        return
    assert path != "exact", (
        path,
        shift,
        s.mean[i],
        s.std[i],
        fin.mean(),
        fin.std(ddof=1),
        a.tolist(),
        s.columns[i][:12].tolist(),
    )
    if whole:  # the fallback is the whole activation, two-pass float64
        tiny = 1e-12 * np.abs(fin).max()
        assert s.mean[i] == pytest.approx(fin.mean(), rel=1e-9, abs=tiny)
        if fin.size > 1:
            assert s.std[i] == pytest.approx(fin.std(ddof=1), rel=1e-7, abs=tiny)
        return
    k_eff = effective_size(t, where) * np.isfinite(sample).mean()
    assert sampled_moments_ok(s.mean[i], s.std[i], fin, k_eff), (
        path, shift, s.mean[i], s.std[i], fin.mean(), fin.std()
    )  # fmt: skip


def moments_path(x32: torch.Tensor, a: np.ndarray, shift: float, bad: bool) -> str:
    """Where the recorder takes a call's mean and std from: its float32 partial sums of
    a - shift ("exact"), the sample ("sample"), or too close to tell ("either").

    The sums are used when there is no NaN/inf (default mode), no run's squares overflow
    float32, and the sums resolve the spread: sum((a - mean)**2) >= 1e-6 sum((a - shift)**2)."""
    if bad:
        return "sample"
    fin = a[np.isfinite(a)]
    d = fin - shift
    s1, s2 = d.sum(), (d * d).sum()
    p = plan(x32.shape, False, torch.zeros(1))
    rows = np.asarray(x32, dtype=np.float64).reshape(p.view) - shift
    rows = np.where(np.isfinite(rows), rows, 0.0)
    row_sq = (rows * rows).sum(1)
    f32_max = float(np.finfo(np.float32).max)
    if (row_sq > f32_max / 2).any():
        return "sample" if (row_sq > 2 * f32_max).any() else "either"
    tiny = (d != 0) & (np.abs(d) < 1e-22)  # squares below float32's smallest: lost
    if tiny.any():
        return "either"
    if s2 == 0:
        return "exact"
    ratio = (s2 - s1 * s1 / d.size) / s2
    return "exact" if ratio > 1e-4 else "sample" if ratio < 1e-8 else "either"


def exact_moments_ok(mean: float, std: float, fin: np.ndarray, offset: float) -> bool:
    """Partial sums added in float64: rounding only. Small activations are reduced in
    float64; large ones in float32 runs, whose squares round by about 1e-7, an error that
    the variance multiplies by 1 + offset (the squared distance of the mean from the
    shift, in variances: at most 4 once the shift follows the mean)."""
    if fin.size < 2:
        return mean == pytest.approx(fin[0], rel=1e-7, abs=1e-44) and np.isnan(std)
    ref_mean, ref_std = fin.mean(), fin.std(ddof=1)
    spread = np.abs(fin - ref_mean).max()
    rel = 1e-6 + 1e-7 * offset
    return abs(mean - ref_mean) <= 1e-6 * spread + 1e-44 and abs(std - ref_std) <= (
        rel * ref_std + 1e-22
    )


def sampled_moments_ok(mean: float, std: float, fin: np.ndarray, k: float) -> bool:
    """From the sample of about `k` finite values: within the finite values' range, and
    (when no outlier dominates) within Z standard errors. With few finite values, the
    sample may hold none (mean NaN) or one (std NaN)."""
    if not np.isfinite(mean):
        return k < 12
    ref_mean, spread = fin.mean(), fin.max() - fin.min()
    tiny = 1e-12 * np.abs(fin).max()  # float64 rounding
    if not fin.min() - tiny <= mean <= fin.max() + tiny:
        return False
    if fin.size < 2 or not np.isfinite(std):  # one finite value sampled: no std, or 0
        return fin.size < 2 or k < 12
    if std > spread + tiny:
        return False
    ref_std = fin.std(ddof=1)
    dev = np.abs(fin - ref_mean)
    if ref_std == 0 or dev.max() > 12 * ref_std or k < 12:  # no normal approximation
        return True
    kurt = np.mean(dev**4) / ref_std**4
    return (
        abs(mean - ref_mean) <= Z * ref_std / math.sqrt(k) + tiny
        and abs(std - ref_std) <= Z * ref_std * math.sqrt(max(kurt - 1, 0.5) / (4 * k)) + tiny
    )


def _near_edges(a: np.ndarray, config: StatsConfig) -> int:
    """Values within float32 rounding of a linear bin edge (they may land in either bin)."""
    x = a * (config.bins / config.hist_max)
    return int((np.abs(x - np.round(x)) <= 1e-6 * np.maximum(x, 1)).sum())


# --- the properties --------------------------------------------------------------------------
def record(outputs: list, config: StatsConfig, backward: list | None = None):
    """Each output through one hooked layer, one batch each (then `backward[i].sum()`
    backpropagated, when given); returns (layer stats, name, warning messages)."""
    m = Emit()
    hooks = StatsHooks([m], config=config, flush_every=10**6, flush_interval=math.inf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks:
            for i, out in enumerate(outputs):
                m.out = out
                assert m(torch.zeros(1)) is out  # the hook never replaces or breaks the output
                if backward is not None:
                    backward[i].float().sum().backward()
                hooks.end_batch()
    assert not m._forward_hooks
    return hooks.stats[hooks.names[0]], hooks.names[0], [str(w.message) for w in caught]


def fuzz(examples: int):
    """Reproducible: the same `examples` cases on every run (no example database)."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@fuzz(80)
@given(data=st.data())
def test_floating_outputs_are_recorded_within_bounds(data):
    config = CONFIGS[data.draw(st.sampled_from(list(CONFIGS)), label="config")]
    tensors = data.draw(st.lists(dense(), min_size=1, max_size=2), label="outputs")
    grads = config.grads and data.draw(st.booleans(), label="backward")
    if grads:  # outputs that require grad (same layout), and a backward pass after each
        tensors = [t.detach().requires_grad_() for t in tensors]
    outs = [wrapped(data.draw, t) for t in tensors]
    s, name, caught = record(outs, config, tensors if grads else None)
    assert caught == []  # nothing to warn about, no numpy or torch warnings either
    assert len(s) == len(tensors)
    for i, (t, shift) in enumerate(zip(tensors, shifts(tensors, s, name, config), strict=True)):
        check_column(s, i, t, name, config, shift)
    if grads:  # d sum / d output = 1 everywhere
        np.testing.assert_array_equal(s.grad_mean, 1.0)
        np.testing.assert_allclose(s.grad_abs, 1.0, rtol=1e-12)
        np.testing.assert_array_equal(s.grad_nonfinite, 0.0)
        assert all(sd == 0 or (np.isnan(sd) and t.numel() == 1)
                   for sd, t in zip(s.grad_std, tensors, strict=True))  # fmt: skip
    else:
        assert np.isnan(s.grad_mean).all()


@fuzz(40)
@given(data=st.data())
def test_outputs_that_cannot_be_summarised_are_skipped_with_one_warning(data):
    config = CONFIGS[data.draw(st.sampled_from(list(CONFIGS)), label="config")]
    bad = data.draw(st.lists(unsummarisable(), min_size=1, max_size=3), label="outputs")
    outs = [wrapped(data.draw, t, later_float=False) for t in bad]
    s, name, caught = record(outs, config)
    assert len(s) == 0
    assert len(caught) == 1 and name in caught[0] and "skipping it" in caught[0], caught


@fuzz(30)
@given(data=st.data())
def test_a_bad_output_costs_only_its_own_calls(data):
    """Unsummarisable and floating outputs of one layer, interleaved: the floating ones are
    all recorded, one warning in all."""
    good = data.draw(st.lists(dense(), min_size=1, max_size=2), label="good")
    bad = data.draw(unsummarisable(), label="bad")
    s, name, caught = record([good[0], bad, *good[1:], bad], CONFIGS["default"])
    assert len(caught) == 1 and name in caught[0]
    assert len(s) == len(good)
    config = CONFIGS["default"]
    for i, (t, shift) in enumerate(zip(good, shifts(good, s, name, config), strict=True)):
        check_column(s, i, t, name, config, shift)


def test_nonfinite_detection_hard_cases():
    """Pinned: a -inf among values whose float32 squares overflow is counted (the exact sum
    cannot have overflowed); a finite batch after the layer's mean fell by 18 orders of
    magnitude is not (the sums are centred on the old mean, so their squares overflow)."""
    g = torch.Generator().manual_seed(0)
    x = 1e30 * torch.randn(16, 1000, generator=g)
    x[3, 7] = -math.inf
    big = 1e18 + 1e17 * torch.randn(16, 1000, generator=g)
    small = torch.randn(16, 1000, generator=g)
    m = Emit()
    hooks = StatsHooks([m], alerts=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with hooks:
            for out in (x, big, big, small):
                m.out = out
                m(None)
                hooks.end_batch()
                hooks.flush()  # the next call is centred on this one's mean
    s = hooks.stats[hooks.names[0]]
    assert s.nonfinite[0] >= 1
    np.testing.assert_array_equal(s.nonfinite[1:], 0)
    assert s.mean[3] == pytest.approx(small.double().mean().item(), abs=0.05)
