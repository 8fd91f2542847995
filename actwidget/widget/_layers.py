"""Layer state: which layers exist, their colours, and which are shown (toggle buttons)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import ipywidgets as widgets

__all__ = ["COLORS", "LayerState"]

COLORS = [  # matplotlib's tab10: one colour per layer in every chart, toggle and legend
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip


class LayerState:
    """The widget's layers in order, a colour each, and one toggle each that shows or hides it.

    `on_change()` is called (in the kernel) whenever the visible set changes."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.names: list[str] = []
        self.toggles: dict[str, widgets.ToggleButton] = {}
        self.box = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self._on_change = on_change
        self._lock = threading.RLock()

    def color(self, name: str) -> str:
        return COLORS[self.names.index(name) % len(COLORS)]

    def add(self, names: Iterable[str]) -> list[str]:
        """Add the layers not known yet; returns the new ones."""
        with self._lock:
            new = [n for n in names if n not in self.toggles]
            for name in new:
                self.names.append(name)
                toggle = widgets.ToggleButton(
                    value=True, description=name, tooltip=f"show or hide {name}",
                    layout=widgets.Layout(width="auto"),
                )  # fmt: skip
                toggle.style.text_color = self.color(name)
                toggle.observe(lambda _change: self._on_change(), "value")
                self.toggles[name] = toggle
            if new:
                self.box.children = [self.toggles[n] for n in self.names]
            return new

    @property
    def visible(self) -> list[str]:
        """Names of the layers shown, in order."""
        with self._lock:
            return [n for n in self.names if self.toggles[n].value]

    def is_visible(self, name: str) -> bool:
        return self.toggles[name].value

    def show(self, names: Iterable[str] | None) -> None:
        """Show exactly `names` (None: all layers)."""
        with self._lock:
            chosen = None if names is None else set(names)
            unknown = (chosen or set()) - set(self.toggles)
            if unknown:
                raise KeyError(f"unknown layers {sorted(unknown)}; known: {self.names}")
            for n, t in list(self.toggles.items()):
                t.value = chosen is None or n in chosen
