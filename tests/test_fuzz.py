"""Random outputs through `StatsHooks` hooks (property-based, reproducible).

A module returns a generated output: any shape (empty and 0-d included), dtype, layout
(strided views: transposed, sliced, expanded, channels_last; sparse COO/CSR, meta, nested,
quantized) and values (NaN, +-inf, float32's max, subnormals, large offsets with small
spread, magnitudes 2**-30..2**30), bare or inside a tuple/dict/list, with or without a
backward pass. Whatever it is, the hooks never raise inside the forward (nor when the fit
ends, nor warn); what cannot be summarised is skipped with one warning naming the layer;
what is recorded matches float64 arithmetic on the same values within the documented bounds:

- numel exact. NaN/inf count: exact up to `sample_size` values; above, 0 when there is
  none and >= 1 when there is any (NaN/+inf via the batch maxima of 2-d+ outputs, anything
  via the exact sum), except where float32 sums may overflow (finite values near float32's
  max) or with `exact_moments=False` (then a 1-d output's NaN/inf shows only if sampled).
- mean, std: up to `sample_size` values (and `sample_size=None`) float64 over every value
  (1e-9 relative). Above, float32 sums over the whole activation, centred on a sampled
  value: rounding only (measured: mean within 1e-7 of the spread, std within 5e-6 relative;
  allowed 1e-6 and 1e-4), unless the activation holds NaN/inf, the sums overflow, or float32
  cannot hold the spread next to the offset: then, as with `exact_moments=False`, from the
  sample (within the values' range, and within Z standard errors when no outlier dominates).
- near-zero fraction and |a| histogram: exact up to `sample_size` values; above, from the
  strided sample, scaled: within Z standard errors of its effective size.
- dead units: exact (per-position maxima over the batch).
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

from actwidget._summary import Probe
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
    """The positions the recorder samples in an activation (all when it is small; in exact
    mode, those of the 1024 values kept for the moments of a layer with NaN/inf)."""
    n = int(np.prod(shape))
    if n <= (config.sample_size or 1024):
        return slice(0, n, 1)
    return Probe(0, name, config, False).positions(tuple(shape))


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


def dead_units(t: torch.Tensor, near_zero: float) -> tuple[int, int] | None:
    """(dead, units) of an output: channels (dim 1) of 4-d+ outputs, else the last dim."""
    if t.ndim < 2:
        return None
    peaks = t.float().reshape(t.shape[0], -1).amax(0)
    channels = t.ndim >= 4
    u = peaks.view(t.shape[1], -1).amax(1) if channels else peaks.view(-1, t.shape[-1]).amax(0)
    return int((u <= near_zero).sum()), u.numel()


def centre(s, i: int, own: float) -> float:
    """What call i's exact sums are centred on: the first batch flushes at once, and its
    column sets the shift (its mean when the mean dwarfs the std, else 0); until a column
    with a mean and a std exists, each call centres on its own first sampled value."""
    if i == 0 or not (np.isfinite(s.mean[0]) and np.isfinite(s.std[0])):
        return own
    m = float(s.mean[0])
    return float(np.float32(m)) if m * m > 25 * float(s.std[0]) ** 2 else 0.0


def check_column(s, i: int, t: torch.Tensor, name: str, config: StatsConfig) -> None:
    """Column i of layer stats `s` against float64 arithmetic on the values of `t`."""
    x32 = t.detach().float().reshape(-1)  # as recorded: float32 values
    a = x32.double().numpy()
    n = a.size
    finite = np.isfinite(a)
    fin = a[finite]
    bad = n - fin.size
    where = sampled(tuple(t.shape), name, config)
    k = n if isinstance(where, slice) else len(where)
    whole = k == n
    assert s.numel[i] == n
    shift = centre(s, i, float(x32[0 if isinstance(where, slice) else where[0]]))
    exact_mode = config.sample_size is None  # exact counts, sums over the finite values
    counted = whole or exact_mode
    check_nonfinite(s.nonfinite[i], a, fin, shift, t.ndim >= 2, counted, config)
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
    # Dead units: exact.
    du = dead_units(t.detach(), float(np.float32(config.near_zero)))
    if du is not None and not np.isnan(a).any():
        assert s.dead[i] == pytest.approx(du[0] / du[1])
    # Mean and std of the finite values.
    if fin.size == 0:
        assert np.isnan(s.mean[i])
        return
    if whole:  # float64 two-pass over every value
        tiny = 1e-12 * np.abs(fin).max()  # float64 rounding, relative to the largest value
        assert s.mean[i] == pytest.approx(fin.mean(), rel=1e-9, abs=tiny)
        if fin.size > 1:
            assert s.std[i] == pytest.approx(fin.std(ddof=1), rel=1e-7, abs=tiny)
        return
    if exact_mode:  # NaN/inf left out of the sums; the first call centred on a finite value
        path = moments_path(fin, float(np.nan_to_num(shift, posinf=0.0, neginf=0.0)), 0, config)
    else:
        path = moments_path(a, shift, bad, config)
    exact_ok = path != "sample" and exact_moments_ok(s.mean[i], s.std[i], fin)
    k_eff = effective_size(t, where) * fin.size / n  # finite values in the sample
    assert exact_ok or (path != "exact" and sampled_moments_ok(s.mean[i], s.std[i], fin, k_eff)), (
        path,
        shift,
        s.mean[i],
        s.std[i],
        fin.mean(),
        fin.std(),
    )


def check_nonfinite(
    got: float, a: np.ndarray, fin: np.ndarray, shift: float, units: bool, whole: bool,
    config: StatsConfig,
) -> None:  # fmt: skip
    """NaN/inf: exact when whole; else 0 when there is none and >= 1 when there is any:
    NaN and +inf show in the batch maxima of outputs with units (2-d and more), anything
    in the exact sum (unless it may overflow: finite values near float32's max, where a
    -inf may go unseen and huge finite values may read as one NaN/inf)."""
    bad = a.size - fin.size
    if whole:
        assert got == bad
        return
    assert 0 <= got <= a.size
    with np.errstate(over="ignore", invalid="ignore"):
        reach = np.abs(fin).max(initial=0) + abs(shift) if math.isfinite(shift) else 0.0
        overflow = np.abs(fin - shift).sum() >= F32_MAX / 4 if math.isfinite(shift) else False
    if bad == 0:
        assert got == 0 or (config.exact_moments and overflow)
        return
    peaks_show = units and (np.isnan(a).any() or np.isposinf(a).any())  # batch maxima
    if peaks_show or (config.exact_moments and reach * a.size < F32_MAX * 1e-3):
        assert got >= 1


def moments_path(a: np.ndarray, shift: float, bad: int, config: StatsConfig) -> str:
    """Where the recorder takes a large activation's mean and std from: its exact float32
    sums of a - shift ("exact"), the sample ("sample"), or too close to tell ("either").

    The sums are used when there is no NaN/inf, they did not overflow, and float32 kept the
    spread: sum((a - mean)**2) > 1% of sum((a - shift)**2). The first call of a layer is
    centred on its first sampled value."""
    if not config.exact_moments or bad:
        return "sample"
    d = a - shift
    s1, s2 = d.sum(), (d * d).sum()
    underflow = d * d < 1.5e-45  # squares that round to 0 in float32
    if underflow.all():
        return "exact"  # s2 is 0 in float32: nothing to lose
    if underflow.any() and s2 < 1e-30:
        return "either"
    if s2 > 2 * F32_MAX:
        return "sample"
    if s2 > F32_MAX / 2:
        return "either"
    if s2 == 0:
        return "exact"
    ratio = (s2 - s1 * s1 / a.size) / s2
    return "exact" if ratio > 2e-2 else "sample" if ratio < 5e-3 else "either"


def exact_moments_ok(mean: float, std: float, fin: np.ndarray) -> bool:
    """Float32 sums over the whole activation: rounding error only (squares below ~1e-45,
    of values under ~4e-23, round to 0)."""
    if fin.size < 2:
        return mean == fin[0] and np.isnan(std)
    ref_mean, ref_std = fin.mean(), fin.std(ddof=1)
    spread = np.abs(fin - ref_mean).max()
    return abs(mean - ref_mean) <= 1e-6 * spread + 1e-44 and abs(std - ref_std) <= (
        1e-4 * ref_std + 1e-22
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
                hooks.step()
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
    for i, t in enumerate(tensors):
        check_column(s, i, t, name, config)
    if grads:  # d sum / d output = 1 everywhere: exact
        np.testing.assert_array_equal(s.grad_mean, 1.0)
        np.testing.assert_array_equal(s.grad_abs, 1.0)
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
    for i, t in enumerate(good):
        check_column(s, i, t, name, CONFIGS["default"])


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
                hooks.step()
                hooks.flush()  # the next call is centred on this one's mean
    s = hooks.stats[hooks.names[0]]
    assert s.nonfinite[0] >= 1
    np.testing.assert_array_equal(s.nonfinite[1:], 0)
    assert s.mean[3] == pytest.approx(small.double().mean().item(), abs=0.05)
