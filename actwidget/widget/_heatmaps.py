"""Per-layer |a| heatmaps: time on x, the histogram's bins on y (powers of two for the default
log bins), colour the share of the column's values in each bin (log scale).

Only the layers asked for get a figure (the selected ones, at most `max_shown`); figures are
made on first use and kept, so re-selecting a layer costs no new widgets. A column with no
finite value is drawn dark under a red band, never as a plain dark column.
"""

from __future__ import annotations

import math

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from ..ranges import superscript, tick_key
from ..stats import Field, LayerStats, StatsConfig
from ._colors import VIRIDIS, Palette, hatch
from ._grid import Grid
from ._marks import Marked, Overlay, f32
from ._names import display_name
from ._view import chart_grid, set_x, x_axis

__all__ = ["FLOOR", "Heatmaps", "bin_ticks", "superscript"]

FLOOR = -4.0  # log10 of the smallest share coloured (1 value in 10,000)
PALETTE = Palette(VIRIDIS)


def bin_ticks(config: StatsConfig, most: int = 9) -> tuple[np.ndarray, dict[str, str]]:
    """Ticks on the bin boundaries (y = i - 0.5 is the lower edge of bin i) and their labels:
    powers of two for log bins ('2⁻⁸'), |a| values for linear ones; at most `most`."""
    bins = config.bins
    need = max(1, math.ceil(bins / max(most - 1, 1)))
    if config.hist == "log":  # bin i >= 1 starts at 2^(lo + i - 1): ticks at round exponents
        step = next((n for n in (1, 2, 4, 8, 16, 32, 64) if n >= need), need)
        lo, hi = config.log_range
        labels = {e - lo + 1: superscript(f"2^{e}") for e in range(lo, hi + 1) if e % step == 0}
        labels = {i: t for i, t in labels.items() if i >= max(2, step / 2)}  # clear of "0"
        labels[0] = "0"
    else:  # a step of bins whose width is a round number
        width = config.hist_max / bins
        step = next(
            (k for k in range(need, bins + 1) if _round(k * width)), bins
        )  # fmt: skip
        labels = {i: f"{config.edges[i]:.4g}" for i in range(0, bins + 1, step)}
    values = np.array(sorted(labels), float) - 0.5
    return values, {tick_key(v): labels[int(v + 0.5)] for v in values}


def _round(v: float) -> bool:
    """Whether v is 1, 2, 2.5 or 5 times a power of ten."""
    mag = 10.0 ** math.floor(math.log10(v))
    return any(math.isclose(v, m * mag, rel_tol=1e-9) for m in (1, 2, 2.5, 5, 10))


def shares(layer: LayerStats) -> np.ndarray:
    """(bins, columns) log10 share of each column's finite values per bin, >= FLOOR; a
    column with no batch gets `PALETTE.no_data` (drawn as no data)."""
    hist = layer.hist
    total = hist.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, hist / np.where(total > 0, total, 1), 0.0)
        out = np.log10(np.maximum(share, 10.0**FLOOR))
    out[layer.columns[:, Field.BATCHES] == 0] = PALETTE.no_data(FLOOR, 0.0)
    return f32(out.T)


class LayerHeatmap:
    """One layer's heatmap figure."""

    def __init__(self, name: str, color: str, config: StatsConfig) -> None:
        self.x = bq.LinearScale(min=-0.5, max=1.5)
        bins = config.bins
        self.y = bq.LinearScale(min=-0.5, max=bins - 0.5)
        lo, hi = PALETTE.scale_range(FLOOR, 0.0)
        self.heat = bq.HeatMap(  # placeholder with a non-empty domain (HeatMap needs 2 columns)
            x=np.array([0.0, 1.0], np.float32),
            y=f32(np.arange(bins)),
            color=np.full((bins, 2), PALETTE.no_data(FLOOR, 0.0), np.float32),
            scales={"x": self.x, "y": self.y,
                    "color": bq.ColorScale(colors=PALETTE.scale_colors, min=lo, max=hi)},
        )  # fmt: skip
        self.overlay = Overlay(self.x, labels=False, opacity=0.6)
        ticks, labels = bin_ticks(config)
        self.x_axis = x_axis(self.x)
        label = "|a| (log₂ bins)" if config.hist == "log" else "|a|"
        y_axis = bq.Axis(
            scale=self.y, side="left", label=label,
            tick_values=ticks, tick_labels=labels, label_offset="44px",
        )  # fmt: skip
        self.figure = bq.Figure(
            title=display_name(name),
            marks=[hatch(), self.heat, *self.overlay.below, *self.overlay.above],
            axes=[self.x_axis, y_axis],
            fig_margin={"top": 28, "bottom": 38, "left": 62, "right": 22},
            layout=widgets.Layout(width="auto", height="210px", min_width="0"),
            title_style={"fill": color, "font-size": "12px"},
            display_toolbar=False,
            animation_duration=0,
        )

    def close(self) -> None:
        """Close the figure and everything in it (marks, scales, axes)."""
        fig = self.figure
        scales = {id(s): s for m in fig.marks for s in m.scales.values()}
        for w in [*fig.marks, *fig.axes, *scales.values(), fig]:
            w.close()

    def draw(self, grid: Grid, layer: LayerStats, marked: Marked) -> None:
        set_x(self.x, self.x_axis, grid.domain, 4)
        with self.heat.hold_sync():
            self.heat.x = f32(grid.centres)
            self.heat.color = shares(layer)
        self.overlay.draw(marked)


class Heatmaps:
    """The per-layer heatmaps shown, in a grid that fills the width."""

    def __init__(self, max_shown: int = 8) -> None:
        self.max_shown = max_shown
        self.maps: dict[str, LayerHeatmap] = {}
        self.shown: list[str] = []
        self.made = 0  # figures made so far (making one costs more than drawing it)
        self.box = chart_grid([], min_width="300px")
        self.note = widgets.HTML(layout=widgets.Layout(display="none"))

    def show(self, names: list[str], colors: list[str], config: StatsConfig) -> list[str]:
        """Lay out the heatmaps of `names` (the first `max_shown`); returns those shown.

        A heatmap that leaves is closed, and made anew if its layer comes back: bqplot draws
        a figure put back into a box at zero size first (console errors), a new one not."""
        shown = list(names[: self.max_shown])
        for name, color in zip(shown, colors, strict=False):
            if name not in self.maps:
                self.maps[name] = LayerHeatmap(name, color, config)
                self.made += 1
        if shown != self.shown:
            self.shown = shown
            self.box.children = [self.maps[n].figure for n in shown]
            for name in [n for n in self.maps if n not in shown]:
                self.maps.pop(name).close()
        hidden = len(names) - len(shown)
        self.note.value = (
            f"<span style='color:#666'>|a| heatmaps of the first {len(shown)} of "
            f"{len(names)} selected layers (max_heatmaps={self.max_shown})</span>"
        )
        self.note.layout.display = "" if hidden > 0 else "none"
        return shown

    @property
    def figures(self) -> list[bq.Figure]:
        return [self.maps[n].figure for n in self.shown]

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()
