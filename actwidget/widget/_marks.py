"""Marks drawn over every chart: red bands over non-finite batches, a dashed rule and "fit N"
at each fit's start, a rule at each alert's batch. Shared by the line charts, the overview
and the per-layer heatmaps; they draw on a fixed [0, 1] y scale of their own.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import bqplot as bq
import numpy as np

__all__ = ["ALERT", "NONFINITE", "Marked", "Overlay", "f32", "polygons", "rows", "set_if_changed"]

NONFINITE = "#d62728"  # red: NaN/inf
ALERT = "#ff7f0e"  # orange: an alert's batch


def f32(a: Any) -> np.ndarray:
    """A contiguous float32 array (sent to the browser as a binary buffer)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def set_if_changed(widget: Any, **values: Any) -> None:
    """Write only the traits whose value changed, in one message."""
    changed = {}
    for name, value in values.items():
        old = getattr(widget, name)
        same = (
            np.array_equal(old, value)
            if isinstance(value, np.ndarray) or isinstance(old, np.ndarray)
            else old == value
        )
        if not same:
            changed[name] = value
    if changed:
        with widget.hold_sync():
            for name, value in changed.items():
                setattr(widget, name, value)


def polygons(x0: Any, x1: Any, y0: Any, y1: Any) -> tuple[np.ndarray, np.ndarray]:
    """Closed rectangles [x0, x1] x [y0, y1] as (k, 5) x and y arrays for a filled `Lines`."""
    x0, x1, y0, y1 = np.broadcast_arrays(*(np.asarray(v, float) for v in (x0, x1, y0, y1)))
    xs = np.stack([x0, x0, x1, x1, x0], axis=1)
    ys = np.stack([y0, y1, y1, y0, y0], axis=1)
    return f32(xs.reshape(-1, 5)), f32(ys.reshape(-1, 5))


class Marked(NamedTuple):
    """What the overlay marks: non-finite (x0, x1) bands, fit starts and alert batches."""

    bands: np.ndarray  # (k, 4): x0, x1, y0, y1 (y in the overlay's scale)
    fits: list[tuple[int, int]]  # (fit number, first batch), fits after the first
    alerts: np.ndarray  # distinct alert batches


def _lines(x_scale: bq.Scale, y_scale: bq.Scale, **kw: Any) -> bq.Lines:
    e = np.zeros((0, 2), np.float32)
    return bq.Lines(x=e, y=e, scales={"x": x_scale, "y": y_scale}, **kw)


class Overlay:
    """The overlay marks of one chart; `below` go under the data, `above` over it."""

    def __init__(
        self,
        x_scale: bq.Scale,
        labels: bool = True,
        y_scale: bq.Scale | None = None,
        opacity: float = 0.25,
    ) -> None:
        self.y = y_scale or bq.LinearScale(min=0.0, max=1.0)
        self.opacity = opacity  # of the red fill: higher over dark heatmaps
        self.bands = _lines(
            x_scale, self.y, fill="inside", close_path=True, colors=[NONFINITE],
            stroke_width=1.5, fill_opacities=[], interpolation="linear",
        )  # fmt: skip
        self.fits = _lines(x_scale, self.y, colors=["#777"], line_style="dashed", stroke_width=1)
        self.alerts = _lines(x_scale, self.y, colors=[ALERT], stroke_width=1.5, opacities=[0.9])
        self.labels = (
            bq.Label(
                x=np.zeros(0, np.float32),
                y=np.zeros(0, np.float32),
                text=[],
                scales={"x": x_scale, "y": self.y},
                colors=["#555"],
                default_size=11,
                font_weight="normal",
                align="start",
                x_offset=3,
                y_offset=12,
            )
            if labels
            else None
        )
        self._last: Marked | None = None

    @property
    def below(self) -> list[bq.Mark]:
        return [self.bands]

    @property
    def above(self) -> list[bq.Mark]:
        return [self.fits, self.alerts] + ([self.labels] if self.labels is not None else [])

    def draw(self, marked: Marked) -> None:
        """Draw `marked` (nothing is sent when it did not change)."""
        last = self._last
        if last is not None and _same(last, marked):
            return
        self._last = marked
        lo, hi = self.y.min if self.y.min is not None else 0.0, self.y.max or 1.0
        b = marked.bands
        bx, by = polygons(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
        set_if_changed(self.bands, x=bx, y=by, fill_opacities=[self.opacity] * len(bx))
        fx = np.array([b for _, b in marked.fits], float) - 0.5
        set_if_changed(self.fits, **_rules(fx, lo, hi))
        set_if_changed(self.alerts, **_rules(marked.alerts, lo, hi))
        if self.labels is not None:
            top = lo if getattr(self.y, "reverse", False) else hi
            set_if_changed(
                self.labels, x=f32(fx), y=f32(np.full(len(fx), top)),
                text=[f"fit {n}" for n, _ in marked.fits],
            )  # fmt: skip


def rows(bands: np.ndarray, y0: float, y1: float) -> np.ndarray:
    """(k, 2) x ranges as (k, 4) bands spanning y0..y1."""
    bands = np.asarray(bands, float).reshape(-1, 2)
    return np.concatenate([bands, np.tile([y0, y1], (len(bands), 1))], axis=1)


def _rules(x: np.ndarray, lo: float, hi: float) -> dict[str, np.ndarray]:
    x = np.asarray(x, float)
    return {
        "x": f32(np.stack([x, x], axis=1).reshape(-1, 2)),
        "y": f32(np.tile([lo, hi], (len(x), 1)).reshape(-1, 2)),
    }


def _same(a: Marked, b: Marked) -> bool:
    return (
        a.fits == b.fits and np.array_equal(a.bands, b.bands) and np.array_equal(a.alerts, b.alerts)
    )
