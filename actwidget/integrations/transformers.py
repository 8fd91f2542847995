"""Hugging Face: `StatsCallback`, a `transformers.TrainerCallback` that records activation stats.

```python
cb = StatsCallback(mods=["bert.encoder.layer.0.output", "classifier"])
ActivationWidget(cb)                          # live; Stop ends training
trainer = Trainer(model, args, train_dataset=ds, callbacks=[cb]); trainer.train()
```

`on_train_begin`: the hooks attach to the model (dotted names resolve in it) and a fit
begins. One column per optimizer step (`on_step_end`; the micro-batches of gradient
accumulation share it). A stop request (the widget's Stop, the first Ctrl-C in the main
thread, an alert in `stop_on`) sets `control.should_training_stop` at that step; the
Trainer then ends its epoch and training its own way. `on_train_end` ends the fit and
removes the hooks.

The Trainer tells callbacks nothing when training raises. So that the hooks go on that path
too, a callback given to `Trainer(callbacks=[cb])` wraps that trainer's `train` (on the
instance) to end the fit however it exits. A callback added later with
`trainer.add_callback(cb)` cannot for its first `train()` (it warns, and guards the later
ones): run that training inside `with cb: trainer.train()`.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import transformers
from torch import nn

from ..diagnose import AlertConfig
from ..stats import StatsConfig
from ._adapter import RecorderAdapter, guard, guarded

__all__ = ["StatsCallback"]


def _calling_trainer(depth: int = 8) -> transformers.Trainer | None:
    """The `Trainer` whose method is on the call stack within `depth` frames, if any."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            break
        if "self" in frame.f_code.co_varnames[:1]:
            obj = frame.f_locals.get("self")
            if isinstance(obj, transformers.Trainer):
                return obj
        frame = frame.f_back
    return None


def _update_steps(dataloader: Any, accumulation: int) -> int | None:
    try:
        return math.ceil(len(dataloader) / max(accumulation, 1))
    except TypeError:  # an iterable dataset: no length
        return None


class StatsCallback(RecorderAdapter, transformers.TrainerCallback):
    """Records activation stats of the chosen modules of a Trainer's model, every step.

    `mods`: modules or dotted names (resolved in the model when training begins); None:
    every leaf module for which `mod_filter` is truthy. `config`, `alerts`, `stop_on`,
    `run_dir`, `on_train`, `on_valid` go to the recorder (`StatsHooks`, as `.recorder`);
    with `on_valid=True` evaluation batches during training get columns too.
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
        self._init_recorder(
            mods, mod_filter, config, alerts, stop_on, run_dir, on_train, on_valid
        )  # fmt: skip
        self._phase = "train"
        self._steps: int | None = None

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = _calling_trainer()
        if trainer is not None:
            guard(trainer, "train", self)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = _calling_trainer()
        if trainer is not None and not self._aw_scoped and not guarded(trainer.train, self):
            guard(trainer, "train", self)  # the next train() calls
            warnings.warn(
                "actwidget: this StatsCallback was added after the Trainer was built, so if "
                "this training raises, its hooks stay until the next one begins; pass it to "
                "Trainer(callbacks=[...]) or train inside `with cb:`",
                stacklevel=4,
            )
        dl = kwargs.get("train_dataloader")
        self._steps = _update_steps(dl, args.gradient_accumulation_steps)
        self._begin_fit(kwargs["model"], state.num_train_epochs or None)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._begin_phase(state, "train", self._steps)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._phase != "train":  # an evaluation ran within the epoch
            self._begin_phase(state, "train", self._steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.fitting and self.recorder.end_batch():
            control.should_training_stop = True

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not (self.fitting and self.recorder.on_valid):
            return
        if self._phase != "valid":
            dl = kwargs.get("eval_dataloader")
            self._begin_phase(state, "valid", _update_steps(dl, 1) if dl is not None else None)
        self.recorder.end_batch()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_fit()

    def _begin_phase(self, state: Any, phase: str, steps: int | None) -> None:
        if self.fitting:
            self._phase = phase
            self.recorder.begin_epoch(int(state.epoch or 0), steps=steps, phase=phase)
