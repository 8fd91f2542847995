"""What one recorded call computes on its device: tensor operations into accumulators.

Each hooked layer has one accumulator row (`Acc` fields, float64) on the device of its
outputs. Calls add to it; at each batch boundary the recorder copies every row to the host
at once and zeroes them. Nothing here synchronises with the host.

A call's statistics come from two passes over the activation, both along its memory:
- partial sums of `a - shift` over runs of contiguous values, laid out so that each partial
  belongs to one unit (a channel of an image, a feature of a token): together they give the
  sum, and per unit its total response (dead units);
- the L2 norms of the rows (each short enough for float32 to keep about 8 digits), whose
  squares, added in float64, give the sum of squares;
and from about `sample_size` values at fixed random positions (one in each of that many equal
strata, drawn once per layer): the |a| histogram and near-zero fraction, scaled to the whole.
An activation no larger than the sample is counted whole. The shift is the layer's mean
when its mean dwarfs its spread (set between batches), so that the sums keep the spread.
In exact mode (`sample_size=None`) the passes run over a float64 copy of `a - shift` in which
NaN/inf add nothing, and the near-zero count and histogram count every value (from the
float32 exponents of |a|).

Two ways to run a call, with the same numbers:
- eager (`Slots.record`): the passes write into the layer's slots (`out=`: nothing allocated);
  `actwidget._fold` turns the slots of every layer into accumulator rows in one batched step
  at the batch boundary. A small activation is copied whole instead (one op per call) and
  reduced at the boundary together with the others of its shape.
- compiled (`accumulate`): under `torch.compile` the call adds its summary to its row
  directly: the sums over the whole output in float64, fused into the layer's own kernel,
  per-unit totals reduced in the output's own layout (a strided pass per row is slow on
  channels-last maps), the rest from the sample.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

import numpy as np
import torch

from .stats import StatsConfig

__all__ = [
    "Acc",
    "Bins",
    "Plan",
    "Slots",
    "accumulate",
    "accumulate_grad",
    "bucket_bins",
    "first_shift",
    "jitter",
    "next_shift",
    "plan",
]

COPY_MAX = 16_384  # eager: activations up to this many values are copied whole
ROW_MAX = 16_384  # longest run reduced in float32 (longer norms lose digits)
FALLBACK_SAMPLE = 1024  # exact mode: values sampled for the sign test and the fallback
DEAD_BELOW = 1e-4  # a unit is dead when its total response is below this x the mean unit's


class Acc(IntEnum):
    """The fields of a layer's accumulator row (float64); histogram counts follow at HIST."""

    CALLS = 0  # recorded calls
    NUMEL = 1  # values seen, finite or not
    SHIFT = 2  # what the sums are centred on (set between batches, never summed)
    SUM = 3  # sum of a - shift (exact mode: of the finite values)
    SQ = 4  # sum of (a - shift)**2
    BAD = 5  # NaN/inf values: counted, or the sample's, scaled
    BAD_SEEN = 6  # runs whose partial sum was NaN/inf: at least this many NaN/inf
    NEAR = 7  # |a| <= near_zero: counted, or the sample's, scaled
    UNITS = 8  # units judged for dead units (in calls whose values were all >= 0)
    DEAD = 9  # units that gave (almost) nothing over a whole call
    S_COUNT = 10  # the sample's finite values, their mean and M2 (Chan-merged over calls):
    S_MEAN = 11  # the moments when the sums are unusable (NaN/inf, squares too large)
    S_M2 = 12
    G_NUMEL = 13  # the gradient flowing back into the output
    G_SUM = 14
    G_SQ = 15
    G_ABS = 16  # sum |g|, from the sampled positions, scaled
    G_BAD_SEEN = 17
    HIST = 18


def acc_width(config: StatsConfig) -> int:
    """Fields in one accumulator row."""
    return Acc.HIST + config.bins


class Bins:
    """How |a| is counted on a device: each value gets an integer key (`keys`, a few
    elementwise ops, no search), and `fold`, a 0/1 matrix, turns counts per key into the
    [near-zero, NaN/inf, histogram...] counts. Log bins key on the float32 exponent of |a|
    (+ 256 above near_zero); linear bins on the bin index (+ bins + 1 above near_zero)."""

    def __init__(self, config: StatsConfig, device: torch.device | str = "cpu") -> None:
        self.log = config.hist == "log"
        self.near_bits = int(np.float32(config.near_zero).view(np.int32))
        self.scale = config.bins / config.hist_max
        self.bins = config.bins
        self.size = 512 if self.log else 2 * (config.bins + 1)
        fold = np.zeros((self.size, 2 + config.bins))
        if self.log:  # key = exponent + 256 * (|a| > near_zero)
            lo = config.log_range[0]
            for above in (0, 1):
                for e in range(256):
                    row = fold[above * 256 + e]
                    if e == 255:
                        row[1] = 1  # NaN, inf
                        continue
                    row[0] = not above
                    row[2 + min(max(e - 126 - lo, 0), config.bins - 1)] = 1
        else:  # key = bin (bins: NaN/inf) + (bins + 1) * (|a| > near_zero)
            for above in (0, 1):
                for b in range(config.bins + 1):
                    row = fold[above * (config.bins + 1) + b]
                    if b == config.bins:
                        row[1] = 1
                    else:
                        row[0] = not above
                        row[2 + b] = 1
        self.fold = torch.tensor(fold, dtype=torch.float64, device=device)
        # The same map as indices (no matrix product at a batch end: a BLAS call there can
        # wait on its thread pool when other threads keep the CPUs busy).
        self.column = torch.tensor(fold[:, 1:].argmax(1), device=device)  # key -> NaN/inf|bin
        self.near = torch.tensor(fold[:, 0] > 0, device=device)  # key -> near zero

    def fold_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """(E, size) counts per key -> (E, 2 + bins): near-zero, NaN/inf, histogram."""
        out = counts.new_zeros(len(counts), 1 + self.bins).index_add_(1, self.column, counts)
        near = torch.where(self.near, counts, 0.0).sum(1, keepdim=True)
        return torch.cat([near, out], 1)

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """The key of every value of float32 `x` (int32, same shape)."""
        bits = x.view(torch.int32) & 0x7FFFFFFF
        above = bits > self.near_bits
        if self.log:
            return torch.where(above, (bits >> 23) + 256, bits >> 23)
        a = bits.view(torch.float32)
        b = (a * self.scale).clamp_(max=self.bins - 1).int()
        b = torch.where(torch.isfinite(a), b, self.bins)  # NaN, inf
        return torch.where(above, b + (self.bins + 1), b)


def bucket_bins(config: StatsConfig, device: torch.device | str = "cpu") -> Bins:
    """The `Bins` of `config` on `device`."""
    return Bins(config, device)


def jitter(name: str, k: int) -> torch.Tensor:
    """A layer's sample offsets `i + u_i` (i < k, u_i uniform in [0, 1), seeded by its name).

    Positions `floor(offsets * numel / k)` take one value from each of k equal strata:
    distinct and sorted, and never in step with a feature map (a fixed stride is, for some
    shape: measured, 26% near-zero read for a true 6%)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return torch.from_numpy(np.arange(k) + rng.random(k))


# --- plans: how outputs of one shape are reduced ------------------------------------------------
class Plan(NamedTuple):
    """How a layer reduces (contiguous) outputs of one shape.

    The activation is viewed as the 2-d `view`; partial sums run along `sum_dim` (1: one per
    row, 0: one per column), norms along rows. Partial p belongs to unit
    `(p // div) % units` (no units: `units == 0`). `sample`: the sampled flat positions, or
    None when all `numel` values are taken."""

    shape: tuple[int, ...]
    numel: int
    view: tuple[int, int]
    sum_dim: int
    units: int
    div: int
    taken: int
    sample: torch.Tensor | None
    copy: bool  # eager: copy the activation whole; the boundary reduces it
    unit_dim: int  # the dimension of `shape` that indexes units (when there are units)

    @property
    def partials(self) -> int:
        return self.view[0] if self.sum_dim == 1 else self.view[1]

    @property
    def per_unit(self) -> int:
        """Values per unit."""
        return self.numel // self.units if self.units else 0


def plan(
    shape: Sequence[int], channels_first: bool, offsets: torch.Tensor, exact: bool = False
) -> Plan:
    """The plan for a contiguous activation of `shape` (pure: the same traced or eager).

    Units: channels (dim 1) of images and of channels-first sequences, else the last
    dimension; none for 1-d outputs. `offsets`: the layer's `jitter`, on the output's device
    (its length is the sample size)."""
    shape = tuple(int(d) for d in shape)
    n, k = math.prod(shape), len(offsets)
    first = len(shape) >= 4 or (len(shape) == 3 and channels_first)
    if len(shape) < 2:
        units, inner = 0, 1
    elif first:
        units, inner = shape[1], math.prod(shape[2:])
    else:
        units, inner = shape[-1], 1
    if units and first and inner >= 32:  # rows: a (sample, channel) map each, split if long
        split = 1
        for d in shape[2:-1]:
            if inner // split <= ROW_MAX:
                break
            split *= d
        view, sum_dim, div = (n * split // inner, inner // split), 1, split
    elif units:  # columns: a unit (or one position of a unit) each; rows: a sample each
        view, sum_dim, div = (n // (units * inner), units * inner), 0, inner
    else:  # no units: rows of the last dimension
        last = max(shape[-1], 1) if shape else 1
        view, sum_dim, div = (n // last, last), 1, 1
    sample = None if n <= k else (offsets * (n / k)).long().clamp_(max=n - 1)
    copy = n <= COPY_MAX and not exact
    return Plan(shape, n, view, sum_dim, units, div, min(n, k), sample, copy, 1 if first else -1)


Shift = float


# --- eager: one layer's slots -------------------------------------------------------------------
class Slots:
    """One layer's buffers for one plan in eager mode: what a call writes (`out=`) and the
    batch boundary reads (`actwidget._fold`). `g_*` hold the gradient of the same output."""

    def __init__(
        self, p: Plan, exact: bool, device: torch.device, bins: Bins, grads: bool = False
    ) -> None:
        self.plan, self.bins, self.device = p, bins, device
        self.shift = 0.0  # what the last call was centred on
        f = torch.float64 if exact else torch.float32
        dev = {"device": device}
        empty = torch.empty(0, **dev)
        if p.copy:  # the whole activation; the boundary reduces it
            self.copy: torch.Tensor | None = torch.empty(p.numel, **dev)
            self.sums = self.norms = self.sample = empty
        else:
            self.copy = None
            self.sums = torch.empty(p.partials, dtype=f, **dev)
            self.norms = torch.empty(p.view[0], dtype=f, **dev)
            self.sample = torch.empty(p.taken, **dev)
        size = 257 if bins.log else bins.size  # [near, 256 exponents] or per key
        self.counts = torch.empty(size, dtype=torch.int64, **dev) if exact else None
        self.g_sums = torch.empty(p.partials, **dev) if grads else empty
        self.g_norms = torch.empty(p.view[0], **dev) if grads else empty
        self.g_sample = torch.empty(p.taken, **dev) if grads else empty

    def record(self, x: torch.Tensor, shift: Shift, scratch: Scratch) -> None:
        """One call's passes into the slots (`x`: float32, contiguous, detached)."""
        self.shift = shift  # a whole copy is centred at the boundary, on the accumulator's
        flat = x.view(-1)
        if self.copy is not None:
            self.copy.copy_(flat)
            return
        self._take(flat, self.sample)
        if self.counts is not None:
            d = scratch.get(flat.numel(), flat.device)
            torch.sub(flat, shift, out=d)
            self._passes(d.nan_to_num_(0.0, 0.0, 0.0), self.sums, self.norms)
            self._count(flat, d.view(torch.int32)[: flat.numel()])
        else:
            self._passes(flat - shift if shift else flat, self.sums, self.norms)

    def record_grad(self, g: torch.Tensor) -> None:
        """The gradient of the recorded output (float32, contiguous)."""
        flat = g.view(-1)
        self._passes(flat, self.g_sums, self.g_norms)
        self._take(flat, self.g_sample)

    def _passes(self, flat: torch.Tensor, sums: torch.Tensor, norms: torch.Tensor) -> None:
        v = flat.view(self.plan.view)
        torch.sum(v, self.plan.sum_dim, out=sums)
        torch.linalg.vector_norm(v, 2, 1, out=norms)

    def _take(self, flat: torch.Tensor, out: torch.Tensor) -> None:
        if self.plan.sample is None:
            out.copy_(flat)
        else:
            torch.index_select(flat, 0, self.plan.sample, out=out)

    def _count(self, flat: torch.Tensor, bits: torch.Tensor) -> None:
        """Exact counts. Log bins: the bits of |a| (sign cleared) order like |a| (NaN above
        all), so `bits <= bits(near_zero)` is the near-zero count and `bits >> 23` the
        exponent (`bits`: int32 scratch). Linear bins: counts per key."""
        if not self.bins.log:
            keys = self.bins.keys(flat).long()
            self.counts.copy_(torch.bincount(keys, minlength=self.bins.size))
            return
        torch.bitwise_and(flat.view(torch.int32), 0x7FFFFFFF, out=bits)
        self.counts[0] = torch.count_nonzero(bits <= self.bins.near_bits)
        self.counts[1:] = torch.bincount(bits.__irshift__(23), minlength=256)


class Scratch:
    """Exact mode's float64 work buffer, one per device and recorder (as large as the
    largest activation), made outside inference mode so that it works in and out of it."""

    def __init__(self) -> None:
        self._buffers: dict[torch.device, torch.Tensor] = {}

    def get(self, numel: int, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(device)
        if buf is None or buf.numel() < numel:
            self._buffers.pop(device, None)  # free the old one first
            with torch.inference_mode(False), torch.no_grad():
                buf = self._buffers[device] = torch.empty(numel, dtype=torch.float64, device=device)
        return buf[:numel]

    def clear(self) -> None:
        self._buffers.clear()


# --- compiled: one call straight into its row -----------------------------------------------------
def accumulate(
    row: torch.Tensor, x: torch.Tensor, p: Plan, bins: Bins, exact: bool, near_zero: float
) -> None:
    """Add one call's summary to its accumulator `row` in tensor ops (what a compiled graph
    runs per hooked call)."""
    flat = x.reshape(-1)
    shift = row[Acc.SHIFT]
    # The sums over the whole output around the layer's shift, in float64 (a layer's first
    # batch is summed before any shift is known: float32 squares would cancel), reductions
    # the compiler fuses into the layer's own kernel; per-unit sums for the dead units.
    d = x.double() - shift
    if exact:
        d = torch.where(torch.isfinite(d), d, 0.0)
    s1, s2 = d.sum(), (d * d).sum()
    sample = flat if p.sample is None else flat[p.sample]
    scale = p.numel / p.taken
    counted = flat.float() if exact else sample.float()
    counts = torch.zeros(bins.size, dtype=torch.float64, device=x.device)
    counts = counts.index_add(0, bins.keys(counted).long(), _ones(counted))
    near_bad_hist = bins.fold_counts(counts[None])[0] * (1.0 if exact else scale)
    nonneg = sample.min() >= 0 if p.taken else torch.tensor(False, device=x.device)
    dead, units = _dead(x, p, nonneg, exact)
    s_count, s_mean, s_m2 = _merge_moments(row, *_moments(sample.double()))
    update = torch.stack([
        torch.ones((), dtype=torch.float64, device=x.device),
        torch.full((), float(p.numel), dtype=torch.float64, device=x.device),
        torch.zeros((), dtype=torch.float64, device=x.device),
        s1, s2, near_bad_hist[1], (~torch.isfinite(s1)).double(), near_bad_hist[0],
        units, dead,
        s_count - row[Acc.S_COUNT], s_mean - row[Acc.S_MEAN], s_m2 - row[Acc.S_M2],
    ])  # fmt: skip
    row[: Acc.G_NUMEL].add_(update)
    row[Acc.HIST :].add_(near_bad_hist[2:])


def accumulate_grad(row: torch.Tensor, g: torch.Tensor, p: Plan) -> None:
    """Add the gradient of one recorded output to its row (compiled backward)."""
    flat = g.reshape(-1)
    d = flat.double()
    s1 = d.sum()
    sample = flat if p.sample is None else flat[p.sample]
    update = torch.stack([
        torch.full((), float(p.numel), dtype=torch.float64, device=g.device),
        s1, (d * d).sum(), sample.double().abs().sum() * (p.numel / p.taken),
        (~torch.isfinite(s1)).double(),
    ])  # fmt: skip
    row[Acc.G_NUMEL : Acc.HIST].add_(update)


def _ones(a: torch.Tensor) -> torch.Tensor:
    return torch.ones(a.shape, dtype=torch.float64, device=a.device)


def _dead(x: torch.Tensor, p: Plan, nonneg: torch.Tensor, exact: bool):
    """(dead units, units judged) of one call: units whose total is at most DEAD_BELOW times
    the mean unit's (0, 0 when the values were not all >= 0: "dead" means a ReLU-like unit
    that never fired)."""
    if not p.units:
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        return zero, zero
    others = [i for i in range(x.dim()) if i != p.unit_dim % x.dim()]
    per_unit = x.sum(others, dtype=torch.float64 if exact else torch.float32).double()
    threshold = DEAD_BELOW * per_unit.sum() / p.units
    dead = (per_unit <= threshold).sum().double()
    return torch.where(nonneg, dead, 0.0), torch.where(nonneg, float(p.units), 0.0).double()


def _moments(sample: torch.Tensor):
    """(count, mean, M2) of the finite values of a float64 sample, two-pass."""
    fin = torch.isfinite(sample)
    v = torch.where(fin, sample, 0.0)
    n = fin.sum().double()
    mean = v.sum() / n.clamp(min=1)
    dev = torch.where(fin, sample - mean, 0.0)
    return n, mean, (dev * dev).sum()


def _merge_moments(row: torch.Tensor, n_b, mean_b, m2_b):
    """The row's sample moments merged with a call's (Chan's formula)."""
    n_a, mean_a, m2_a = row[Acc.S_COUNT], row[Acc.S_MEAN], row[Acc.S_M2]
    n = n_a + n_b
    delta = mean_b - mean_a
    w = torch.where(n > 0, n_b / n.clamp(min=1), 0.0)
    return n, mean_a + delta * w, m2_a + m2_b + delta * delta * n_a * w


def first_shift(x: torch.Tensor, p: Plan) -> float:
    """Where a layer's sums are centred before any batch of it has been seen: the mean of
    its first call's sample (0 when that is not finite). One host read per layer, once."""
    sample = x.reshape(-1) if p.sample is None else x.reshape(-1)[p.sample]
    value = float(torch.nanmean(sample.double()))
    return float(np.float32(value)) if math.isfinite(value) and abs(value) < 1e30 else 0.0


def next_shift(current: float | None, mean: float, var: float, known: bool) -> float | None:
    """Where a layer's sums are centred next, from its last batch (None: leave it).

    On the mean (as float32) when the mean is more than twice the spread (mean**2 > 4 var:
    the squares' float32 rounding, about 1e-7, would grow by more than 5x in the variance),
    else on 0; moved again only when the mean drifted by more than a tenth of the spread, so
    that most batches change nothing."""
    if not known or not (math.isfinite(mean) and math.isfinite(var)):
        return None
    want = float(np.float32(mean)) if mean * mean > 4 * var else 0.0
    if current is None or (want == 0.0) != (current == 0.0):
        return want
    if want and (want - current) ** 2 > 0.01 * var:
        return want
    return None
