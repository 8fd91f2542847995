"""Callbacks that hook modules for the length of a fit; the stats one feeds plots and the widget.

Hooks are registered at `before_fit` and removed at `cleanup_fit`, which the Learner runs on
every way out of `fit` (normal end, cancel, exception, KeyboardInterrupt).
Calling `fit` again appends: the batch count continues and earlier stats are kept
(`reset()` starts over).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .._util import noop
from ..hooks import Hooks, StoreModuleStats, flush_hooks, module_names, select_modules
from ..learner import Callback
from ..stats import STEP_LAST, RunStats, StatsConfig

__all__ = ["HooksCallback", "StoreModuleStatsCB"]

Listener = Callable[[str, Any], None]


class HooksCallback(Callback):
    """Registers `hook_cls(module, on_train=..., on_valid=..., **hook_kwargs)` on each module.

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

    def make_hook(self, m: nn.Module, name: str) -> Any:
        """Create the hook for module `m` (named `name` in the model)."""
        return self.hook_cls(m, on_train=self.on_train, on_valid=self.on_valid, **self.hook_kwargs)

    def before_fit(self, learn: Any) -> None:
        mods = self.mods or select_modules(learn.model, None, self.mod_filter)
        names = module_names(learn.model, mods)
        self.hooks = Hooks([])
        for m, name in zip(mods, names, strict=True):
            self.hooks.append(self.make_hook(m, name))

    def cleanup_fit(self, learn: Any) -> None:
        self.hooks.remove()

    def __iter__(self):
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.hooks)


class StoreModuleStatsCB(HooksCallback):
    """Records activation stats of the chosen layers every batch; plots them and feeds widgets.

    `hook_kwargs` go to `StoreModuleStats` (e.g. `periodicity`); `config` sets what is
    recorded (`StatsConfig`). `stats` holds the recorded `RunStats`.
    """

    order = 10
    flush_every = 64  # batches between bulk device->host copies when nothing reads the stats

    def __init__(
        self,
        mods: Any = None,
        mod_filter: Callable[[nn.Module], Any] = noop,
        on_train: bool = True,
        on_valid: bool = False,
        hook_kwargs: dict[str, Any] | None = None,
        config: StatsConfig | None = None,
    ) -> None:
        super().__init__(StoreModuleStats, mods, mod_filter, on_train, on_valid, hook_kwargs)
        self._stats = RunStats(config)
        self.batches = 0  # recorded batches so far, across fits: the x axis
        self._in_batch = False  # between before_batch and the batch's count
        self._calls = 0  # the hooks' forward calls at before_batch
        self.learn: Any = None
        self.listeners: list[Listener] = []

    def make_hook(self, m: nn.Module, name: str) -> StoreModuleStats:
        hook = StoreModuleStats(
            m, self.on_train, self.on_valid, name=name, stats=self._stats, **self.hook_kwargs
        )
        hook.flush_every = 10**9  # this callback flushes all layers together
        return hook

    # Learner events.
    def before_fit(self, learn: Any) -> None:
        self.learn = learn
        super().before_fit(learn)
        self._notify("before_fit", learn)

    def before_epoch(self, learn: Any) -> None:
        self._notify("before_epoch", learn)

    def before_batch(self, learn: Any) -> None:
        self._in_batch = True
        self._calls = sum(h.calls for h in self.hooks)
        for h in self.hooks:
            h.step = self.batches

    def after_batch(self, learn: Any) -> None:
        self._end_batch(learn)
        self._notify("after_batch", learn)

    def cleanup_batch(self, learn: Any) -> None:
        # A batch cancelled or failed after its forward pass was recorded under this step:
        # count it, so that the next batch (or fit) does not merge into its column.
        if self._in_batch and sum(h.calls for h in self.hooks) != self._calls:
            self._end_batch(learn)
        self._in_batch = False

    def _end_batch(self, learn: Any) -> None:
        self._in_batch = False
        if self.on_train if learn.training else self.on_valid:
            self.batches += 1
            if self.batches % self.flush_every == 0:
                self.flush()

    def after_epoch(self, learn: Any) -> None:
        self._notify("after_epoch", learn)

    def cleanup_fit(self, learn: Any) -> None:
        try:
            self.flush()
            super().cleanup_fit(learn)
        finally:
            self._notify("cleanup_fit", learn)

    def _notify(self, event: str, learn: Any) -> None:
        for listener in list(self.listeners):
            listener(event, learn)

    # Reading and keeping the stats.
    def flush(self) -> None:
        """Move pending stats of every hooked layer to the host, in one transfer."""
        flush_hooks(self.hooks)

    @property
    def stats(self) -> RunStats:
        """The recorded stats, up to the last batch."""
        self.flush()
        return self._stats

    def reset(self) -> None:
        """Forget everything recorded (the next fit starts at batch 0)."""
        for h in self.hooks:  # records not yet moved to the host belong to the old run
            h._pending.clear()
            h.step = 0
        self._stats.clear()
        self.batches = 0

    def save(self, path: str | Path) -> Path:
        """Save the recorded stats (with layer names and settings) to an `.npz` file."""
        return self.stats.save(path)

    def load(self, path: str | Path) -> RunStats:
        """Replace the recorded stats by those saved in `path`, e.g. to plot an earlier run."""
        self._stats = RunStats.load(path)
        ends = [s.columns[-1, STEP_LAST] + 1 for s in self._stats.values() if len(s)]
        self.batches = int(max(ends, default=0))
        return self._stats

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
