"""From a stats snapshot to the figures: the overview of every layer, the selected layers'
heatmaps and line charts, on time grids sized to what each shows.

Costs: the line charts and heatmaps grow with the selected layers; the overview with all
layers but its cells are bounded (`Overview.cells`); every layer's columns are merged in one
numpy pass (`binned_many`).
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from ..stats import Field, RunStats
from ._grid import Grid, binned, binned_many, make_grid, nonfinite, runs_to_bands, values
from ._heatmaps import Heatmaps
from ._layers import LayerState
from ._marks import Legend, Marked, legend_html, rows
from ._overview import Overview
from ._view import SERIES, Charts, Frame

__all__ = ["HEAT_COLUMNS", "Painter", "band_union"]

HEAT_COLUMNS = 128  # per-layer heatmaps: the plot area is ~240 px wide


class Painter:
    """Draws stats into the widget's figures; keeps the non-finite batches of all layers
    (found by the overview pass) for the line charts' bands."""

    def __init__(
        self,
        charts: Charts,
        overview: Overview,
        heatmaps: Heatmaps,
        layers: LayerState,
        reference: RunStats | None,
        max_columns: int,
    ) -> None:
        self.charts, self.overview, self.heatmaps = charts, overview, heatmaps
        self.layers, self.reference, self.max_columns = layers, reference, max_columns
        self.bands = np.zeros((0, 2))  # (x0, x1) non-finite batches of any layer
        self.no_data = False  # the overview has cells with no batch
        self.legend = widgets.HTML(layout=widgets.Layout(display="none", width="100%"))

    def draw(self, stats: RunStats) -> None:
        """Draw every figure from `stats` (one snapshot: they show the same batches)."""
        end = max(stats.batches, self.reference.batches if self.reference else 0, 1)
        width = max((s.batches_per_column for s in stats.values()), default=1)
        selected = [n for n in self.layers.selected if n in stats]
        # First the overview: it finds the non-finite batches of every layer.
        self.draw_overview(stats, end, width)
        self.draw_heatmaps(stats, end, width, selected)
        grid = make_grid(end, self.max_columns, width)
        frame = self.frame(stats, grid, selected)
        self.charts.draw(frame)
        self.layers.bind(self.charts.line_marks, self.heatmaps.figures)
        self.draw_legend(stats, frame)

    def draw_legend(self, stats: RunStats, frame: Frame) -> None:
        """The legend line: an entry for each kind of mark drawn now."""
        legend = Legend(
            nonfinite=len(frame.marked.bands) > 0,
            alerts=bool(stats.alerts),
            fits=bool(frame.marked.fits),
            off_scale=any(c.off for c in self.charts.charts.values()),
            reference=bool(frame.ref_names),
            no_data=self.no_data,
        )
        html = legend_html(legend)
        if self.legend.value != html:
            with self.legend.hold_sync():
                self.legend.value = html
                self.legend.layout.display = "" if html else "none"

    def frame(self, stats: RunStats, grid: Grid, names: list[str]) -> Frame:
        """What the line charts draw: the selected layers (and the reference's) on `grid`."""
        keys = [s.key for s in SERIES]
        layers = binned_many([stats[n] for n in names], grid)
        vals = {k: values(layers, k).reshape(len(names), grid.count) for k in keys}
        ref = self.reference
        ref_names = [n for n in names if ref is not None and n in ref]
        ref_vals = {}
        if ref is not None:
            ref_layers = binned_many([ref[n] for n in ref_names], grid)
            ref_vals = {k: values(ref_layers, k).reshape(len(ref_names), grid.count) for k in keys}
        bad = nonfinite(layers).reshape(len(names), grid.count)
        mine = runs_to_bands(bad.any(axis=0), grid)
        colors = self.layers.colors_of
        flags = {s.needs for s in SERIES if s.needs}
        recorded = frozenset(f for f in flags if getattr(stats.config, f, True))
        return Frame(
            grid=grid, x=grid.x, names=names, colors=colors(names), values=vals,
            ref_x=grid.x, ref_names=ref_names, ref_colors=colors(ref_names), ref_values=ref_vals,
            marked=Marked(
                rows(band_union(mine, self.bands), 0.0, 1.0), fits(stats), alert_batches(stats)
            ),
            recorded=recorded,
            bad=bad,
        )  # fmt: skip

    def draw_overview(self, stats: RunStats, end: int, width: int) -> None:
        names = list(stats)
        if not names:
            return
        grid = make_grid(end, self.overview.max_bins(len(names), self.max_columns), width)
        layers = binned_many([stats[n] for n in names], grid)
        bad = nonfinite(layers).reshape(len(names), grid.count)
        self.bands = runs_to_bands(bad.any(axis=0), grid)
        self.no_data = bool((layers.columns[:, Field.BATCHES] == 0).any())
        self.overview.draw(grid, names, layers, bad, stats.alerts, fits(stats))

    def draw_heatmaps(self, stats: RunStats, end: int, width: int, selected: list[str]) -> None:
        shown = self.heatmaps.show(selected, self.layers.colors_of(selected), stats.config)
        grid = make_grid(end, min(self.max_columns, HEAT_COLUMNS), width)
        marks, alerts = fits(stats), stats.alerts
        for name in shown:
            layer = binned(stats[name], grid, hist=True)
            mine = np.unique([a.batch for a in alerts if a.layer == name]).astype(float)
            bands = rows(runs_to_bands(nonfinite(layer), grid), 0.0, 1.0)
            self.heatmaps.maps[name].draw(grid, layer, Marked(bands, marks, mine))


def fits(stats: RunStats) -> list[tuple[int, int]]:
    """(fit number, first batch) of every fit after the first (each gets a rule)."""
    return [(f.fit, f.batch) for f in stats.fits if f.fit > 1]


def alert_batches(stats: RunStats, most: int = 64) -> np.ndarray:
    """The distinct batches with an alert (each gets a rule), at most `most`."""
    return np.unique([a.batch for a in stats.alerts])[:most].astype(float)


def band_union(a: np.ndarray, b: np.ndarray, most: int = 64) -> np.ndarray:
    """The union of two sets of (x0, x1) bands, as disjoint bands (overlaps would draw
    darker); at most `most`, the closest merged first."""
    bands = np.concatenate([a.reshape(-1, 2), b.reshape(-1, 2)])
    bands = bands[np.argsort(bands[:, 0])]
    out: list[list[float]] = []
    for x0, x1 in bands:
        if out and x0 <= out[-1][1]:
            out[-1][1] = max(out[-1][1], x1)
        else:
            out.append([x0, x1])
    while len(out) > most:
        gaps = [out[i + 1][0] - out[i][1] for i in range(len(out) - 1)]
        i = int(np.argmin(gaps))
        out[i : i + 2] = [[out[i][0], out[i + 1][1]]]
    return np.array(out, float).reshape(-1, 2)
