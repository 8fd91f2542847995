"""The run: one recorder's parts (taps, clock, collector, sinks) and the lifecycle that drives
them, written once for every loop (`with`, the course callback, the loop adapters, a plain
loop calling `end_batch`).

- Attach: resolve the modules, register the hooks, watch the model's optimizers; all or
  nothing. Detach undoes it and closes the run writer.
- A batch boundary: the collector closes the batch (one packed copy), the clock counts it,
  the copies that reached the host become columns for the sinks, published when due; then
  the listeners hear of the batch and (after it) the stop requests are agreed on.
- A fit: begin (the run writer, the fit's mark, the rules), batches, end (the last flush,
  the ranks' finish, the status). `open_fit` / `close_fit` wrap it the way every loop runs
  one: attach, begin, Ctrl-C as a stop request; end and detach however the loop exits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from typing import Any

import torch
from torch import nn

from .._interrupt import graceful_sigint
from .._modules import module_names, select_modules
from ..source import Event, RunState
from ._clock import Clock
from ._collector import Collector
from ._settings import Settings, names_not_needed
from ._sinks import Sinks, distributed_later
from ._taps import Taps

__all__ = ["Run"]

_log = logging.getLogger("actwidget")


class Run:
    """One recorder's parts and their lifecycle. `owner` is what listeners are told an event
    came from and what owns the hooked modules (the `StatsHooks` facade); a recorder that
    takes its modules over calls `owner.remove()`."""

    def __init__(self, owner: Any, s: Settings) -> None:
        self.owner = owner
        self.model, self.mods, self.mod_filter = s.model, s.mods, s.mod_filter
        self.run_dir, self.root_rank, self.auto_step = s.run_dir, s.root_rank, s.auto_step
        self.stats = s.stats
        self.config = s.stats.config
        self.clock = Clock(self.stats.batches, len(self.stats.fits))
        self.collector = Collector(0, self.config, s.model)
        self.taps = Taps(
            self.collector, on_train=s.on_train, on_valid=s.on_valid, periodicity=s.periodicity,
            grads=self.config.grads, sample_size=self.config.sample_size,
            near_zero=self.config.near_zero,
        )  # fmt: skip
        self.sinks = Sinks(
            self.stats, [], alerts=s.alerts, stop_on=s.stop_on, flush_every=s.flush_every,
            flush_interval=s.flush_interval, request_stop=self.clock.request_stop,
        )  # fmt: skip
        self.sinks._source = owner
        self.take_lock = threading.RLock()  # packed copies -> columns, one thread at a time
        self.fit_exit: contextlib.ExitStack | None = None  # an open fit's way out
        if self.model is not None:
            self.bind(select_modules(self.model, self.mods, self.mod_filter))  # fails here
        elif names_not_needed(self.mods):
            select_modules(None, self.mods)  # checked now; named when attached to the model

    # --- attach and detach ------------------------------------------------------------------
    def attach(self, model: nn.Module | None = None) -> None:
        """Resolve the modules (in `model`, if given) and register the hooks; idempotent.
        Either everything attaches or nothing does."""
        if self.taps.attached:
            return
        if model is not None:
            self.model = self.collector.model = model
        self.bind(select_modules(self.model, self.mods, self.mod_filter))
        if not distributed_later():  # else begin_fit decides which rank writes
            self.setup_sinks()
        try:
            modules = [t.module for t in self.taps]
            devices = {p.device for m in modules for p in m.parameters()} or {torch.device("cpu")}
            self.collector.prepare(self.taps.taps, devices)
            self.taps.attach(self.owner, _replace)
            if self.auto_step:
                params = list((self.model or nn.ModuleList(modules)).parameters())
                self.clock.watch_optimizers(params, self.on_optimizer)
        except BaseException:
            self.detach()
            raise

    def setup_sinks(self) -> None:
        """The run writer and, under torch.distributed, the combiner; with a combiner the
        collector keeps per-unit totals for it (dead units pooled over the ranks)."""
        self.sinks.setup(self.run_dir, self.config, self.root_rank)
        self.collector.pool_units = self.sinks.combiner is not None

    def bind(self, mods: list[nn.Module]) -> None:
        """Watch `mods` (the first time; later the same layers again, keeping their names)."""
        names = self.taps.names if self.taps.taps else module_names(self.model, mods)
        self.taps.bind(mods, names)
        if self.collector.n != len(mods):
            self.collector.n = len(mods)
            self.sinks.names = names
            for n in names:
                self.stats.layer(n)
            self.sinks.bind(self.config)

    def remove(self) -> None:
        """Publish what was recorded, then detach (always, even if publishing fails)."""
        try:
            if self.taps.attached:
                self.close_batch()
                self.flush()
        finally:
            self.detach()

    def detach(self) -> None:
        """Unregister every hook, free the accumulators, close the run writer; idempotent."""
        self.clock.unwatch_optimizers()
        self.taps.detach()
        self.collector.free()
        self.sinks.close_writer()

    # --- one fit as every loop runs it --------------------------------------------------------
    def open_fit(self, model: nn.Module | None, epochs: int | None) -> int:
        """Attach, begin a fit, turn the first Ctrl-C into a stop request; the fit's id."""
        if self.fit_exit is not None:
            raise RuntimeError("this recorder's fit is already open (a nested `with`?)")
        self.attach(model)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(graceful_sigint(self.clock.request_stop))
            fit_id = self.begin_fit(epochs)
        except BaseException:
            stack.close()
            self.detach()
            raise
        self.fit_exit = stack
        return fit_id

    def close_fit(self, error: BaseException | None, where: str | None) -> None:
        """End the open fit (if any), restore Ctrl-C and remove the hooks, however it goes."""
        stack, self.fit_exit = self.fit_exit, None
        if stack is None:
            return
        try:
            if self.clock.state is RunState.RUNNING:
                self.end_fit(error, where)
        finally:
            try:
                stack.close()
            finally:
                self.remove()

    # --- fits, epochs, batches ------------------------------------------------------------------
    def begin_fit(self, epochs: int | None) -> int:
        """A fit begins (attached first, if not yet); returns its unique id."""
        self.attach()
        self.close_batch()
        self.setup_sinks()
        fit_id = self.clock.begin_fit(epochs)
        self.sinks.agreed = False
        mark = self.stats.mark_fit(self.clock.batch)
        self.sinks.begin_fit(mark, self.clock.status())
        self.sinks.listeners.emit(Event.FIT_START, self.owner)
        return fit_id

    def begin_epoch(self, epoch: int, steps: int | None, phase: str) -> None:
        """An epoch (or phase) begins; the batch before it, if any, ends first."""
        self.close_batch()
        self.clock.begin_epoch(epoch, steps, phase)
        self.sinks.listeners.emit(Event.EPOCH, self.owner)

    def on_optimizer(self) -> None:
        """A step of the model's optimizer ends a batch. It runs inside the user's
        `optimizer.step()`: a failure is reported, never raised."""
        try:
            if not self.close_batch():
                self.clock.recorded_nothing()
            self.after_batch()
        except Exception as e:
            _log.exception("actwidget: the batch end failed (%s); training goes on", e)

    def end_batch(self) -> bool:
        """The loop ends a batch; returns whether to stop now."""
        self.close_batch()
        self.after_batch()
        return self.should_stop

    def close_batch(self) -> bool:
        """Close the batch being recorded, if anything was (else False); take the columns
        that arrived; publish when due; tell the listeners."""
        if not self.collector.boundary(self.clock.batch):
            return False
        self.clock.batch_done()
        if len(self.collector.forward) > len(self.sinks.forward):  # learnt from a batch
            self.sinks.set_order([self.taps.taps[i].name for i in self.collector.forward])
        self.sinks.count_batch()
        due = self.sinks.due()
        # The packed copies become columns when published, many batches at once. With
        # stop_on, the rules see each batch by the next boundary: its copy is waited for
        # then (on an accelerator; it is long done by then, almost always).
        if due or self.sinks.stop_on or self.collector.backlog:
            self.take_arrived(wait=due, upto=self.clock.batch - 2 if self.sinks.stop_on else -1)
        if due:
            self.publish()
        self.sinks.listeners.emit(Event.BATCH, self.owner)
        return True

    def after_batch(self) -> None:
        """After a batch end: the stop requests (run file; the ranks' agreement)."""
        self.sinks.agree(self.clock.stop_requested, self.clock.state is RunState.RUNNING)

    def take_arrived(self, wait: bool, upto: int = -1) -> None:
        """Packed copies that reached the host -> columns -> the sinks (shifts follow)."""
        with self.take_lock:
            arrived = self.collector.take(self.taps.taps, wait, upto)
            if arrived is not None:
                self.sinks.add(arrived, self.clock.fit, self.clock.epoch_of)

    def end_fit(self, error: BaseException | None, where: str | None) -> None:
        """The fit ended: normally, on a stop request, or with `error`."""
        try:
            self.close_batch()
            if self.sinks.combiner is not None and error is not None:
                self.sinks.drop()  # the other ranks may not be here: no collective
            else:
                self.flush(force=True)
                if self.sinks.combiner is not None and self.sinks.combiner.finish():
                    self.sinks.agreed = True
        finally:
            stopped = self.should_stop or self.clock.stop_requested
            self.clock.end_fit(stopped, error, where)
            self.sinks.agreed = False
            self.sinks.end_fit(self.clock.status())
            self.sinks.listeners.emit(Event.FIT_END, self.owner)

    @property
    def should_stop(self) -> bool:
        """A stop was requested for the running fit (under torch.distributed: every rank
        agreed on it, at the same batch)."""
        if self.sinks.combiner is not None:
            return self.sinks.agreed
        return self.clock.stop_requested

    # --- publishing -------------------------------------------------------------------------
    def flush(self, force: bool = False) -> None:
        """Take what arrived and publish it (under torch.distributed: only when `force`d,
        from the training loop, as publishing is a collective there)."""
        if self.sinks.combiner is not None and not force:
            return
        # The training thread takes the packed copies at every batch end; a reader (the
        # widget's thread) takes what has arrived only when that is not under way, never
        # waiting for it (a reader in a tight loop would otherwise starve the training).
        if self.take_lock.acquire(blocking=force):
            try:
                self.take_arrived(wait=True)
            finally:
                self.take_lock.release()
        self.publish()

    def publish(self) -> None:
        """The sinks publish the columns they hold."""
        self.sinks.flush(self.clock.fit, self.clock.epoch_of, self.clock.status)

    def reset(self) -> None:
        """Forget everything recorded: the next fit starts at batch 0."""
        with self.take_lock:
            self.collector.clear()
            self.sinks.reset(self.run_dir, self.config, self.root_rank)
            self.stats.clear()
            for tap in self.taps:
                self.stats.layer(tap.name)
            self.clock.reset()
            for tap in self.taps:
                self.collector.set_shift(tap, 0.0)
                tap.shift = None


def _replace(other: Any) -> None:
    """Another recorder watches some of these modules: it stops, with a warning."""
    warnings.warn(
        f"actwidget: a new recorder takes over modules that {other!r} was watching; the "
        "old one is detached (its stats stay readable)",
        stacklevel=6,
    )
    other.remove()
