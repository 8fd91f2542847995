"""What the loop adapters share: a recorder, its API, and fits that end on every way out.

A loop adapter maps its loop's events onto `StatsHooks`: `_begin_fit(model, epochs)` when
training starts (attach, begin, graceful Ctrl-C), `recorder.begin_epoch(...)` and
`recorder.end_batch()` as the loop goes, `_end_fit(error)` when it ends. `_end_fit` is
idempotent, so every exit path may call it: the loop's own end and exception events, a
`guard`ed entry point (for loops that tell callbacks nothing on an exception), `with cb:`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any

from torch import nn

from .._recording import Recording
from ..diagnose import AlertConfig
from ..recorder import StatsHooks
from ..stats import StatsConfig

__all__ = ["RecorderAdapter", "guard", "guarded", "unguard"]

_MISSING = object()


class RecorderAdapter(Recording):
    """Mixin of the loop adapters' `StatsCallback`: owns `self.recorder` (whose API it
    offers, see `Recording`) and begins and ends its fits.

    `with cb: <fit>` ends the fit and removes the hooks however the block exits, for loops
    that do not tell their callbacks about exceptions."""

    recorder: StatsHooks

    def _init_recorder(
        self,
        mods: Any,
        mod_filter: Callable[[nn.Module], Any] | None,
        config: StatsConfig | None,
        alerts: AlertConfig | bool,
        stop_on: Collection[str],
        run_dir: str | Path | None,
        on_train: bool,
        on_valid: bool,
    ) -> None:
        self.recorder = StatsHooks(
            mods, mod_filter=mod_filter, on_train=on_train, on_valid=on_valid, config=config,
            alerts=alerts, stop_on=stop_on, run_dir=run_dir, auto_step=False,
        )  # fmt: skip
        self._aw_scoped = False  # inside `with cb:`

    # --- a fit's begin and end (the adapters call these) ----------------------------------
    @property
    def fitting(self) -> bool:
        """Whether a fit begun by the loop has not ended yet."""
        return self.recorder.fit_open

    def _begin_fit(self, model: nn.Module, epochs: int | None) -> None:
        """Training starts: hook the modules (dotted names resolve in `model`), begin a fit,
        turn the first Ctrl-C into a stop request (main thread only)."""
        if self.fitting:  # the loop never told us how the last fit ended
            self._end_fit(RuntimeError("the training loop ended without telling the callback"))
        self.recorder.open_fit(model, epochs)

    def _end_fit(self, error: BaseException | None = None, where: str | None = None) -> None:
        """The fit ended (normally, on a stop or with `error`): record how, then remove the
        hooks and restore Ctrl-C, always; does nothing when no fit is open."""
        self.recorder.close_fit(error, where)

    def __enter__(self) -> RecorderAdapter:
        self._aw_scoped = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._aw_scoped = False
        try:
            self._end_fit(exc)
        finally:
            self.recorder.remove()


def guard(obj: Any, name: str, adapter: RecorderAdapter) -> None:
    """Wrap the method `obj.<name>` (e.g. `trainer.train`) on this instance only, so that
    the adapter's fit ends on every way out of it, exceptions included; idempotent."""
    current = getattr(obj, name)
    if guarded(current, adapter):
        return
    previous = vars(obj).get(name, _MISSING)

    @functools.wraps(current)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return current(*args, **kwargs)
        except BaseException as e:
            adapter._end_fit(e)
            raise
        finally:
            adapter._end_fit()  # a loop that returned without its end event

    wrapper._aw_adapter = adapter  # type: ignore[attr-defined]
    wrapper._aw_previous = previous  # type: ignore[attr-defined]
    setattr(obj, name, wrapper)


def guarded(method: Any, adapter: RecorderAdapter) -> bool:
    """Whether `method` is `guard`'s wrapper for `adapter`."""
    return getattr(method, "_aw_adapter", None) is adapter


def unguard(obj: Any, name: str, adapter: RecorderAdapter) -> None:
    """Undo `guard(obj, name, adapter)` if that wrapper is still the one in place."""
    current = vars(obj).get(name)
    if not guarded(current, adapter):
        return
    previous = current._aw_previous  # type: ignore[union-attr]
    if previous is _MISSING:
        delattr(obj, name)
    else:
        setattr(obj, name, previous)
