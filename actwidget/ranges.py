"""Axis ranges that one spike cannot flatten, the off-scale points they leave out, ticks and
their labels, and the arrays line and band marks take.

Pure numpy, no UI: shared by the widget's charts and `ProgressCB`'s loss chart (both import
it; it imports neither). Whatever the values (NaN, inf, 1e38, 1e300), what these functions
return is finite and fits float32, so nothing non-finite ever reaches the browser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

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
    "polygons",
    "robust_range",
    "superscript",
    "tick_key",
    "tick_label",
    "tick_labels",
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
    with 2x and 5x added when the range spans few decades; round values on a linear step
    when fewer than two of those fall inside (a range within a decade)."""
    a, b = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    decades = np.arange(a, b + 1)
    k = max(1, int(np.ceil(len(decades) / most)))
    ticks = 10.0 ** decades[decades % k == 0]
    if b - a <= 2:
        ticks = np.sort(np.concatenate([t * np.array([1.0, 2.0, 5.0]) for t in 10.0**decades]))
    inside = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
    if len(inside) >= 2:
        return inside
    linear = nice_ticks(lo, hi, 4)
    linear = linear[linear > 0]
    return linear if len(linear) >= 2 else np.array([lo, hi])


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


def polygons(x0: Any, x1: Any, y0: Any, y1: Any) -> tuple[np.ndarray, np.ndarray]:
    """Closed rectangles [x0, x1] x [y0, y1] as (k, 5) float32 x and y arrays for a filled
    multi-line mark (bands over batches)."""
    x0, x1, y0, y1 = np.broadcast_arrays(*(np.asarray(v, float) for v in (x0, x1, y0, y1)))
    xs = np.stack([x0, x0, x1, x1, x0], axis=1)
    ys = np.stack([y0, y1, y1, y0, y0], axis=1)
    return (
        np.ascontiguousarray(xs.reshape(-1, 5), np.float32),
        np.ascontiguousarray(ys.reshape(-1, 5), np.float32),
    )


_TIMES = "\u00d7"  # the multiplication sign
_SUP = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def superscript(label: str) -> str:
    """'2^-3' -> '2⁻³' (other labels unchanged)."""
    base, _, exp = label.partition("^")
    return base + exp.translate(_SUP) if exp else label


def tick_key(v: float) -> str:
    """`v` as JavaScript's `String(v)` writes it: the key under which a bqplot axis looks up
    a tick's label in `tick_labels` (shortest round-trip digits; exponent form below 1e-6
    and from 1e21)."""
    v = float(v)
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else ("NaN" if v != v else ("Infinity" if v > 0 else "-Infinity"))
    sign = "-" if v < 0 else ""
    mantissa, _, exp = repr(abs(v)).partition("e")
    digits = mantissa.replace(".", "").lstrip("0")
    point = mantissa.find(".") if "." in mantissa else len(mantissa)
    lead = len(mantissa.replace(".", "")) - len(mantissa.replace(".", "").lstrip("0"))
    n = point - lead + (int(exp) if exp else 0)  # v = 0.digits x 10^n
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    body = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{body}e{'+' if e >= 0 else '-'}{abs(e)}"


def tick_label(v: float, digits: int = 3) -> str:
    """A tick label: plain decimals from 0.001 to 9999 ("0.05", "250"), a power of ten
    outside ("10⁻⁶", or a mantissa times one: "2 times 10⁻⁵"), never "0.000001" or "1e-06";
    `digits` significant digits at most."""
    v = float(v)
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    if 1e-3 <= abs(v) < 1e4:
        return np.format_float_positional(v, precision=digits, fractional=False, trim="-")
    e = math.floor(math.log10(abs(v)))
    m = float(np.format_float_positional(v / 10.0**e, precision=digits, fractional=False))
    if abs(m) >= 10:
        e, m = e + 1, m / 10
    mant = np.format_float_positional(m, precision=digits, fractional=False, trim="-")
    power = superscript(f"10^{e}")
    return power if mant == "1" else ("-" + power if mant == "-1" else f"{mant}{_TIMES}{power}")


def tick_labels(values: Iterable[float]) -> dict[str, str]:
    """Labels for an axis' `tick_values` (`tick_label`), keyed as bqplot looks them up
    (`tick_key`), with as few significant digits (3 or more) as keep them distinct."""
    vals = [float(v) for v in values]
    for digits in range(3, 11):
        labels = [tick_label(v, digits) for v in vals]
        if len(set(labels)) == len(set(vals)):
            break
    return {tick_key(v): t for v, t in zip(vals, labels, strict=True)}
