"""Marks drawn over every chart: red bands over non-finite batches, a dashed rule and "fit N"
at each fit's start, a black rule at each alert's batch. Shared by the line charts, the
overview and the per-layer heatmaps; they draw on a fixed [0, 1] y scale of their own.
`legend_html` is the one line under the overview that says what the marks shown mean.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import bqplot as bq
import numpy as np

from ..ranges import polygons

__all__ = [
    "ALERT", "NONFINITE", "Legend", "Marked", "Overlay", "f32", "legend_html", "rows",
    "set_if_changed", "set_ticks",
]  # fmt: skip

NONFINITE = "#d62728"  # red: NaN/inf
ALERT = "#111111"  # black, a colour no layer has (`layer_colors`): an alert's batch


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


def set_ticks(axis: bq.Axis, values: np.ndarray, labels: dict[str, str]) -> None:
    """Set an axis' ticks and their labels: the labels first, the values next, in two
    messages. bqplot redraws a change of `tick_values` in a transition that keeps the label
    formatter of that moment; in one message the two may apply in either order, and the
    new ticks would keep the old labels."""
    set_if_changed(axis, tick_labels=labels)
    set_if_changed(axis, tick_values=np.asarray(values, float))


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
        self.alerts = _lines(x_scale, self.y, colors=[ALERT], stroke_width=1.2, opacities=[0.8])
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


class Legend(NamedTuple):
    """Which kinds of marks are drawn now (each gets an entry in the legend line)."""

    nonfinite: bool = False
    alerts: bool = False
    fits: bool = False
    off_scale: bool = False
    reference: bool = False
    no_data: bool = False


_SWATCH = "display:inline-block;vertical-align:middle;margin:0 3px 0 0;"
_ENTRIES = {  # Legend field -> (swatch style, text)
    "nonfinite": (
        f"width:14px;height:10px;background:{NONFINITE}59;border:1px solid {NONFINITE}",
        "NaN/inf batches",
    ),
    "alerts": (
        f"width:0;height:12px;border-left:2px solid {ALERT};margin-right:6px",
        "◆ alert: a black rule at its batch, a diamond on its layer's row (the list above says"
        " what)",
    ),
    "fits": ("width:14px;height:0;border-top:1px dashed #777", "a new fit starts"),
    "off_scale": ("width:0;height:0", f"<span style='color:{NONFINITE}'>▲▼</span> off scale"),
    "reference": ("width:16px;height:0;border-top:2px dashed #888;opacity:.5", "reference run"),
    "no_data": (
        "width:14px;height:10px;border:1px solid #bbb;"
        "background:repeating-linear-gradient(135deg,#c8c8c8 0 1px,#fff 1px 4px)",
        "no batch recorded",
    ),
}


def legend_html(legend: Legend) -> str:
    """One line naming each kind of mark drawn; "" when there is none."""
    items = [
        f"<span style='white-space:nowrap'><span style='{_SWATCH}{style}'></span>{text}</span>"
        for field, (style, text) in _ENTRIES.items()
        if getattr(legend, field)
    ]
    if not items:
        return ""
    return (
        "<div class='actwidget-legend' style='font-size:12px;color:#444;line-height:18px'>"
        + " &nbsp;·&nbsp; ".join(items)
        + "</div>"
    )
