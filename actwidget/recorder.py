"""The recorder: `StatsHooks` hooks the chosen modules and owns everything recorded.

One object does module selection and naming, the hooks' lifecycle, batch grouping, flushing
to the stats store, events to listeners, stop requests and alerts (and, where set up, the
distributed combine and the run-file sink). Loops map their events onto it: a plain loop
through `with StatsHooks(...)`, the course Learner through `StoreModuleStatsCB`, other
frameworks through `actwidget.integrations`.

```python
with StatsHooks(model.layers, model=model) as hooks:
    for xb, yb in dl:
        loss = loss_fn(model(xb), yb); loss.backward(); opt.step(); opt.zero_grad()
        if hooks.should_stop:  # Stop in the widget, Ctrl-C, or an alert's stop_on
            break
hooks.stats["layers.0 (Conv2dWithReLU)"].std
```
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._interrupt import graceful_sigint
from ._modules import (
    CHANNELS_FIRST,
    first_float_tensor,
    module_names,
    select_modules,
    unsummarizable,
)
from ._summary import CallRecord, GradRecord, Probe, Scratch, build_columns
from .diagnose import KINDS, AlertConfig, Diagnoser
from .source import Event, Listener, Listeners, RunState, RunStatus
from .stats import Alert, Field, RunStats, StatsConfig

__all__ = ["StatsHooks", "first_float_tensor", "module_names", "select_modules"]

_log = logging.getLogger("actwidget")
_FIT_IDS = itertools.count(1)  # unique across recorders: a stale stop never matches a later fit


def _is_distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _distributed_later() -> bool:
    """Launched as one of several ranks (torchrun sets WORLD_SIZE) whose process group is
    not initialised yet: which rank writes is decided when the fit begins."""
    world = os.environ.get("WORLD_SIZE", "1")
    return world.isdigit() and int(world) > 1 and not _is_distributed()


class StatsHooks:
    """Records activation (and gradient) stats of chosen modules, every batch, in any loop.

    - `mods`, `model`, `mod_filter`: what to hook (see `select_modules`); names come from
      the module paths in `model`. Dotted names are resolved when the hooks attach.
    - `on_train`, `on_valid`: record calls made in train mode / eval mode; `periodicity`:
      every n-th call only.
    - `config`: what is recorded (`StatsConfig`); `alerts`: the rules (`AlertConfig`, or
      False for none); `stop_on`: alert kinds that stop the fit (e.g. {"nonfinite"}).
    - `run_dir`: also write the run to this directory (see `actwidget.runfile`).
    - `root_rank`: under torch.distributed, the rank that holds the global stats and writes
      `run_dir` (the others record, and combine at each flush, but keep nothing).
    - `flush_every`, `flush_interval`: pending records move to the host every this many
      batches or seconds, whichever comes first (by batches only under torch.distributed).
    - `auto_step`: in a `with` block, each optimizer step ends a batch; False: only `step()`.

    As a context manager (plain loops) it attaches, begins a fit, groups calls into one
    batch per optimizer step and per `step()` call, turns the first Ctrl-C into a stop
    request, and on exit ends the fit and removes every hook. Without an optimizer (e.g.
    evaluation), call `step()` once per batch.
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
        stop_on: Collection[str] = (),
        run_dir: str | Path | None = None,
        root_rank: int = 0,
        flush_every: int = 64,
        flush_interval: float = 0.5,
        auto_step: bool = True,
        attach: bool = True,
    ) -> None:
        if isinstance(periodicity, bool) or not isinstance(periodicity, int) or periodicity < 1:
            raise ValueError(f"periodicity must be an int >= 1, got {periodicity!r}")
        if not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be an int >= 1, got {flush_every!r}")
        stop_on = {stop_on} if isinstance(stop_on, str) else set(stop_on)
        if stop_on - set(KINDS):
            raise ValueError(f"stop_on: unknown alert kinds {sorted(stop_on - set(KINDS))}")
        self._mods_spec, self._filter, self.model = mods, mod_filter, model
        self.on_train, self.on_valid, self.periodicity = on_train, on_valid, periodicity
        if stats is not None and config is not None and stats.config != config:
            raise ValueError("give either stats or config, not both with different settings")
        self._stats = stats if stats is not None else RunStats(config)
        self.config = self._stats.config
        alert_config = AlertConfig() if alerts is True else alerts or None
        self._alert_config: AlertConfig | None = alert_config
        self.stop_on = frozenset(stop_on)
        self.flush_every, self.flush_interval = flush_every, flush_interval
        self.auto_step = auto_step
        self._grads = self.config.grads
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if isinstance(root_rank, bool) or not isinstance(root_rank, int) or root_rank < 0:
            raise ValueError(f"root_rank must be an int >= 0, got {root_rank!r}")
        self.root_rank = root_rank

        self.modules: list[nn.Module] = []
        self.names: list[str] = []
        self._probes: list[Probe] = []
        self._scratch = Scratch()  # exact mode's work buffer, freed when hooks are removed
        self._handles: list[Any] = []
        self._calls: list[int] = []  # recorded-mode calls per layer (for periodicity)
        self._warned: set[int] = set()
        self._gen = 0  # bumped on removal: late gradient hooks of removed hooks do nothing
        self._pending: list[CallRecord] = []
        self._pending_grads: list[GradRecord] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.RLock()
        self._listeners = Listeners()
        self._diagnoser: Diagnoser | None = None
        self._sink: Any = None  # a runfile.RunWriter when run_dir is set (on the root rank)
        self._dist: Any = None  # a _dist.Combiner under torch.distributed
        self._agreed = False  # under torch.distributed: every rank agreed to stop

        # Progress.
        self._batch = self._stats.batches  # index of the batch being recorded
        self._batch_calls = 0  # recorded calls in the current batch
        self._fit = len(self._stats.fits)
        self._fit_id = 0
        self._fit_start_batch = self._batch
        self._state = RunState.WAITING if not self._stats.fits else RunState.FINISHED
        self._message = ""
        self._t0 = self._t1 = 0.0
        self._epoch: int | None = None
        self._epochs: int | None = None
        self._epoch_step = 0
        self._epoch_steps: int | None = None
        self._phase = "train"
        self._epoch_starts: list[tuple[int, int]] = []  # (first batch, epoch)
        self._last_done: tuple[int | None, int] | None = None  # (epoch, step) of last batch
        self._stop = threading.Event()
        self._stopped = False  # the fit ended on a stop request
        self._since_flush = 0
        self._last_flush = time.perf_counter()
        self._exit: contextlib.ExitStack | None = None
        if self._no_names_needed():
            select_modules(None, mods)  # bad or empty selections fail here, not at fit start
        if attach and (model is not None or self._no_names_needed()):
            self.attach()

    def _no_names_needed(self) -> bool:
        spec = self._mods_spec
        if spec is None or isinstance(spec, str):
            return False
        if isinstance(spec, nn.Module):
            return True
        return isinstance(spec, Iterable) and not any(isinstance(m, str) for m in spec)

    def __repr__(self) -> str:
        return f"StatsHooks({len(self.names)} layers, {self._state.value}, batch {self._batch})"

    def __len__(self) -> int:
        return len(self._probes)

    # --- lifecycle --------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the forward hooks are registered."""
        return bool(self._handles)

    def attach(self, model: nn.Module | None = None) -> StatsHooks:
        """Resolve the modules (in `model`, if given) and register the hooks; idempotent."""
        if self.attached:
            return self
        if model is not None:
            self.model = model
        mods = select_modules(self.model, self._mods_spec, self._filter)
        names = module_names(self.model, mods)
        if self.names and names != self.names:  # attached again, e.g. a new fit
            if len(names) != len(self.names):
                raise ValueError(f"the modules changed between fits: {self.names} -> {names}")
            names = self.names  # same layers: keep the names the stats use
        self.modules, self.names = mods, names
        if not self._probes:
            self._probes = [
                Probe(i, n, self.config, isinstance(m, CHANNELS_FIRST), self._scratch)
                for i, (m, n) in enumerate(zip(mods, names, strict=True))
            ]
            self._calls = [0] * len(mods)
            for n in names:
                self._stats.layer(n)
            if self._alert_config is not None:
                self._diagnoser = Diagnoser(self._alert_config, names, self.config)
        handles = []
        try:  # the one place hooks are registered
            for m, probe in zip(mods, self._probes, strict=True):
                # Never traced by torch.compile: the hook runs eagerly, on real tensors.
                hook = torch.compiler.disable(partial(self._on_forward, probe))
                handles.append(m.register_forward_hook(hook))
        except BaseException:
            for h in handles:
                h.remove()
            raise
        self._handles = handles
        if not _distributed_later():  # else begin_fit decides which rank writes
            self._setup_dist()
        return self

    def _setup_dist(self) -> None:
        """Under torch.distributed, the combiner (made on every rank: a collective); on the
        writing rank, the run-file sink."""
        if self._dist is None and _is_distributed():
            from ._dist import Combiner

            self._dist = Combiner(len(self.names), root=self.root_rank)
        if self.run_dir is not None and self._sink is None and self._is_writer():
            from .runfile import RunWriter

            snap = self._stats.snapshot()
            self._sink = RunWriter(self.run_dir, self.config, self.names, stats=snap)

    def remove(self) -> None:
        """Flush what was recorded, then unregister every hook (always, even if the flush
        fails); idempotent."""
        try:
            if self.attached:
                self.flush()
        finally:
            handles, self._handles = self._handles, []
            self._gen += 1
            for h in handles:
                h.remove()
            self._scratch.clear()

    def __enter__(self) -> StatsHooks:
        self.attach()
        stack = contextlib.ExitStack()
        try:
            self.begin_fit()
            stack.enter_context(graceful_sigint(self._on_sigint))
            if self.auto_step:
                hook = register_optimizer_step_post_hook(self._on_optimizer)
                stack.callback(hook.remove)
        except BaseException:
            stack.close()
            self.remove()
            raise
        self._exit = stack
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if self._exit is not None:
                self._exit.close()
                self._exit = None
            if self._state is RunState.RUNNING:
                self.end_fit(exc)
        finally:
            self.remove()

    # --- fits, epochs, batches ---------------------------------------------------------
    def begin_fit(self, epochs: int | None = None) -> int:
        """A fit begins (the loop calls this); returns its unique id."""
        self.attach()
        self._end_batch()
        self._fit += 1
        self._fit_id = next(_FIT_IDS)
        self._setup_dist()
        self._stop.clear()
        self._agreed = False
        self._stopped, self._message = False, ""
        self._fit_start_batch = self._batch
        self._epochs, self._epoch, self._epoch_step, self._epoch_steps = epochs, None, 0, None
        self._last_done = None
        self._t0 = time.perf_counter()
        self._stats.mark_fit(self._batch)
        if self._diagnoser is not None:
            self._diagnoser.begin_fit()
        self._state = RunState.RUNNING
        if self._sink is not None:
            self._sink.begin_fit(self._stats.fits[-1], self.status)
        self._listeners.emit(Event.FIT_START, self)
        return self._fit_id

    def begin_epoch(self, epoch: int, steps: int | None = None, phase: str = "train") -> None:
        """An epoch (or phase) begins; `steps`: its number of batches, when known."""
        self._end_batch()
        self._epoch, self._epoch_steps, self._epoch_step, self._phase = epoch, steps, 0, phase
        if not self._epoch_starts or self._epoch_starts[-1][1] != epoch:
            self._epoch_starts.append((self._batch, epoch))
            del self._epoch_starts[:-4096]
        self._listeners.emit(Event.EPOCH, self)

    def _on_optimizer(self, *_: Any) -> None:
        self.step()

    def step(self) -> bool:
        """End the current batch (one column per layer); returns `should_stop`.

        Plain loops need not call it: inside `with hooks:` each optimizer step ends a batch
        (see `auto_step`). A call with nothing recorded since the last batch does nothing."""
        counted = self._end_batch()
        if counted:
            self._last_done = (self._epoch, self._epoch_step)
            self._epoch_step += 1
            self._since_flush += 1
            live = self._dist is None
            # The fit's first batch flushes at once: it tells each layer where to centre its
            # exact sums, which until then subtract a value of their own on every call.
            first = self._batch == self._fit_start_batch + 1
            if (
                first
                or self._since_flush >= self.flush_every
                or (live and time.perf_counter() - self._last_flush >= self.flush_interval)
            ):
                self._flush(from_loop=True)
            self._listeners.emit(Event.BATCH, self)
        if self._sink is not None and self._sink.stop_requested():  # reads at most every 0.5 s
            self._stop.set()
        if self._dist is not None and counted and self._state is RunState.RUNNING:
            # Every rank ends the same batches: agree at each (on the flag all-reduced since
            # the last one), so that all stop at the same batch and none alone.
            self._agreed = self._dist.agree_stop(self._stop.is_set()) or self._agreed
        return self.should_stop

    def _end_batch(self) -> bool:
        """Close the current batch if anything was recorded in it; True if it counted."""
        if not self._batch_calls:
            return False
        self._batch_calls = 0
        self._batch += 1
        return True

    def end_fit(self, error: BaseException | None = None, where: str | None = None) -> None:
        """The fit ended: normally, on a stop request, or with `error` (the loop calls this).

        `where`: how the loop names the place it stopped, e.g. "at epoch 2, batch 7"."""
        self._end_batch()
        self._t1 = time.perf_counter()
        try:
            if self._dist is not None and error is not None:
                self._drop_distributed()  # the other ranks may not be here: no collective
            else:
                self._flush(from_loop=True)  # under torch.distributed: on every rank
                if self._dist is not None and self._dist.finish():
                    self._agreed = True
        finally:
            stop = self._agreed if self._dist is not None else self._stop.is_set()
            if stop or isinstance(error, KeyboardInterrupt):
                self._stopped = True
                self._state = RunState.STOPPED
                self._message = "interrupted" if error else where or self._where()
            elif error is not None:
                self._state = RunState.FAILED
                self._message = f"{type(error).__name__}: {error}"
            else:
                self._state = RunState.FINISHED
            self._stop.clear()
            self._agreed = False
            if self._sink is not None:
                self._sink.end_fit(self.status)
            self._listeners.emit(Event.FIT_END, self)

    def _where(self) -> str:
        if self._last_done is None:
            return "before the first batch"
        epoch, step = self._last_done
        if epoch is None:
            return f"at batch {self._batch}"
        return f"at epoch {epoch + 1}, batch {step + 1}"

    # --- stop requests ----------------------------------------------------------------
    def request_stop(self, fit_id: int | None = None) -> bool:
        """Ask the running fit to end at its next batch boundary; thread- and signal-safe.

        False when no fit runs, or `fit_id` is given and is not the running fit's."""
        if self._state is not RunState.RUNNING or (fit_id is not None and fit_id != self._fit_id):
            return False
        self._stop.set()
        return True

    def _on_sigint(self) -> None:
        self.request_stop()

    @property
    def should_stop(self) -> bool:
        """True once a stop was requested for the running fit: end it at this batch boundary.

        Under torch.distributed: once every rank agreed (the same batch on all ranks)."""
        return self._agreed if self._dist is not None else self._stop.is_set()

    def _drop_distributed(self) -> None:
        """The fit failed on this rank: drop what was not combined, leave no collective."""
        with self._pending_lock:
            self._pending, self._pending_grads = [], []
        self._dist.abandon()

    # --- the hot path -----------------------------------------------------------------
    def _on_forward(self, probe: Probe, module: nn.Module, inputs: Any, output: Any) -> None:
        # The hot path. Never raises into the user's forward: a failure skips the call, with
        # one warning naming the layer.
        try:
            if not (self.on_train if module.training else self.on_valid):
                return
            self._batch_calls += 1  # the batch counts even when periodicity skips the call
            if self.periodicity > 1:
                self._calls[probe.index] += 1
                if (self._calls[probe.index] - 1) % self.periodicity:
                    return
            t = output if type(output) is torch.Tensor else first_float_tensor(output)
            if t is None or not t.is_floating_point() or t.layout is not torch.strided or (
                not t.ndim or not t.numel() or t.is_meta or t.is_nested
            ):  # fmt: skip
                self._warn(probe.index, unsummarizable(t) or f"a {type(output).__name__}")
                return
            rec = probe.forward(t, self._batch)
            with self._pending_lock:
                self._pending.append(rec)
            if self._grads and t.requires_grad and torch.is_grad_enabled():
                t.register_hook(partial(self._on_grad, probe, self._batch, self._gen))
        except Exception as e:
            probe.reset()  # e.g. the output moved to another device: plan again next call
            self._warn(probe.index, f"not summarisable ({type(e).__name__}: {e})")

    def _on_grad(self, probe: Probe, batch: int, gen: int, g: torch.Tensor) -> None:
        try:
            if gen != self._gen or g is None or g.layout is not torch.strided:
                return
            rec = probe.backward(g, batch)
            with self._pending_lock:
                self._pending_grads.append(rec)
        except Exception as e:
            self._warn(probe.index, f"gradient not summarisable ({type(e).__name__}: {e})")

    def _warn(self, layer: int, what: str) -> None:
        if layer in self._warned:
            return
        self._warned.add(layer)
        warnings.warn(
            f"actwidget: layer {self.names[layer]!r} output is {what}; skipping it",
            stacklevel=3,
        )

    # --- flushing ---------------------------------------------------------------------
    def flush(self) -> None:
        """Move every pending record to the host stats (one transfer per device).

        Under torch.distributed only the training loop flushes (the combine is a
        collective); a flush from elsewhere does nothing."""
        self._flush(from_loop=False)

    def _flush(self, from_loop: bool) -> None:
        if self._dist is not None and not from_loop:
            return
        with self._flush_lock:  # one flush at a time: columns reach the store in order
            with self._pending_lock:
                calls, self._pending = self._pending, []
                grads, self._pending_grads = self._pending_grads, []
            self._since_flush = 0
            self._last_flush = time.perf_counter()
            layers, rows = self._columns(calls, grads)
            self._update_shifts(layers, rows)  # from this rank's own columns
            if self._dist is not None:
                combined = self._dist.combine(layers, rows)
                if combined is None:  # not the rank that keeps the global view
                    return
                layers, rows = combined
            if len(rows):
                self._publish(layers, rows)

    def _columns(
        self, calls: list[CallRecord], grads: list[GradRecord]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Columns of all records: one transfer per device; a layer that fails alone loses
        only its own records (with a warning naming it)."""
        if not calls and not grads:
            return np.zeros(0, np.int64), np.zeros((0, self.config.width))
        groups: dict[Any, tuple[list[CallRecord], list[GradRecord]]] = {}
        for r in calls:
            groups.setdefault(r.sample.device, ([], []))[0].append(r)
        for g in grads:
            groups.setdefault(g.sums[0].device, ([], []))[1].append(g)
        out_l, out_r = [], []
        for group_calls, group_grads in groups.values():
            try:
                parts = [build_columns(group_calls, group_grads, self.config)]
            except Exception:
                parts = self._columns_per_layer(group_calls, group_grads)
            for layer_idx, rows in parts:
                out_l.append(layer_idx)
                out_r.append(rows)
        layers, rows = np.concatenate(out_l), np.concatenate(out_r)
        order = np.lexsort((rows[:, Field.STEP_FIRST], layers))
        return layers[order], rows[order]

    def _columns_per_layer(
        self, calls: list[CallRecord], grads: list[GradRecord]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        parts = []
        for i in sorted({r.layer for r in calls} | {g.layer for g in grads}):
            mine = [r for r in calls if r.layer == i], [g for g in grads if g.layer == i]
            try:
                parts.append(build_columns(*mine, self.config))
            except Exception as e:
                self._warn(i, f"not summarisable at flush ({type(e).__name__}: {e})")
        return parts or [(np.zeros(0, np.int64), np.zeros((0, self.config.width)))]

    def _publish(self, layers: np.ndarray, rows: np.ndarray) -> None:
        """Append new columns to the store, the run file and the alert rules."""
        new: dict[str, np.ndarray] = {}
        with self._stats.lock:
            for i in np.unique(layers):
                mine = rows[layers == i]
                name = self.names[int(i)]
                self._stats.append(name, mine)
                new[name] = mine
        if self._sink is not None:
            self._sink.write(new, self.status)
        alerts: list[Alert] = []
        if self._diagnoser is not None:
            alerts = self._diagnoser.update(new, self._epoch_of, self._fit)
        for a in alerts:
            self._stats.add_alert(a)
            _log.warning("actwidget alert: %s", a.message)
            if self._sink is not None:
                self._sink.alert(a)
            if a.kind in self.stop_on:
                self.request_stop()
        self._listeners.emit(Event.FLUSH, self)
        if alerts:
            self._listeners.emit(Event.ALERT, self)

    def _update_shifts(self, layers: np.ndarray, rows: np.ndarray) -> None:
        """Centre a layer's exact sums on its mean when the mean dwarfs the spread."""
        for i in np.unique(layers):
            last = rows[(layers == i) & (rows[:, Field.COUNT] > 1)]
            if not len(last):
                continue
            c = last[-1]
            mean, var = c[Field.MEAN], c[Field.M2] / (c[Field.COUNT] - 1)
            if np.isfinite(mean) and np.isfinite(var):
                self._probes[int(i)].shift = float(np.float32(mean)) if (
                    mean * mean > 25 * var
                ) else 0.0  # fmt: skip

    def _epoch_of(self, batch: int) -> int | None:
        i = bisect.bisect_right(self._epoch_starts, (batch, float("inf"))) - 1
        return self._epoch_starts[i][1] if i >= 0 else None

    def _is_writer(self) -> bool:
        """Whether this process writes `run_dir`: the root rank under torch.distributed (or
        of a launch whose ranks never joined a process group), else yes."""
        if _is_distributed():
            return torch.distributed.get_rank() == self.root_rank
        if _distributed_later():
            return os.environ.get("RANK", "0") == str(self.root_rank)
        return True

    # --- reading ----------------------------------------------------------------------
    @property
    def stats(self) -> RunStats:
        """A consistent snapshot of everything recorded so far (flushed first)."""
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
        running = self._state is RunState.RUNNING
        end = time.perf_counter() if running else self._t1
        return RunStatus(
            state=self._state,
            fit=self._fit,
            fit_id=self._fit_id,
            batch=self._batch,
            fit_batches=self._batch - self._fit_start_batch,
            epoch=self._epoch,
            epochs=self._epochs,
            epoch_step=self._epoch_step,
            epoch_steps=self._epoch_steps,
            phase=self._phase,
            elapsed=max(end - self._t0, 0.0) if self._fit else 0.0,
            message=self._message,
            stoppable=running,
        )

    @property
    def batches(self) -> int:
        """Batches recorded so far, over all fits."""
        return self._batch

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event, self)` on every `Event`; returns the unsubscribe function."""
        return self._listeners.add(listener)

    def reset(self) -> None:
        """Forget everything recorded: the next fit starts at batch 0."""
        with self._flush_lock:
            with self._pending_lock:
                self._pending, self._pending_grads = [], []
            self._gen += 1 if not self.attached else 0
            self._stats.clear()
            for n in self.names:
                self._stats.layer(n)
            self._batch = self._fit_start_batch = self._batch_calls = 0
            self._fit, self._epoch_starts = 0, []
            for p in self._probes:
                p.shift = None
            if self._state is not RunState.RUNNING:
                self._state = RunState.WAITING
            if self._diagnoser is not None:
                self._diagnoser.begin_fit()
            if self._sink is not None:
                self._sink.reset()

    def save(self, path: str | Path) -> Path:
        """Save the recorded stats, fits and alerts to an `.npz` file."""
        return self.stats.save(path)
