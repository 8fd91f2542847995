"""The batch clock: fits, epochs and batches of one recorder, and its stop requests.

A batch ends when the loop calls `StatsHooks.end_batch`, or, while the recorder is
attached with `auto_step`, by a step of an optimizer that updates the recorder's own model
(several optimizers stepping in one iteration end one batch; optimizers of other models,
in this thread or another, never end ours). A stop request belongs to one fit: it is
honoured at the next batch boundary and forgotten when that fit ends.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..source import RunState, RunStatus

__all__ = ["Clock"]

FIT_IDS = itertools.count(1)  # unique across recorders: a stale stop never matches a later fit
_SILENT_STEPS = 3  # optimizer steps with nothing recorded before the "compiled?" warning


class Clock:
    """Where a recorder's run is: fit, epoch, batch, and whether to stop."""

    def __init__(self, batch: int = 0, fits: int = 0) -> None:
        self.batch = batch  # index of the batch being recorded (= batches so far)
        self.fit = fits  # fits begun so far
        self.fit_id = 0
        self.fit_start = batch
        self.state = RunState.FINISHED if fits else RunState.WAITING
        self.message = ""
        self.t0 = self.t1 = 0.0
        self.epoch: int | None = None
        self.epochs: int | None = None
        self.epoch_batch = 0
        self.epoch_batches: int | None = None
        self.phase = "train"
        self.last_done: tuple[int | None, int] | None = None  # (epoch, step) of the last batch
        self._epoch_starts: list[tuple[int, int]] = []  # (first batch, epoch)
        self._stop = threading.Event()
        self._params: frozenset[int] = frozenset()
        self._ours: weakref.WeakKeyDictionary[Any, tuple[int, bool]] = weakref.WeakKeyDictionary()
        self._hook: Any = None
        self._silent = 0
        self._warned_silent = False

    # --- optimizer steps ----------------------------------------------------------------
    def watch_optimizers(self, params: Iterable[torch.nn.Parameter], on_step: Callable) -> None:
        """Call `on_step()` after each step of an optimizer updating any of `params` (any
        optimizer at all when there are none)."""
        self._params = frozenset(id(p) for p in params)
        if self._hook is None:

            def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
                if self.owns(optimizer):
                    on_step()

            self._hook = register_optimizer_step_post_hook(hook)

    def unwatch_optimizers(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def owns(self, optimizer: Any) -> bool:
        """Whether `optimizer` updates the watched parameters (cached per optimizer and
        number of its parameters)."""
        if not self._params:
            return True
        size = sum(len(g["params"]) for g in optimizer.param_groups)
        seen = self._ours.get(optimizer)
        if seen is None or seen[0] != size:
            ours = any(id(p) in self._params for g in optimizer.param_groups for p in g["params"])
            seen = (size, ours)
            self._ours[optimizer] = seen
        return seen[1]

    def recorded_nothing(self) -> None:
        """An optimizer step of the model found no recorded call: after a few in a row
        during a fit, warn once (compiled code traced without our hooks runs without them)."""
        if self.state is not RunState.RUNNING:
            return
        self._silent += 1
        if self._silent >= _SILENT_STEPS and not self._warned_silent:
            self._warned_silent = True
            warnings.warn(
                f"actwidget: {self._silent} optimizer steps of the model recorded nothing. If "
                "the model (or a function calling it) was compiled with torch.compile before "
                "the recorder attached, that compiled code runs without the hooks: attach "
                "first, or call torch._dynamo.reset() after attaching. Also check on_train / "
                "on_valid and that the hooked modules run in the forward.",
                stacklevel=4,
            )

    # --- fits, epochs, batches ----------------------------------------------------------
    def begin_fit(self, epochs: int | None) -> int:
        self.fit += 1
        self.fit_id = next(FIT_IDS)
        self._stop.clear()
        self.message = ""
        self.fit_start = self.batch
        self.epochs, self.epoch, self.epoch_batch, self.epoch_batches = epochs, None, 0, None
        self.last_done = None
        self._silent = 0
        self.t0 = time.perf_counter()
        self.state = RunState.RUNNING
        return self.fit_id

    def begin_epoch(self, epoch: int, steps: int | None, phase: str) -> None:
        self.epoch, self.epoch_batches, self.epoch_batch, self.phase = epoch, steps, 0, phase
        if not self._epoch_starts or self._epoch_starts[-1][1] != epoch:
            self._epoch_starts.append((self.batch, epoch))
            del self._epoch_starts[:-4096]

    def batch_done(self) -> None:
        """The batch being recorded ended (it recorded something)."""
        self.batch += 1
        self.last_done = (self.epoch, self.epoch_batch)
        self.epoch_batch += 1
        self._silent = 0

    def end_fit(self, stopped: bool, error: BaseException | None, where: str | None) -> None:
        self.t1 = time.perf_counter()
        if stopped or isinstance(error, KeyboardInterrupt):
            self.state = RunState.STOPPED
            self.message = "interrupted" if error else where or self.where()
        elif error is not None:
            self.state = RunState.FAILED
            self.message = f"{type(error).__name__}: {error}"
        else:
            self.state = RunState.FINISHED
        self._stop.clear()

    def where(self) -> str:
        """Where the fit is, in words ("at epoch 2, batch 7")."""
        if self.last_done is None:
            return "before the first batch"
        epoch, step = self.last_done
        if epoch is None:
            return f"at batch {self.batch}"
        return f"at epoch {epoch + 1}, batch {step + 1}"

    def epoch_of(self, batch: int) -> int | None:
        i = bisect.bisect_right(self._epoch_starts, (batch, float("inf"))) - 1
        return self._epoch_starts[i][1] if i >= 0 else None

    def reset(self) -> None:
        self.batch = self.fit_start = self.fit = 0
        self._epoch_starts = []
        if self.state is not RunState.RUNNING:
            self.state = RunState.WAITING

    # --- stop requests ------------------------------------------------------------------
    def request_stop(self, fit_id: int | None = None) -> bool:
        """Ask the running fit to end at its next batch boundary; thread- and signal-safe.
        False when no fit runs, or `fit_id` is given and is not the running fit's."""
        if self.state is not RunState.RUNNING or (fit_id is not None and fit_id != self.fit_id):
            return False
        self._stop.set()
        return True

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def status(self) -> RunStatus:
        running = self.state is RunState.RUNNING
        end = time.perf_counter() if running else self.t1
        return RunStatus(
            state=self.state,
            fit=self.fit,
            fit_id=self.fit_id,
            batch=self.batch,
            fit_batches=self.batch - self.fit_start,
            epoch=self.epoch,
            epochs=self.epochs,
            epoch_batch=self.epoch_batch,
            epoch_batches=self.epoch_batches,
            phase=self.phase,
            elapsed=max(end - self.t0, 0.0) if self.fit else 0.0,
            message=self.message,
            stoppable=running,
        )
