"""Where a recorder's columns go: the store, the run file, the alert rules, the distributed
combine and the listeners.

Columns arrive one batch at a time (`add`). They are kept on the host and published every
`flush_every` batches or `flush_interval` seconds (by batches only under torch.distributed,
where publishing is a collective): appended to the store, written to the run directory,
judged by the alert rules, announced to listeners. With `stop_on`, the rules judge every
batch as it arrives instead, so a stop comes at most one batch after the batch it names.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..diagnose import AlertConfig, Diagnoser, summarize
from ..source import Event, Listeners, RunStatus
from ..stats import Alert, FitMark, RunStats, StatsConfig

if TYPE_CHECKING:
    from ._collector import Arrived

__all__ = ["Sinks", "distributed_later"]

_log = logging.getLogger("actwidget")


class Sinks:
    """The consumers of one recorder's columns (see the module docstring)."""

    def __init__(
        self,
        stats: RunStats,
        names: list[str],
        *,
        alerts: AlertConfig | None,
        stop_on: Collection[str],
        flush_every: int,
        flush_interval: float,
        request_stop: Callable[[], Any],
    ) -> None:
        self.stats, self.names = stats, names
        self.alert_config = alerts
        self.stop_on = frozenset(stop_on)
        self.flush_every, self.flush_interval = flush_every, flush_interval
        self.request_stop = request_stop
        self.listeners = Listeners()
        self.writer: Any = None  # a runfile.RunWriter (on the writing rank)
        self.combiner: Any = None  # a _dist.Combiner under torch.distributed
        self.agreed = False  # under torch.distributed: every rank agreed to stop
        self.diagnoser: Diagnoser | None = None
        self.forward: list[str] = []  # the layers in forward order, once known
        self._local: Diagnoser | None = None  # distributed + stop_on: this rank's own rules
        self._pending: list[Arrived] = []
        self._alerts: list[Alert] = []  # raised, not published yet
        self._lock = threading.Lock()  # the pending columns
        self._publish_lock = threading.RLock()  # one flush at a time, in order
        self._since = 0
        self._first = False  # the next batch is a fit's first
        self._last = time.perf_counter()

    def bind(self, config: StatsConfig) -> None:
        """The rules, once the layer names are known."""
        if self.alert_config is not None and self.diagnoser is None:
            self.diagnoser = Diagnoser(self.alert_config, self.names)

    # --- torch.distributed and the run file ------------------------------------------------
    def setup(self, run_dir: Path | None, config: StatsConfig, root: int) -> None:
        """Under torch.distributed, the combiner (made on every rank: a collective); on the
        writing rank (the root, or the only process), the run-file writer."""
        if self.combiner is None and _distributed():
            from .._dist import Combiner

            self.combiner = Combiner(len(self.names), root=root)
            if self.stop_on and self.alert_config is not None:
                self._local = Diagnoser(self.alert_config, self.names)
        if run_dir is not None and self.writer is None and _writes(root):
            from ..runfile import RunWriter

            self.writer = RunWriter(run_dir, config, self.names, stats=self.stats.snapshot())

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def agree(self, stop_requested: bool, running: bool) -> None:
        """At a batch end: the run file's stop requests, and under torch.distributed the
        ranks' agreement (on the flag all-reduced since the last batch end), so that all
        stop at the same batch and none alone."""
        if self.writer is not None and self.writer.stop_requested():  # at most every 0.5 s
            self.request_stop()
        if self.combiner is not None and running:
            self.agreed = self.combiner.agree_stop(stop_requested) or self.agreed

    # --- columns in -------------------------------------------------------------------------
    def count_batch(self) -> None:
        """A batch ended (its columns may arrive later, from an accelerator)."""
        self._since += 1

    def due(self) -> bool:
        """Whether to publish at this batch boundary: after a fit's first batch (so that
        views show it at once), then every `flush_every` batches, or after `flush_interval`
        seconds (not under torch.distributed: there all ranks must agree)."""
        if self._since >= self.flush_every or self._first:
            self._first = False
            return True
        late = time.perf_counter() - self._last >= self.flush_interval
        return self.combiner is None and late

    def add(self, arrived: Arrived, fit: int, epoch_of) -> None:
        """Columns, as they reach the host (each batch's by the next flush; with `stop_on`,
        by the next batch boundary)."""
        layers, cols = arrived.layers, arrived.cols
        if not len(layers):
            return
        with self._lock:
            self._pending.append(arrived)
        judge = self._local if self.combiner is not None else self.diagnoser
        if self.stop_on and judge is not None:
            raised = judge.update(self._named(layers, cols), epoch_of, fit)
            if any(a.kind in self.stop_on for a in raised):
                self.request_stop()
            if judge is self.diagnoser:
                with self._lock:
                    self._alerts += raised

    def _named(self, layers: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        return {self.names[int(i)]: cols[layers == i] for i in np.unique(layers)}

    # --- publishing ---------------------------------------------------------------------------
    def flush(self, fit: int, epoch_of, status: Callable[[], RunStatus]) -> None:
        """Publish what arrived since the last flush (a collective under torch.distributed:
        every rank calls it at the same batch). Listeners hear of it after the publishing
        lock is released: one that reads the stats (a widget's redraw) never holds up
        the training thread's own flush."""
        alerts = self._publish(fit, epoch_of, status)
        if alerts is None:
            return
        self.listeners.emit(Event.FLUSH, self._source)
        if alerts:
            self.listeners.emit(Event.ALERT, self._source)

    def _publish(self, fit: int, epoch_of, status: Callable[[], RunStatus]) -> list[Alert] | None:
        """The publishing itself; returns the alerts raised (None: nothing was published)."""
        with self._publish_lock:
            with self._lock:
                pending, self._pending = self._pending, []
                alerts, self._alerts = self._alerts, []
            self._since, self._last = 0, time.perf_counter()
            if pending:
                layers = np.concatenate([p[0] for p in pending])
                cols = np.concatenate([p[1] for p in pending])
            else:
                layers, cols = np.zeros(0, np.int64), np.zeros((0, self.stats.config.width))
            if self.combiner is not None:
                units = {k: u for p in pending for k, u in p.units.items()}
                combined = self.combiner.combine(layers, cols, units)
                if combined is None:  # not the rank that keeps the global view
                    return None
                layers, cols = combined
            if not len(layers) and not alerts:
                return None
            new = self._named(layers, cols) if len(layers) else {}
            with self.stats.lock:
                for name, mine in new.items():
                    self.stats.append(name, mine)
            if self.writer is not None and new:
                self.writer.write(new, status())
            if self.diagnoser is not None and (not self.stop_on or self.combiner is not None):
                alerts += self.diagnoser.update(new, epoch_of, fit)
            self._publish_alerts(alerts)
            return alerts

    def _publish_alerts(self, alerts: list[Alert]) -> None:
        for a in alerts:
            self.stats.add_alert(a)
            if self.writer is not None:
                self.writer.alert(a)
            if a.kind in self.stop_on:
                self.request_stop()
        for line in summarize(alerts, self.forward or self.names):
            _log.warning("actwidget alert: %s", line.text)

    def set_order(self, forward: list[str]) -> None:
        """The layers in forward order (learnt from the first batch)."""
        self.forward = forward
        for d in (self.diagnoser, self._local):
            if d is not None:
                d.set_order(forward)

    def drop(self) -> None:
        """Forget what was not published (a failed distributed fit, a reset)."""
        with self._lock:
            self._pending, self._alerts = [], []
        if self.combiner is not None:
            self.combiner.abandon()

    # --- fits ----------------------------------------------------------------------------------
    def begin_fit(self, mark: FitMark, status: RunStatus) -> None:
        self._first = True
        for d in (self.diagnoser, self._local):
            if d is not None:
                d.begin_fit()
        if self.writer is not None:
            self.writer.begin_fit(mark, status)

    def end_fit(self, status: RunStatus) -> None:
        if self.writer is not None:
            self.writer.end_fit(status)

    def reset(self, run_dir: Path | None, config: StatsConfig, root: int) -> None:
        """Forget everything: pending columns, the rules' state, the run file's contents."""
        self.drop()
        if self.diagnoser is not None:
            self.diagnoser.begin_fit()
        if self.writer is not None:
            self.writer.reset()
        elif run_dir is not None and _writes(root):
            from ..runfile import RunWriter

            RunWriter(run_dir, config, self.names).close()  # an empty run

    _source: Any = None  # what listeners are told the event came from (the facade)


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def distributed_later() -> bool:
    """Launched as one of several ranks (torchrun sets WORLD_SIZE) whose process group is not
    initialised yet: which rank writes is decided when the fit begins."""
    world = os.environ.get("WORLD_SIZE", "1")
    return world.isdigit() and int(world) > 1 and not _distributed()


def _writes(root: int) -> bool:
    """Whether this process writes the run file: the root rank (of a process group, or of a
    launch whose ranks never joined one), else yes."""
    if _distributed():
        return torch.distributed.get_rank() == root
    if distributed_later():
        return os.environ.get("RANK", "0") == str(root)
    return True
