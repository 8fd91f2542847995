"""Device-side summaries of activations and gradients: what a hook keeps per call, and how
many such records become stats columns at once.

The hot path (`Probe.forward`, one hooked call) launches a handful of device ops and never
synchronises with the host:
- the exact sum and sum of squares over the whole activation (`Tensor.sum` and a BLAS
  `dot`: one vectorised read each), centred on a shift when the layer's mean is far from 0;
- the largest value of every position over the batch (one max-reduction), which gives
  dead units and an exact NaN/+inf detector;
- a copy of about `sample_size` values at fixed strided positions, for the histogram and
  the near-zero fraction.
`build_columns` turns many records into columns later: it summarises all samples of a
length in one go, and moves everything to the host in one transfer.
"""

from __future__ import annotations

import itertools
import zlib
from typing import NamedTuple

import numpy as np
import torch

from .stats import HIST, Field, StatsConfig

__all__ = ["CallRecord", "GradRecord", "Probe", "build_columns", "flat_float", "summarize"]

_F32_MAX = float(torch.finfo(torch.float32).max)


class Units(NamedTuple):
    """How a (positions,) peak vector reduces to units: view (rows, cols), max over `axis`."""

    rows: int
    cols: int
    axis: int


class CallRecord(NamedTuple):
    """What one recorded forward call leaves on its device until the next flush."""

    layer: int
    batch: int
    numel: int
    sample: torch.Tensor  # ~sample_size values, or the whole activation when smaller;
    #                       in exact mode (sample_size None) its finished `summarize` row
    sums: tuple[torch.Tensor, torch.Tensor] | None  # exact sum, sum of squares of x - shift
    shift: float | torch.Tensor  # what `sums` were centred on
    peaks: torch.Tensor | None  # max over the batch dimension, per position
    units: Units | None


class GradRecord(NamedTuple):
    """Exact sums of the gradient flowing back into one recorded output."""

    layer: int
    batch: int
    numel: int
    sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # sum g, sum g*g, sum |g|


def flat_float(x: torch.Tensor) -> torch.Tensor:
    """The activation as a detached 1-D float32 tensor (a view when it already is one)."""
    x = x.detach().reshape(-1)
    return x if x.dtype == torch.float32 else x.float()


def _next_prime(k: int) -> int:
    """The smallest prime >= k."""
    while any(k % d == 0 for d in range(2, int(k**0.5) + 1)):
        k += 1
    return k


def _units(shape: torch.Size, channels_first: bool) -> Units | None:
    """Units of an output: channels (dim 1) of images and of channels-first sequences,
    else the last dimension (features of (batch, features) and (batch, time, features))."""
    if len(shape) < 2 or shape[0] == 0:
        return None
    positions = 1
    for d in shape[1:]:
        positions *= d
    if positions == 0:
        return None
    if len(shape) >= 4 or (len(shape) == 3 and channels_first):
        return Units(shape[1], positions // shape[1], 1)
    return Units(positions // shape[-1], shape[-1], 0)


class Probe:
    """Per-layer hot-path state: the sample positions, the centring shift, unit layout."""

    def __init__(self, index: int, name: str, config: StatsConfig, channels_first: bool) -> None:
        self.index = index
        self.config = config
        self.channels_first = channels_first
        self.size = config.sample_size
        self.shift: float | None = None  # None: centre the first call on one of its values
        self._seed = zlib.crc32(name.encode())
        self._slices: dict[int, slice] = {}
        self._units: dict[torch.Size, Units | None] = {}

    def positions(self, n: int) -> slice:
        """The sampled positions of an n-value activation: every `step`-th value from a
        per-layer offset, `step` a prime near n/size so that they spread over batch items,
        channels and positions, and the copy is one strided read."""
        where = self._slices.get(n)
        if where is None:
            if len(self._slices) > 8:  # a few shapes (e.g. the last, short batch) are enough
                self._slices.clear()
            step = _next_prime(max(n // max(self.size or n, 1), 2))
            where = self._slices[n] = slice(self._seed % step, n, step)
        return where

    def units(self, shape: torch.Size) -> Units | None:
        u = self._units.get(shape, False)
        if u is False:
            if len(self._units) > 8:
                self._units.clear()
            u = self._units[shape] = _units(shape, self.channels_first)
        return u

    def forward(self, t: torch.Tensor, batch: int) -> CallRecord:
        """Summarise one output tensor (floating, non-empty, dense) without a host sync."""
        x = t.detach()
        units = self.units(x.shape)
        peaks = x.reshape(x.shape[0], -1).amax(0) if units is not None else None
        x = flat_float(x)
        n = x.numel()
        if self.size is None:  # exact mode: summarise now, keep only the summary row
            row = summarize(x[None], self.config, precise=True)[0]
            return CallRecord(self.index, batch, n, row, None, 0.0, peaks, units)
        if n <= self.size:  # small: the sample is the whole activation, exact at flush
            return CallRecord(self.index, batch, n, x.clone(), None, 0.0, peaks, units)
        sample = x[self.positions(n)].clone()
        sums = None
        shift: float | torch.Tensor = 0.0
        if self.config.exact_moments:
            if self.shift is None:  # first call: centre on a value of its own (no sync)
                shift = sample[0]
                x = x - shift
            elif self.shift:
                shift = self.shift
                x = x - shift
            sums = (x.sum(), torch.dot(x, x))
        return CallRecord(self.index, batch, n, sample, sums, shift, peaks, units)


def grad_sums(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact sum, sum of squares and sum of |g| of a gradient, on its device."""
    g = flat_float(g)
    return g.sum(), torch.dot(g, g), g.abs().sum()


# Columns of a `summarize` row: finite sum, centred sum of squares, finite count, near-zero
# count, non-finite count, largest finite |a|, then the histogram.
S_SUM, S_M2, S_COUNT, S_NEAR, S_BAD, S_MAX, S_HIST = range(7)


def summarize(samples: torch.Tensor, config: StatsConfig, precise: bool = True) -> torch.Tensor:
    """Per row of (rows, k) samples: the `S_*` fields, then the |a| histogram.

    Moments are two-pass in float64 (float32 on MPS, which lacks float64) over the finite
    values, so they are exact for a whole activation and robust to large offsets."""
    rows, bins = samples.shape[0], config.bins
    dtype = torch.float32 if samples.device.type == "mps" or not precise else torch.float64
    a = samples.abs()
    bad = ~(a <= _F32_MAX)  # NaN and inf (float32's range: also for float64 inputs)
    if config.hist == "linear":
        b = (a * (bins / config.hist_max)).clamp_(max=bins - 0.5)
    else:  # bin 0: below 2**lo; bin i: [2**(lo+i-1), 2**(lo+i)); the last: 2**hi and above
        lo = config.log_range[0]
        _, exp = torch.frexp(a.float())  # a = m * 2**exp, m in [0.5, 1): floor(log2 a) = exp-1
        b = (exp - lo).clamp_(0, bins - 1).masked_fill_(a == 0, 0).to(a.dtype)
    b = b.masked_fill_(bad, bins)  # non-finite: one extra bucket per row
    b += torch.arange(0, rows * (bins + 1), bins + 1, dtype=b.dtype, device=b.device)[:, None]
    hist = _count(b.view(-1).long(), rows * (bins + 1)).view(rows, bins + 1)
    near = (a <= config.near_zero).sum(1)  # NaN compares False
    vals = samples.to(dtype).masked_fill(bad, 0.0)
    count = (~bad).sum(1).to(dtype)
    total = vals.sum(1)
    mean = total / count.clamp(min=1)
    dev = (vals - mean[:, None]).masked_fill_(bad, 0.0)
    biggest = a.masked_fill(bad, 0.0).amax(1) if a.shape[1] else a.new_zeros(rows)
    cols = [total, (dev * dev).sum(1), count, near, hist[:, bins], biggest, hist[:, :bins]]
    return torch.cat([c.reshape(rows, -1).to(dtype) for c in cols], 1)


def _count(index: torch.Tensor, size: int) -> torch.Tensor:
    """How often each value in [0, size) occurs, without a host sync on accelerators."""
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=size)  # fastest on the CPU; syncs on CUDA
    ones = torch.ones(1, dtype=torch.int64, device=index.device).expand(index.numel())
    return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(0, index, ones)


def _grouped(records: list, key) -> list[tuple[object, list[int]]]:
    """Record indices grouped by `key(record)` (stable within a group)."""
    order = sorted(range(len(records)), key=lambda i: key(records[i]))
    return [(k, list(g)) for k, g in itertools.groupby(order, key=lambda i: key(records[i]))]


def build_columns(
    calls: list[CallRecord], grads: list[GradRecord], config: StatsConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Turn pending records into one-batch columns, moving everything to the host at once.

    Returns (layer index per row, rows of `config.width` fields): activation rows first,
    then gradient rows, each in record order. Only device tensors of one device mix."""
    parts: list[torch.Tensor] = []  # flattened float64 pieces, copied in one transfer
    layout: list[tuple[str, list[int], int]] = []  # (what, record indices, columns each)

    def add(what: str, idx: list[int], t: torch.Tensor) -> None:
        t = t.reshape(len(idx), -1)
        parts.append(t.to(torch.float64 if t.device.type != "mps" else torch.float32).view(-1))
        layout.append((what, idx, t.shape[1]))

    if config.sample_size is None:
        if calls:
            add("summary", list(range(len(calls))), torch.stack([r.sample for r in calls]))
    else:
        for _, idx in _grouped(calls, lambda r: r.sample.numel()):
            add("summary", idx, summarize(torch.stack([calls[i].sample for i in idx]), config))
    with_sums = [i for i, r in enumerate(calls) if r.sums is not None]
    if with_sums:
        flat = [s for i in with_sums for s in calls[i].sums]
        shifts = [calls[i].shift for i in with_sums]
        dev = flat[0]
        shift = torch.stack(
            [s if isinstance(s, torch.Tensor) else dev.new_tensor(s) for s in shifts]
        )
        add("sums", with_sums, torch.cat([torch.stack(flat).view(-1, 2), shift[:, None]], 1))
    with_peaks = [i for i, r in enumerate(calls) if r.peaks is not None]
    for units, idx in _grouped([calls[i] for i in with_peaks], lambda r: r.units):
        u = torch.stack([calls[with_peaks[i]].peaks for i in idx]).float()
        u = u.view(len(idx), units.rows, units.cols).amax(units.axis + 1)
        dead = (u <= config.near_zero).sum(1).float()
        bad = (~(u <= _F32_MAX)).sum(1).float()  # NaN or +inf somewhere in the unit
        big = u.masked_fill(~(u.abs() <= _F32_MAX), 0.0).abs().amax(1)
        count = torch.full_like(dead, u.shape[1])
        add("units", [with_peaks[i] for i in idx], torch.stack([dead, bad, count, big], 1))
    if grads:
        add("grads", list(range(len(grads))), torch.stack([s for g in grads for s in g.sums]))
    host = torch.cat(parts).cpu().numpy() if parts else np.zeros(0)
    return _to_columns(calls, grads, config, host, layout)


def _to_columns(
    calls: list[CallRecord],
    grads: list[GradRecord],
    config: StatsConfig,
    host: np.ndarray,
    layout: list[tuple[str, list[int], int]],
) -> tuple[np.ndarray, np.ndarray]:
    n = len(calls)
    summary = np.zeros((n, S_HIST + config.bins))
    sums = np.full((n, 3), np.nan)
    units = np.zeros((n, 4))  # dead, units with NaN/+inf, units, largest finite peak
    gsums = np.zeros((len(grads), 3))
    at = 0
    for what, idx, width in layout:
        block = host[at : at + len(idx) * width].reshape(len(idx), width)
        at += len(idx) * width
        target = {"summary": summary, "sums": sums, "units": units, "grads": gsums}[what]
        target[idx] = block
    out = np.zeros((n + len(grads), config.width))
    layers = np.array([r.layer for r in calls] + [g.layer for g in grads], dtype=np.int64)
    steps = np.array([r.batch for r in calls] + [g.batch for g in grads], dtype=float)
    out[:, Field.BATCHES] = 1
    out[:, Field.STEP_SUM] = out[:, Field.STEP_FIRST] = out[:, Field.STEP_LAST] = steps
    out[:n, Field.G_MEAN] = out[n:, Field.MEAN] = np.nan  # no values: no mean
    if n:
        _activation_fields(out[:n], calls, config, summary, sums, units)
    if grads:
        _grad_fields(out[n:], np.array([g.numel for g in grads], float), gsums)
    return layers, out


def _activation_fields(
    out: np.ndarray,
    calls: list[CallRecord],
    config: StatsConfig,
    summary: np.ndarray,
    sums: np.ndarray,
    units: np.ndarray,
) -> None:
    numel = np.array([r.numel for r in calls], float)
    taken = np.array([r.sample.numel() for r in calls], float)
    if config.sample_size is None:
        taken = numel
    whole = taken >= numel  # the sample is the whole activation: everything exact
    scale = numel / np.maximum(taken, 1)
    s_bad = summary[:, S_BAD]
    dead, bad_units, n_units, peak = units.T
    has_sums = ~np.isnan(sums[:, 2])
    s1, s2, shift = sums.T
    finite_sums = has_sums & np.isfinite(s1) & np.isfinite(s2)
    # Non-finite values: exact where the sample is everything; else seen in the sample,
    # in a unit's peak (NaN, +inf), or in the exact sums unless those only overflowed.
    big = np.maximum(summary[:, S_MAX], peak)
    overflow = big * big * numel >= _F32_MAX * 1e-3
    seen_in_sums = has_sums & ~finite_sums & ~overflow
    bad = np.where(
        whole,
        s_bad,
        np.maximum(s_bad * scale, np.where((bad_units > 0) | seen_in_sums, 1.0, 0.0)),
    )
    bad = np.maximum(bad, np.where(whole, 0, bad_units))
    out[:, Field.NUMEL] = numel
    out[:, Field.NONFINITE] = bad
    out[:, Field.COUNT] = numel - bad
    out[:, Field.NEAR_ZERO] = summary[:, S_NEAR] * scale
    out[:, Field.UNITS] = n_units
    out[:, Field.DEAD] = dead
    out[:, HIST:] = summary[:, S_HIST:] * scale[:, None]
    # Moments: the exact centred sums when they are trustworthy, else the sample's.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m2_exact = s2 - s1 * s1 / numel
        reliable = finite_sums & (bad == 0) & (m2_exact > 1e-2 * s2)
        reliable |= finite_sums & (bad == 0) & (s2 == 0)
        cnt = summary[:, S_COUNT]
        s_mean = np.where(cnt > 0, summary[:, S_SUM] / np.maximum(cnt, 1), np.nan)
        s_m2 = summary[:, S_M2] * np.where(cnt > 0, (numel - bad) / np.maximum(cnt, 1), 0.0)
        out[:, Field.MEAN] = np.where(reliable, shift + s1 / numel, s_mean)
        out[:, Field.M2] = np.where(reliable, np.maximum(m2_exact, 0.0), s_m2)
    out[:, Field.MEAN] = np.where(out[:, Field.COUNT] > 0, out[:, Field.MEAN], np.nan)


def _grad_fields(out: np.ndarray, numel: np.ndarray, gsums: np.ndarray) -> None:
    s1, s2, sabs = gsums.T
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        bad = ~(np.isfinite(s1) & np.isfinite(s2) & np.isfinite(sabs))
        out[:, Field.G_NONFINITE] = np.where(bad, 1.0, 0.0)
        out[:, Field.G_COUNT] = np.where(bad, 0.0, numel)
        out[:, Field.G_MEAN] = np.where(bad, np.nan, s1 / numel)
        out[:, Field.G_M2] = np.where(bad, 0.0, np.maximum(s2 - s1 * s1 / numel, 0.0))
        out[:, Field.G_ABS] = np.where(bad, 0.0, sabs)
