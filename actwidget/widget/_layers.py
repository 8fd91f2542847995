"""Layer selection: which layers exist, their colours, which are shown, and the picker.

The picker (`LayerPicker`, front end js/layers.js through anywidget) groups the layers by
module path in collapsible groups, with a filter box (substring, or glob with * ? [) and
all / none for the matches and per group. It also shows and hides the selected layers'
curves and heatmaps in the browser at once, so it acts while a blocking fit keeps the kernel
busy; the kernel redraws with the new selection when it is free.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import anywidget
import numpy as np
from ipywidgets import Widget, widget_serialization
from traitlets import Instance, List, Unicode

from ._names import display_names

__all__ = ["COLORS", "LayerPicker", "LayerState", "default_selection", "layer_colors", "matches"]

_HERE = Path(__file__).resolve().parent
COLORS = [  # matplotlib's tab10: up to 10 layers, one colour each
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip
# More layers: colour by depth, from blue (first) through green and orange to purple (last).
_DEPTH = ["#3b4cc0", "#1f9eb5", "#2ca02c", "#b8a000", "#ff7f0e", "#d62728", "#8e3b9e"]


def _esm_path(name: str) -> Path:
    packaged = _HERE.parent / "_static" / name
    return packaged if packaged.is_file() else _HERE.parents[1] / "js" / name


def layer_colors(n: int) -> list[str]:
    """One colour per layer: tab10 for up to 10 layers, else a colour by depth."""
    if n <= len(COLORS):
        return COLORS[:n]
    anchors = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in _DEPTH], float)
    t = np.linspace(0, len(_DEPTH) - 1, n)
    lo = np.floor(t).astype(int).clip(max=len(_DEPTH) - 2)
    rgb = anchors[lo] + (anchors[lo + 1] - anchors[lo]) * (t - lo)[:, None]
    return ["#" + "".join(f"{round(v):02x}" for v in row) for row in rgb]


def matches(pattern: str, name: str) -> bool:
    """The filter's rule (the same in js/layers.js): a glob when `pattern` has * ? or [,
    else a substring; case-insensitive; an empty pattern matches everything."""
    p, n = pattern.strip().lower(), name.lower()
    if not p:
        return True
    if any(c in p for c in "*?["):
        return fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n.split(" (")[0], p)
    return p in n


def default_selection(names: list[str], few: int = 5) -> list[str]:
    """All layers when there are at most `few`; else `few` spread evenly over the depth,
    the first and the last included."""
    if len(names) <= few:
        return list(names)
    idx = np.unique(np.round(np.linspace(0, len(names) - 1, few)).astype(int))
    return [names[i] for i in idx]


class LayerPicker(anywidget.AnyWidget):
    """The layer picker's synced state; the protocol is the `PickerState` typedef in
    js/layers.js (no custom messages)."""

    _esm = _esm_path("layers.js")

    names = List(Unicode()).tag(sync=True)
    labels = List(Unicode()).tag(sync=True)  # display names (`display_name`), same order
    colors = List(Unicode()).tag(sync=True)
    selected = List(Unicode()).tag(sync=True)
    filter = Unicode("").tag(sync=True)
    alerted = List(Unicode()).tag(sync=True)
    auto_select = List(Unicode()).tag(sync=True)
    marks = List(Instance(Widget)).tag(sync=True, **widget_serialization)
    figures = List(Instance(Widget)).tag(sync=True, **widget_serialization)


class LayerState:
    """The widget's layers in model order, a colour each, and the selection (thread-safe).

    `on_change()` is called in the kernel whenever the selection changes, from Python or
    from the browser. Layers that raise an alert join the selection once (unselect them
    and they stay unselected)."""

    def __init__(self, on_change: Callable[[], None], few: int = 5) -> None:
        self.picker = LayerPicker()
        self.box = self.picker  # what the widget lays out
        self._few = few
        self._lock = threading.RLock()
        self._auto_done: set[str] = set()
        self._extra: list[str] = []  # alerted layers selected here, not yet by the browser
        self._setting = False
        self._on_change = on_change
        self.picker.observe(self._selected_changed, "selected")

    def _selected_changed(self, _change: object) -> None:
        if not self._setting:  # the browser's (or show_layers') choice: it has the alerted
            self._extra = []
        self._on_change()

    @property
    def names(self) -> list[str]:
        return list(self.picker.names)

    @property
    def selected(self) -> list[str]:
        """Names of the selected layers, in model order."""
        chosen = {*self.picker.selected, *self._extra}
        return [n for n in self.picker.names if n in chosen]

    visible = selected  # the former name

    def color(self, name: str) -> str:
        names = self.picker.names
        return self.picker.colors[names.index(name)] if name in names else "#555"

    def colors_of(self, names: Iterable[str]) -> list[str]:
        lookup = dict(zip(self.picker.names, self.picker.colors, strict=True))
        return [lookup.get(n, "#555") for n in names]

    def add(self, names: Iterable[str]) -> list[str]:
        """Add the layers not known yet (the first ones get the default selection); returns
        the new ones."""
        with self._lock:
            known = list(self.picker.names)
            new = [n for n in names if n not in set(known)]
            if not new:
                return []
            first = not known
            every = known + new
            with self.picker.hold_sync():
                self.picker.names = every
                self.picker.labels = display_names(every)
                self.picker.colors = layer_colors(len(every))
                if first:
                    self._setting = True
                    try:
                        self.picker.selected = default_selection(every, self._few)
                    finally:
                        self._setting = False
            return new

    def resolve(self, names: Iterable[str] | str | None) -> list[str]:
        """Names from a list (unknown ones raise `KeyError`), a filter pattern, or None (all)."""
        every = list(self.picker.names)
        if names is None:
            return every
        if isinstance(names, str):
            return [n for n in every if matches(names, n)]
        chosen = list(names)
        unknown = set(chosen) - set(every)
        if unknown:
            raise KeyError(f"unknown layers {sorted(unknown)}; known: {every}")
        return [n for n in every if n in set(chosen)]

    def show(self, names: Iterable[str] | str | None) -> None:
        """Select exactly `names` (see `resolve`). The selection's observers (a redraw) run
        after the lock is released: a caller in a loop never starves the training thread."""
        with self._lock:
            chosen = self.resolve(names)
            self._extra = []
            same = chosen == list(self.picker.selected)
        if same:
            self._on_change()
        else:
            self.picker.selected = chosen

    def alert(self, layers: Iterable[str], select: Iterable[str] | None = None) -> bool:
        """Mark layers with an alert; those of `select` (default: all) join the selection
        the first time, at most as many over the widget's life as the default selection
        holds. True if the selection changed.

        The browser adds the layers to its selection itself (`auto_select`); until its
        selection arrives they are kept here (`_extra`). Sending `selected` from here
        instead could undo clicks made during a blocking fit that the kernel has not seen."""
        layers = list(layers)
        pick = layers if select is None else list(select)
        with self._lock:
            alerted = list(dict.fromkeys([*self.picker.alerted, *layers]))
            room = max(self._few - len(self._auto_done), 0)
            new = [n for n in dict.fromkeys(pick) if n not in self._auto_done
                   and n in self.picker.names][:room]  # fmt: skip
            self._auto_done.update(new)
            add = [n for n in new if n not in self.selected]
            with self.picker.hold_sync():
                if alerted != list(self.picker.alerted):
                    self.picker.alerted = alerted
                if new:
                    self.picker.auto_select = [*self.picker.auto_select, *new]
            self._extra += add
        if add:
            self._on_change()
        return bool(add)

    def bind(self, marks: list[Widget], figures: list[Widget]) -> None:
        """The marks (curves labelled by display name) and figures (titled by display name)
        that the browser shows or hides with the selection."""
        with self.picker.hold_sync():
            if list(self.picker.marks) != marks:
                self.picker.marks = marks
            if list(self.picker.figures) != figures:
                self.picker.figures = figures
