"""Axis ranges that one spike cannot flatten, the off-scale points they leave out, and ticks.

Pure numpy: used by the widget's charts and by `ProgressCB`'s loss chart. Whatever the
values (NaN, inf, 1e38, 1e300), what these functions return is finite and fits float32,
so nothing non-finite ever reaches the browser.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

__all__ = [
    "LIMIT",
    "Clipped",
    "Range",
    "clip",
    "int_ticks",
    "line_arrays",
    "log_ticks",
    "nice_ticks",
    "robust_range",
    "to_float32",
]

LIMIT = 1e30  # |values| drawn are kept below this (float32 holds 3.4e38)
_TINY = 1e-30  # the smallest value a log axis shows


class Range(NamedTuple):
    """A y range (finite, lo < hi); `log`: for a log axis (then lo > 0)."""

    lo: float
    hi: float
    log: bool = False


class Clipped(NamedTuple):
    """Values squeezed into a `Range`: what to draw (float32, NaN where not finite) and
    where values were above or below it (drawn at the edge, marked as off scale)."""

    y: np.ndarray
    above: np.ndarray
    below: np.ndarray


def robust_range(
    series: Iterable[np.ndarray] | np.ndarray, log: bool = False, k: float = 8.0
) -> Range:
    """A range that holds the bulk of every series but not its spikes.

    Per series: median +- k median absolute deviations (in decades on a log axis), clipped to
    the series' own min and max; then the union over series, padded by 5%. When the full
    range is at most 3 times that, it is used instead (mild outliers stay on the chart).
    A series that trends keeps its whole range (its MAD is a quarter of it); a few spikes
    far from the rest fall outside and are drawn as off-scale markers. Non-finite values (and values
    <= 0 on a log axis) are ignored. Vectorised over series."""
    v = _rows(series)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(np.isfinite(v) & ((v > 0) if log else True), v, np.nan)
        if log:
            v = np.log10(v)
    v = np.clip(v, *(_log_limits() if log else (-LIMIT, LIMIT)))
    v = v[~np.isnan(v).all(axis=1)]
    if not len(v):
        return Range(1e-3, 1.0, True) if log else Range(0.0, 1.0)
    v = np.sort(v, axis=1)  # NaNs last
    n = (~np.isnan(v)).sum(axis=1)
    med = _median_sorted(v, n)
    mad = _median_sorted(np.sort(np.abs(v - med[:, None]), axis=1), n)
    floor = 0.25 if log else np.maximum(0.005 * np.abs(med), 1e-12)
    spread = k * np.maximum(mad, floor)
    rows = np.arange(len(v))
    lo = float(np.maximum(v[:, 0], med - spread).min())
    hi = float(np.minimum(v[rows, n - 1], med + spread).max())
    full_lo, full_hi = float(v[:, 0].min()), float(v[rows, n - 1].max())
    if full_hi - full_lo <= 3 * (hi - lo):  # the outliers would not flatten the rest: keep them
        lo, hi = full_lo, full_hi
    pad = (hi - lo) * 0.05 or (0.1 if log else max(abs(lo) * 0.05, 0.05))
    lo, hi = lo - pad, hi + pad
    if log:
        lo, hi = np.clip([lo, hi], *_log_limits())
        return Range(float(10.0**lo), float(10.0**hi), True)
    return Range(float(max(lo, -LIMIT)), float(min(hi, LIMIT)))


def _median_sorted(v: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Row medians of row-sorted `v` whose first n[i] values are finite (n >= 1)."""
    rows = np.arange(len(v))
    return (v[rows, (n - 1) // 2] + v[rows, n // 2]) / 2


def _rows(series: Iterable[np.ndarray] | np.ndarray) -> np.ndarray:
    """Series as one float64 2D array (rows padded with NaN to the longest)."""
    if isinstance(series, np.ndarray) and series.ndim == 2:
        return series.astype(np.float64, copy=False)
    rows = [np.asarray(s, dtype=np.float64).ravel() for s in series]
    n = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _log_limits() -> tuple[float, float]:
    return float(np.log10(_TINY)), float(np.log10(LIMIT))


def clip(y: np.ndarray, r: Range) -> Clipped:
    """`y` squeezed into `r`: finite values outside it sit on the edge and are flagged;
    non-finite values become NaN (a gap: the caller marks non-finite batches itself)."""
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(y)
    above = finite & (y > r.hi)
    below = finite & (y < r.lo)  # on a log axis lo > 0, so values <= 0 are below
    out = np.where(finite, np.clip(y, r.lo, r.hi), np.nan)
    return Clipped(out.astype(np.float32), above, below)


def to_float32(a: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """A contiguous float32 copy with every non-finite or out-of-range value set to `fill`."""
    a = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(a) & (np.abs(a) <= LIMIT)
    return np.ascontiguousarray(np.where(ok, a, fill), dtype=np.float32)


def int_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """Round integer ticks in [lo, hi], at most n + 1 of them: steps of 1, 2 or 5 times a
    power of ten, so labels never run together or read oddly (0, 78, 156...)."""
    span = max(hi - lo, 1.0)
    step = next(
        m * 10.0**e for e in range(16) for m in (1, 2, 5) if span / (m * 10.0**e) <= max(n, 1)
    )
    first = np.ceil(lo / step) * step
    return np.arange(first, hi + 1e-9, step) + 0.0  # + 0.0: never "-0"


def nice_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """Round ticks in [lo, hi] (steps of 1, 2 or 5 times a power of ten), at most n + 1."""
    span = max(hi - lo, 1e-300)
    base = 10.0 ** np.floor(np.log10(span / max(n, 1)))
    step = next(m * base for m in (1, 2, 5, 10) if span / (m * base) <= max(n, 1))
    first = np.ceil(lo / step - 1e-9) * step
    ticks = np.arange(first, hi + step * 1e-9, step)
    digits = max(0, int(-np.floor(np.log10(step))) + 1)
    return np.round(ticks, digits) + 0.0


def log_ticks(lo: float, hi: float, most: int = 6) -> np.ndarray:
    """Ticks for a log axis over [lo, hi]: powers of ten (every k-th when there are many),
    with 2x and 5x added when the range spans few decades."""
    a, b = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    decades = np.arange(a, b + 1)
    k = max(1, int(np.ceil(len(decades) / most)))
    ticks = 10.0 ** decades[decades % k == 0]
    if b - a <= 2:
        ticks = np.sort(np.concatenate([t * np.array([1.0, 2.0, 5.0]) for t in 10.0**decades]))
    inside = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
    return inside if len(inside) >= 2 else np.array([lo, hi])


def line_arrays(x: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) float32 arrays for a multi-line bqplot mark (y: (curves, points); x: shared,
    1-d, when every curve ends at the same point, else one row per curve) and the indices
    of the rows kept: bqplot puts each curve's label at its last point and draws a
    null path for a curve with no finite point (both log console errors). So rows without a
    finite value are dropped, and each kept row's trailing NaNs repeat its last finite point
    (zero-length segments: nothing drawn). Interior NaNs stay: gaps. A single point is
    sent twice (bqplot rejects a one-point curve)."""
    x = np.asarray(x, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    ys = ys.reshape(-1, len(x)) if len(x) else np.zeros((0, 0))
    finite = np.isfinite(ys)
    keep = np.flatnonzero(finite.any(axis=1))
    ys, finite = ys[keep], finite[keep]
    n = ys.shape[1]
    last = n - 1 - np.argmax(finite[:, ::-1], axis=1) if len(keep) else np.zeros(0, int)
    if len(keep) and (last == last[0]).all():  # the usual case: one shared x, half the bytes
        end = int(last[0]) + 1
        idx = np.arange(end) if end > 1 else np.zeros(2, int)  # bqplot squeezes 1 point away
        return x[idx].astype(np.float32), ys[:, idx].astype(np.float32), keep
    cols = np.minimum(np.arange(max(n, 2))[None, :], last[:, None])
    ys = np.take_along_axis(ys, cols, axis=1)
    return x[cols].astype(np.float32), ys.astype(np.float32), keep
