"""Forward hooks, the course's way: `Hook`, `Hooks` and the one-module `StoreModuleStats`.

Several modules in one recorder, in any loop: `StatsHooks` (from `actwidget.recorder`,
re-exported here). Every hook here is removed by `remove()` or on leaving a `with` block;
nothing relies on `__del__`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np
from torch import nn

from .recorder import StatsHooks, first_float_tensor, module_names, select_modules
from .stats import LayerStats, StatsConfig

__all__ = [
    "Hook",
    "Hooks",
    "StatsHooks",
    "StoreModuleStats",
    "first_float_tensor",
    "module_names",
    "select_modules",
]


class Hook:
    """A forward hook on module `m` calling `f(hook, module, inputs, output)`."""

    def __init__(self, m: nn.Module, f: Callable[..., Any]) -> None:
        self.module = m
        self.handle = m.register_forward_hook(partial(f, self))

    def remove(self) -> None:
        """Unregister the hook (idempotent)."""
        self.handle.remove()

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Hooks(list):
    """A list of hooks removed together, on `remove()` or when its `with` block ends."""

    def __init__(self, hooks: Iterable[Any] = ()) -> None:
        super().__init__(hooks)

    def remove(self) -> None:
        """Unregister every hook."""
        for h in self:
            h.remove()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class StoreModuleStats(StatsHooks):
    """The course's one-module recorder: mean, std and |a| histogram of every forward call.

    As the course's hooks do, it attaches when built (`remove()` or a `with` block removes
    it). Each recorded call is one column; `moments`, `hists` and `plot(ax0, ax1, label)`
    read them as the course notebooks do.
    """

    def __init__(
        self,
        m: nn.Module,
        on_train: bool = True,
        on_valid: bool = False,
        periodicity: int = 1,
        *,
        name: str | None = None,
        config: StatsConfig | None = None,
    ) -> None:
        super().__init__(
            [m], on_train=on_train, on_valid=on_valid, periodicity=periodicity, config=config,
            alerts=False, auto_step=False,
        )  # fmt: skip
        self._taps.after_call = self.end_batch  # one column per call
        self.attach()
        if name is not None:
            self._taps.taps[0].name = name
            self._sinks.names[:] = [name]
            self._stats.clear()
            self._stats.layer(name)
        self.name = self.names[0]

    @property
    def module(self) -> nn.Module:
        """The hooked module."""
        return self.modules[0]

    @property
    def calls(self) -> int:
        """Forward calls seen in a recorded mode (before `periodicity` skips some)."""
        return self._taps.taps[0].calls

    @property
    def layer_stats(self) -> LayerStats:
        """This layer's recorded series."""
        return self.stats[self.name]

    @property
    def moments(self) -> np.ndarray:
        """(records, 2) array of mean and std, as in the course notebooks."""
        return self.layer_stats.moments

    @property
    def hists(self) -> np.ndarray:
        """(records, bins) histogram counts of |a|, as in the course notebooks."""
        return self.layer_stats.hists

    def plot(self, ax0: Any, ax1: Any, label: str | None = None) -> None:
        """Plot this layer's mean on `ax0` and its std on `ax1`, as the course does."""
        s = self.layer_stats
        ax0.plot(s.batch, s.mean, label=label or self.name)
        ax1.plot(s.batch, s.std, label=label or self.name)
