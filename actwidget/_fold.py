"""The batch boundary's device work in eager mode: every layer's slots into its accumulator
row, in one batched step (a fixed few dozen tensor ops for all layers together, no host
sync).

Whole copies of small activations are reduced first, stacked by shape. Then the partial
sums, row norms and samples of all layers are concatenated and reduced per layer with
`index_add`, and one `index_add_` adds the result to the accumulator rows. The index
tensors depend only on which layers (and shapes) were recorded: they are built once and
cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .estimator import DEAD_BELOW, Acc, Bins, Slots
from .stats import StatsConfig

__all__ = ["Filled", "Folder", "UnitSums"]


class Filled(NamedTuple):
    """A layer's slots written since the last boundary."""

    row: int  # the layer's accumulator row
    slots: Slots
    fwd: bool  # a forward call wrote its slots
    grad: bool  # a gradient wrote its gradient slots


class _Layout(NamedTuple):
    """Index tensors for one set of filled slots (see `_layout`). Partials and samples are
    concatenated copy groups first (in group order), then the other entries."""

    rows: torch.Tensor  # (E,) accumulator rows
    calls: torch.Tensor  # (E,) 1 where a forward call is folded
    numel: torch.Tensor  # (E,) its values
    units: torch.Tensor  # (E,) its units
    g_numel: torch.Tensor  # (E,) gradient values (0: no gradient)
    groups: list[tuple[list[int], torch.Tensor, torch.Tensor | None]]  # (entries, idx, where)
    singles: list[int]  # entries reduced in-call, after the groups
    seg_sums: torch.Tensor  # entry of each partial sum
    per_partial: torch.Tensor  # values in each partial sum
    unit_of: torch.Tensor  # unit of each partial sum (units of all entries, then a spare)
    unit_entry: torch.Tensor  # entry of each unit
    unit_rows: tuple[tuple[int, int], ...]  # (row, units) of each entry with units, in order
    seg_norms: torch.Tensor
    sample_at: torch.Tensor | None  # where each sampled value goes in the (E, k) matrix
    valid: torch.Tensor  # (E, k): which cells of that matrix hold a value
    k: int  # its width: the largest sample
    weight: torch.Tensor  # (E,) numel / taken
    exact: list[int]  # entries with counted (exact) counts
    exact_idx: torch.Tensor
    grads: list[int]  # entries with gradient slots
    seg_g_sums: torch.Tensor
    seg_g_norms: torch.Tensor
    seg_g_sample: torch.Tensor
    g_weight: torch.Tensor

    @property
    def padded(self) -> bool:
        """Whether the samples are scattered into the (E, k) matrix (a shorter one, or
        entries out of order) rather than filling it in order; `valid` marks its values."""
        return self.sample_at is not None


class UnitSums:
    """Under torch.distributed: each layer's per-unit totals over the batch (its eager calls
    with no value < 0), on the device, so that the ranks can pool them (a unit is dead when
    it gave nothing over the global batch). One flat buffer, a segment per layer; `take`
    hands it over at the batch boundary with the accumulator."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buf = torch.zeros(0, dtype=torch.float64, device=device)
        # row -> (offset, units); a new dict on every change, never changed in place: a
        # copy in flight keeps the segments it was taken with
        self.segments: dict[int, tuple[int, int]] = {}
        self._pos: dict[tuple, torch.Tensor] = {}  # positions in `buf`, per `unit_rows`

    def add(self, unit_rows: tuple[tuple[int, int], ...], values: torch.Tensor) -> None:
        """Add `values` (the units of `unit_rows`' layers, in order) to their segments."""
        pos = self._pos.get(unit_rows)
        if pos is None:
            for row, n in unit_rows:
                if self.segments.get(row, (0, -1))[1] != n:  # new, or another unit count
                    self.segments = {**self.segments, row: (len(self.buf), n)}
                    self.buf = torch.cat([self.buf, self.buf.new_zeros(n)])
                    self._pos.clear()
            at = [np.arange(n) + self.segments[row][0] for row, n in unit_rows]
            pos = self._pos[unit_rows] = torch.from_numpy(np.concatenate(at)).to(self.device)
        self.buf.index_add_(0, pos, values)

    def take(self) -> tuple[torch.Tensor, dict[int, tuple[int, int]]]:
        """The buffer and its segments at a batch boundary; then zeroed (and made anew once
        dropped segments, of layers whose unit count changed, outweigh the live ones)."""
        buf, segments = self.buf, self.segments
        live = sum(n for _, n in segments.values())
        if len(buf) > 2 * live + 4096:
            self.buf, self.segments, self._pos = buf.new_zeros(0), {}, {}
        else:
            self.buf = buf.new_zeros(len(buf))
        return buf, segments


class Folder:
    """Folds filled slots into accumulator rows, for one recorder and device."""

    def __init__(self, config: StatsConfig, bins: Bins) -> None:
        self.config, self.bins = config, bins
        self._layouts: dict[tuple, _Layout] = {}
        self._exp_fold: torch.Tensor | None = None

    def fold(
        self, acc: torch.Tensor, filled: Sequence[Filled], units: UnitSums | None = None
    ) -> None:
        """Add the calls in `filled` (one entry per layer) to their rows of `acc` (and, under
        torch.distributed, their per-unit totals to `units`)."""
        if not filled:
            return
        key = tuple((f.row, id(f.slots), f.fwd, f.grad) for f in filled)
        lay = self._layouts.get(key)
        if lay is None:
            if len(self._layouts) > 32:
                self._layouts.clear()
            lay = self._layouts[key] = _layout(filled, acc.device)
        e = len(filled)
        zeros = torch.zeros(e, dtype=torch.float64, device=acc.device)
        if lay.seg_sums.numel():
            cols = self._forward(acc, filled, lay, e, zeros, units)
        else:  # gradients only
            cols = [zeros] * Acc.G_NUMEL + [torch.zeros(e, self.config.bins, device=acc.device)]
        cols[Acc.G_NUMEL : Acc.G_NUMEL] = self._grads(filled, lay, zeros)
        hist = cols.pop()
        acc.index_add_(0, lay.rows, torch.cat([torch.stack(cols, 1), hist], 1))

    def _forward(self, acc, filled, lay: _Layout, e: int, zeros, units) -> list[torch.Tensor]:
        """The forward fields (CALLS .. S_M2) per entry, then the histogram counts."""
        shifts = acc[lay.rows, Acc.SHIFT]
        sums, norms, sample = self._gather(filled, lay, shifts)
        s64 = sums.double()
        bad = (~torch.isfinite(s64)).double()
        total = zeros.index_add(0, lay.seg_sums, s64)
        seen = zeros.index_add(0, lay.seg_sums, bad)
        sq = zeros.index_add(0, lay.seg_norms, norms.double().square())
        # Dead units: a unit's raw total against the mean unit's, in calls with no value < 0.
        raw = s64 + shifts[lay.seg_sums] * lay.per_partial
        n_units = len(lay.unit_entry)
        per_unit = torch.zeros(n_units + 1, dtype=torch.float64, device=acc.device)
        per_unit = per_unit.index_add(0, lay.unit_of, raw)[:n_units]
        mean_unit = (total + shifts * lay.numel) / lay.units.clamp(min=1)
        dead_u = (per_unit <= DEAD_BELOW * mean_unit[lay.unit_entry]).double()
        # The samples as an (E, k) matrix (NaN where an entry's sample is shorter).
        if not lay.padded:
            m = sample.view(e, lay.k)
        else:
            m = sample.new_full((e * lay.k,), float("nan")).index_copy_(0, lay.sample_at, sample)
            m = m.view(e, lay.k)
        nonneg = (torch.where(lay.valid, m, float("inf")) if lay.padded else m).amin(1) >= 0
        dead = torch.where(nonneg, zeros.index_add(0, lay.unit_entry, dead_u), 0.0)
        if units is not None and lay.unit_rows:
            units.add(lay.unit_rows, torch.where(nonneg[lay.unit_entry], per_unit, 0.0))
        units = torch.where(nonneg, lay.units, 0.0)
        counts = self._sample_counts(m, lay, e)
        if lay.exact:
            counts = counts.index_copy(0, lay.exact_idx, self._exact_counts(filled, lay))
        s_n, s_mean, s_m2 = _merge(acc[lay.rows], *_moments(m))
        return [lay.calls, lay.numel, zeros, total, sq, counts[:, 1], seen, counts[:, 0],
                units, dead, s_n, s_mean, s_m2, counts[:, 2:]]  # fmt: skip

    def _gather(self, filled: Sequence[Filled], lay: _Layout, shifts: torch.Tensor):
        """Partial sums, row norms and samples of all entries, concatenated in layout order
        (copy groups reduced first, each group as one tensor)."""
        sums, norms, samples = [], [], []
        for members, idx, where in lay.groups:
            p = filled[members[0]].slots.plan
            copies = torch.stack([filled[i].slots.copy for i in members])
            centred = any(filled[i].slots.shift for i in members)  # most layers: shift 0
            v = copies - shifts[idx, None].float() if centred else copies
            v = v.view(len(members), *p.view)
            sums.append(v.sum(1 + p.sum_dim).view(-1))
            norms.append(torch.linalg.vector_norm(v, 2, 2).view(-1))
            samples.append((copies if where is None else copies.gather(1, where)).view(-1))
        for i in lay.singles:
            slots = filled[i].slots
            sums.append(slots.sums)
            norms.append(slots.norms)
            samples.append(slots.sample)
        return torch.cat(sums), torch.cat(norms), torch.cat(samples)

    def _sample_counts(self, m: torch.Tensor, lay: _Layout, e: int) -> torch.Tensor:
        """(E, 2 + bins): near-zero, NaN/inf and histogram counts of the samples, scaled."""
        size = self.bins.size + 1  # and a key for the padding, dropped
        keys = self.bins.keys(m)
        keys = (torch.where(lay.valid, keys, size - 1) if lay.padded else keys).long()
        keys += torch.arange(0, e * size, size, device=m.device)[:, None]
        counts = torch.bincount(keys.view(-1), minlength=e * size).view(e, size)[:, :-1]
        return self.bins.fold_counts(counts.double() * lay.weight[:, None])

    def _exact_counts(self, filled: Sequence[Filled], lay: _Layout) -> torch.Tensor:
        """Exact mode: each entry's counts as (near, NaN/inf, bins): from [near, 256
        exponents] (log bins), or from counts per key (linear)."""
        c = torch.stack([filled[i].slots.counts for i in lay.exact]).double()
        if not self.bins.log:
            return self.bins.fold_counts(c)
        if self._exp_fold is None:
            self._exp_fold = _exponent_fold(self.config, c.device)
        folded = c.new_zeros(len(c), 1 + self.config.bins).index_add_(1, self._exp_fold, c[:, 1:])
        return torch.cat([c[:, :1], folded], 1)

    def _grads(self, filled: Sequence[Filled], lay: _Layout, zeros) -> list[torch.Tensor]:
        """The G_* fields per entry (zero where no gradient was recorded)."""
        if not lay.grads:
            return [zeros] * (Acc.HIST - Acc.G_NUMEL)
        ent = [filled[i].slots for i in lay.grads]
        gs = torch.cat([s.g_sums for s in ent]).double()
        gn = torch.cat([s.g_norms for s in ent]).double()
        ga = torch.cat([s.g_sample for s in ent]).double().abs()
        return [
            lay.g_numel,
            zeros.index_add(0, lay.seg_g_sums, gs),
            zeros.index_add(0, lay.seg_g_norms, gn.square()),
            zeros.index_add(0, lay.seg_g_sample, ga * lay.g_weight),
            zeros.index_add(0, lay.seg_g_sums, (~torch.isfinite(gs)).double()),
        ]


def _layout(filled: Sequence[Filled], dev: torch.device) -> _Layout:
    """The index tensors for one set of filled slots (built on the host, moved once)."""
    by_shape: dict[tuple, list[int]] = {}
    singles: list[int] = []
    for i, f in enumerate(filled):
        if f.fwd and f.slots.copy is not None:
            p = f.slots.plan
            by_shape.setdefault((p.shape, p.view, p.sum_dim, p.sample is None), []).append(i)
        elif f.fwd:
            singles.append(i)
    order = [i for members in by_shape.values() for i in members] + singles
    plans = [f.slots.plan for f in filled]
    k = max((plans[i].taken for i in order), default=1)
    # Built with numpy (no torch call per layer), moved to the device once per array.
    seg_s, per_p, unit_of, unit_entry, seg_n, sample_at = [], [], [], [], [], []
    unit_rows = []
    for i in order:
        p = plans[i]
        seg_s.append(np.full(p.partials, i))
        per_p.append(np.full(p.partials, float(p.numel // p.partials)))
        if p.units:
            unit_of.append(len(unit_entry) + (np.arange(p.partials) // p.div) % p.units)
            unit_entry += [i] * p.units
            unit_rows.append((filled[i].row, p.units))
        else:  # no units: its partials go to a spare unit, never counted
            unit_of.append(np.full(p.partials, -1))
        seg_n.append(np.full(p.view[0], i))
        sample_at.append(i * k + np.arange(p.taken))
    unit_of = [np.where(u < 0, len(unit_entry), u) for u in unit_of]
    grads = [i for i, f in enumerate(filled) if f.grad]
    g_s, g_n, g_x, g_w = [], [], [], []
    for i in grads:
        p = plans[i]
        g_s.append(np.full(p.partials, i))
        g_n.append(np.full(p.view[0], i))
        g_x.append(np.full(p.taken, i))
        g_w.append(np.full(p.taken, p.numel / p.taken))
    valid = np.zeros((len(filled), k), dtype=bool)
    for i in order:
        valid[i, : plans[i].taken] = True
    at = np.concatenate(sample_at) if sample_at else np.zeros(0, np.int64)
    dense = len(order) == len(filled) and np.array_equal(at, np.arange(len(filled) * k))
    exact = [i for i in order if filled[i].slots.counts is not None]
    groups = []
    for members in by_shape.values():
        p = plans[members[0]]
        where = None if p.sample is None else torch.stack([plans[i].sample for i in members])
        groups.append((members, torch.tensor(members, device=dev), where))

    def t(values, dtype=torch.int64) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=dtype).to(dev)

    def cat(xs: list[np.ndarray], dtype=torch.int64) -> torch.Tensor:
        return t(np.concatenate(xs) if xs else np.zeros(0), dtype)

    def f64(values: list[float]) -> torch.Tensor:
        return t(values, torch.float64)

    return _Layout(
        rows=t([f.row for f in filled]),
        calls=f64([float(f.fwd) for f in filled]),
        numel=f64([float(p.numel) * f.fwd for p, f in zip(plans, filled, strict=True)]),
        units=f64([float(p.units) * f.fwd for p, f in zip(plans, filled, strict=True)]),
        g_numel=f64([float(p.numel) * f.grad for p, f in zip(plans, filled, strict=True)]),
        groups=groups,
        singles=singles,
        seg_sums=cat(seg_s),
        per_partial=cat(per_p, torch.float64),
        unit_of=cat(unit_of),
        unit_entry=t(unit_entry),
        unit_rows=tuple(unit_rows),
        seg_norms=cat(seg_n),
        sample_at=None if dense else t(at),
        valid=t(valid, torch.bool),
        k=k,
        weight=f64([p.numel / p.taken for p in plans]),
        exact=exact,
        exact_idx=t(exact),
        grads=grads,
        seg_g_sums=cat(g_s),
        seg_g_norms=cat(g_n),
        seg_g_sample=cat(g_x),
        g_weight=cat(g_w, torch.float64),
    )


def _moments(m: torch.Tensor):
    """Per row of the (E, k) samples: (count, mean, M2) of its finite values, two-pass in
    float64 (exact for a whole small activation, subnormals included; the padding is NaN:
    left out)."""
    x = m.double()
    fin = torch.isfinite(x)
    n = fin.sum(1).double()
    mean = torch.where(fin, x, 0.0).sum(1) / n.clamp(min=1)
    dev = torch.where(fin, x - mean[:, None], 0.0)
    return n, mean, dev.square().sum(1)


def _merge(rows: torch.Tensor, n_b, mean_b, m2_b):
    """What to add to the rows' sample moments to merge a call's in (Chan's formula)."""
    n_a, mean_a = rows[:, Acc.S_COUNT], rows[:, Acc.S_MEAN]
    n = n_a + n_b
    delta = mean_b - mean_a
    w = torch.where(n > 0, n_b / n.clamp(min=1), 0.0)
    return n_b, delta * w, m2_b + delta * delta * n_a * w


def _exponent_fold(config: StatsConfig, device: torch.device) -> torch.Tensor:
    """(256,): the column of [NaN/inf, log bins...] each float32 exponent of |a| goes to.

    Bin i holds [2**(lo+i-1), 2**(lo+i)), biased exponent e = lo + i - 1 + 127; below 2**lo
    (zeros and subnormals included) is bin 0; 2**hi and above the last bin."""
    col = 1 + (torch.arange(256) - (126 + config.log_range[0])).clamp(0, config.bins - 1)
    col[255] = 0
    return col.to(device)
