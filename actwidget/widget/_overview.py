"""The model-wide overview: one heatmap, a row per layer and a column per batch (or bin), with
its colour bar beside it.

Colour: std on a log scale by default; mean, near-zero fraction or dead-unit fraction
selectable. Cells with no batch recorded (before the first batch, past the end of a live run
drawn against a longer reference) are left unpainted over a grey hatch, never a data colour.
Red bands cover each layer's non-finite batches, black diamonds mark alerts, dashed rules
each fit's start. Its size is bounded: rows x columns <= `cells` whatever the layer count.
The colour bar is a small figure of its own sharing the overview's colour scale (bqplot's
`ColorAxis` draws no bar on a plot under 200 px high): high values at the top, tick labels
in the figure's margin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from ..ranges import log_ticks, nice_ticks, robust_range, tick_key, tick_labels, to_float32
from ..stats import Alert, Field, LayerStats
from ._colors import BLUE_RED, VIRIDIS, Palette, hatch
from ._grid import Grid, runs_to_bands, values
from ._marks import ALERT, Marked, Overlay, f32, set_if_changed, set_ticks
from ._names import display_names, shorten
from ._view import set_x, x_axis

__all__ = ["METRICS", "Metric", "Overview", "colour_values", "row_labels"]

_MARGIN = {"top": 30, "bottom": 38}  # shared by the overview and its colour bar
_WAITING = "All layers: waiting for the first batch"


class Metric(NamedTuple):
    """A colour choice: the series, its label, log10 of it or not, the palette, and a fixed
    range (None: from the data)."""

    key: str
    label: str
    log: bool
    palette: Palette
    fixed: tuple[float, float] | None


METRICS = {  # menu entry -> metric; the entries name the line charts' series
    "std (log scale)": Metric("std", "std (log scale)", True, Palette(VIRIDIS), None),
    "mean": Metric("mean", "mean", False, Palette(BLUE_RED), None),
    "near-zero fraction": Metric(
        "near_zero", "near-zero fraction", False, Palette(VIRIDIS), (0.0, 1.0)
    ),
    "dead-unit fraction": Metric("dead", "dead-unit fraction", False, Palette(VIRIDIS), (0.0, 1.0)),
}


def row_labels(names: list[str], rows_fit: int, width: int = 30) -> dict[str, str]:
    """Labels for at most `rows_fit` evenly spaced rows: the layers' display names,
    shortened to `width` characters (`shorten`). Keys as JavaScript writes the row
    numbers."""
    step = max(1, -(-len(names) // max(rows_fit, 1)))
    shown = display_names(names)
    return {str(i): shorten(shown[i], width) for i in range(0, len(names), step)}


def colour_values(metric: Metric, layers: LayerStats, n: int) -> tuple[np.ndarray, float, float]:
    """(rows, columns) colour values of `n` stacked binned layers, and the data's range
    (lo, hi). Cells with no batch get `metric.palette.no_data(lo, hi)`; cells whose value
    is not finite (their batches are marked red) or zero on a log scale get `lo`."""
    raw = values(layers, metric.key).reshape(n, -1)
    empty = (layers.columns[:, Field.BATCHES] == 0).reshape(n, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(raw > 0, np.log10(np.where(raw > 0, raw, 1.0)), np.nan) if metric.log else raw
    v = np.where(empty, np.nan, v)
    if metric.fixed is not None:
        lo, hi = metric.fixed
    else:
        r = robust_range(v, log=False)
        lo, hi = r.lo, r.hi
        if metric.key == "mean":
            m = max(abs(lo), abs(hi), 1e-12)
            lo, hi = -m, m
    out = to_float32(np.clip(v, lo, hi), fill=lo)
    out[empty] = metric.palette.no_data(lo, hi)
    return out, float(lo), float(hi)


def colour_ticks(
    metric: Metric, lo: float, hi: float, most: int = 5
) -> tuple[np.ndarray, dict[str, str]]:
    """At most `most` ticks for the colour bar, and their labels: for log std, at round
    stds ("0.2", "10⁻³"), placed at their log10."""
    if not metric.log:
        ticks = nice_ticks(lo, hi, max(most - 1, 1))
        return ticks, tick_labels(ticks)
    stds = log_ticks(10.0**lo, 10.0**hi)
    if len(stds) < 3:  # under a decade: round stds on a linear step
        stds = nice_ticks(10.0**lo, 10.0**hi, max(most - 1, 1))
        stds = stds[stds > 0]
    if len(stds) > most:  # powers of ten only, then every k-th of them
        decades = stds[np.isclose(np.log10(stds), np.round(np.log10(stds)))]
        stds = decades if len(decades) >= 2 else stds[:: -(-len(stds) // most)]
        stds = stds[:: -(-len(stds) // most)]
    labels = tick_labels(stds).values()
    ticks = np.log10(stds)
    return ticks, {tick_key(t): label for t, label in zip(ticks, labels, strict=True)}


class ColourBar:
    """A narrow figure: the palette from lo (bottom) to hi (top) on the overview's colour
    scale, labelled on its right."""

    def __init__(self, color: bq.ColorScale, steps: int = 64) -> None:
        self.steps = steps
        self.y = bq.LinearScale(min=0.0, max=1.0)
        self.heat = bq.HeatMap(
            x=np.array([0.0, 1.0], np.float32), y=f32(np.linspace(0, 1, steps)),
            color=np.zeros((steps, 2), np.float32), visible=False,
            scales={"x": bq.LinearScale(min=-0.5, max=1.5), "y": self.y, "color": color},
        )  # fmt: skip
        self.axis = bq.Axis(
            scale=self.y, side="right", tick_values=np.array([0.0, 1.0]), tick_labels={},
            visible=False,
        )  # fmt: skip
        self.figure = bq.Figure(
            marks=[self.heat], axes=[self.axis],
            fig_margin={**_MARGIN, "left": 4, "right": 58},
            layout=widgets.Layout(width="82px", height="160px", flex="0 0 auto"),
            display_toolbar=False, animation_duration=0,
        )  # fmt: skip

    @property
    def shown(self) -> bool:
        return bool(self.heat.visible)

    def draw(self, lo: float, hi: float, ticks: np.ndarray, labels: dict[str, str]) -> None:
        edges = np.linspace(lo, hi, self.steps + 1)
        centres = (edges[1:] + edges[:-1]) / 2
        set_if_changed(self.y, min=float(lo), max=float(hi))
        with self.heat.hold_sync():
            self.heat.y = f32(centres)
            self.heat.color = f32(np.repeat(centres[:, None], 2, axis=1))
        set_ticks(self.axis, ticks, labels)
        set_if_changed(self.heat, visible=True)
        set_if_changed(self.axis, visible=True)

    def hide(self) -> None:
        set_if_changed(self.heat, visible=False)
        set_if_changed(self.axis, visible=False)


class Overview:
    """The overview figure, its colour bar and its colour menu; `box` lays them out."""

    def __init__(self, on_metric: Callable[[], None], cells: int = 32768) -> None:
        self.cells = cells
        self.metric = widgets.Dropdown(
            options=list(METRICS), value="std (log scale)", description="colour",
            layout=widgets.Layout(width="260px"), style={"description_width": "48px"},
        )  # fmt: skip
        self.metric.observe(lambda _change: on_metric(), "value")
        self.x = bq.LinearScale(min=-0.5, max=1.5)
        self.y = bq.LinearScale(min=-0.5, max=1.5, reverse=True)
        palette = METRICS[self.metric.value].palette
        lo, hi = palette.scale_range(0.0, 1.0)
        self.color = bq.ColorScale(colors=palette.scale_colors, min=lo, max=hi)
        self.heat = bq.HeatMap(  # before any data: every cell without data (hatched)
            x=np.array([0.0, 1.0], np.float32), y=np.array([0.0, 1.0], np.float32),
            color=np.full((2, 2), palette.no_data(0.0, 1.0), np.float32),
            scales={"x": self.x, "y": self.y, "color": self.color},
        )  # fmt: skip
        e = np.zeros(0, np.float32)
        self.alerts = bq.Scatter(
            x=e, y=e, scales={"x": self.x, "y": self.y}, marker="diamond", colors=[ALERT],
            stroke="white", default_size=48,
        )  # fmt: skip
        self.overlay = Overlay(self.x, y_scale=self.y, opacity=0.6)
        self.x_axis = x_axis(self.x)
        self.y_axis = bq.Axis(
            scale=self.y, side="left",
            tick_values=np.array([0.0]), tick_labels={"0": ""},
        )  # fmt: skip
        self.hatch = hatch()
        self.figure = bq.Figure(
            title=_WAITING,
            marks=[self.hatch, self.heat, *self.overlay.below, self.alerts, *self.overlay.above],
            axes=[self.x_axis, self.y_axis],
            fig_margin={**_MARGIN, "left": 80, "right": 12},
            layout=widgets.Layout(width="auto", height="160px", flex="1 1 auto", min_width="0"),
            title_style={"font-size": "14px"},
            display_toolbar=False,
            animation_duration=0,
        )
        self.colour_bar = ColourBar(self.color)
        row = widgets.HBox(
            [self.figure, self.colour_bar.figure], layout=widgets.Layout(width="100%")
        )
        self.box = widgets.VBox([self.metric, row], layout=widgets.Layout(width="100%"))
        self.rows = 0

    def max_bins(self, layers: int, max_columns: int) -> int:
        """Columns for `layers` rows: at most `cells` cells in all, at least 32 columns."""
        return int(min(max_columns, max(32, self.cells // max(layers, 1))))

    def draw(
        self,
        grid: Grid,
        names: list[str],
        layers: LayerStats,
        bad: np.ndarray,
        alerts: list[Alert],
        fits: list[tuple[int, int]],
    ) -> None:
        """Draw `layers`: one per name, binned on `grid` and stacked (`binned_many`);
        `bad`: (layers, bins) non-finite cells."""
        n = len(names)
        metric = METRICS[self.metric.value]
        colors, lo, hi = colour_values(metric, layers, n)
        recorded = bool((layers.columns[:, Field.BATCHES] > 0).any())
        if n == 1:  # a HeatMap needs two rows: the second lies outside the axis
            colors = np.concatenate([colors, colors])
        height = int(min(max(22 * n + 70, 150), 440))
        plot_h = height - _MARGIN["top"] - _MARGIN["bottom"]
        labels = row_labels(names, max(1, plot_h // 14))
        longest = max((len(v) for v in labels.values()), default=4)
        set_x(self.x, self.x_axis, grid.domain, 10)
        set_if_changed(self.y, min=-0.5, max=max(n, 1) - 0.5)
        smin, smax = metric.palette.scale_range(lo, hi)
        with self.color.hold_sync():
            set_if_changed(self.color, colors=metric.palette.scale_colors, min=smin, max=smax)
        with self.heat.hold_sync():
            self.heat.x = f32(grid.centres)
            self.heat.y = f32(np.arange(max(n, 2)))
            self.heat.color = colors
        set_ticks(self.y_axis, np.array([float(k) for k in labels]), labels)
        margin = {**_MARGIN, "left": int(min(max(6.5 * longest + 18, 60), 220)), "right": 12}
        title = f"All layers: {metric.label}" if recorded else _WAITING
        set_if_changed(self.figure, fig_margin=margin, title=title)
        for fig in (self.figure, self.colour_bar.figure):
            if fig.layout.height != f"{height}px":
                fig.layout.height = f"{height}px"
        if recorded:
            self.colour_bar.draw(lo, hi, *colour_ticks(metric, lo, hi, max(2, plot_h // 18)))
        else:
            self.colour_bar.hide()
        self._draw_marks(grid, names, bad, alerts, fits)
        self.rows = n

    def _draw_marks(
        self,
        grid: Grid,
        names: list[str],
        bad: np.ndarray,
        alerts: list[Alert],
        fits: list[tuple[int, int]],
    ) -> None:
        bands = []
        for row in np.flatnonzero(bad.any(axis=1)):
            b = runs_to_bands(bad[row], grid, max_bands=8)
            if len(b):
                bands.append(np.c_[b, np.full(len(b), row - 0.5), np.full(len(b), row + 0.5)])
        row_of = {name: i for i, name in enumerate(names)}
        pts = {(row_of[a.layer], a.batch // grid.width) for a in alerts if a.layer in row_of}
        pts_list = sorted(pts)[:500]
        x = np.array([grid.centres[min(b, grid.count - 1)] for _, b in pts_list], float)
        y = np.array([r for r, _ in pts_list], float)
        set_if_changed(self.alerts, x=f32(x), y=f32(y))
        self.overlay.draw(
            Marked(
                bands=np.concatenate(bands) if bands else np.zeros((0, 4)),
                fits=fits,
                alerts=np.zeros(0),
            )
        )

    def close(self) -> None:
        """Close both figures."""
        self.figure.close()
        self.colour_bar.figure.close()
