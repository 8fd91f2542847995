"""The live widget: bqplot lines and heatmaps of activation stats, layer toggles and Stop.

```python
cb = StoreModuleStatsCB(mods=model.layers)
ActivationWidget(cb)                 # displayed; bound to the hooks callback
train(model=model, extra_cbs=[cb])   # blocking: the widget updates live, Stop works
```
Stats are recorded every batch; the charts redraw at most every `interval` seconds (heatmaps
every `heatmap_interval`), each redraw showing every batch since the last. What crosses to
the browser is bounded: at most `max_columns` columns per series (older columns merged
exactly), float32 arrays sent as binary buffers, trait writes batched with `hold_sync()`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from ._interrupt import graceful_sigint
from ._stop import StopButton
from .callbacks.hooks import StoreModuleStatsCB
from .stats import LayerStats, RunStats

__all__ = ["COLORS", "ActivationWidget"]

COLORS = [  # matplotlib's tab10: one colour per layer in every chart, toggle and legend
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip
_SERIES = [("mean", "Mean"), ("std", "Std"), ("near_zero", "Near-zero fraction")]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _padded_range(values: list[np.ndarray]) -> tuple[float, float]:
    """Finite min/max over arrays, widened when flat so a constant series still draws."""
    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(float(v.min()) for v in finite), max(float(v.max()) for v in finite)
    pad = (hi - lo) * 0.05 or max(abs(lo) * 0.05, 0.05)
    return lo - pad, hi + pad


class ActivationWidget(widgets.VBox):
    """Live activation stats of a `StoreModuleStatsCB`, or of saved stats (a `RunStats`/path).

    Header with state, epoch, batch, speed, elapsed time and Stop; one toggle per layer;
    mean / std / near-zero lines per layer; one |a| heatmap per visible layer.
    """

    def __init__(
        self,
        source: StoreModuleStatsCB | RunStats | str | Path,
        *,
        interval: float = 0.2,
        heatmap_interval: float = 1.0,
        max_columns: int = 1024,
    ) -> None:
        if max_columns < 2:
            raise ValueError(f"max_columns must be >= 2, got {max_columns}")
        self.interval = interval
        self.heatmap_interval = heatmap_interval
        self.max_columns = max_columns
        self.cb: StoreModuleStatsCB | None = None
        if isinstance(source, StoreModuleStatsCB):
            self.cb = source
        elif isinstance(source, (str, Path)):
            self._stats = RunStats.load(source)
        elif isinstance(source, RunStats):
            self._stats = source
        else:
            raise TypeError(
                "ActivationWidget shows a StoreModuleStatsCB, a RunStats or a saved stats "
                f"file, not {type(source).__name__}"
            )
        self.learn: Any = None
        self.state = "waiting"
        self.redraws = 0
        self._t0 = self._last = self._last_heat = self._elapsed = 0.0
        self._batches0 = 0  # the callback's batch count when this fit began
        self._version = -1
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self._build()
        if self.cb is not None:
            self.cb.listeners.append(self._on_event)
            if self.cb.learn is not None:  # a callback that already trained
                self._finish(self.cb.learn)
        else:
            self.state = "finished"
            self._redraw(heatmaps=True)
        self._render_header()

    # Layout.
    def _build(self) -> None:
        self.status = widgets.HTML()
        self.stop_button = StopButton()
        self.stop_button.on_stop(self._on_stop)
        self.toggles = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        fixed = {"width": "auto", "flex": "0 0 auto"}  # never squeezed by the toggles
        all_btn = widgets.Button(description="all", layout=widgets.Layout(**fixed))
        none_btn = widgets.Button(description="none", layout=widgets.Layout(**fixed))
        all_btn.on_click(lambda _: self.show_layers(None))
        none_btn.on_click(lambda _: self.show_layers([]))
        self.x_scale = bq.LinearScale()
        self.charts: dict[str, bq.Figure] = {}
        for key, title in _SERIES:
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
            self.charts[key] = fig
        self.heatmaps = widgets.Box(layout=widgets.Layout(flex_flow="row wrap", display="flex"))
        self._views: dict[str, dict[str, Any]] = {}
        self._series: dict[str, LayerStats] = {}
        super().__init__(
            [
                widgets.HBox(
                    [self.status, self.stop_button], layout=widgets.Layout(align_items="center")
                ),
                widgets.HBox(
                    [
                        widgets.Label("layers:", layout=widgets.Layout(**fixed)),
                        self.toggles,
                        all_btn,
                        none_btn,
                    ]
                ),
                widgets.HBox(
                    list(self.charts.values()), layout=widgets.Layout(flex_flow="row wrap")
                ),
                self.heatmaps,
            ]
        )
        self.add_class("actwidget")

    def _add_layer(self, name: str) -> None:
        color = COLORS[len(self._views) % len(COLORS)]
        lines = {}
        for key, fig in self.charts.items():
            line = bq.Lines(
                x=np.zeros(0, np.float32),
                y=np.zeros(0, np.float32),
                scales={"x": self.x_scale, "y": fig.axes[1].scale},
                colors=[color],
                labels=[name],
                stroke_width=1.5,
            )
            lines[key] = line
            fig.marks = [*fig.marks, line]
        hmax = self.stats.config.hist_max
        heat = bq.HeatMap(  # placeholder data with a non-empty domain (a [0, 0] one breaks
            x=np.array([0.0, 1.0], np.float32),  # the axis's tick format in the browser)
            y=np.array([0.0, hmax], np.float32),
            color=np.zeros((2, 2), np.float32),
            scales={"x": bq.LinearScale(), "y": bq.LinearScale(min=0.0, max=hmax),
                    "color": bq.ColorScale(scheme="viridis")},
        )  # fmt: skip
        hfig = bq.Figure(
            title=name,
            marks=[heat],
            axes=[bq.Axis(scale=heat.scales["x"], label="batch", num_ticks=4),
                  bq.Axis(scale=heat.scales["y"], side="left", label="|a|")],
            fig_margin={"top": 30, "bottom": 40, "left": 45, "right": 10},
            layout=widgets.Layout(width="320px", height="200px"),
            title_style={"fill": color, "font-size": "12px"},
        )  # fmt: skip
        hfig.layout.display = "none"  # until it has 2 columns (HeatMap needs at least 2)
        toggle = widgets.ToggleButton(
            value=True, description=name, tooltip=f"show or hide {name}",
            layout=widgets.Layout(width="auto"),
        )  # fmt: skip
        toggle.style.text_color = color
        toggle.observe(self._on_toggle, "value")
        # Links in the browser: the toggle hides the marks at once even while a blocking fit
        # keeps the kernel busy; the kernel catches up (rescale, heatmap box) when free.
        links = [
            widgets.jsdlink((toggle, "value"), (m, "visible")) for m in [*lines.values(), heat]
        ]
        self._views[name] = {
            "lines": lines,
            "heat": heat,
            "hfig": hfig,
            "toggle": toggle,
            "links": links,
        }
        self.toggles.children = [*self.toggles.children, toggle]

    def _sync_layers(self) -> None:
        for name in list(self.stats):
            if name not in self._views:
                self._add_layer(name)

    # Public API.
    @property
    def stats(self) -> RunStats:
        """The stats shown (the callback's, flushed, when bound to one)."""
        return self.cb.stats if self.cb is not None else self._stats

    @property
    def visible_layers(self) -> list[str]:
        """Names of the layers currently shown."""
        return [n for n, v in self._views.items() if v["toggle"].value]

    def show_layers(self, names: list[str] | None) -> None:
        """Show exactly `names` (None: all layers)."""
        unknown = set(names or []) - set(self._views)
        if unknown:
            raise KeyError(f"unknown layers {sorted(unknown)}; known: {list(self._views)}")
        for n, v in self._views.items():
            v["toggle"].value = names is None or n in names

    def redraw(self) -> None:
        """Redraw everything now, heatmaps included."""
        self._redraw(heatmaps=True, force=True)

    def start(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
        """Run `fn(*args, **kwargs)` (e.g. your `train(...)`) in a worker thread; returns at once.

        The kernel stays free, so Stop and the toggles answer at once; `wait()` joins.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("a background run is already going; wait() for it first")
        self._thread_error = None
        self.stop_button.interrupt_on_busy = False  # a busy kernel is running another cell

        def work() -> None:
            try:
                fn(*args, **kwargs)
            except BaseException as e:
                self._thread_error = e
                if self.state != "failed":  # failed before the fit started
                    self._set_state("failed", f"{type(e).__name__}: {e}")

        self._thread = threading.Thread(target=work, name="actwidget-train", daemon=True)
        self._thread.start()
        return self._thread

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background run; re-raises its error, if any.

        While this waits the kernel is busy, so Stop interrupts it as for a blocking fit:
        the first interrupt asks the run to stop at the next batch, a second stops waiting.
        """
        if self._thread is None:
            return
        self.stop_button.interrupt_on_busy = True
        try:
            with graceful_sigint(self._stop_run):
                self._thread.join(timeout)
        finally:
            if self._thread.is_alive():  # timed out or interrupted: the run goes on
                self.stop_button.interrupt_on_busy = False
        if self._thread.is_alive():
            raise TimeoutError(f"the background run is still going after {timeout} s")
        if self._thread_error is not None:
            err, self._thread_error = self._thread_error, None
            raise err

    def close(self) -> None:
        """Unbind from the callback and close every child widget."""
        if self.cb is not None and self._on_event in self.cb.listeners:
            self.cb.listeners.remove(self._on_event)
        for child in [getattr(self, "stop_button", None), *getattr(self, "charts", {}).values()]:
            if child is not None:
                child.close()
        super().close()

    # Events from the callback (in the training thread).
    def _on_event(self, event: str, learn: Any) -> None:
        if event == "before_fit":
            self.learn = learn
            self._t0 = self._last = time.perf_counter()
            self._batches0 = self.cb.batches
            with self.stop_button.hold_sync():
                self.stop_button.run_id = learn.run_id
                self.stop_button.running = True
            self._sync_layers()
            self._set_state("running")
        elif event in ("after_batch", "before_epoch"):
            now = time.perf_counter()
            if now - self._last >= self.interval:
                self._last = now
                self._redraw(heatmaps=now - self._last_heat >= self.heatmap_interval)
                self._render_header()
        elif event == "cleanup_fit":
            self._finish(learn)

    def _finish(self, learn: Any) -> None:
        self.learn = learn
        self.stop_button.running = False
        self._redraw(heatmaps=True, force=True)
        if learn.stopped_at is not None:
            e, b = learn.stopped_at
            self._set_state("stopped", f"at epoch {e + 1}, batch {b + 1}")
        elif learn.error is not None:
            self._set_state("failed", f"{type(learn.error).__name__}: {learn.error}")
        else:
            self._set_state("finished")

    def _stop_run(self) -> None:
        """Ask the current run to stop (from wait()'s SIGINT handler)."""
        if self.learn is not None:
            self.learn.request_stop()

    def _on_stop(self, run_id: int) -> bool:
        learn = self.learn
        return bool(learn is not None and learn.request_stop(run_id))

    # Drawing.
    def _set_state(self, state: str, detail: str = "") -> None:
        self.state, self.state_detail = state, detail
        self._render_header()

    def _render_header(self) -> None:
        learn, parts = self.learn, []
        colors = {"running": "#2ca02c", "stopped": "#ff7f0e", "failed": "#d62728"}
        state = f"<b style='color:{colors.get(self.state, '#555')}'>{self.state}</b>"
        detail = getattr(self, "state_detail", "")
        parts.append(f"{state} {_escape(detail)}".strip())
        if learn is not None and self.state != "waiting":
            parts.append(f"epoch {learn.epoch + 1}/{learn.n_epochs}")
            phase = "train" if learn.training else "valid"
            parts.append(f"{phase} batch {learn.iter + 1}/{learn.n_iter or '?'}")
            elapsed = time.perf_counter() - self._t0 if self.state == "running" else self._elapsed
            done = self.cb.batches - self._batches0 if self.cb is not None else 0
            parts.append(f"{done / elapsed:.1f} batches/s" if elapsed > 0 else "")
            parts.append(f"{elapsed:.1f} s")
            if self.state == "running":
                self._elapsed = elapsed
        self.status.value = " · ".join(p for p in parts if p)

    def _redraw(self, heatmaps: bool, force: bool = False) -> None:
        with self._lock:
            stats = self.stats
            with stats.lock:
                if stats.version == self._version and not force:
                    return
                self._version = stats.version
                self._sync_layers()
                series = {n: s.coarsened(self.max_columns) for n, s in stats.items()}
            self.redraws += 1
            self._draw_lines(series)
            if heatmaps:
                self._last_heat = time.perf_counter()
                for name, s in series.items():
                    self._draw_heatmap(name, s)
            self._apply_visibility()

    def _draw_lines(self, series: dict[str, LayerStats]) -> None:
        self._series = series
        for key in self.charts:
            for name, s in series.items():
                line = self._views[name]["lines"][key]
                with line.hold_sync():
                    line.x, line.y = _f32(s.step), _f32(getattr(s, key))
        self._rescale()

    def _rescale(self) -> None:
        """Fit each chart's y range to the visible layers (a flat series gets a margin)."""
        visible = [s for n, s in self._series.items() if self._views[n]["toggle"].value]
        for key, fig in self.charts.items():
            lo, hi = _padded_range([getattr(s, key) for s in visible])
            scale = fig.axes[1].scale
            with scale.hold_sync():
                scale.min, scale.max = lo, hi

    def _on_toggle(self, _change: Any) -> None:
        with self._lock:
            self._apply_visibility()
            self._rescale()

    def _draw_heatmap(self, name: str, s: LayerStats) -> None:
        view = self._views[name]
        if len(s) < 2:
            return
        heat, bins = view["heat"], s.hist.shape[1]
        width = self.stats.config.hist_max / bins
        with heat.hold_sync():
            heat.x = _f32(s.step)
            heat.y = _f32((np.arange(bins) + 0.5) * width)
            heat.color = _f32(np.log1p(s.hist.T))
        view["ready"] = True

    def _apply_visibility(self) -> None:
        for view in self._views.values():
            on = view["toggle"].value
            for line in view["lines"].values():
                if line.visible != on:
                    line.visible = on
            display = "flex" if on and view.get("ready") else "none"
            if view["hfig"].layout.display != display:
                view["hfig"].layout.display = display
        # A hidden heatmap leaves the box rather than staying there with `display: none`:
        # bqplot hides a figure laid out at zero size and may not draw it again when shown.
        shown = [v["hfig"] for v in self._views.values() if v["hfig"].layout.display != "none"]
        if list(self.heatmaps.children) != shown:
            self.heatmaps.children = shown


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
