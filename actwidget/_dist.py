"""Global stats and an agreed Stop under torch.distributed (torchrun, DDP, FSDP).

Every rank records its own activations. At each flush, `Combiner.combine` turns the ranks'
new one-batch columns into the columns one process would record over the global batch:
counts, sums and histograms add, means and variances combine exactly (Chan's formula, as
`stats.merge_groups`). Per flush it runs two collectives on a private gloo group, on host
memory (the columns are already there: no device copy, no device sync):

1. an all-reduce (MAX) of a header: the flush's batch window, from the root one centring
   shift per layer and moment, and each layer's unit count (2 + 3 x layers float64 values);
2. a reduce (SUM) to the root of a dense (layers, batches, K) float64 grid, K = 48 at the
   default 34 bins: 9 additive fields, the histogram, a presence count, and per moment
   n * (mean - shift) and M2 + n * (mean - shift)^2; after it, per layer with units, a
   (batches, 1 + units) grid of per-unit totals (and a count of ranks that could not give
   them), so that a unit is dead when it gave nothing over the global batch (pooled), not
   on one rank's share of it.

So each rank sends about layers x batches x (K + units) x 8 bytes per flush: 2.5 MB for 100
layers and `flush_every=64` (38 KB per batch) plus 0.5 KB per batch per 64 units, the same
at 2 ranks or 1,000.

`agree_stop` runs once per batch: an asynchronous all-reduce (MAX) of a one-element flag,
started at one batch boundary and read at the next, so every rank stops at the same
batch, one or two batches after any rank asked, and no rank ever stops alone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from .estimator import DEAD_BELOW
from .stats import HIST, Field, merge_groups

__all__ = ["Combiner"]

_ADDITIVE = [
    Field.NUMEL, Field.COUNT, Field.NEAR_ZERO, Field.NONFINITE, Field.UNITS, Field.DEAD,
    Field.G_COUNT, Field.G_ABS, Field.G_NONFINITE,
]  # fmt: skip
_MOMENTS = [(Field.COUNT, Field.MEAN, Field.M2), (Field.G_COUNT, Field.G_MEAN, Field.G_M2)]


class Combiner:
    """Combines the ranks' columns at each flush and agrees on stopping, for one recorder.

    Create it on every rank at the same point (it makes a process group: a collective).
    `root`: the rank that gets the global columns (the one that writes the run)."""

    def __init__(self, n_layers: int, *, root: int = 0, group: dist.ProcessGroup | None = None):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if not 0 <= root < self.world:
            raise ValueError(f"root rank must be in [0, {self.world}), got {root}")
        self.n_layers, self.root = n_layers, root
        self.group = group if group is not None else dist.new_group(backend="gloo")
        self._flag = torch.zeros(1)
        self._work: dist.Work | None = None
        self.bytes_sent = 0  # payload bytes this rank contributed to collectives

    @property
    def is_root(self) -> bool:
        return self.rank == self.root

    def combine(
        self,
        layers: np.ndarray,
        rows: np.ndarray,
        units: dict[tuple[int, int], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The global one-batch columns of this flush, sorted by (layer, batch), on the root
        (None on other ranks). `units`: per (layer, batch), this rank's per-unit totals, where
        every call was judged for dead units. Every rank must call it at the same flush."""
        units = units or {}
        width, n = rows.shape[1], self.n_layers
        lay, steps, merged = _per_layer_step(layers, rows)
        header = np.full(2 + 3 * n, -np.inf)
        if len(steps):
            header[:2] = steps.max(), -steps.min()
        if self.is_root:
            header[2 : 2 + 2 * n] = _shifts(lay, merged, n).ravel()
        for (i, _), u in units.items():
            header[2 + 2 * n + i] = max(header[2 + 2 * n + i], len(u))
        header = self._all_reduce_max(header)
        if not np.isfinite(header[0]):  # no rank recorded anything
            return (np.zeros(0, np.int64), np.zeros((0, width))) if self.is_root else None
        lo, hi = int(-header[1]), int(header[0])
        shifts = header[2 : 2 + 2 * n].reshape(2, n)
        widths = np.where(np.isfinite(header[2 + 2 * n :]), header[2 + 2 * n :], 0).astype(int)
        grid = np.zeros((n, hi - lo + 1, _k(width)))
        grid[lay, steps - lo] = _pack(merged, shifts[:, lay])
        unit_grids = _unit_grids(widths, hi - lo + 1, lay, steps - lo, units, lo)
        t = torch.from_numpy(np.concatenate([grid.ravel(), *(g.ravel() for g in unit_grids)]))
        dist.reduce(t, dst=self._global(self.root), op=dist.ReduceOp.SUM, group=self.group)
        self.bytes_sent += t.numel() * t.element_size()
        if not self.is_root:
            return None
        reduced = t.numpy()
        grid = reduced[: grid.size].reshape(grid.shape)
        at = grid.size
        for g in unit_grids:
            g[...] = reduced[at : at + g.size].reshape(g.shape)
            at += g.size
        out_layers, out = _unpack(grid, lo, width, shifts)
        _pool_dead(out_layers, out, unit_grids, widths, lo)
        return out_layers, out

    def agree_stop(self, local: bool) -> bool:
        """Call at every batch boundary on every rank: True when all ranks are to stop here.

        Reads the flag all-reduced since the last boundary, then starts the next with
        `local` (this rank wants to stop)."""
        agreed = self._read_flag()
        self._flag.fill_(1.0 if local else 0.0)
        self._work = dist.all_reduce(
            self._flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True
        )
        self.bytes_sent += self._flag.nbytes
        return agreed

    def finish(self) -> bool:
        """The fit ends on every rank at this boundary: complete the flag in flight (whether
        any rank asked to stop)."""
        return self._read_flag()

    def abandon(self) -> None:
        """The fit failed on this rank: forget the flag in flight (no collective)."""
        self._work = None

    def _read_flag(self) -> bool:
        if self._work is None:
            return False
        work, self._work = self._work, None
        work.wait()
        return bool(self._flag[0] > 0)  # a CPU tensor: no device sync

    def _all_reduce_max(self, values: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(values)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        self.bytes_sent += values.nbytes
        return t.numpy()

    def _global(self, rank: int) -> int:
        return dist.get_global_rank(self.group, rank) if self.group is not None else rank


def _k(width: int) -> int:
    """Values per (layer, batch) cell of the grid."""
    return len(_ADDITIVE) + (width - HIST) + 1 + 4


def _per_layer_step(
    layers: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One merged row per (layer, batch): the layer and batch of each, and the rows."""
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), rows
    order = np.lexsort((rows[:, Field.BATCH_FIRST], layers))
    layers, rows = layers[order], rows[order]
    step = rows[:, Field.BATCH_FIRST]
    starts = np.flatnonzero(np.r_[True, (step[1:] != step[:-1]) | (layers[1:] != layers[:-1])])
    return (
        layers[starts].astype(np.int64),
        step[starts].astype(np.int64),
        merge_groups(rows, starts),
    )


def _shifts(layers: np.ndarray, rows: np.ndarray, n_layers: int) -> np.ndarray:
    """(2, n_layers): per moment and layer, the mean of the layer's first row that has one
    (0 if none); every rank centres its sums on the root's."""
    out = np.zeros((2, n_layers))
    for m, (count, mean, _) in enumerate(_MOMENTS):
        has = (rows[:, count] > 0) & np.isfinite(rows[:, mean])
        first = np.unique(layers[has], return_index=True)
        out[m, first[0]] = rows[has][first[1], mean]
    return out


def _pack(rows: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Rows as additive cells: presence, additive fields, histogram, centred moment sums."""
    out = [np.ones((len(rows), 1)), rows[:, _ADDITIVE], rows[:, HIST:]]
    for m, (count, mean, m2) in enumerate(_MOMENTS):
        n = rows[:, count]
        d = np.where(n > 0, rows[:, mean] - shifts[m], 0.0)
        out += [(n * d)[:, None], (np.where(n > 0, rows[:, m2], 0.0) + n * d * d)[:, None]]
    return np.concatenate(out, axis=1)


def _unpack(
    grid: np.ndarray, lo: int, width: int, shifts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The reduced grid as one-batch columns (cells no rank recorded are left out)."""
    layer, batch = np.nonzero(grid[:, :, 0] > 0)
    cells = grid[layer, batch]
    out = np.zeros((len(cells), width))
    out[:, Field.BATCHES] = 1
    out[:, Field.BATCH_SUM] = out[:, Field.BATCH_FIRST] = out[:, Field.BATCH_LAST] = lo + batch
    at = 1 + len(_ADDITIVE)
    out[:, _ADDITIVE] = cells[:, 1:at]
    out[:, HIST:] = cells[:, at : at + width - HIST]
    at += width - HIST
    for m, (count, mean, m2) in enumerate(_MOMENTS):
        n, sd, ss = out[:, count], cells[:, at + 2 * m], cells[:, at + 2 * m + 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(n > 0, sd / np.where(n > 0, n, 1), np.nan)
        out[:, mean] = shifts[m, layer] + d
        out[:, m2] = np.where(n > 0, np.maximum(ss - n * np.nan_to_num(d) ** 2, 0.0), 0.0)
    return layer.astype(np.int64), out


def _unit_grids(
    widths: np.ndarray,
    batches: int,
    lay: np.ndarray,
    at: np.ndarray,
    units: dict[tuple[int, int], np.ndarray],
    lo: int,
) -> list[np.ndarray]:
    """Per layer with units (in layer order), this rank's (batches, 1 + units) grid: in each
    batch it recorded, [0, per-unit totals], or [1, 0...] when it cannot give them (a call
    not judged, a compiled call); zeros in batches it did not record."""
    grids = []
    for i in np.flatnonzero(widths):
        g = np.zeros((batches, 1 + widths[i]))
        for b in at[lay == i].tolist():
            u = units.get((int(i), lo + b))
            if u is not None and len(u) == widths[i]:
                g[b, 1:] = u
            else:
                g[b, 0] = 1
        grids.append(g)
    return grids


def _pool_dead(
    layers: np.ndarray, out: np.ndarray, grids: list[np.ndarray], widths: np.ndarray, lo: int
) -> None:
    """Where every rank gave per-unit totals, the dead units over the global batch: units
    whose total is at most DEAD_BELOW x the mean unit's (as one process judges a call)."""
    for i, g in zip(np.flatnonzero(widths).tolist(), grids, strict=True):
        mine = np.flatnonzero(layers == i)
        b = out[mine, Field.BATCH_FIRST].astype(np.int64) - lo
        ok = g[b, 0] == 0
        totals = g[b[ok], 1:]
        with np.errstate(invalid="ignore"):
            dead = (totals <= DEAD_BELOW * totals.mean(1, keepdims=True)).sum(1)
        out[mine[ok], Field.UNITS] = widths[i]
        out[mine[ok], Field.DEAD] = dead
