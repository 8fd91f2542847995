"""The recorder: `StatsHooks` records activation (and gradient) stats of chosen modules, every
batch, in any training loop.

```python
with StatsHooks(model.layers, model=model) as hooks:
    for xb, yb in dl:
        loss = loss_fn(model(xb), yb); loss.backward(); opt.step(); opt.zero_grad()
        if hooks.should_stop:  # Stop in the widget, Ctrl-C, or an alert's stop_on
            break
hooks.stats["layers.0 (Conv2dWithReLU)"].std
```

`StatsHooks` is a thin facade over parts with one job each: the taps (which modules, the
hooks, what a call computes: `_taps`), the batch clock (fits, epochs, batches, stop
requests: `_clock`), the collector (device accumulators to one packed copy per batch to
columns: `_collector`) and the sinks (store, run file, alert rules, distributed combine,
listeners: `_sinks`).

Lifecycle, the same in every loop: the constructor checks every setting and attaches
nothing. `attach()` registers the hooks and, with `auto_step`, ends a batch at each step of
an optimizer that updates the model's parameters. `with hooks:` attaches, begins a fit,
turns the first Ctrl-C into a stop request, and on exit ends the fit and removes every hook,
however the block exits. `remove()` detaches. Attaching a recorder to modules that another
one watches replaces that one, with a warning (a notebook cell run twice).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._interrupt import graceful_sigint
from .._modules import first_float_tensor, module_names, select_modules
from ..diagnose import AlertConfig
from ..source import Event, Listener, RunState, RunStatus
from ..stats import Alert, RunStats, StatsConfig
from . import _settings
from ._clock import Clock
from ._collector import Collector
from ._sinks import Sinks, distributed_later
from ._taps import Taps

__all__ = ["StatsHooks", "first_float_tensor", "module_names", "select_modules"]

_log = logging.getLogger("actwidget")


class StatsHooks:
    """Records activation (and gradient) stats of chosen modules, every batch, in any loop.

    - `mods`, `model`, `mod_filter`: what to watch (see `select_modules`); layer names are
      the module paths in `model`. Dotted names resolve when the hooks attach.
    - `on_train`, `on_valid`: record calls made in train mode / eval mode; `periodicity`:
      every n-th call only (eager calls; a compiled graph records every call).
    - `config`: what is recorded (`StatsConfig`); `stats`: continue these stats.
    - `alerts`: the rules (`AlertConfig`, True for the defaults, False for none); `stop_on`:
      alert kinds that stop the fit (e.g. {"nonfinite"}), within one batch.
    - `run_dir`: also write the run to this directory (`actwidget.runfile`); `root_rank`:
      under torch.distributed, the rank that keeps the global stats and writes `run_dir`.
    - `flush_every`, `flush_interval`: columns are published every this many batches or
      seconds, whichever comes first (by batches only under torch.distributed).
    - `auto_step`: while attached, each step of an optimizer updating the model's (or the
      watched modules') parameters ends a batch; False: only `end_batch()` does.
    """

    def __init__(
        self,
        mods: Any = None,
        *,
        model: nn.Module | None = None,
        mod_filter: Callable[[nn.Module], Any] | None = None,
        on_train: bool = True,
        on_valid: bool = False,
        periodicity: int = 1,
        config: StatsConfig | None = None,
        stats: RunStats | None = None,
        alerts: AlertConfig | bool = True,
        stop_on: Collection[str] | str = (),
        run_dir: str | os.PathLike | None = None,
        root_rank: int = 0,
        flush_every: int = 64,
        flush_interval: float = 0.5,
        auto_step: bool = True,
    ) -> None:
        mods = _settings.materialize(mods)
        s = _settings.check(**{k: v for k, v in locals().items() if k not in ("self", "s")})
        self.model, self._mods, self._filter = model, mods, mod_filter
        self.config: StatsConfig = s.stats.config
        self.run_dir, self.root_rank, self.auto_step = s.run_dir, root_rank, auto_step
        self._stats = s.stats
        self._clock = Clock(self._stats.batches, len(self._stats.fits))
        self._collector = Collector(0, self.config, model)
        self._taps = Taps(
            self._collector, on_train=on_train, on_valid=on_valid, periodicity=periodicity,
            grads=self.config.grads, sample_size=self.config.sample_size,
            near_zero=self.config.near_zero,
        )  # fmt: skip
        self._sinks = Sinks(
            self._stats, [], alerts=s.alerts, stop_on=s.stop_on, flush_every=flush_every,
            flush_interval=flush_interval, request_stop=self._clock.request_stop,
        )  # fmt: skip
        self._sinks._source = self
        self._take = threading.RLock()  # packed copies -> columns, one thread at a time
        self._exit: contextlib.ExitStack | None = None
        if model is not None:
            self._bind(select_modules(model, mods, mod_filter))  # bad selections fail here
        elif _settings.names_not_needed(mods):
            select_modules(None, mods)  # checked now; named when attached to the model

    def __repr__(self) -> str:
        return (
            f"StatsHooks({len(self._taps)} layers, {self._clock.state.value}, batch {self.batches})"
        )

    def __len__(self) -> int:
        return len(self._taps)

    @property
    def names(self) -> list[str]:
        """The recorded layers' names, in order."""
        return self._taps.names

    @property
    def modules(self) -> list[nn.Module]:
        """The watched modules, in order."""
        return [t.module for t in self._taps]

    @property
    def on_train(self) -> bool:
        return self._taps.on_train

    @property
    def on_valid(self) -> bool:
        return self._taps.on_valid

    @property
    def periodicity(self) -> int:
        return self._taps.periodicity

    @property
    def stop_on(self) -> frozenset[str]:
        return self._sinks.stop_on

    @property
    def flush_every(self) -> int:
        """Columns are published at least every this many batches."""
        return self._sinks.flush_every

    @flush_every.setter
    def flush_every(self, value: int) -> None:
        _settings.check_int("flush_every", value, 1)
        self._sinks.flush_every = value

    @property
    def flush_interval(self) -> float:
        """...and at least every this many seconds (not under torch.distributed)."""
        return self._sinks.flush_interval

    @flush_interval.setter
    def flush_interval(self, value: float) -> None:
        _settings.check_seconds("flush_interval", value)
        self._sinks.flush_interval = value

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return self._taps.attached

    def attach(self, model: nn.Module | None = None) -> StatsHooks:
        """Resolve the modules (in `model`, if given), then register the hooks; idempotent.
        Either everything attaches or nothing does."""
        if self.attached:
            return self
        if model is not None:
            self.model = self._collector.model = model
        self._bind(select_modules(self.model, self._mods, self._filter))
        if not distributed_later():  # else begin_fit decides which rank writes
            self._sinks.setup(self.run_dir, self.config, self.root_rank)
        try:
            devices = {p.device for m in self.modules for p in m.parameters()} or {
                torch.device("cpu")
            }
            self._collector.prepare(self._taps.taps, devices)
            self._taps.attach(self, _replace)
            if self.auto_step:
                params = list((self.model or nn.ModuleList(self.modules)).parameters())
                self._clock.watch_optimizers(params, self._on_optimizer)
        except BaseException:
            self._detach()
            raise
        return self

    def _bind(self, mods: list[nn.Module]) -> None:
        names = module_names(self.model, mods)
        if self._taps.taps:
            names = self.names  # the same layers again (a new fit): keep their names
        self._taps.bind(mods, names)
        if self._collector.n != len(mods):
            self._collector.n = len(mods)
            self._sinks.names = names
            for n in names:
                self._stats.layer(n)
            self._sinks.bind(self.config)

    def remove(self) -> None:
        """Publish what was recorded, then unregister every hook (always, even if
        publishing fails); idempotent."""
        try:
            if self.attached:
                self._close_batch()
                self.flush()
        finally:
            self._detach()

    def _detach(self) -> None:
        self._clock.unwatch_optimizers()
        self._taps.detach()
        self._collector.free()
        self._sinks.close_writer()

    # --- one fit, from start to end: `with`, the course callback and the loop adapters ----
    @property
    def fit_open(self) -> bool:
        """Whether a fit opened with `open_fit` (or `with`) has not been closed yet."""
        return self._exit is not None

    def open_fit(self, model: nn.Module | None = None, epochs: int | None = None) -> int:
        """Start a fit the way every loop does: attach (in `model`, if given), begin the fit,
        turn the first Ctrl-C into a stop request (main thread). Undone by `close_fit`,
        which every way out of the loop must call. Returns the fit's id."""
        if self._exit is not None:
            raise RuntimeError("this recorder's fit is already open (a nested `with`?)")
        self.attach(model)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(graceful_sigint(self.request_stop))
            fit_id = self.begin_fit(epochs)
        except BaseException:
            stack.close()
            self._detach()
            raise
        self._exit = stack
        return fit_id

    def close_fit(self, error: BaseException | None = None, where: str | None = None) -> None:
        """End the fit `open_fit` began (normally, on a stop, or with `error`), restore
        Ctrl-C and remove every hook, however it goes; does nothing when none is open."""
        stack, self._exit = self._exit, None
        if stack is None:
            return
        try:
            if self._clock.state is RunState.RUNNING:
                self.end_fit(error, where)
        finally:
            try:
                stack.close()
            finally:
                self.remove()

    def __enter__(self) -> StatsHooks:
        self.open_fit()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.close_fit(exc)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "a StatsHooks recorder holds hooks on live modules and cannot be pickled or "
            "copied; save what it recorded instead: hooks.stats (a RunStats, which pickles) "
            "or hooks.save(path)"
        )

    # --- fits, epochs, batches ---------------------------------------------------------------
    def begin_fit(self, epochs: int | None = None) -> int:
        """A fit begins (the loop calls this; `with` does); returns its unique id."""
        self.attach()
        self._close_batch()
        self._sinks.setup(self.run_dir, self.config, self.root_rank)
        fit_id = self._clock.begin_fit(epochs)
        self._sinks.agreed = False
        mark = self._stats.mark_fit(self._clock.batch)
        self._sinks.begin_fit(mark, self.status)
        self._sinks.listeners.emit(Event.FIT_START, self)
        return fit_id

    def begin_epoch(self, epoch: int, steps: int | None = None, phase: str = "train") -> None:
        """An epoch (or phase) begins; `steps`: its number of batches, when known."""
        self._close_batch()
        self._clock.begin_epoch(epoch, steps, phase)
        self._sinks.listeners.emit(Event.EPOCH, self)

    def _on_optimizer(self) -> None:
        # Runs inside the user's `optimizer.step()`: a failure here is reported, never raised.
        try:
            if not self._close_batch():
                self._clock.recorded_nothing()
            self._after_batch()
        except Exception as e:
            _log.exception("actwidget: the batch end failed (%s); training goes on", e)

    def end_batch(self) -> bool:
        """End the current batch (a column per recorded layer); returns `should_stop`.

        Plain loops need not call it while an optimizer steps (see `auto_step`). A call
        with nothing recorded since the last batch does nothing."""
        self._close_batch()
        self._after_batch()
        return self.should_stop

    def _close_batch(self) -> bool:
        """Close the batch being recorded, if anything was; take the columns that arrived."""
        if not self._collector.boundary(self._clock.batch):
            return False
        self._clock.batch_done()
        if len(self._collector.forward) > len(self._sinks.forward):  # learnt from a batch
            self._sinks.set_order([self.names[i] for i in self._collector.forward])
        self._sinks.count_batch()
        due = self._sinks.due()
        # With stop_on, the rules see each batch by the next boundary: its copy is waited
        # for then (on an accelerator; it is long done by then, almost always).
        self._take_arrived(wait=due, upto=self._clock.batch - 2 if self.stop_on else -1)
        if due:
            self._flush()
        self._sinks.listeners.emit(Event.BATCH, self)
        return True

    def _after_batch(self) -> None:
        self._sinks.agree(self._clock.stop_requested, self._clock.state is RunState.RUNNING)

    def _take_arrived(self, wait: bool, upto: int = -1) -> None:
        """Packed copies that reached the host -> columns -> the sinks (shifts follow)."""
        with self._take:
            for arrived in self._collector.take(self._taps.taps, wait, upto):
                self._sinks.add(arrived, self._clock.fit, self._clock.epoch_of)

    def end_fit(self, error: BaseException | None = None, where: str | None = None) -> None:
        """The fit ended: normally, on a stop request, or with `error` (the loop calls this;
        `with` does). `where`: how the loop names the place it stopped ("at epoch 2, batch
        7")."""
        stopped = False
        try:
            self._close_batch()
            if self._sinks.combiner is not None and error is not None:
                self._sinks.drop()  # the other ranks may not be here: no collective
            else:
                self.flush(force=True)
                if self._sinks.combiner is not None and self._sinks.combiner.finish():
                    self._sinks.agreed = True
        finally:
            stopped = self.should_stop or self._clock.stop_requested
            self._clock.end_fit(stopped, error, where)
            self._sinks.agreed = False
            self._sinks.end_fit(self.status)
            self._sinks.listeners.emit(Event.FIT_END, self)

    # --- stop requests --------------------------------------------------------------------------
    def request_stop(self, fit_id: int | None = None) -> bool:
        """Ask the running fit to end at its next batch boundary; thread- and signal-safe.

        False when no fit runs, or `fit_id` is given and is not the running fit's."""
        return self._clock.request_stop(fit_id)

    @property
    def should_stop(self) -> bool:
        """True once a stop was requested for the running fit: end it at this batch boundary.

        Under torch.distributed: once every rank agreed (the same batch on all ranks)."""
        if self._sinks.combiner is not None:
            return self._sinks.agreed
        return self._clock.stop_requested

    # --- publishing and reading -----------------------------------------------------------------
    def flush(self, force: bool = False) -> None:
        """Publish every finished batch to the store, the run file, the rules and listeners.

        Under torch.distributed publishing is a collective: only the training loop's own
        flushes run (`force`); a flush from elsewhere does nothing."""
        if self._sinks.combiner is not None and not force:
            return
        # The training thread takes the packed copies at every batch end; a reader (the
        # widget's thread) takes what has arrived only when that is not under way, never
        # waiting for it (a reader in a tight loop would otherwise starve the training).
        if self._take.acquire(blocking=force):
            try:
                self._take_arrived(wait=True)
            finally:
                self._take.release()
        self._flush()

    def _flush(self) -> None:
        self._sinks.flush(self._clock.fit, self._clock.epoch_of, lambda: self.status)

    @property
    def stats(self) -> RunStats:
        """A consistent snapshot of everything recorded so far (finished batches)."""
        self.flush()
        return self._stats.snapshot()

    @property
    def alerts(self) -> list[Alert]:
        """Every alert so far, in order."""
        self.flush()
        return self._stats.alerts

    @property
    def status(self) -> RunStatus:
        """Where the run is (a `RunStatus`)."""
        return self._clock.status()

    @property
    def batches(self) -> int:
        """Batches recorded so far, over all fits."""
        return self._clock.batch

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event, self)` on every `Event`; returns the unsubscribe function."""
        return self._sinks.listeners.add(listener)

    def reset(self) -> None:
        """Forget everything recorded: the next fit starts at batch 0."""
        with self._take:
            self._collector.clear()
            self._sinks.reset(self.run_dir, self.config, self.root_rank)
            self._stats.clear()
            for n in self.names:
                self._stats.layer(n)
            self._clock.reset()
            for tap in self._taps:
                self._collector.set_shift(tap, 0.0)
                tap.shift = None

    def save(self, path: str | os.PathLike) -> Path:
        """Save the recorded stats, fits and alerts to an `.npz` file."""
        return self.stats.save(path)


def _replace(other: StatsHooks) -> None:
    """Another recorder watches some of these modules: it stops, with a warning."""
    warnings.warn(
        f"actwidget: a new recorder takes over modules that {other!r} was watching; the "
        "old one is detached (its stats stay readable)",
        stacklevel=5,
    )
    other.remove()
