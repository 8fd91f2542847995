"""The live widget: activation stats of a `Source` while it trains, and Stop.

```python
cb = StoreModuleStatsCB(mods=model.layers)
ActivationWidget(cb)                 # displayed; bound to the callback's recorder
train(model=model, extra_cbs=[cb])   # blocking: the widget updates live, Stop works
```
It binds to anything `actwidget.source.as_source` accepts: a recorder (`StatsHooks`), a
callback or loop adapter (through its `.recorder`), saved stats, a run directory. From the
top: Stop and the run's state, alerts; an overview of every layer (a row each); the layer
picker; line charts of the selected layers; their |a| heatmaps; the output of `start()`.
Every redraw draws every figure from one snapshot of the stats, so the overview, the line
charts and the heatmaps always show the same batches; redraws come at most every
`interval` seconds (less often when one costs more than 5% of that), with at most
`max_columns` columns per series. A newer widget on the same source replaces this one
(this one stops listening).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import ipywidgets as widgets

from ..diagnose import summarize
from ..source import Event, RunState, RunStatus, Source, StaticSource, as_source
from ..stats import RunStats
from . import _kernel
from ._draw import Painter
from ._header import Header
from ._heatmaps import Heatmaps
from ._layers import COLORS, LayerState
from ._overview import Overview
from ._runner import Runner
from ._stop import ACK_IDLE_MS, StopButton, ack_timeout
from ._view import Charts

__all__ = ["COLORS", "ActivationWidget"]

_log = logging.getLogger("actwidget")
_BOUND: dict[int, weakref.ref] = {}  # id(source) -> the widget listening to it
_SLOW_FINAL = 0.05  # s: a final redraw slower than this runs in a thread of its own


class ActivationWidget(widgets.VBox):
    """Live activation stats of a recorder, a callback, a run directory or saved stats.

    - `reference`: a previous run (`RunStats`, a saved `.npz` or a run directory), drawn
      faded behind the live lines ("before and after a fix" in one picture).
    - `std_scale`: "log" (default) or "linear" for the std and gradient-std charts.
    - `initial_layers`: how many layers are selected at first, spread over the depth
      (layers with an alert join); `max_heatmaps`: most per-layer |a| heatmaps shown.
    """

    def __init__(
        self,
        source: Any,
        *,
        reference: RunStats | str | Path | None = None,
        interval: float = 0.5,
        max_columns: int = 512,
        std_scale: str = "log",
        initial_layers: int = 5,
        max_heatmaps: int = 8,
    ) -> None:
        if max_columns < 2:
            raise ValueError(f"max_columns must be >= 2, got {max_columns}")
        self.source: Source = as_source(source)
        self.reference: RunStats | None = None if reference is None else _load(reference)
        self.interval = interval
        self.max_columns = max_columns
        self.redraws = 0
        self.redraw_seconds = 0.0  # Python time spent redrawing, all redraws
        self.error = ""  # the last drawing error, shown in the header
        # Redraws: one thread draws at a time and none ever waits for another (a redraw may
        # be asked for by the training thread while it holds the recorder's locks, which the
        # drawing thread needs to read the stats); a request made while another thread
        # draws is merged and drawn by that thread when it finishes (`_redraw`).
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._request: _Request | None = None
        self._request_lock = threading.Lock()
        self._last = 0.0
        self._costs: deque[float] = deque(maxlen=3)  # seconds of recent redraws
        self._version = -1
        self._marked: tuple = (0, None)  # (count, last) of the alerts marked on the layers
        self._stats = RunStats()
        self._closed = False
        # Set while a blocking fit runs on the kernel's main thread: reads the front end's
        # messages (Stop, the picker, menus) at batch boundaries (see `_kernel`).
        self._poller: _kernel.Poller | None = None
        self._build(std_scale, initial_layers, max_heatmaps)
        self._unsubscribe: Callable[[], None] = self.source.subscribe(self._on_event)
        self._replace_previous()
        status = self.source.status
        if status.state is RunState.RUNNING:
            self._on_event(Event.FIT_START, self.source)
        elif status.state is not RunState.WAITING or self.reference is not None:
            self._redraw(force=True)
        self._render_header()

    def _build(self, std_scale: str, few: int, max_heatmaps: int) -> None:
        self.stop_button = StopButton()
        self.stop_button.on_stop(self.source.request_stop)
        can_stop = not isinstance(self.source, StaticSource)
        self.head = Header(self.stop_button, can_stop)
        self.header = self.head.status
        self.overview = Overview(self.redraw)
        self.layers = LayerState(self._on_selection, few)
        self.charts = Charts(std_scale)
        self.heatmaps = Heatmaps(max_heatmaps)
        self.painter = Painter(
            self.charts, self.overview, self.heatmaps, self.layers, self.reference,
            self.max_columns,
        )  # fmt: skip
        self.output = widgets.Output()
        self.runner = Runner(self.output, self._on_run_error)
        parts = [
            self.head.box, self.overview.box, self.painter.legend, self.layers.box,
            self.charts.box,
        ]  # fmt: skip
        super().__init__(
            [*parts, self.heatmaps.note, self.heatmaps.box, self.output],
            layout=widgets.Layout(width="100%"),
        )
        self.add_class("actwidget")

    def _replace_previous(self) -> None:
        key = id(self.source)
        old = _BOUND.get(key)
        previous = old() if old is not None else None
        if previous is not None and previous is not self:
            previous.close()
        _BOUND[key] = weakref.ref(self)

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
        """Names of the selected layers (those drawn), in model order."""
        return self.layers.selected

    def show_layers(self, names: Iterable[str] | str | None) -> None:
        """Select exactly `names`: a list of layer names, a filter pattern (substring, or
        glob with * ? [, as in the picker's filter box), or None for all layers."""
        self.layers.show(names)

    def redraw(self) -> None:
        """Redraw everything now."""
        self._redraw(force=True)

    def start(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
        """Run `fn(*args, **kwargs)` (e.g. your `train(...)`) in a worker thread; returns at once.

        The kernel stays free, so Stop and the picker answer at once; what the run prints
        or displays goes to this widget's output area; `wait()` joins."""
        self.stop_button.interrupt_on_busy = False  # a busy kernel is running another cell
        return self.runner.start(fn, *args, **kwargs)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background run; re-raises its error, if any.

        While this waits the kernel reads the widget's messages (Stop, the picker) every
        few tens of ms; where it cannot, Stop interrupts it as for a blocking fit: the first
        interrupt asks the run to stop at the next batch, a second stops waiting."""
        self.stop_button.interrupt_on_busy = True
        poller = _kernel.poller()
        if poller is not None:  # the kernel reads Stop and the picker while it waits
            self.stop_button.ack_timeout_ms = ack_timeout(None, poller.interval)
        try:
            self.runner.wait(timeout, self.source.request_stop, poller)
        finally:
            self.stop_button.ack_timeout_ms = ACK_IDLE_MS
            if self.runner.running:  # timed out or interrupted: the run goes on
                self.stop_button.interrupt_on_busy = False

    def close(self) -> None:
        """Stop listening to the source and close every child widget."""
        self._closed = True
        unsubscribe = getattr(self, "_unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe()
        # A draw in flight (e.g. the final one, on its own thread) ends before the parts
        # close under it; later ones see `_closed`. Bounded, in case a draw hangs.
        lock = getattr(self, "_lock", None)
        held = (
            lock is not None and self._owner != threading.get_ident() and lock.acquire(timeout=5.0)
        )
        try:
            self._close_parts()
        finally:
            if held:
                lock.release()
        super().close()

    def _close_parts(self) -> None:
        for part in ("charts", "heatmaps"):
            if getattr(self, part, None) is not None:
                getattr(self, part).close()
        for w in ("stop_button", "layers"):
            obj = getattr(self, w, None)
            if obj is not None:
                (obj.picker if w == "layers" else obj).close()
        if getattr(self, "overview", None) is not None:
            self.overview.close()

    # Events from the source (often in the training thread).
    def _on_event(self, event: Event, source: Source) -> None:
        if self._closed:
            return
        try:
            if event is Event.FIT_START:
                status = source.status
                self.layers.add(source.stats)
                self._poller = _kernel.poller()  # None off the kernel's main thread
                with self.stop_button.hold_sync():
                    self.stop_button.fit_id = status.fit_id
                    self.stop_button.running = status.stoppable
                    self.stop_button.ack_timeout_ms = self._ack_timeout(status)
                self._render_header()
            elif event is Event.FIT_END:
                self._poller = None
                with self.stop_button.hold_sync():
                    self.stop_button.running = False
                    self.stop_button.ack_timeout_ms = ACK_IDLE_MS
                self._render_header()
                if self._cost > _SLOW_FINAL:  # don't hold up the cell
                    threading.Thread(target=self._final_redraw, daemon=True).start()
                else:
                    self._final_redraw()
            elif event is Event.ALERT:
                self._mark_alerts(source.alerts)
                self._redraw(force=True)
                self._render_header()
            else:
                if event is Event.BATCH and self._poller is not None:
                    self._poller.poll()  # Stop, the picker, menus: handled at this boundary
                now = time.perf_counter()
                if now - self._last >= _wait(self.interval, self._cost):
                    self._last = now
                    self._redraw()
                    self._render_header()
                    if self._poller is not None:
                        self._tune_ack(source)
        except Exception as e:  # a drawing failure must never stop training
            self._show_error(e)

    def _ack_timeout(self, status: RunStatus) -> int:
        """How long the front end waits for Stop's ack during this fit (see `StopButton`)."""
        if self._poller is None:
            return ACK_IDLE_MS
        batch = status.elapsed / status.fit_batches if status.fit_batches else None
        return ack_timeout(batch, self._poller.interval)

    def _tune_ack(self, source: Source) -> None:
        """Follow the batch time: the ack comes at a batch boundary (a message only when it
        changes by a quarter or more)."""
        want, now = self._ack_timeout(source.status), self.stop_button.ack_timeout_ms
        if abs(want - now) * 4 >= now:
            self.stop_button.ack_timeout_ms = want

    def _final_redraw(self) -> None:
        try:
            self._redraw(force=True)
            self._render_header()
        except Exception as e:
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

    def _on_selection(self) -> None:
        """The selection changed (browser, `show_layers` or an alert): redraw what it shows."""
        if self._closed:
            return
        try:
            self._redraw(force=True)
        except Exception as e:
            self._show_error(e)

    # Drawing.
    @property
    def _cost(self) -> float:
        """What a redraw costs: the least of the last few (a spike of load is not the rule)."""
        return min(self._costs, default=0.0)

    def _render_header(self) -> None:
        self.head.render(self.source.status, self._stats.alerts, self.error, list(self._stats))

    def _redraw(self, force: bool = False) -> None:
        """Ask for a redraw: drawn now, or by the thread drawing at the moment, right after.

        A thread draws at most twice per call: requests that keep arriving from another
        thread (a loop of `show_layers`) never keep the training thread drawing; what is
        left is drawn by the next call, from either thread."""
        with self._request_lock:
            self._request = _Request(force)._merge(self._request)
        me = threading.get_ident()
        for _ in range(2):
            if self._request is None or self._owner == me:
                return
            if not self._lock.acquire(blocking=False):
                return  # another thread draws; it takes our request when it is done
            self._owner = me
            try:
                with self._request_lock:
                    request, self._request = self._request, None
                if request is not None:
                    self._draw(*request)
            finally:
                self._owner = None
                self._lock.release()

    def _mark_alerts(self, alerts: list) -> None:
        """Every alerted layer gets a mark; a few representative ones join the selection:
        where NaN/inf began and the worst layer of each kind (`diagnose.summarize`). Alerts
        already marked are not summarised again at every redraw."""
        seen = (len(alerts), alerts[-1] if alerts else None)
        if seen == self._marked:
            return
        self._marked = seen
        lines = summarize(alerts, list(self._stats) or self.layers.names)
        few = [n for x in lines for n in (x.origin, x.worst) if n]
        self.layers.alert([a.layer for a in alerts], select=list(dict.fromkeys(few)))

    def _draw(self, force: bool) -> None:
        if self._closed:
            return
        t0 = time.perf_counter()
        stats = self.source.stats
        if stats.version == self._version and not force:
            return
        self._version, self._stats = stats.version, stats
        self.layers.add(stats)
        if stats.alerts:  # any source: a saved run's alerts are marked like live ones
            self._mark_alerts(stats.alerts)
        made = self.heatmaps.made
        self.painter.draw(stats)
        if self.heatmaps.made == made:  # making figures is a one-off cost: not a draw's
            self._costs.append(time.perf_counter() - t0)
        self.redraws += 1
        self.redraw_seconds += time.perf_counter() - t0


class _Request(NamedTuple):
    """A redraw asked for: `force`: even without new data (a new selection, a menu)."""

    force: bool

    def _merge(self, other: _Request | None) -> _Request:
        if other is None:
            return self
        return _Request(*(a or b for a, b in zip(self, other, strict=True)))


def _wait(interval: float, cost: float) -> float:
    """Seconds between redraws: `interval`, longer when a redraw costs more than 5% of it
    (0: every event, for tests and benchmarks)."""
    return max(interval, 20 * cost) if interval > 0 else 0.0


def _load(reference: RunStats | str | Path) -> RunStats:
    """A reference run's stats from a `RunStats`, a saved file or a run directory."""
    if isinstance(reference, RunStats):
        return reference.snapshot()
    return as_source(reference).stats
