"""The model-wide overview: one heatmap, a row per layer and a column per batch (or bin).

Colour: log10 std by default; mean, near-zero fraction or dying-unit fraction selectable.
Red bands cover each layer's non-finite batches, diamonds mark alerts, dashed rules each
fit's start. Its size is bounded: rows x columns <= `cells` whatever the layer count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from ..stats import Alert, LayerStats
from ._grid import Grid, runs_to_bands, values
from ._marks import ALERT, Marked, Overlay, f32, set_if_changed
from ._ranges import robust_range, to_float32
from ._view import set_x, x_axis

__all__ = ["METRICS", "Metric", "Overview", "row_labels"]


class Metric(NamedTuple):
    """A colour choice: the series, its label, and a fixed range (None: from the data)."""

    key: str
    label: str
    log: bool
    scheme: str
    fixed: tuple[float, float] | None


METRICS = {
    "log std": Metric("std", "std (log₁₀)", True, "viridis", None),
    "mean": Metric("mean", "mean", False, "RdBu", None),
    "near-zero fraction": Metric("near_zero", "near-zero fraction", False, "viridis", (0.0, 1.0)),
    "dying units": Metric("dead", "dying-unit fraction", False, "viridis", (0.0, 1.0)),
}


def row_labels(names: list[str], rows_fit: int, width: int = 24) -> dict[str, str]:
    """Labels for at most `rows_fit` evenly spaced rows: the module path, its start cut
    ("…mlp.fc1") when longer than `width`. Keys as JavaScript writes the row numbers."""
    step = max(1, -(-len(names) // max(rows_fit, 1)))
    out = {}
    for i in range(0, len(names), step):
        path = names[i].split(" (")[0]
        out[str(i)] = path if len(path) <= width else "…" + path[-(width - 1) :]
    return out


def colour_values(metric: Metric, layers: LayerStats, n: int) -> tuple[np.ndarray, float, float]:
    """(rows, columns) colour values of `n` stacked binned layers, and their range; empty
    cells get the neutral end."""
    raw = values(layers, metric.key).reshape(n, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(raw > 0, np.log10(np.where(raw > 0, raw, 1.0)), np.nan) if metric.log else raw
    if metric.fixed is not None:
        lo, hi = metric.fixed
    else:
        r = robust_range(v, log=False)
        lo, hi = r.lo, r.hi
        if metric.key == "mean":
            m = max(abs(lo), abs(hi), 1e-12)
            lo, hi = -m, m
    fill = 0.0 if metric.key == "mean" else lo
    return to_float32(np.clip(v, lo, hi), fill=fill), float(lo), float(hi)


class Overview:
    """The overview figure and its colour menu; `box` lays them out."""

    def __init__(self, on_metric: Callable[[], None], cells: int = 32768) -> None:
        self.cells = cells
        self.metric = widgets.Dropdown(
            options=list(METRICS), value="log std", description="colour",
            layout=widgets.Layout(width="240px"), style={"description_width": "48px"},
        )  # fmt: skip
        self.metric.observe(lambda _change: on_metric(), "value")
        self.x = bq.LinearScale(min=-0.5, max=1.5)
        self.y = bq.LinearScale(min=-0.5, max=1.5, reverse=True)
        self.color = bq.ColorScale(scheme="viridis", min=0.0, max=1.0)
        self.heat = bq.HeatMap(
            x=np.array([0.0, 1.0], np.float32), y=np.array([0.0, 1.0], np.float32),
            color=np.zeros((2, 2), np.float32),
            scales={"x": self.x, "y": self.y, "color": self.color},
        )  # fmt: skip
        e = np.zeros(0, np.float32)
        self.alerts = bq.Scatter(
            x=e, y=e, scales={"x": self.x, "y": self.y}, marker="diamond", colors=[ALERT],
            stroke="#222", default_size=48,
        )  # fmt: skip
        self.overlay = Overlay(self.x, y_scale=self.y, opacity=0.6)
        self.x_axis = x_axis(self.x)
        self.y_axis = bq.Axis(
            scale=self.y, side="left",
            tick_values=np.array([0.0]), tick_labels={"0": ""},
        )  # fmt: skip
        self.c_axis = bq.ColorAxis(
            scale=self.color, side="right", tick_format=".2~g",
        )  # fmt: skip
        self.figure = bq.Figure(
            title="All layers",
            marks=[self.heat, *self.overlay.below, self.alerts, *self.overlay.above],
            axes=[self.x_axis, self.y_axis, self.c_axis],
            fig_margin={"top": 30, "bottom": 38, "left": 80, "right": 70},
            layout=widgets.Layout(width="100%", height="160px"),
            title_style={"font-size": "14px"},
            display_toolbar=False,
            animation_duration=0,
        )
        self.box = widgets.VBox([self.metric, self.figure], layout=widgets.Layout(width="100%"))
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
        if n == 1:  # a HeatMap needs two rows: the second lies outside the axis
            colors = np.concatenate([colors, colors])
        height = int(min(max(22 * n + 70, 150), 440))
        plot_h = height - 68
        labels = row_labels(names, max(1, plot_h // 14))
        longest = max((len(v) for v in labels.values()), default=4)
        set_x(self.x, self.x_axis, grid.domain, 10)
        set_if_changed(self.y, min=-0.5, max=max(n, 1) - 0.5)
        with self.heat.hold_sync():
            self.heat.x = f32(grid.centres)
            self.heat.y = f32(np.arange(max(n, 2)))
            self.heat.color = colors
        set_if_changed(
            self.color, min=lo, max=hi,
            scheme=metric.scheme, reverse=metric.key == "mean",
        )  # fmt: skip
        set_if_changed(self.c_axis, tick_values=_colour_ticks(lo, hi))
        set_if_changed(
            self.y_axis, tick_values=np.array([float(k) for k in labels]), tick_labels=labels
        )
        margin = {"top": 30, "bottom": 38, "left": int(min(max(7 * longest + 18, 60), 190)),
                  "right": 70}  # fmt: skip
        set_if_changed(self.figure, fig_margin=margin, title=f"All layers: {metric.label}")
        if self.figure.layout.height != f"{height}px":
            self.figure.layout.height = f"{height}px"
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


def _colour_ticks(lo: float, hi: float) -> np.ndarray:
    """Three round ticks inside [lo, hi] for the colour bar (it is short)."""
    step = 10.0 ** np.floor(np.log10(max(hi - lo, 1e-12) / 2))
    mid = np.round((lo + hi) / 2 / step) * step
    q = step / 10
    ticks = np.array([np.ceil(lo / q) * q, mid, np.floor(hi / q) * q])
    return np.round(ticks, max(0, int(-np.floor(np.log10(q))))) + 0.0
