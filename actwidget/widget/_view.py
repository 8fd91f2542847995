"""The line charts: mean, std, near-zero fraction and gradient std of the selected layers.

One multi-line bqplot mark per chart holds the selected layers only (so what is sent grows
with the selection, not with the model), a second one a reference run, faded. Std and
gradient std are on a log axis by default. The y range holds the bulk of every line, not
its spikes (`actwidget.ranges.robust_range`); points beyond it sit on the edge with a triangle, and
the title counts them. Red bands mark non-finite batches, dashed rules each fit's start,
black rules each alert. Everything crosses as float32 buffers, in one message per mark.
"""

from __future__ import annotations

from typing import NamedTuple

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from ..ranges import (
    Range,
    clip,
    int_ticks,
    line_arrays,
    log_ticks,
    nice_ticks,
    robust_range,
    tick_labels,
)  # fmt: skip
from ._grid import Grid
from ._marks import NONFINITE, Marked, Overlay, f32, set_if_changed, set_ticks
from ._names import display_name

__all__ = ["SERIES", "Charts", "Frame", "Series", "chart_grid"]


class Series(NamedTuple):
    """One line chart: the `LayerStats` series it draws, its title, a log axis or not, and
    the range its values can take (a fraction stays in [0, 1])."""

    key: str
    title: str
    log: bool
    bounds: tuple[float, float] | None = None
    needs: str | None = None  # the StatsConfig flag that records it (the title says so if off)


SERIES = [
    Series("mean", "Mean", False),
    Series("std", "Std", True),
    Series("near_zero", "Near-zero fraction", False, (0.0, 1.0)),
    Series("grad_std", "Gradient std", True, needs="grads"),
]


class Frame(NamedTuple):
    """What the line charts draw: x, the selected layers' names, colours and series
    (key -> (layers, bins) array), the same for a reference run, and the overlay."""

    grid: Grid
    x: np.ndarray
    names: list[str]
    colors: list[str]
    values: dict[str, np.ndarray]
    ref_x: np.ndarray
    ref_names: list[str]
    ref_colors: list[str]
    ref_values: dict[str, np.ndarray]
    marked: Marked
    recorded: frozenset[str] = frozenset()  # the `Series.needs` flags the run has on
    bad: np.ndarray | None = None  # (layers, bins): bins with NaN/inf (not drawn, no range)


def chart_grid(items: list[widgets.Widget], min_width: str = "300px") -> widgets.GridBox:
    """A grid that fills the width with as many columns of at least `min_width` as fit."""
    return widgets.GridBox(
        items,
        layout=widgets.Layout(
            grid_template_columns=f"repeat(auto-fill, minmax({min_width}, 1fr))",
            grid_gap="0px 6px", width="100%",
        ),
    )  # fmt: skip


def x_axis(scale: bq.Scale, label: str = "batch") -> bq.Axis:
    """A batch axis: a few round integer ticks (set per redraw), SI labels ("20k")."""
    return bq.Axis(scale=scale, label=label, tick_format="~s", tick_values=np.array([0.0, 1.0]))


def set_x(scale: bq.Scale, axis: bq.Axis, domain: tuple[float, float], ticks: int) -> None:
    """Fix an x scale to `domain` with at most `ticks` round integer ticks."""
    lo, hi = domain
    set_if_changed(scale, min=float(lo), max=float(hi))
    set_if_changed(axis, tick_values=int_ticks(lo, hi, ticks))


class LineChart:
    """One figure: the layers' lines, a reference run, off-scale markers and overlays."""

    def __init__(self, series: Series, x_scale: bq.LinearScale, log: bool) -> None:
        self.series, self.log = series, log
        self.y = bq.LogScale(min=1e-3, max=1.0) if log else bq.LinearScale(min=0.0, max=1.0)
        e, e2 = np.zeros(0, np.float32), np.zeros((0, 2), np.float32)
        sc = {"x": x_scale, "y": self.y}
        self.lines = bq.Lines(x=e2, y=e2, scales=sc, stroke_width=1.5, labels=[], colors=["#555"])
        self.ref = bq.Lines(
            x=e2, y=e2, scales=sc, stroke_width=2, labels=[], colors=["#555"],
            opacities=[0.3], line_style="dashed",
        )  # fmt: skip
        self.above = bq.Scatter(
            x=e, y=e, scales=sc, marker="triangle-up", colors=[NONFINITE],
            default_size=28, stroke="white",
        )  # fmt: skip
        self.below = bq.Scatter(
            x=e, y=e, scales=sc, marker="triangle-down", colors=[NONFINITE],
            default_size=28, stroke="white",
        )  # fmt: skip
        self.overlay = Overlay(x_scale)
        self.x_axis = x_axis(x_scale)
        fmt = ".2~g" if log else ".3~g"
        ticks = np.array([1e-3, 1e-2, 0.1, 1.0]) if log else np.array([0.0, 0.5, 1.0])
        self.y_axis = bq.Axis(  # a few ticks before any data; each draw sets its own
            scale=self.y, side="left", tick_format=fmt, tick_values=ticks,
            tick_labels=tick_labels(ticks),
        )  # fmt: skip
        marks = [*self.overlay.below, self.ref, self.lines, self.above, self.below]
        self.figure = bq.Figure(
            title=series.title,
            marks=[*marks, *self.overlay.above],
            axes=[self.x_axis, self.y_axis],
            fig_margin={"top": 32, "bottom": 38, "left": 62, "right": 22},
            layout=widgets.Layout(width="auto", height="240px", min_width="0"),
            title_style={"font-size": "14px"},
            display_toolbar=False,
            animation_duration=0,
        )
        self.range = Range(0.0, 1.0, log)
        self.off = 0  # points off scale at the last draw

    def draw(self, frame: Frame) -> None:
        key = self.series.key
        ys, ref = frame.values[key], frame.ref_values.get(key)
        if frame.bad is not None and frame.bad.shape == ys.shape:
            # Batches with NaN/inf: the red band marks them; their other values (a near-zero
            # fraction of 0, a std of the few finite values) neither draw nor set the range.
            ys = np.where(frame.bad, np.nan, ys)
        shown = [*ys] + ([*ref] if ref is not None else [])
        r = robust_range(shown, log=self.log)
        if self.series.bounds is not None:
            lo, hi = self.series.bounds
            r = Range(max(r.lo, lo), min(r.hi, hi), r.log)
            r = r if r.hi > r.lo else Range(lo, hi, r.log)
        c = clip(ys, r)
        _set_lines(self.lines, frame.x, c.y, frame.names, frame.colors)
        if ref is not None:
            _set_lines(self.ref, frame.ref_x, clip(ref, r).y, frame.ref_names, frame.ref_colors)
        for mark, where, edge in ((self.above, c.above, r.hi), (self.below, c.below, r.lo)):
            x = f32(frame.x[where.any(axis=0)])
            set_if_changed(mark, x=x, y=f32(np.full(len(x), edge)))
        off = self.off = int(c.above.sum() + c.below.sum())
        empty = len(frame.names) and not np.isfinite(ys).any()
        title = self.series.title + (f" ({off} off scale)" if off else "")
        needs = self.series.needs
        why = f"{needs}=False" if needs and needs not in frame.recorded else "no data"
        set_if_changed(self.figure, title=title + (f" ({why})" if empty else ""))
        set_if_changed(self.y, min=r.lo, max=r.hi)
        ticks = log_ticks(r.lo, r.hi) if self.log else nice_ticks(r.lo, r.hi, 6)
        set_ticks(self.y_axis, ticks, tick_labels(ticks))
        self.range = r
        self.overlay.draw(frame.marked)


def _set_lines(mark: bq.Lines, x: np.ndarray, ys: np.ndarray, names: list, colors: list) -> None:
    """One message: the curves with data, labelled by display name (the picker hides by
    label)."""
    xs, ys, keep = line_arrays(x, ys)
    labels = [display_name(names[i]) for i in keep]
    with mark.hold_sync():
        set_if_changed(mark, labels=labels, colors=[colors[i] for i in keep] or ["#555"])
        mark.x, mark.y = xs, ys


class Charts:
    """The line charts (`SERIES`), sharing one x scale; `box` lays them out."""

    def __init__(self, std_scale: str = "log") -> None:
        if std_scale not in ("log", "linear"):
            raise ValueError(f'std_scale must be "log" or "linear", got {std_scale!r}')
        self.x_scale = bq.LinearScale(min=-0.5, max=1.5)
        self.charts = {
            s.key: LineChart(s, self.x_scale, s.log and std_scale == "log") for s in SERIES
        }
        self.figures = {k: c.figure for k, c in self.charts.items()}
        self.off_note = widgets.HTML(layout=widgets.Layout(display="none"))
        self.grid = chart_grid(list(self.figures.values()))
        self.box = widgets.VBox([self.grid, self.off_note])

    @property
    def line_marks(self) -> list[bq.Lines]:
        """The marks whose curves are layers (the picker hides unselected ones)."""
        return [m for c in self.charts.values() for m in (c.lines, c.ref)]

    def draw(self, frame: Frame) -> None:
        first = next(iter(self.charts.values()))
        set_x(self.x_scale, first.x_axis, frame.grid.domain, 5)
        off, shown = [], []
        for c in self.charts.values():
            needs = c.series.needs
            if needs and needs not in frame.recorded:  # not recorded: a note, not a chart
                off.append(f"{c.series.title}: not recorded (StatsConfig({needs}=True) records it)")
                continue
            shown.append(c.figure)
            if c is not first:
                set_if_changed(c.x_axis, tick_values=first.x_axis.tick_values)
            c.draw(frame)
        # A chart not recorded leaves the grid (a hidden bqplot figure lays itself out at a
        # negative size, an error in the browser console).
        if tuple(shown) != self.grid.children:
            self.grid.children = tuple(shown)
        note = "".join(f"<div style='color:#666;font-size:12px'>{t}</div>" for t in off)
        set_if_changed(self.off_note, value=note)
        set_if_changed(self.off_note.layout, display=None if off else "none")

    def close(self) -> None:
        for fig in self.figures.values():
            fig.close()
