"""Callbacks that hook modules for the length of a fit.

`StoreModuleStatsCB` is a thin mapping of the Learner's events onto a `StatsHooks`
recorder: attach and begin at `before_fit`, one column per training batch, a stop request
honoured at the next batch boundary, end and remove at `cleanup_fit` (which the Learner runs
on every way out of `fit`). Calling `fit` again appends: the batch count continues and
earlier stats are kept (`reset()` starts over). `HooksCallback` is the course's generic one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .._recording import Recording
from .._util import noop
from ..hooks import Hooks, module_names, select_modules
from ..learner import Callback, CancelException
from ..recorder import StatsHooks
from ..stats import LayerStats, RunStats, StatsConfig

__all__ = ["HooksCallback", "LayerHook", "StoreModuleStatsCB"]


class HooksCallback(Callback):
    """Registers `hook_cls(module, on_train=..., on_valid=..., **hook_kwargs)` on each module
    for the length of a fit (the course's generic hooks callback).

    Modules: `mods` (a Sequential/ModuleList means its children), else every module of the
    model for which `mod_filter` is truthy. A selection that is empty raises `ValueError`.
    """

    def __init__(
        self,
        hook_cls: Callable[..., Any],
        mods: Any = None,
        mod_filter: Callable[[nn.Module], Any] = noop,
        on_train: bool = True,
        on_valid: bool = False,
        hook_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.hook_cls, self.mod_filter = hook_cls, mod_filter
        self.mods = None if mods is None else select_modules(None, mods)
        self.on_train, self.on_valid = on_train, on_valid
        self.hook_kwargs = dict(hook_kwargs or {})
        self.hooks = Hooks([])

    def before_fit(self, learn: Any) -> None:
        mods = self.mods or select_modules(learn.model, None, self.mod_filter)
        self.names = module_names(learn.model, mods)
        self.hooks = Hooks([])
        for m in mods:
            self.hooks.append(
                self.hook_cls(m, on_train=self.on_train, on_valid=self.on_valid, **self.hook_kwargs)
            )

    def cleanup_fit(self, learn: Any) -> None:
        self.hooks.remove()

    def __iter__(self):
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.hooks)


class LayerHook:
    """One recorded layer of a `StoreModuleStatsCB`, shaped like the course's per-module
    hook (`cb.hooks[i]`): `moments`, `hists` and `plot(ax0, ax1, label)` read the
    recorder's stats of that layer."""

    def __init__(self, recorder: StatsHooks, index: int) -> None:
        self.recorder, self.index = recorder, index

    def __repr__(self) -> str:
        return f"LayerHook({self.name!r})"

    @property
    def module(self) -> nn.Module:
        return self.recorder.modules[self.index]

    @property
    def name(self) -> str:
        return self.recorder.names[self.index]

    @property
    def stats(self) -> LayerStats:
        """This layer's recorded series."""
        return self.recorder.stats[self.name]

    @property
    def moments(self) -> np.ndarray:
        """(batches, 2): mean and std per column, as in the course."""
        return self.stats.moments

    @property
    def hists(self) -> np.ndarray:
        """(batches, bins): |a| histogram counts per column, as in the course."""
        return self.stats.hists

    def plot(self, ax0: Any, ax1: Any, label: str | None = None) -> None:
        """Mean on `ax0`, std on `ax1`, as the course's hooks plot them."""
        s = self.stats
        ax0.plot(s.batch, s.mean, label=label or self.name)
        ax1.plot(s.batch, s.std, label=label or self.name)

    def remove(self) -> None:
        """Remove the recorder's hooks (all layers: they are one recorder)."""
        self.recorder.remove()


class StoreModuleStatsCB(Recording, Callback):
    """Records activation stats of the chosen layers every batch; plots them, feeds widgets.

    `mods`: modules or dotted names (resolved in the learner's model at fit start); None:
    every leaf module for which `mod_filter` is truthy. `config`, `alerts`, `stop_on`,
    `run_dir` go to the recorder (`StatsHooks`); `hook_kwargs` may set `periodicity`.
    """

    order = 10

    def __init__(
        self,
        mods: Any = None,
        mod_filter: Callable[[nn.Module], Any] | None = None,
        on_train: bool = True,
        on_valid: bool = False,
        hook_kwargs: dict[str, Any] | None = None,
        config: StatsConfig | None = None,
        *,
        alerts: Any = True,
        stop_on: Collection[str] = (),
        run_dir: str | Path | None = None,
    ) -> None:
        kwargs = dict(hook_kwargs or {})
        periodicity = kwargs.pop("periodicity", 1)
        if kwargs:
            raise TypeError(f"unknown hook_kwargs {sorted(kwargs)} (known: periodicity)")
        self.recorder = StatsHooks(
            mods, mod_filter=mod_filter, on_train=on_train, on_valid=on_valid,
            periodicity=periodicity, config=config, alerts=alerts, stop_on=stop_on,
            run_dir=run_dir, auto_step=False,
        )  # fmt: skip
        self.learn: Any = None

    # The course's view: one hook per layer.
    @property
    def hooks(self) -> Hooks:
        """One `LayerHook` per recorded layer (the course's `cb.hooks`), in order."""
        return Hooks([LayerHook(self.recorder, i) for i in range(len(self.recorder.names))])

    def __iter__(self):
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.recorder.names)

    # Learner events.
    def before_fit(self, learn: Any) -> None:
        self.learn = learn
        self.recorder.open_fit(learn.model, epochs=learn.n_epochs)

    def before_epoch(self, learn: Any) -> None:
        phase = "train" if learn.training else "valid"
        self.recorder.begin_epoch(learn.epoch, steps=learn.n_iter, phase=phase)

    def cleanup_batch(self, learn: Any) -> None:
        # Here rather than after_batch, so that a cancelled batch also ends its column.
        if self.recorder.end_batch():
            learn.request_stop()

    def cleanup_fit(self, learn: Any) -> None:
        rec = self.recorder
        if learn.stopped_at is not None:
            rec.request_stop()
        error = learn.error if not isinstance(learn.error, CancelException) else None
        where = None
        if learn.stopped_at is not None:
            e, b = learn.stopped_at
            where = f"at epoch {e + 1}, batch {b + 1}" if b >= 0 else "before the first batch"
        rec.close_fit(error, where=where)

    def load(self, path: str | Path) -> RunStats:
        """Replace the recorded stats by those saved in `path`, e.g. to plot an earlier run."""
        old = self.recorder
        self.recorder = StatsHooks(
            old._mods, mod_filter=old._filter, on_train=old.on_train, on_valid=old.on_valid,
            periodicity=old.periodicity, stats=RunStats.load(path),
            alerts=old._sinks.alert_config or False, stop_on=old.stop_on, auto_step=False,
        )  # fmt: skip
        return self.recorder.stats

    # Static plots (matplotlib), as in the course notebooks.
    def mean_std_plot(self, **kwargs: Any) -> None:
        """Plot each layer's activation mean and std against the batch count."""
        from ..plots import mean_std_plot

        mean_std_plot(self.stats, **kwargs)

    def hist_plot(self, **kwargs: Any) -> None:
        """Plot each layer's |activation| histogram over time (the "colorful dimension")."""
        from ..plots import hist_plot

        hist_plot(self.stats, **kwargs)

    def near_zero_plot(self, **kwargs: Any) -> None:
        """Plot each layer's fraction of near-zero activations against the batch count."""
        from ..plots import near_zero_plot

        near_zero_plot(self.stats, **kwargs)
