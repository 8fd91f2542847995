"""Colour maps for the heatmaps, with a "no data" that is never a data colour.

A bqplot `ColorScale` spreads its `colors` evenly from `min` to `max`. `Palette.scale_range`
puts a transparent stop one step below the palette's first colour: data clipped to
[lo, hi] get the palette, cells with no data get `Palette.no_data(lo, hi)` (below the
transparent stop) and are left unpainted, so the `hatch` drawn under the heatmap shows
through. (A NaN would reach the browser's canvas as an invalid colour, which repeats the
previous cell's colour.)
"""

from __future__ import annotations

from typing import NamedTuple

import bqplot as bq
import numpy as np

from ._marks import f32

__all__ = ["BLUE_RED", "HATCH", "NO_DATA", "VIRIDIS", "Palette", "hatch"]

NO_DATA = "rgba(0, 0, 0, 0)"  # transparent: the hatch under the heatmap shows
HATCH = "#c8c8c8"  # the hatch's lines
VIRIDIS = [  # matplotlib's viridis at 9 stops
    "#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c",
    "#28ae80", "#5ec962", "#addc30", "#fde725",
]  # fmt: skip
BLUE_RED = [  # matplotlib's RdBu_r at 9 stops: negative blue, zero white, positive red
    "#053061", "#2a71b2", "#6bacd1", "#c2ddec", "#f7f6f6",
    "#fbccb4", "#e48066", "#ba2832", "#67001f",
]  # fmt: skip


class Palette(NamedTuple):
    """A list of colours spread evenly over a data range, with a no-data value below it."""

    colors: list[str]

    @property
    def scale_colors(self) -> list[str]:
        """The `ColorScale.colors`: the transparent stop, then the palette."""
        return [NO_DATA, *self.colors]

    def step(self, lo: float, hi: float) -> float:
        return (hi - lo) / (len(self.colors) - 1) if hi > lo else 1.0

    def scale_range(self, lo: float, hi: float) -> tuple[float, float]:
        """`ColorScale` (min, max) that map [lo, hi] onto the palette exactly."""
        return lo - self.step(lo, hi), hi

    def no_data(self, lo: float, hi: float) -> float:
        """A value drawn transparent (below the transparent stop; the scale clamps)."""
        return lo - 2 * self.step(lo, hi)

    def css_gradient(self, direction: str = "to top") -> str:
        """The palette as a CSS gradient (for legends)."""
        return f"linear-gradient({direction}, {', '.join(self.colors)})"


def hatch(lines: int = 160, slant: float = 0.04) -> bq.Lines:
    """Thin diagonal lines over the whole plot area, on scales of their own: drawn under
    a heatmap, they show through its cells without data."""
    t = np.linspace(-slant, 1.0, lines)
    x0, x1 = t, t + slant
    y0, y1 = np.zeros(lines), np.ones(lines)
    # Clip each segment to 0 <= x <= 1 (moving its end along the line).
    k = 1.0 / slant
    y0 = np.where(x0 < 0, -x0 * k, y0)
    x0 = np.maximum(x0, 0.0)
    y1 = np.where(x1 > 1, 1 - (x1 - 1) * k, y1)
    x1 = np.minimum(x1, 1.0)
    scales = {"x": bq.LinearScale(min=0.0, max=1.0), "y": bq.LinearScale(min=0.0, max=1.0)}
    return bq.Lines(
        x=f32(np.stack([x0, x1], axis=1)), y=f32(np.stack([y0, y1], axis=1)), scales=scales,
        colors=[HATCH], stroke_width=1,
    )  # fmt: skip
