"""`ProgressCB`: a per-epoch progress bar and, in a notebook, an optional live loss plot.

In a terminal the bar is one line rewritten in place. Messages of the `actwidget` logger
(alerts) that come while it is open are held and printed after it, one line each, so they
never land inside it (`_LineHold`)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import numpy as np
import torch
from IPython.display import display

from actwidget import ranges
from actwidget._util import in_notebook
from actwidget.callbacks.metrics import MetricsCB
from actwidget.learner import Callback

__all__ = ["ProgressCB"]

_log = logging.getLogger("actwidget")
_BAR_EVERY = 0.1  # seconds between notebook bar updates
_TEXT_EVERY = 0.25  # seconds between terminal line updates
_PLOT_EVERY = 0.5  # seconds between plot redraws
_HOLD_MAX = 2.0  # seconds a log record waits for the line to end before the line is ended


class _LineHold(logging.Filter):
    """Holds the records of the `actwidget` logger while a terminal progress line is open;
    `release()` hands them on once it ended (each on its own line, after the bar)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = False
        self._held: list[logging.LogRecord] = []
        self._since = 0.0  # when the oldest held record came
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            if not self.open:
                return True
            if not self._held:
                self._since = time.perf_counter()
            self._held.append(record)
            return False

    def overdue(self, now: float) -> bool:
        """A record has waited longer than `_HOLD_MAX`: end the line early."""
        return bool(self._held) and now - self._since > _HOLD_MAX

    def release(self) -> None:
        """Close the line and hand on the held records (the logger's handlers print them)."""
        with self._lock:
            self.open = False
            held, self._held = self._held, []
        for record in held:
            logging.getLogger(record.name).handle(record)


class ProgressCB(Callback):
    """Shows progress over each epoch's batches; `plot=True` adds a live loss plot in notebooks.

    Widgets (`bar`, `label`, `fig`) are created and displayed in `before_fit`, in notebooks only.
    """

    order = MetricsCB.order - 1  # its epoch line ends before MetricsCB prints the row

    def __init__(self, plot: bool = False) -> None:
        self.plot = plot
        self._clear_widgets()

    def _clear_widgets(self) -> None:
        self.bar: Any = None
        self.label: Any = None
        self.fig: Any = None
        self.train_line: Any = None
        self.valid_line: Any = None

    def before_fit(self, learn: Any) -> None:
        self._clear_widgets()
        self._notebook = in_notebook()
        self._line_len = 0
        self._hold: _LineHold | None = None
        if not self._notebook:
            self._hold = _LineHold()
            _log.addFilter(self._hold)
        self._train_x: list[float] = []
        self._valid_x: list[float] = []
        self._pending: list[torch.Tensor] = []  # detached losses not yet on the host
        self._pending_valid: list[torch.Tensor] = []
        self._train_y = np.zeros(0, np.float32)
        self._valid_y = np.zeros(0, np.float32)
        self._last_plot = time.perf_counter()
        if not self._notebook:
            return
        import ipywidgets as widgets

        self.bar = widgets.IntProgress(min=0, max=1, value=0)
        self.label = widgets.Label()
        parts: list[Any] = [widgets.HBox([self.bar, self.label])]
        if self.plot:
            self.fig = self._make_figure()
            parts.append(self.fig)
        display(widgets.VBox(parts))

    def before_epoch(self, learn: Any) -> None:
        self._t0 = time.perf_counter()
        self._last_draw = -float("inf")
        self._done = 0
        self._ended = False
        self._valid_sum: torch.Tensor | float = 0.0
        self._valid_n = 0
        if self.bar is not None:
            self.bar.value = 0
            self.bar.max = max(learn.n_iter or 1, 1)

    def after_batch(self, learn: Any) -> None:
        if self.fig is not None:
            self._record_loss(learn)

    def cleanup_batch(self, learn: Any) -> None:
        self._done = learn.iter + 1  # here, so cancelled batches count too
        now = time.perf_counter()
        if now - self._last_draw >= (_BAR_EVERY if self._notebook else _TEXT_EVERY):
            self._last_draw = now
            self._show(learn, now, final=False)
        if self.fig is not None and now - self._last_plot >= _PLOT_EVERY:
            self._redraw()

    def after_epoch(self, learn: Any) -> None:
        if self.fig is not None and not learn.training and self._valid_n:
            self._pending_valid.append(self._valid_sum / self._valid_n)
            self._valid_x.append(learn.epoch + 1.0)
        self._show(learn, time.perf_counter(), final=True)

    def cleanup_epoch(self, learn: Any) -> None:
        if not self._ended:  # cancelled or failed: end the line all the same
            self._show(learn, time.perf_counter(), final=True)

    def cleanup_fit(self, learn: Any) -> None:
        hold = getattr(self, "_hold", None)
        if hold is not None:
            self._hold = None
            _log.removeFilter(hold)
            hold.release()
        if self.fig is not None:
            self._redraw()

    def _record_loss(self, learn: Any) -> None:
        loss = learn.loss.detach()
        if learn.training:
            self._pending.append(loss)
            done = learn.iter + 1
            self._train_x.append(learn.epoch + done / max(learn.n_iter or done, 1))
        else:
            n = _batch_size(learn.batch)
            self._valid_sum = self._valid_sum + loss * n
            self._valid_n += n

    def _show(self, learn: Any, now: float, final: bool) -> None:
        self._ended = final
        n = learn.n_iter
        rate = self._done / max(now - self._t0, 1e-9)
        phase = "train" if learn.training else "eval"
        epoch = f"epoch {learn.epoch + 1}/{learn.n_epochs} {phase}"
        if self.bar is not None:
            self.bar.value = min(self._done, self.bar.max)
            self.label.value = f"{epoch} · batch {self._done}/{n} · {rate:.1f} batches/s"
            return
        text = f"{epoch} {_text_bar(self._done, n)} {self._done}/{n} {rate:.1f} batches/s"
        pad = " " * max(self._line_len - len(text), 0)
        hold = getattr(self, "_hold", None)
        end = final or (hold is not None and hold.overdue(now))  # alerts waited long enough
        self._line_len = 0 if end else len(text)
        if hold is not None and not end:
            hold.open = True
        sys.stdout.write(f"\r{text}{pad}" + ("\n" if end else ""))
        sys.stdout.flush()
        if end and hold is not None:
            hold.release()

    def _make_figure(self) -> Any:
        import bqplot as bq

        sx, sy = bq.LinearScale(), bq.LinearScale(min=0.0, max=1.0)
        band_y = bq.LinearScale(min=0.0, max=1.0)
        e, e2 = np.zeros(0, np.float32), np.zeros((0, 2), np.float32)
        sc = {"x": sx, "y": sy}
        self.train_line = bq.Lines(x=e, y=e, scales=sc, labels=["train"], display_legend=True)
        self.valid_line = bq.Lines(
            x=e, y=e, scales=sc, colors=["orange"], marker="circle",
            labels=["valid"], display_legend=True,
        )  # fmt: skip
        # One spike (or a diverging run) must not flatten the chart: the y range holds the
        # bulk of the losses; the rest sit on the edge with a triangle ("off scale").
        self.off_scale = [
            bq.Scatter(x=e, y=e, scales=sc, marker=m, colors=["#d62728"], default_size=28)
            for m in ("triangle-up", "triangle-down")
        ]
        # NaN/inf losses: red bands, never a gap that looks healthy.
        self.nonfinite = bq.Lines(
            x=e2, y=e2, scales={"x": sx, "y": band_y}, fill="inside", close_path=True,
            colors=["#d62728"], stroke_width=1, fill_opacities=[],
        )  # fmt: skip
        axes = [
            bq.Axis(scale=sx, label="epoch", tick_format="~g"),
            bq.Axis(scale=sy, side="left", label="loss", tick_format=".3~g"),
        ]
        return bq.Figure(
            marks=[self.nonfinite, self.train_line, self.valid_line, *self.off_scale],
            axes=axes,
            title="loss",
            layout={"height": "260px", "width": "560px"},
            fig_margin={"top": 40, "bottom": 40, "left": 60, "right": 20},
            display_toolbar=False,
        )

    def _redraw(self) -> None:
        """Update the plot; a plotting failure is logged and ends the plot, never the fit."""
        try:
            self._draw_plot()
        except Exception:
            _log.exception("ProgressCB: the loss plot failed to draw; training goes on")
            self.fig = None

    def _draw_plot(self) -> None:
        """Copy new losses to the host in one transfer and update the lines."""
        self._last_plot = time.perf_counter()
        self._train_y = _append(self._train_y, self._pending)
        self._valid_y = _append(self._valid_y, self._pending_valid)
        self._pending, self._pending_valid = [], []
        tx = np.asarray(self._train_x, np.float64)
        vx = np.asarray(self._valid_x, np.float64)
        r = ranges.robust_range([self._train_y, self._valid_y])
        above, below = [], []
        for line, x, y in (
            (self.train_line, tx, self._train_y),
            (self.valid_line, vx, self._valid_y),
        ):
            c = ranges.clip(y, r)
            xs, ys, _ = ranges.line_arrays(x, c.y)  # one curve: ends on a finite point
            with line.hold_sync():
                line.x = xs if xs.ndim == 1 else xs.reshape(-1)[: ys.size]
                line.y = ys.reshape(-1)
            above.append(x[c.above])
            below.append(x[c.below])
        scale = self.train_line.scales["y"]
        with scale.hold_sync():
            scale.min, scale.max = r.lo, r.hi
        for mark, xs, edge in zip(self.off_scale, (above, below), (r.hi, r.lo), strict=True):
            x = np.concatenate(xs).astype(np.float32)
            with mark.hold_sync():
                mark.x, mark.y = x, np.full(len(x), edge, np.float32)
        bad = np.flatnonzero(~np.isfinite(self._train_y))
        step = float(np.median(np.diff(tx))) if len(tx) > 1 else 1.0
        bx, by = ranges.polygons(tx[bad] - step / 2, tx[bad] + step / 2, 0.0, 1.0)
        with self.nonfinite.hold_sync():
            self.nonfinite.x, self.nonfinite.y = bx, by
            self.nonfinite.fill_opacities = [0.3] * len(bad)


def _append(host: np.ndarray, pending: list[torch.Tensor]) -> np.ndarray:
    if not pending:
        return host
    new = torch.stack([t.reshape(()) for t in pending]).to("cpu", torch.float32).numpy()
    return np.concatenate([host, new])


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(first) if isinstance(first, torch.Tensor) and first.ndim else 1


def _text_bar(done: int, n: int | None, width: int = 20) -> str:
    if not n:
        return ""
    filled = width * min(done, n) // n
    return "[" + "#" * filled + "." * (width - filled) + "]"
