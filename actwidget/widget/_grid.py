"""One time grid for everything the widget draws: every layer's columns merged into the same
regular bins of batches, so that lines share one x array, heatmap cells line up, and the
number of columns sent never exceeds the bins however long the run.

Merging is exact (`stats.merge_groups`): a bin's mean, std and counts are those of all its
batches. An empty bin (a layer not called in those batches) is an all-zero column.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..stats import HIST, Field, LayerStats, StatsConfig, merge_groups

__all__ = ["Grid", "binned", "binned_many", "make_grid", "nonfinite", "runs_to_bands", "values"]

_CONFIG = StatsConfig()


class Grid(NamedTuple):
    """Bins of `width` batches from batch 0: bin j holds batches [j*width, (j+1)*width)."""

    width: int
    count: int
    end: int  # one past the last batch recorded

    @property
    def domain(self) -> tuple[float, float]:
        """The x range covering every bin, in batch units (cells are centred on batches)."""
        return -0.5, self.count * self.width - 0.5

    @property
    def x(self) -> np.ndarray:
        """Each bin's centre; the last, partial bin's centre is that of its batches so far."""
        lo = np.arange(self.count) * self.width
        hi = np.minimum(lo + self.width, max(self.end, 1)) - 1
        return (lo + np.maximum(hi, lo)) / 2.0

    @property
    def centres(self) -> np.ndarray:
        """Each bin's centre as if full (heatmap cells: regular spacing)."""
        return np.arange(self.count) * self.width + (self.width - 1) / 2.0


def make_grid(end: int, max_bins: int, min_width: int = 1, min_count: int = 2) -> Grid:
    """The finest grid of at most `max_bins` bins up to batch `end` whose width is a power of
    two and at least `min_width` (the widest column of the stats: columns are never split)."""
    width = 1
    while width < min_width or -(-end // width) > max_bins:
        width *= 2
    return Grid(width, max(-(-end // width), min_count), end)


def binned(layer: LayerStats, grid: Grid, hist: bool = False) -> LayerStats:
    """`layer`'s columns merged into `grid`'s bins (`hist=False` drops the histogram: cheaper)."""
    return binned_many([layer], grid, hist)


def binned_many(layers: list[LayerStats], grid: Grid, hist: bool = False) -> LayerStats:
    """Every layer binned on `grid` in one exact merge, stacked: rows [i*count, (i+1)*count)
    are layer i's bins (the cost is one numpy pass, not one per layer)."""
    width = HIST + (layers[0].config.bins if hist and layers else 0)
    out = np.zeros((len(layers) * grid.count, width))
    parts, starts, targets, offset = [], [], [], 0
    for i, layer in enumerate(layers):
        cols = layer.columns[:, :width]
        if not len(cols):
            continue
        idx = np.clip(
            (cols[:, Field.BATCH_FIRST] // grid.width).astype(np.int64), 0, grid.count - 1
        )
        first = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
        parts.append(cols)
        starts.append(first + offset)
        targets.append(idx[first] + i * grid.count)
        offset += len(cols)
    if parts:
        cols, first = np.concatenate(parts), np.concatenate(starts)
        merged = cols if len(first) == len(cols) else merge_groups(cols, first)
        out[np.concatenate(targets)] = merged
    name = layers[0].name if len(layers) == 1 else "*"
    config = layers[0].config if layers else None
    return LayerStats(name, config, out) if config is not None else LayerStats(name, _CONFIG, out)


def values(layer: LayerStats, key: str) -> np.ndarray:
    """Series `key` of a binned layer ("mean", "std", "near_zero", "dead", "grad_std",
    "grad_abs", "grad_mean"), NaN where a bin has no value."""
    v = np.asarray(getattr(layer, key), dtype=np.float64)
    if key == "mean":
        v = np.where(layer.columns[:, Field.COUNT] > 0, v, np.nan)
    return v


def nonfinite(layer: LayerStats) -> np.ndarray:
    """Per bin: whether any activation or gradient value was NaN/inf."""
    cols = layer.columns
    return (cols[:, Field.NONFINITE] > 0) | (cols[:, Field.G_NONFINITE] > 0)


def runs_to_bands(mask: np.ndarray, grid: Grid, max_bands: int = 32) -> np.ndarray:
    """Runs of True bins as (x0, x1) batch ranges, shape (k, 2); neighbouring runs merge
    until at most `max_bands` remain (a band never disappears, it only grows)."""
    mask = np.asarray(mask, dtype=bool)
    scale = 1
    while True:
        edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
        first, last = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if len(first) <= max_bands:
            break
        if len(mask) % 2:
            mask = np.r_[mask, False]
        mask = mask.reshape(-1, 2).any(axis=1)
        scale *= 2
    w = grid.width * scale
    return np.stack([first * w - 0.5, np.minimum(last * w, grid.count * grid.width) - 0.5], axis=1)
