"""A callback-driven training loop in the style of the fast.ai course's miniai `Learner`."""

from __future__ import annotations

import contextlib
import functools
import itertools
import numbers
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn, optim

from actwidget._interrupt import graceful_sigint

__all__ = [
    "Callback",
    "CancelBatchException",
    "CancelEpochException",
    "CancelException",
    "CancelFitException",
    "Learner",
    "TrainLearner",
    "run_cbs",
    "with_cbs",
]

_F = TypeVar("_F", bound=Callable[..., Any])
_FIT_IDS = itertools.count(1)  # fit ids unique across learners: a stale stop never matches


class Callback:
    """Base class of callbacks; those with a lower `order` run first."""

    order = 0


class CancelException(Exception):
    """Base of the exceptions that end a fit, epoch or batch early without error."""


class CancelFitException(CancelException):
    """Raise to end the fit; cleanup runs and `fit` returns normally."""


class CancelEpochException(CancelException):
    """Raise to skip the rest of the current epoch (phase)."""


class CancelBatchException(CancelException):
    """Raise to skip the rest of the current batch."""


_CANCELS = {
    "fit": CancelFitException,
    "epoch": CancelEpochException,
    "batch": CancelBatchException,
}


def run_cbs(cbs: Iterable[Any], method_nm: str, learn: Any = None) -> None:
    """Call `cb.<method_nm>(learn)` on each callback by `order`, skipping those without it.

    A `cleanup_*` event reaches every callback even when one of them raises (each may have
    hooks to remove or files to close); the first error is raised after all ran."""
    cleanup = method_nm.startswith("cleanup_")
    error: BaseException | None = None
    for cb in sorted(cbs, key=attrgetter("order")):
        method = getattr(cb, method_nm, None)
        if method is None:
            continue
        if not cleanup:
            method(learn)
            continue
        try:
            method(learn)
        except BaseException as e:
            error = error or e
    if error is not None:
        raise error


def with_cbs(nm: str) -> Callable[[_F], _F]:
    """Wrap a method in `before_/after_/cleanup_<nm>` events; swallow `Cancel<Nm>Exception`.

    `cleanup_<nm>` runs on every way out. An error that is not a cancel is stored in
    `learn.error` (if still None) before the cleanups run, then propagates.
    """
    cancel = _CANCELS.get(nm, ())

    def decorator(f: _F) -> _F:
        @functools.wraps(f)
        def wrapper(learn: Any, *args: Any, **kwargs: Any) -> None:
            try:
                learn.callback(f"before_{nm}")
                f(learn, *args, **kwargs)
                learn.callback(f"after_{nm}")
            except cancel:
                pass
            except BaseException as e:
                ends_fit = nm == "fit" or not isinstance(e, CancelException)
                if ends_fit and getattr(learn, "error", None) is None:
                    learn.error = e
                raise
            finally:
                learn.callback(f"cleanup_{nm}")

        return wrapper  # type: ignore[return-value]

    return decorator


class Learner:
    """Trains `model` on `dls.train` / `dls.valid`, calling callbacks at every step.

    `predict, get_loss, backward, step, zero_grad` are delegated to callbacks unless a
    subclass (like `TrainLearner`) defines them.
    """

    graceful_interrupt = True  # Ctrl-C / kernel interrupt stops at the next batch boundary
    _DELEGATED = frozenset({"predict", "get_loss", "backward", "step", "zero_grad"})

    def __init__(
        self,
        model: nn.Module,
        dls: Any,
        loss_func: Callable[..., torch.Tensor] = F.mse_loss,
        lr: float = 0.1,
        cbs: Sequence[Any] | None = None,
        opt_func: Callable[..., optim.Optimizer] = optim.SGD,
    ) -> None:
        self.model, self.dls, self.loss_func, self.lr = model, dls, loss_func, lr
        self.cbs = list(cbs or [])
        self.opt_func = opt_func
        self.opt: optim.Optimizer | None = None
        self.fit_id = 0
        self.stopped_at: tuple[int, int] | None = None
        self.error: BaseException | None = None
        self.n_epochs, self.epochs = 0, range(0)
        self.epoch = self.iter = 0
        self.dl: Any = None
        self.n_iter: int | None = None
        self.training = False
        self.batch: Any = None
        self.preds: Any = None
        self.loss: torch.Tensor | None = None
        self._lock = threading.RLock()  # re-entrant: a signal handler may interrupt a holder
        self._stop = threading.Event()
        self._running: int | None = None
        self._last_done = (0, -1)

    def __getattr__(self, name: str) -> Any:
        if name in Learner._DELEGATED:
            return functools.partial(self.callback, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def callback(self, method_nm: str) -> None:
        """Run the event `method_nm` on this learner's callbacks."""
        run_cbs(self.cbs, method_nm, self)

    def request_stop(self, fit_id: int | None = None) -> bool:
        """Ask the running fit to stop at the next batch boundary; thread- and signal-safe.

        Refused (False) when no fit runs or `fit_id` is given and is not the running fit's.
        """
        with self._lock:
            if self._running is None or (fit_id is not None and fit_id != self._running):
                return False
            self._stop.set()
            return True

    def fit(
        self,
        n_epochs: int = 1,
        train: bool = True,
        valid: bool = True,
        cbs: Sequence[Any] | None = None,
        lr: float | None = None,
    ) -> None:
        """Train for `n_epochs` (an int >= 0; 0 runs only the fit's own events); `cbs` and
        `lr` apply to this fit only."""
        if isinstance(n_epochs, bool) or not isinstance(n_epochs, numbers.Integral):
            raise TypeError(f"n_epochs must be an int >= 0, got {n_epochs!r}")
        if n_epochs < 0:
            raise ValueError(f"n_epochs must be an int >= 0, got {n_epochs}")
        n_epochs = int(n_epochs)
        extra = list(cbs or [])
        self.cbs.extend(extra)
        with self._lock:
            self.fit_id = next(_FIT_IDS)
            self._stop.clear()
            self._running = self.fit_id
        self.stopped_at, self.error, self._last_done = None, None, (0, -1)
        try:
            self.n_epochs, self.epochs = n_epochs, range(n_epochs)
            self.opt = self.opt_func(self.model.parameters(), self.lr if lr is None else lr)
            sigint = graceful_sigint if self.graceful_interrupt else contextlib.nullcontext
            with sigint(self.request_stop):
                self._fit(train, valid)
        except BaseException as e:
            if self.error is None and not isinstance(e, CancelException):
                self.error = e
            raise
        finally:
            with self._lock:
                self._running = None
            for cb in extra:
                self.cbs.remove(cb)

    @with_cbs("fit")
    def _fit(self, train: bool, valid: bool) -> None:
        for epoch in self.epochs:
            self.epoch = epoch
            if train:
                self.one_epoch(True)
            if valid:
                with torch.no_grad():
                    self.one_epoch(False)

    def one_epoch(self, training: bool) -> None:
        """Run one pass (phase) over the train or valid DataLoader."""
        self.model.train(training)
        self.training = training
        self.dl = self.dls.train if training else self.dls.valid
        try:
            self.n_iter = len(self.dl)
        except TypeError:
            self.n_iter = None
        self._one_epoch()

    @with_cbs("epoch")
    def _one_epoch(self) -> None:
        for i, batch in enumerate(self.dl):
            self.iter, self.batch = i, batch
            self._check_stop()
            self._one_batch()
            self._last_done = (self.epoch, self.iter)
            self._check_stop()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            self.stopped_at = self._last_done
            raise CancelFitException

    @with_cbs("batch")
    def _one_batch(self) -> None:
        self.predict()
        self.callback("after_predict")
        self.get_loss()
        self.callback("after_loss")
        if self.training:
            self.backward()
            self.callback("after_backward")
            self.step()
            self.callback("after_step")
            self.zero_grad()


def _describe(batch: Any) -> str:
    """A short description of a batch, for error messages."""
    if isinstance(batch, Mapping):
        return f"a {type(batch).__name__} with keys {list(batch)[:8]}"
    if isinstance(batch, torch.Tensor):
        return f"a single tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return f"a {type(batch).__name__} of {len(batch)} item(s)"
    return f"a {type(batch).__name__}"


def _inputs_targets(batch: Any) -> tuple[Any, Any]:
    """The (inputs, targets) of a `(xb, yb, ...)` batch; a clear error for other shapes."""
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"TrainLearner expects each batch to be a tuple or list (inputs, targets, ...), as a "
        f"DataLoader over a TensorDataset yields; got {_describe(batch)}. For other batches "
        f"(e.g. dicts), subclass TrainLearner and override predict and get_loss, or convert "
        f"them with the DataLoader's collate_fn."
    )


class TrainLearner(Learner):
    """A `Learner` for the usual `(xb, yb)` supervised step: each batch is a tuple or list
    whose first two items are the inputs and the targets."""

    def predict(self) -> None:
        self.preds = self.model(_inputs_targets(self.batch)[0])

    def get_loss(self) -> None:
        self.loss = self.loss_func(self.preds, _inputs_targets(self.batch)[1])

    def backward(self) -> None:
        self.loss.backward()

    def step(self) -> None:
        self.opt.step()

    def zero_grad(self) -> None:
        self.opt.zero_grad()
