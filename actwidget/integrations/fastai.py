"""fastai: `StatsCallback`, a fastai `Callback` that records activation stats.

```python
cb = StatsCallback(mods=["0.4", "1.8"])   # or modules; None: every leaf module
ActivationWidget(cb)                      # live; Stop ends the fit
learn = vision_learner(dls, resnet18, cbs=[cb]); learn.fit_one_cycle(3)
```

`before_fit`: the hooks attach to `learn.model` (dotted names resolve in it) and a fit
begins. One column per training batch (`after_batch`, after the optimizer step). A stop
request (the widget's Stop, the first Ctrl-C in the main thread, an alert in `stop_on`)
raises `CancelFitException` at that batch boundary, which fastai turns into
`after_cancel_fit` and `after_fit`; `after_fit` ends the fit and removes the hooks.

fastai calls no callback when a fit raises. So that the hooks go on that path too, the
callback wraps `learn.fit` (on that learner only) while it is attached to it, and a
callback given to one `fit(cbs=[cb])` ends its fit when fastai detaches it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback, CancelFitException
from torch import nn

from ..diagnose import AlertConfig
from ..stats import StatsConfig
from ._adapter import RecorderAdapter, guard, unguard

__all__ = ["StatsCallback"]


def _len(dl: Any) -> int | None:
    try:
        return len(dl)
    except TypeError:
        return None


class StatsCallback(RecorderAdapter, Callback):
    """Records activation stats of the chosen modules of a fastai Learner, every batch.

    `mods`: modules or dotted names (resolved in `learn.model` at fit start); None: every
    leaf module for which `mod_filter` is truthy. `config`, `alerts`, `stop_on`, `run_dir`,
    `on_train`, `on_valid` go to the recorder (`StatsHooks`, as `.recorder`); with
    `on_valid=True` validation batches get columns too.
    """

    order = 90  # after Recorder and ProgressCallback: a stop lets them see the last batch

    def __init__(
        self,
        mods: Any = None,
        *,
        mod_filter: Callable[[nn.Module], Any] | None = None,
        config: StatsConfig | None = None,
        alerts: AlertConfig | bool = True,
        stop_on: Collection[str] = (),
        run_dir: str | Path | None = None,
        on_train: bool = True,
        on_valid: bool = False,
    ) -> None:
        super().__init__()
        self._init_recorder(
            mods, mod_filter, config, alerts, stop_on, run_dir, on_train, on_valid
        )  # fmt: skip

    # fastai sets `cb.learn` when it adds the callback and None when it removes it.
    @property
    def learn(self) -> Any:
        """The Learner this callback is attached to, or None."""
        return self.__dict__.get("_aw_learn")

    @learn.setter
    def learn(self, learner: Any) -> None:
        old = self.__dict__.get("_aw_learn")
        if old is not None and old is not learner:
            unguard(old, "fit", self)
            if self.fitting:  # detached mid-fit: fit(cbs=[cb]) is unwinding
                self._end_fit(sys.exc_info()[1])
        self.__dict__["_aw_learn"] = learner
        if learner is not None:
            guard(learner, "fit", self)

    # Learner events.
    def before_fit(self) -> None:
        self._begin_fit(self.learn.model, self.learn.n_epoch)

    def before_train(self) -> None:
        if self.fitting:
            self.recorder.begin_epoch(self.learn.epoch, steps=_len(self.learn.dl), phase="train")

    def before_validate(self) -> None:
        if self.fitting and self.recorder.on_valid:
            self.recorder.begin_epoch(self.learn.epoch, steps=_len(self.learn.dl), phase="valid")

    def after_batch(self) -> None:
        if not self.fitting or not (self.learn.training or self.recorder.on_valid):
            return
        if self.recorder.end_batch():
            raise CancelFitException

    def after_fit(self) -> None:
        self._end_fit()
