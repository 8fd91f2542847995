"""Device-side summaries of activations and gradients: what a hook keeps per call, and how
many such records become stats columns at once.

The hot path (`Probe.forward`, one hooked call) launches a handful of device ops and never
synchronises with the host:
- the exact sum and sum of squares over the whole activation (`Tensor.sum` and a BLAS
  `dot`: one vectorised read each), centred on a shift when the layer's mean is far from 0;
- the largest value of every position over the batch (one max-reduction), which gives
  dead units and an exact NaN/+inf detector;
- a copy of about `sample_size` values at fixed random positions, for the histogram and
  the near-zero fraction;
- in exact mode (`sample_size=None`), the exact near-zero count and |a| histogram too:
  the float32 exponents of |a| counted in one pass over a shared int32 work buffer.
`build_columns` turns many records into columns later: it summarises all samples of a
length in one go, and moves everything to the host in one transfer.
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from typing import NamedTuple

import numpy as np
import torch

from .stats import HIST, Field, StatsConfig

__all__ = [
    "CallRecord",
    "GradRecord",
    "Plan",
    "Probe",
    "Scratch",
    "build_columns",
    "flat_float",
    "histogram",
    "moments",
]

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
    taken: int  # values in `sample`
    sample: torch.Tensor  # ~sample_size values, or the whole activation when smaller
    sums: tuple[torch.Tensor, torch.Tensor] | None  # exact sum, sum of squares of x - shift
    shift: float | torch.Tensor  # what `sums` were centred on
    peaks: torch.Tensor | None  # max over the batch dimension, per position
    units: Units | None
    counts: torch.Tensor | None = None  # exact mode: the exact near-zero count, then the
    #  256 exponent counts ("log" bins) or the `histogram` fields after it ("linear")


class GradRecord(NamedTuple):
    """What the gradient flowing back into one recorded output leaves until the next flush:
    its exact sum and sum of squares, and values whose |.| sum times `scale` gives sum |g|
    (the layer's sampled positions; the whole gradient when small; exact mode: that sum)."""

    layer: int
    batch: int
    numel: int
    sums: tuple[torch.Tensor, torch.Tensor]  # sum g, sum g*g
    sample: torch.Tensor  # 1-D
    scale: float


def flat_float(x: torch.Tensor) -> torch.Tensor:
    """The activation as a detached 1-D float32 tensor (a view when it already is one)."""
    x = x.detach().reshape(-1)
    return x if x.dtype == torch.float32 else x.float()


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


class Plan(NamedTuple):
    """How a layer summarises outputs of one shape: peaks over `rows` (the batch), the
    unit layout, and the sampled positions (None: the whole activation is copied)."""

    rows: int
    numel: int
    taken: int  # values sampled
    units: Units | None
    index: torch.Tensor | None


class Scratch:
    """One int32 work buffer per device, shared by a recorder's probes in exact mode (as
    large as the largest activation): counting into it allocates nothing per call."""

    def __init__(self) -> None:
        self._buffers: dict[torch.device, torch.Tensor] = {}
        self.lock = threading.Lock()  # forwards on other threads (e.g. DataParallel)

    def get(self, numel: int, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(device)
        if buf is None or buf.numel() < numel:
            self._buffers.pop(device, None)  # free the old one first
            buf = self._buffers[device] = torch.empty(numel, dtype=torch.int32, device=device)
        return buf[:numel]

    def clear(self) -> None:
        self._buffers.clear()


_FALLBACK_SAMPLE = 1024  # exact mode: values kept for the moments of non-finite layers


class Probe:
    """Per-layer hot-path state: plans per output shape (sample positions on the output's
    device, unit layout) and the shift the exact sums are centred on."""

    def __init__(
        self,
        index: int,
        name: str,
        config: StatsConfig,
        channels_first: bool,
        scratch: Scratch | None = None,
    ) -> None:
        self.index = index
        self.config = config
        self.channels_first = channels_first
        self.exact = config.sample_size is None
        self.size = config.sample_size or _FALLBACK_SAMPLE
        self.exact_moments = config.exact_moments or self.exact
        self.scratch = scratch or Scratch()
        self._near_bits = struct.unpack("<i", struct.pack("<f", config.near_zero))[0]
        self.shift: float | None = None  # None: centre the first call on one of its values
        self._seed = zlib.crc32(name.encode())
        self._plans: dict[torch.Size, Plan] = {}

    def reset(self) -> None:
        """Forget the plans (e.g. when outputs may have moved to another device)."""
        self._plans.clear()

    def positions(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The sampled flat positions of an activation of `shape`: about `size` distinct
        positions drawn uniformly (sorted), the same for every call of the layer (seeded by
        its name) and different between layers. Not a fixed stride: whatever the stride, some
        shape makes it a near multiple of a feature map's size, and then a few channels
        stand for all (measured: 26% near-zero for a true 6%, 256 x 64 x 28 x 28)."""
        n = math.prod(shape)
        g = torch.Generator().manual_seed(self._seed)
        return torch.randint(0, n, (self.size,), generator=g).unique()

    def plan(self, t: torch.Tensor) -> Plan:
        """The plan for outputs shaped like `t` (made once per shape; a few are kept)."""
        if len(self._plans) > 8:  # a few shapes (e.g. the last, short batch) are enough
            self._plans.clear()
        n = t.numel()
        index = None
        if n > self.size:
            index = self.positions(tuple(t.shape)).to(t.device)
        taken = n if index is None else index.numel()
        plan = Plan(t.shape[0], n, taken, _units(t.shape, self.channels_first), index)
        self._plans[t.shape] = plan
        return plan

    def forward(self, t: torch.Tensor, batch: int) -> CallRecord:
        """Summarise one output tensor (floating, non-empty, dense) without a host sync."""
        plan = self._plans.get(t.shape) or self.plan(t)
        t = t.detach()
        peaks = t.amax(0) if plan.units is not None else None  # per position, over the batch
        x = t.reshape(-1)
        if x.dtype is not torch.float32:
            x = x.float()
        if plan.index is None:  # small: the sample is the whole activation, exact at flush
            return CallRecord(
                self.index, batch, plan.numel, plan.numel, x.clone(), None, 0.0, peaks, plan.units
            )
        sample = x.index_select(0, plan.index)
        if self.exact:
            return self._exact(x, batch, plan, sample, peaks)
        sums = None
        shift: float | torch.Tensor = 0.0
        if self.exact_moments:
            if self.shift is None:  # first call: centre on a value of its own (no sync)
                shift = sample[0]
                x = x - shift
            elif self.shift:
                shift = self.shift
                x = x - shift
            sums = (x.sum(), torch.dot(x, x))
        return CallRecord(
            self.index, batch, plan.numel, plan.taken, sample, sums, shift, peaks, plan.units
        )

    def _exact(
        self, x: torch.Tensor, batch: int, plan: Plan, sample: torch.Tensor, peaks
    ) -> CallRecord:
        """Exact mode, in the scratch buffer (no allocation the size of `x`): the counts,
        then the sums of x - shift over the finite values (each NaN/inf adds 0)."""
        shift: float | torch.Tensor = self.shift
        with self.scratch.lock:
            work = self.scratch.get(x.numel(), x.device)
            counts = self._counts(x, work)
            d = work.view(torch.float32)
            if shift is None:  # first call: centre on a value of its own (no sync)
                shift = sample[0].nan_to_num(0.0, 0.0, 0.0)
                torch.sub(x, shift, out=d).nan_to_num_(0.0, 0.0, 0.0)
            else:
                torch.nan_to_num(x, shift, shift, shift, out=d)
                if shift:
                    d.sub_(shift)
            sums = (d.sum(), torch.dot(d, d))
        return CallRecord(
            self.index, batch, plan.numel, plan.taken, sample, sums, shift, peaks, plan.units,
            counts,
        )  # fmt: skip

    def _counts(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """The near-zero count and the histogram counts of a 1-D float32 `x`, exactly.

        "log" bins: the bits of |a| (sign cleared) go into `bits`, where
        `bits <= bits(near_zero)` is `|a| <= near_zero` (the order of non-negative floats
        is that of their bits; NaN's bits are above all) and `bits >> 23` the exponent."""
        if self.config.hist != "log":
            return histogram(x[None], self.config)[0]
        torch.bitwise_and(x.view(torch.int32), 0x7FFFFFFF, out=bits)
        near = torch.count_nonzero(bits <= self._near_bits)
        return torch.cat([near[None], _count(bits.__irshift__(23), 256)])

    def backward(self, g: torch.Tensor, batch: int) -> GradRecord:
        """Summarise the gradient of one recorded output (dense, floating) without a sync:
        exact sum and sum of squares, |g| from the same sampled positions as the output."""
        plan = self._plans.get(g.shape) or self.plan(g)
        x = flat_float(g)
        n, scale = plan.numel, 1.0
        if plan.index is None:
            sample = x.clone()
        elif self.exact:  # keep the exact sum |g| only: |g| is g with its sign bit cleared
            with self.scratch.lock:
                bits = self.scratch.get(n, x.device)
                torch.bitwise_and(x.view(torch.int32), 0x7FFFFFFF, out=bits)
                sample = bits.view(torch.float32).sum()[None]
        else:
            sample, scale = x.index_select(0, plan.index), n / plan.taken
        return GradRecord(self.index, batch, n, (x.sum(), torch.dot(x, x)), sample, scale)


# Columns of a `moments` row: finite count, finite sum, centred sum of squares, largest
# finite |a|. Columns of a `histogram` row: near-zero count, non-finite count, histogram.
S_COUNT, S_SUM, S_M2, S_MAX = range(4)
H_NEAR, H_BAD, H_HIST = range(3)
S_HIST = 4 + H_HIST


def moments(samples: torch.Tensor) -> torch.Tensor:
    """Per row of (rows, k) values: the `S_*` fields, two-pass over the finite values in
    float64 (float32 on MPS), so exact for a whole activation and robust to offsets."""
    dtype = torch.float32 if samples.device.type == "mps" else torch.float64
    a = samples.abs()
    bad = ~(a <= _F32_MAX)  # NaN and inf
    vals = samples.to(dtype).masked_fill(bad, 0.0)
    count = (~bad).sum(1).to(dtype)
    total = vals.sum(1)
    dev = (vals - (total / count.clamp(min=1))[:, None]).masked_fill_(bad, 0.0)
    biggest = a.masked_fill(bad, 0.0).amax(1) if a.shape[1] else a.new_zeros(len(a))
    return torch.stack([count, total, (dev * dev).sum(1), biggest.to(dtype)], 1)


def histogram(samples: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    """Per row of (rows, k) float32 values: the `H_*` fields (the near-zero count, the
    non-finite count and the |a| histogram), in a few vectorised passes."""
    rows, bins = samples.shape[0], config.bins
    a = samples.abs()
    near = torch.count_nonzero(a <= config.near_zero, 1)  # NaN compares False
    if config.hist == "log":
        # Count the biased float32 exponent of |a| (its power of two; 255 is NaN/inf) per
        # row, then fold the 256 exponents into the bins: one pass over the values.
        e = a.view(torch.int32).__irshift__(23)  # in place: `a` is ours, and read no more
        e += torch.arange(0, rows * 256, 256, dtype=e.dtype, device=e.device)[:, None]
        per_exp = _count(e.view(-1), rows * 256).view(rows, 256)
        per_exp = per_exp.to(torch.float32 if a.device.type == "mps" else torch.float64)
        return torch.cat([near[:, None].to(per_exp.dtype), per_exp @ _log_fold(config, per_exp)], 1)
    b = (a * (bins / config.hist_max)).clamp_(max=bins - 0.5)
    b = b.masked_fill_(~(a <= _F32_MAX), bins).int()
    b += torch.arange(0, rows * (bins + 1), bins + 1, dtype=b.dtype, device=b.device)[:, None]
    hist = _count(b.view(-1), rows * (bins + 1)).view(rows, bins + 1)
    return torch.cat([near[:, None], hist[:, bins : bins + 1], hist[:, :bins]], 1)


_FOLDS: dict[tuple, torch.Tensor] = {}


def _log_fold(config: StatsConfig, like: torch.Tensor) -> torch.Tensor:
    """(256, 1 + bins) 0/1 matrix: biased exponent -> [non-finite, log bins...] column.

    Bin i holds [2**(lo+i-1), 2**(lo+i)): exponent e = lo + i - 1 + 127; below 2**lo
    (zeros and subnormals included) is bin 0; 2**hi and above the last bin."""
    key = (config.log_range, like.device, like.dtype)
    fold = _FOLDS.get(key)
    if fold is None:
        e = torch.arange(256)
        col = 1 + (e - (126 + config.log_range[0])).clamp(0, config.bins - 1)
        col[255] = 0
        fold = torch.zeros(256, 1 + config.bins, dtype=like.dtype)
        fold[e, col] = 1
        fold = _FOLDS[key] = fold.to(like.device)
    return fold


def _count(index: torch.Tensor, size: int) -> torch.Tensor:
    """How often each value in [0, size) occurs, without a host sync on accelerators."""
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=size)  # fastest on the CPU; syncs on CUDA
    index = index.long()
    ones = torch.ones(1, dtype=torch.int64, device=index.device).expand(index.numel())
    return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(0, index, ones)


def _grouped(records: list, key) -> list[tuple[object, list[int]]]:
    """Record indices grouped by `key(record)` (in record order within a group; groups in
    order of first appearance)."""
    groups: dict[object, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(key(r), []).append(i)
    return list(groups.items())


class _Transfer:
    """Device tensors gathered into one float64 buffer, copied to the host at once."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.layout: list[tuple[str, list[int], int]] = []  # (what, record indices, width)

    def add(self, what: str, idx: list[int], t: torch.Tensor) -> None:
        t = t.reshape(len(idx), -1)
        self.parts.append(t.to(torch.float32 if t.device.type == "mps" else torch.float64))
        self.layout.append((what, idx, t.shape[1]))

    def fetch(self, targets: dict[str, np.ndarray]) -> None:
        """Copy everything to the host (one transfer) and scatter it into `targets`."""
        if not self.parts:
            return
        host = torch.cat([p.reshape(-1) for p in self.parts]).cpu().numpy()
        at = 0
        for what, idx, width in self.layout:
            targets[what][idx] = host[at : at + len(idx) * width].reshape(len(idx), width)
            at += len(idx) * width


def build_columns(
    calls: list[CallRecord], grads: list[GradRecord], config: StatsConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Turn pending records into one-batch columns, moving everything to the host at once
    (a second, small transfer only for records whose exact sums hit NaN/inf).

    Returns (layer index per row, rows of `config.width` fields): activation rows first,
    then gradient rows, each in record order. Records must all be on one device."""
    n = len(calls)
    host = {
        "moments": np.full((n, 4), np.nan),
        "hist": np.zeros((n, 2 + config.bins)),
        "sums": np.full((n, 2), np.nan),  # sum, sum of squares of a - shift
        "shift": np.zeros((n, 1)),
        "units": np.zeros((n, 4)),  # dead, units with NaN/+inf, units, largest finite peak
        "grads": np.zeros((len(grads), 2)),
        "g_abs": np.zeros((len(grads), 1)),
    }
    move = _Transfer()
    counted = [i for i, r in enumerate(calls) if r.counts is not None]  # exact mode
    if counted:
        c = torch.stack([calls[i].counts for i in counted])
        if config.hist == "log":  # near-zero count, 256 exponent counts -> `H_*` fields
            c = c.to(torch.float32 if c.device.type == "mps" else torch.float64)
            c = torch.cat([c[:, :1], c[:, 1:] @ _log_fold(config, c)], 1)
        move.add("hist", counted, c)
    sampled = [i for i, r in enumerate(calls) if r.counts is None]
    for _, group in _grouped([calls[i] for i in sampled], lambda r: r.taken):
        idx = [sampled[j] for j in group]
        samples = torch.stack([calls[i].sample for i in idx])
        move.add("hist", idx, histogram(samples, config))
        whole = [j for j, i in enumerate(idx) if calls[i].sums is None]
        if whole:
            move.add("moments", [idx[j] for j in whole], moments(samples[whole]))
    with_sums = [i for i, r in enumerate(calls) if r.sums is not None]
    if with_sums:
        flat = torch.stack([s for i in with_sums for s in calls[i].sums]).view(-1, 2)
        move.add("sums", with_sums, flat)
        first = []  # first calls, centred on one of their own values (a device scalar)
        for i in with_sums:
            shift = calls[i].shift
            if isinstance(shift, torch.Tensor):
                first.append(i)
            else:
                host["shift"][i] = shift
        if first:
            move.add("shift", first, torch.stack([calls[i].shift for i in first]))
    with_peaks = [i for i, r in enumerate(calls) if r.peaks is not None]
    for (units, _), idx in _grouped(
        [calls[i] for i in with_peaks], lambda r: (r.units, r.peaks.shape)
    ):
        u = torch.stack([calls[with_peaks[i]].peaks for i in idx]).float()
        u = u.view(len(idx), units.rows, units.cols).amax(units.axis + 1)
        dead = (u <= config.near_zero).sum(1).float()
        bad = (~(u <= _F32_MAX)).sum(1).float()  # NaN or +inf somewhere in the unit
        big = u.masked_fill(~(u.abs() <= _F32_MAX), 0.0).abs().amax(1)
        count = torch.full_like(dead, u.shape[1])
        move.add("units", [with_peaks[i] for i in idx], torch.stack([dead, bad, count, big], 1))
    if grads:
        move.add("grads", list(range(len(grads))), torch.stack([s for g in grads for s in g.sums]))
        for _, idx in _grouped(grads, lambda g: len(g.sample)):
            samples = torch.stack([grads[i].sample for i in idx])
            scale = torch.tensor([grads[i].scale for i in idx], device=samples.device)
            move.add("g_abs", idx, samples.abs().sum(1) * scale)
    move.fetch(host)

    # A gradient goes into the row of its call when that call is the only one of its layer
    # and batch here (the usual case); else into a row of its own.
    key = [(r.layer, r.batch) for r in calls]
    count: dict[tuple[int, int], int] = {}
    for k in key:
        count[k] = count.get(k, 0) + 1
    row_of = {k: i for i, k in enumerate(key) if count[k] == 1}
    target = []
    extra = []
    for g in grads:
        i = row_of.pop((g.layer, g.batch), None)
        if i is None:
            i = n + len(extra)
            extra.append(g)
        target.append(i)
    out = np.zeros((n + len(extra), config.width))
    layers = np.array([r.layer for r in calls] + [g.layer for g in extra], dtype=np.int64)
    steps = np.array([r.batch for r in calls] + [g.batch for g in extra], dtype=float)
    out[:, Field.BATCHES] = 1
    out[:, Field.STEP_SUM] = out[:, Field.STEP_FIRST] = out[:, Field.STEP_LAST] = steps
    out[:, Field.G_MEAN] = np.nan  # no values: no mean
    out[n:, Field.MEAN] = np.nan
    if n:
        _activation_fields(out[:n], calls, config, host, _fallback(calls))
    if grads:
        fields = np.zeros((len(grads), config.width))
        sums = np.concatenate([host["grads"], host["g_abs"]], 1)
        _grad_fields(fields, np.array([g.numel for g in grads], float), sums)
        g_fields = [Field.G_COUNT, Field.G_MEAN, Field.G_M2, Field.G_ABS, Field.G_NONFINITE]
        out[np.ix_(target, g_fields)] = fields[:, g_fields]
    return layers, out


def _fallback(calls: list[CallRecord]):
    """Moments of the samples of the records `idx` (needed when exact sums failed)."""

    def fetch(idx: list[int]) -> np.ndarray:
        out = np.full((len(calls), 4), np.nan)
        move = _Transfer()
        for _, group in _grouped([calls[i] for i in idx], lambda r: r.taken):
            rows = [idx[j] for j in group]
            move.add("moments", rows, moments(torch.stack([calls[i].sample for i in rows])))
        move.fetch({"moments": out})
        return out[idx]

    return fetch


def _activation_fields(
    out: np.ndarray,
    calls: list[CallRecord],
    config: StatsConfig,
    host: dict[str, np.ndarray],
    fallback,
) -> None:
    numel = np.array([r.numel for r in calls], float)
    taken = np.array([r.taken for r in calls], float)
    whole = taken >= numel  # the sample is the whole activation: everything exact
    counted = whole | np.array([r.counts is not None for r in calls])  # exact counts
    scale = np.where(counted, 1.0, numel / np.maximum(taken, 1))  # of the histogram
    hist, mom = host["hist"], host["moments"]
    s_bad = hist[:, H_BAD]
    dead, bad_units, n_units, peak = host["units"].T
    s1, s2 = host["sums"].T
    shift = host["shift"][:, 0]
    has_sums = np.array([r.sums is not None for r in calls])
    exact = counted & ~whole  # exact mode: sums over the finite values only
    fin = np.where(exact, numel - s_bad, numel)  # the values the sums are over
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        finite_sums = has_sums & np.isfinite(s1) & np.isfinite(s2)
        m2_exact = s2 - s1 * s1 / np.maximum(fin, 1)
        clean = exact | ((s_bad == 0) & (bad_units == 0))
        reliable = finite_sums & clean & ((m2_exact > 1e-2 * s2) | (s2 <= 0))
    need = np.flatnonzero(~whole & ~reliable & np.isnan(mom[:, S_COUNT]))
    if len(need):  # sums missing (sampled moments) or unusable: the sample's moments
        mom = mom.copy()
        mom[need] = fallback(list(need))
    # Non-finite values: exact where the sample is everything; else seen in the sample,
    # in a unit's peak (NaN, +inf), or in the exact sum of a - shift unless it may have
    # overflowed (|a| + |shift| as large as numel times that comes near float32's max).
    # The sum of squares adds nothing: a NaN/inf makes the sum non-finite too, and squares
    # overflow for finite values (|a| from ~1e19) that the peaks may not show.
    reach = np.maximum(np.nan_to_num(mom[:, S_MAX]), peak) + np.abs(np.nan_to_num(shift))
    with np.errstate(over="ignore", invalid="ignore"):
        may_overflow = reach * numel >= _F32_MAX * 1e-3
    seen_in_sums = has_sums & ~np.isfinite(s1) & ~may_overflow
    seen = np.where((bad_units > 0) | seen_in_sums, 1.0, 0.0)
    bad = np.where(counted, s_bad, np.maximum(np.maximum(s_bad * scale, seen), bad_units))
    bad = np.minimum(bad, numel)  # a scaled estimate never exceeds the values there are
    out[:, Field.NUMEL] = numel
    out[:, Field.NONFINITE] = bad
    out[:, Field.COUNT] = numel - bad
    out[:, Field.NEAR_ZERO] = hist[:, H_NEAR] * scale
    out[:, Field.UNITS] = n_units
    out[:, Field.DEAD] = dead
    out[:, HIST:] = hist[:, H_HIST:] * scale[:, None]
    # Moments: the exact centred sums when trustworthy, else the sample's finite values.
    cnt = mom[:, S_COUNT]
    with np.errstate(invalid="ignore", divide="ignore"):
        s_mean = np.where(cnt > 0, mom[:, S_SUM] / np.maximum(cnt, 1), np.nan)
        s_m2 = mom[:, S_M2] * np.where(cnt > 0, (numel - bad) / np.maximum(cnt, 1), 0.0)
    use = reliable & ~whole
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, Field.MEAN] = np.where(use, shift + s1 / np.maximum(fin, 1), s_mean)
    out[:, Field.M2] = np.where(use, np.maximum(m2_exact, 0.0), np.nan_to_num(s_m2))
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
