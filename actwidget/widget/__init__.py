"""The live widget: activation stats of a `Source` as bqplot charts, layer toggles and Stop.

```python
cb = StoreModuleStatsCB(mods=model.layers)
ActivationWidget(cb)                 # displayed; bound to the callback's recorder
train(model=model, extra_cbs=[cb])   # blocking: the widget updates live, Stop works
```
It binds to anything `actwidget.source.as_source` accepts: a recorder (`StatsHooks`), a
callback or loop adapter (through its `.recorder`), saved stats, a run directory. Stats are
recorded every batch; the charts redraw at most every `interval` seconds (heatmaps every
`heatmap_interval`). At most `max_columns` columns per series cross to the browser.
A newer widget on the same source replaces this one (this one stops listening).
"""

from __future__ import annotations

import contextlib
import html
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..source import Event, RunState, Source, as_source
from ..stats import LayerStats, RunStats
from ._layers import COLORS, LayerState
from ._runner import Runner
from ._stop import StopButton
from ._view import Charts

__all__ = ["COLORS", "ActivationWidget"]

_log = logging.getLogger("actwidget")
_BOUND: dict[int, weakref.ref] = {}  # id(source) -> the widget listening to it
_STATE_COLORS = {"running": "#2ca02c", "stopped": "#ff7f0e", "failed": "#d62728"}


class ActivationWidget(widgets.VBox):
    """Live activation stats of a recorder, a callback, a run directory or saved stats.

    Header (state, fit, epoch, batch, speed, elapsed time, Stop); one toggle per layer;
    mean / std / near-zero lines per layer; one |a| heatmap per visible layer; an output
    area for fits started with `start()`.
    """

    def __init__(
        self,
        source: Any,
        *,
        interval: float = 0.2,
        heatmap_interval: float = 1.0,
        max_columns: int = 1024,
    ) -> None:
        if max_columns < 2:
            raise ValueError(f"max_columns must be >= 2, got {max_columns}")
        self.source: Source = as_source(source)
        self.interval, self.heatmap_interval = interval, heatmap_interval
        self.max_columns = max_columns
        self.redraws = 0
        self.error = ""  # the last drawing error, shown in the header
        self._lock = threading.RLock()
        self._last = self._last_heat = 0.0
        self._version = -1
        self._series: dict[str, LayerStats] = {}
        self._closed = False
        self._build()
        self._unsubscribe: Callable[[], None] = self.source.subscribe(self._on_event)
        self._replace_previous()
        status = self.source.status
        if status.state is RunState.RUNNING:
            self._on_event(Event.FIT_START, self.source)
        elif status.state is not RunState.WAITING:
            self._redraw(heatmaps=True, force=True)
        self._render_header()

    # Layout.
    def _build(self) -> None:
        self.header = widgets.HTML()
        self.stop_button = StopButton()
        self.stop_button.on_stop(self.source.request_stop)
        self.layers = LayerState(self._on_toggle)
        self.charts = Charts()
        fixed = {"width": "auto", "flex": "0 0 auto"}  # never squeezed by the toggles
        all_btn = widgets.Button(description="all", layout=widgets.Layout(**fixed))
        none_btn = widgets.Button(description="none", layout=widgets.Layout(**fixed))
        all_btn.on_click(lambda _: self.show_layers(None))
        none_btn.on_click(lambda _: self.show_layers([]))
        self.output = widgets.Output()
        self.runner = Runner(self.output, self._on_run_error)
        super().__init__(
            [
                widgets.HBox(
                    [self.header, self.stop_button], layout=widgets.Layout(align_items="center")
                ),
                widgets.HBox(
                    [
                        widgets.Label("layers:", layout=widgets.Layout(**fixed)),
                        self.layers.box,
                        all_btn,
                        none_btn,
                    ]
                ),
                self.charts.lines_box,
                self.charts.heat_box,
                self.output,
            ]
        )
        self.add_class("actwidget")

    def _replace_previous(self) -> None:
        key = id(self.source)
        old = _BOUND.get(key)
        previous = old() if old is not None else None
        if previous is not None and previous is not self:
            previous.close()
        _BOUND[key] = weakref.ref(self)

    def _sync_layers(self, stats: RunStats) -> None:
        for name in self.layers.add(stats):
            self.charts.add_layer(
                name, self.layers.color(name), stats.config, self.layers.toggles[name]
            )

    # Public API.
    @property
    def stats(self) -> RunStats:
        """The stats shown (a snapshot of the source's)."""
        return self.source.stats

    @property
    def state(self) -> str:
        """The source's state: waiting, running, stopped, finished or failed."""
        return self.source.status.state.value

    @property
    def visible_layers(self) -> list[str]:
        """Names of the layers currently shown."""
        return self.layers.visible

    def show_layers(self, names: list[str] | None) -> None:
        """Show exactly `names` (None: all layers)."""
        self.layers.show(names)

    def redraw(self) -> None:
        """Redraw everything now, heatmaps included."""
        self._redraw(heatmaps=True, force=True)

    def start(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
        """Run `fn(*args, **kwargs)` (e.g. your `train(...)`) in a worker thread; returns at once.

        The kernel stays free, so Stop and the toggles answer at once; what the run prints
        or displays goes to this widget's output area; `wait()` joins."""
        self.stop_button.interrupt_on_busy = False  # a busy kernel is running another cell
        return self.runner.start(fn, *args, **kwargs)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background run; re-raises its error, if any.

        While this waits the kernel is busy, so Stop interrupts it as for a blocking fit:
        the first interrupt asks the run to stop at the next batch, a second stops waiting."""
        self.stop_button.interrupt_on_busy = True
        try:
            self.runner.wait(timeout, self.source.request_stop)
        finally:
            if self.runner.running:  # timed out or interrupted: the run goes on
                self.stop_button.interrupt_on_busy = False

    def close(self) -> None:
        """Stop listening to the source and close every child widget."""
        self._closed = True
        unsubscribe = getattr(self, "_unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe()
        if getattr(self, "charts", None) is not None:
            self.charts.close()
        if getattr(self, "stop_button", None) is not None:
            self.stop_button.close()
        super().close()

    # Events from the source (often in the training thread).
    def _on_event(self, event: Event, source: Source) -> None:
        if self._closed:
            return
        try:
            if event is Event.FIT_START:
                status = source.status
                self._sync_layers(source.stats)
                with self.stop_button.hold_sync():
                    self.stop_button.run_id = status.fit_id
                    self.stop_button.running = status.stoppable
                self._render_header()
            elif event is Event.FIT_END:
                self.stop_button.running = False
                self._redraw(heatmaps=True, force=True)
                self._render_header()
            else:
                now = time.perf_counter()
                if now - self._last >= self.interval:
                    self._last = now
                    self._redraw(heatmaps=now - self._last_heat >= self.heatmap_interval)
                    self._render_header()
        except Exception as e:  # a drawing failure must never stop training
            self._show_error(e)

    def _on_run_error(self, error: BaseException) -> None:
        if self.source.status.state is RunState.WAITING:  # failed before the fit began
            self.error = f"{type(error).__name__}: {error}"
            self._render_header()

    def _show_error(self, error: Exception) -> None:
        _log.exception("actwidget: the widget failed to draw; training goes on")
        self.error = f"drawing failed: {type(error).__name__}: {error}"
        with contextlib.suppress(Exception):  # nothing more to show it with
            self._render_header()

    # Drawing.
    def _render_header(self) -> None:
        st = self.source.status
        state = st.state.value
        if self.error and st.state is RunState.WAITING:
            state = "failed"
        color = _STATE_COLORS.get(state, "#555")
        parts = [f"<b style='color:{color}'>{state}</b> {html.escape(st.message)}".strip()]
        if st.state is not RunState.WAITING:
            if st.fit > 1:
                parts.append(f"fit {st.fit}")
            if st.epoch is not None:
                parts.append(f"epoch {st.epoch + 1}/{st.epochs or '?'}")
                shown = min(st.epoch_step + (st.state is RunState.RUNNING), st.epoch_steps or 10**9)
                parts.append(f"{st.phase} batch {shown}/{st.epoch_steps or '?'}")
            else:
                parts.append(f"batch {st.batch}")
            if st.elapsed > 0:
                parts.append(f"{st.fit_batches / st.elapsed:.1f} batches/s")
                parts.append(f"{st.elapsed:.1f} s")
        if self.error:
            parts.append(f"<span style='color:#d62728'>{html.escape(self.error)}</span>")
        self.header.value = " · ".join(p for p in parts if p)

    def _redraw(self, heatmaps: bool, force: bool = False) -> None:
        with self._lock:
            stats = self.source.stats
            if stats.version == self._version and not force:
                return
            self._version = stats.version
            self._sync_layers(stats)
            series = {n: s.coarsened(self.max_columns) for n, s in stats.items()}
            self.redraws += 1
            self._series = series
            self.charts.draw_lines(series)
            self.charts.rescale(series, self.layers.visible)
            if heatmaps:
                self._last_heat = time.perf_counter()
                for name, s in series.items():
                    self.charts.draw_heatmap(name, s)
            self.charts.apply_visibility(self.layers.visible)

    def _on_toggle(self) -> None:
        try:
            with self._lock:
                visible = self.layers.visible
                self.charts.apply_visibility(visible)
                self.charts.rescale(self._series, visible)
        except Exception as e:
            self._show_error(e)
