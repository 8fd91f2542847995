"""Packed accumulator rows -> stats columns: what a batch's copy of a recorder's
accumulators (`estimator.Acc` fields) says about each layer, in the `stats.Field` layout
(means and M2 from the sums around the shift, or from the sample where the sums cannot be
used; counts; the histogram; the gradient fields)."""

from __future__ import annotations

import numpy as np

from ..estimator import Acc
from ..stats import HIST, Field, StatsConfig

__all__ = ["columns"]


def columns(
    rows: np.ndarray, batch: int | np.ndarray, config: StatsConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The one-batch stats columns (`Field` layout) of packed rows: (the position of each
    column's row in `rows`, columns), for the rows that recorded anything. `batch`: the
    batch of every row (or of all of them): several packed copies are turned at once."""
    present = (rows[:, Acc.CALLS] > 0) | (rows[:, Acc.G_NUMEL] > 0)
    layers = np.flatnonzero(present)
    r = rows[layers]
    out = np.zeros((len(layers), config.width))
    out[:, Field.BATCHES] = 1
    at = np.broadcast_to(np.asarray(batch, dtype=float), (len(rows),))[layers]
    out[:, Field.BATCH_SUM] = out[:, Field.BATCH_FIRST] = out[:, Field.BATCH_LAST] = at
    numel = r[:, Acc.NUMEL]
    exact_counts = config.sample_size is None
    bad = np.maximum(r[:, Acc.BAD], r[:, Acc.BAD_SEEN])
    bad = np.where(exact_counts, r[:, Acc.BAD], bad)
    bad = np.minimum(bad, numel)
    count = numel - bad
    shift, s1, s2 = r[:, Acc.SHIFT], r[:, Acc.SUM], r[:, Acc.SQ]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m2 = s2 - s1 * s1 / np.maximum(count, 1)
        clean = exact_counts | (bad == 0)
        usable = clean & np.isfinite(s1) & np.isfinite(s2) & ((m2 >= 1e-6 * s2) | (s2 == 0))
        mean = np.where(usable, shift + s1 / np.maximum(count, 1), r[:, Acc.S_MEAN])
        s_scale = count / np.maximum(r[:, Acc.S_COUNT], 1)
        m2 = np.where(usable, np.maximum(m2, 0.0), r[:, Acc.S_M2] * s_scale)
        has_mean = (count > 0) & (usable | (r[:, Acc.S_COUNT] > 0))
    out[:, Field.NUMEL] = numel
    out[:, Field.NONFINITE] = bad
    out[:, Field.COUNT] = count
    out[:, Field.MEAN] = np.where(has_mean, mean, np.nan)
    out[:, Field.M2] = np.where(has_mean, np.nan_to_num(m2), 0.0)
    out[:, Field.NEAR_ZERO] = np.minimum(r[:, Acc.NEAR], numel)
    out[:, Field.UNITS] = r[:, Acc.UNITS]
    out[:, Field.DEAD] = r[:, Acc.DEAD]
    out[:, HIST:] = r[:, Acc.HIST :]
    _grad_fields(out, r)
    return layers, out


def _grad_fields(out: np.ndarray, r: np.ndarray) -> None:
    n, s1, s2, sabs = r[:, Acc.G_NUMEL], r[:, Acc.G_SUM], r[:, Acc.G_SQ], r[:, Acc.G_ABS]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        bad = (r[:, Acc.G_BAD_SEEN] > 0) | ~(np.isfinite(s1) & np.isfinite(s2) & np.isfinite(sabs))
        bad &= n > 0
        out[:, Field.G_NONFINITE] = np.where(bad, 1.0, 0.0)
        out[:, Field.G_COUNT] = np.where(bad, 0.0, n)
        out[:, Field.G_MEAN] = np.where(bad | (n == 0), np.nan, s1 / np.maximum(n, 1))
        m2 = s2 - s1 * s1 / np.maximum(n, 1)
        m2 = np.where(m2 >= 1e-6 * s2, m2, 0.0)  # below what the sums resolve: none
        out[:, Field.G_M2] = np.where(bad, 0.0, np.maximum(np.nan_to_num(m2), 0.0))
        out[:, Field.G_ABS] = np.where(bad, 0.0, sabs)
