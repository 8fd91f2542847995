"""Lightning 2.x: `StatsCallback`, a `lightning.pytorch.Callback` that records activation stats.

```python
cb = StatsCallback(mods=["encoder.0", "encoder.2"])  # or modules; None: every leaf module
ActivationWidget(cb)                                  # live; Stop ends the fit
trainer = L.Trainer(max_epochs=3, callbacks=[cb]); trainer.fit(module, dl)
```

Training starts (`on_train_start`, after the sanity check): the hooks attach to the
LightningModule (dotted names resolve in it) and a fit begins. One column per training
batch (`on_train_batch_end`, after the optimizer step). A stop request (the widget's Stop,
the first Ctrl-C in the main thread, an alert in `stop_on`) sets `trainer.should_stop` at
that batch boundary; Lightning then ends the fit its own way: it still runs a validation
loop if there is one, and keeps training while `min_epochs` / `min_steps` are not met.
`on_train_end` and `on_exception` end the fit and remove the hooks. With `on_valid=True`
validation batches (not the sanity check) get columns too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import nn

from ..diagnose import AlertConfig
from ..stats import StatsConfig
from ._adapter import RecorderAdapter

__all__ = ["StatsCallback"]


def _count(n: Any) -> int | None:
    """A batch count as an int, or None when unknown or infinite."""
    if isinstance(n, (list, tuple)):
        n = sum(n) if n else None
    return int(n) if isinstance(n, (int, float)) and math.isfinite(n) and n >= 0 else None


class StatsCallback(RecorderAdapter, pl.Callback):
    """Records activation stats of the chosen modules of a LightningModule, every batch.

    `mods`: modules or dotted names (resolved in the LightningModule when training starts);
    None: every leaf module for which `mod_filter` is truthy. `config`, `alerts`, `stop_on`,
    `run_dir`, `on_train`, `on_valid` go to the recorder (`StatsHooks`, as `.recorder`).
    """

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
        self._phase = "train"

    # Training. (Begins here rather than in on_fit_start: after Lightning saved the signal
    # handlers it restores at teardown, and after the sanity check.)
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        self._begin_fit(pl_module, epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin_phase(trainer, "train")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._phase != "train":  # validation ran within the epoch
            self._begin_phase(trainer, "train")

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.fitting and self.recorder.end_batch():
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_fit()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._end_fit(exception)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_fit()  # already ended at on_train_end; here for a loop that skipped it

    # Validation within the fit (recorded only with on_valid=True).
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder.on_valid and self.fitting and not trainer.sanity_checking:
            self._begin_phase(trainer, "valid")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.recorder.on_valid and self.fitting and not trainer.sanity_checking:
            self.recorder.end_batch()

    def _begin_phase(self, trainer: pl.Trainer, phase: str) -> None:
        if not self.fitting:
            return
        n = trainer.num_training_batches if phase == "train" else trainer.num_val_batches
        self._phase = phase
        self.recorder.begin_epoch(trainer.current_epoch, steps=_count(n), phase=phase)
