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
hooks: `_taps`; what a call computes: `_calls`), the batch clock (fits, epochs, batches, stop
requests: `_clock`), the collector (device accumulators to packed copies to columns:
`_collector`), the sinks (store, run file, alert rules, distributed combine, listeners:
`_sinks`), and the run that holds them and drives the lifecycle below (`_run`).

Lifecycle, the same in every loop: the constructor checks every setting and attaches
nothing. `attach()` registers the hooks and, with `auto_step`, ends a batch at each step of
an optimizer that updates the model's parameters. `with hooks:` attaches, begins a fit,
turns the first Ctrl-C into a stop request, and on exit ends the fit and removes every hook,
however the block exits. `remove()` detaches. Attaching a recorder to modules that another
one watches replaces that one, with a warning (a notebook cell run twice).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from torch import nn

from .._modules import first_float_tensor, module_names, select_modules
from ..diagnose import AlertConfig
from ..source import Listener, RunStatus
from ..stats import Alert, RunStats, StatsConfig
from . import _settings
from ._run import Run
from ._settings import Setting, check_batches, check_seconds

__all__ = ["StatsHooks", "first_float_tensor", "module_names", "select_modules"]


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
        s = _settings.check(**{k: v for k, v in locals().items() if k != "self"})
        self._mods, self._filter = s.mods, s.mod_filter
        self._run = run = Run(self, s)  # the parts, and what drives them; bad selections fail
        self._stats, self._clock, self._collector = run.stats, run.clock, run.collector
        self._taps, self._sinks = run.taps, run.sinks

    def __repr__(self) -> str:
        return f"StatsHooks({len(self)} layers, {self._clock.state.value}, batch {self.batches})"

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

    model = Setting[nn.Module | None]("_run", "The model the layers are named in (or None).")
    config = Setting[StatsConfig]("_run", "What is recorded.")
    run_dir = Setting[Path | None]("_run", "Where the run is written (a checked path), if set.")
    root_rank = Setting[int]("_run", "The rank that keeps the global stats and writes run_dir.")
    auto_step = Setting[bool]("_run", "Whether an optimizer step of the model ends a batch.")
    on_train = Setting[bool]("_taps", "Whether calls in train mode are recorded.")
    on_valid = Setting[bool]("_taps", "Whether calls in eval mode are recorded.")
    periodicity = Setting[int]("_taps", "Every this many calls of a layer is recorded (eager).")
    stop_on = Setting[frozenset[str]]("_sinks", "The alert kinds that stop the fit.")
    flush_every = Setting[int]("_sinks", "Publish at least every this many batches.", check_batches)
    flush_interval = Setting[float](
        "_sinks", "Publish at least every this many seconds (not distributed).", check_seconds
    )

    # --- lifecycle (see the module docstring) ---------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return self._taps.attached

    def attach(self, model: nn.Module | None = None) -> StatsHooks:
        """Resolve the modules (in `model`, if given), then register the hooks; idempotent.
        Either everything attaches or nothing does."""
        self._run.attach(model)
        return self

    def remove(self) -> None:
        """Publish what was recorded, then unregister every hook (always, even if
        publishing fails); idempotent."""
        self._run.remove()

    @property
    def fit_open(self) -> bool:
        """Whether a fit opened with `open_fit` (or `with`) has not been closed yet."""
        return self._run.fit_exit is not None

    def open_fit(self, model: nn.Module | None = None, epochs: int | None = None) -> int:
        """Start a fit the way every loop does: attach (in `model`, if given), begin the fit,
        turn the first Ctrl-C into a stop request (main thread). Undone by `close_fit`,
        which every way out of the loop must call. Returns the fit's id."""
        return self._run.open_fit(model, epochs)

    def close_fit(self, error: BaseException | None = None, where: str | None = None) -> None:
        """End the fit `open_fit` began (normally, on a stop, or with `error`), restore
        Ctrl-C and remove every hook, however it goes; does nothing when none is open."""
        self._run.close_fit(error, where)

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

    # --- fits, epochs, batches, stop requests ---------------------------------------------
    def begin_fit(self, epochs: int | None = None) -> int:
        """A fit begins (the loop calls this; `with` does); returns its unique id."""
        return self._run.begin_fit(epochs)

    def begin_epoch(self, epoch: int, steps: int | None = None, phase: str = "train") -> None:
        """An epoch (or phase) begins; `steps`: its number of batches, when known."""
        self._run.begin_epoch(epoch, steps, phase)

    def end_batch(self) -> bool:
        """End the current batch (a column per recorded layer); returns `should_stop`. Plain
        loops need not call it while an optimizer steps (see `auto_step`). A call with
        nothing recorded since the last batch does nothing."""
        return self._run.end_batch()

    def end_fit(self, error: BaseException | None = None, where: str | None = None) -> None:
        """The fit ended: normally, on a stop request, or with `error` (the loop calls this;
        `with` does). `where`: how the loop names where it stopped ("at epoch 2, batch 7")."""
        self._run.end_fit(error, where)

    def request_stop(self, fit_id: int | None = None) -> bool:
        """Ask the running fit to end at its next batch boundary; thread- and signal-safe.
        False when no fit runs, or `fit_id` is given and is not the running fit's."""
        return self._clock.request_stop(fit_id)

    @property
    def should_stop(self) -> bool:
        """True once a stop was requested for the running fit: end it at this batch boundary.
        Under torch.distributed: once every rank agreed (the same batch on all ranks)."""
        return self._run.should_stop

    # --- publishing and reading -----------------------------------------------------------
    def flush(self, force: bool = False) -> None:
        """Publish every finished batch to the store, the run file, the rules and listeners.
        Under torch.distributed publishing is a collective: only the training loop's own
        flushes run (`force`); a flush from elsewhere does nothing."""
        self._run.flush(force)

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
        self._run.reset()

    def save(self, path: str | os.PathLike) -> Path:
        """Save the recorded stats, fits and alerts to an `.npz` file."""
        return self.stats.save(path)
