"""The charts: bqplot line charts of mean / std / near-zero per layer, and |a| heatmaps.

What crosses to the browser is bounded and binary: float32 arrays (sent as buffers),
trait writes batched with `hold_sync()`.
"""

from __future__ import annotations

from typing import Any

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from ..stats import LayerStats, StatsConfig

__all__ = ["Charts"]

SERIES = [("mean", "Mean"), ("std", "Std"), ("near_zero", "Near-zero fraction")]


def f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def padded_range(values: list[np.ndarray]) -> tuple[float, float]:
    """Finite min/max over arrays, widened when flat so a constant series still draws."""
    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(float(v.min()) for v in finite), max(float(v.max()) for v in finite)
    pad = (hi - lo) * 0.05 or max(abs(lo) * 0.05, 0.05)
    return lo - pad, hi + pad


class Charts:
    """Line charts (one line per layer) and one heatmap figure per layer."""

    def __init__(self) -> None:
        self.x_scale = bq.LinearScale()
        self.figures: dict[str, bq.Figure] = {}
        for key, title in SERIES:
            fig = bq.Figure(
                title=title,
                marks=[],
                axes=[
                    bq.Axis(scale=self.x_scale, label="batch"),
                    bq.Axis(scale=bq.LinearScale(), side="left", tick_format=".3~g"),
                ],
                fig_margin={"top": 40, "bottom": 40, "left": 55, "right": 10},
                layout=widgets.Layout(width="32%", height="260px", min_width="260px"),
            )
            fig.axes[1].scale.allow_padding = False
            self.figures[key] = fig
        self.lines_box = widgets.HBox(
            list(self.figures.values()), layout=widgets.Layout(flex_flow="row wrap")
        )
        self.heat_box = widgets.Box(layout=widgets.Layout(flex_flow="row wrap", display="flex"))
        self.lines: dict[str, dict[str, bq.Lines]] = {}
        self.heat: dict[str, bq.HeatMap] = {}
        self.heat_figures: dict[str, bq.Figure] = {}
        self.ready: set[str] = set()  # heatmaps drawn with real data
        self.links: dict[str, list[Any]] = {}

    def add_layer(self, name: str, color: str, config: StatsConfig, toggle: Any) -> None:
        empty = np.zeros(0, np.float32)
        lines = {}
        for key, fig in self.figures.items():
            line = bq.Lines(
                x=empty, y=empty, scales={"x": self.x_scale, "y": fig.axes[1].scale},
                colors=[color], labels=[name], stroke_width=1.5,
            )  # fmt: skip
            lines[key] = line
            fig.marks = [*fig.marks, line]
        nbins = config.bins
        heat = bq.HeatMap(  # placeholder data with a non-empty domain (a [0, 0] one breaks
            x=np.array([0.0, 1.0], np.float32),  # the axis's tick format in the browser)
            y=np.array([0.0, nbins], np.float32),
            color=np.zeros((2, 2), np.float32),
            scales={"x": bq.LinearScale(), "y": bq.LinearScale(min=0.0, max=float(nbins)),
                    "color": bq.ColorScale(scheme="viridis")},
        )  # fmt: skip
        hfig = bq.Figure(
            title=name,
            marks=[heat],
            axes=[bq.Axis(scale=heat.scales["x"], label="batch", num_ticks=4),
                  bq.Axis(scale=heat.scales["y"], side="left", label="|a| bin")],
            fig_margin={"top": 30, "bottom": 40, "left": 45, "right": 10},
            layout=widgets.Layout(width="320px", height="200px"),
            title_style={"fill": color, "font-size": "12px"},
        )  # fmt: skip
        hfig.layout.display = "none"  # until it has 2 columns (HeatMap needs at least 2)
        self.lines[name], self.heat[name], self.heat_figures[name] = lines, heat, hfig
        # Links in the browser: the toggle hides the marks at once even while a blocking fit
        # keeps the kernel busy; the kernel catches up (rescale, heatmap box) when free.
        self.links[name] = [
            widgets.jsdlink((toggle, "value"), (m, "visible")) for m in [*lines.values(), heat]
        ]

    def draw_lines(self, series: dict[str, LayerStats]) -> None:
        for name, s in series.items():
            x = f32(s.step)
            for key, line in self.lines[name].items():
                with line.hold_sync():
                    line.x, line.y = x, f32(getattr(s, key))

    def rescale(self, series: dict[str, LayerStats], visible: list[str]) -> None:
        """Fit each chart's y range to the visible layers (a flat series gets a margin)."""
        shown = [series[n] for n in visible if n in series]
        for key, fig in self.figures.items():
            lo, hi = padded_range([getattr(s, key) for s in shown])
            scale = fig.axes[1].scale
            with scale.hold_sync():
                scale.min, scale.max = lo, hi

    def draw_heatmap(self, name: str, s: LayerStats) -> None:
        if len(s) < 2:
            return
        heat, bins = self.heat[name], s.hist.shape[1]
        with heat.hold_sync():
            heat.x = f32(s.step)
            heat.y = f32(np.arange(bins) + 0.5)
            heat.color = f32(np.log1p(s.hist.T))
        self.ready.add(name)

    def apply_visibility(self, visible: list[str]) -> None:
        shown = set(visible)
        for name, lines in self.lines.items():
            on = name in shown
            for line in lines.values():
                if line.visible != on:
                    line.visible = on
            display = "flex" if on and name in self.ready else "none"
            if self.heat_figures[name].layout.display != display:
                self.heat_figures[name].layout.display = display
        # A hidden heatmap leaves the box rather than staying there with `display: none`:
        # bqplot hides a figure laid out at zero size and may not draw it again when shown.
        boxed = [f for f in self.heat_figures.values() if f.layout.display != "none"]
        if list(self.heat_box.children) != boxed:
            self.heat_box.children = boxed

    def close(self) -> None:
        for fig in [*self.figures.values(), *self.heat_figures.values()]:
            fig.close()
