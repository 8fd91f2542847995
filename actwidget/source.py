"""What a view binds to: the `Source` protocol, its status record and its events.

A `Source` is anything whose activation stats can be shown: a live recorder in this process
(`StatsHooks`, and through it every loop adapter), a run directory that another process is
writing (`actwidget.runfile.RunFollower`), or stats saved earlier (`StaticSource`). The
widget knows only this protocol; nothing here imports a UI.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .stats import Alert, RunStats

__all__ = [
    "Event",
    "Listener",
    "Listeners",
    "RunState",
    "RunStatus",
    "Source",
    "StaticSource",
    "as_source",
]

_log = logging.getLogger("actwidget")


class RunState(str, Enum):
    """Where a run is: before its first fit, in one, or after it (and how it ended)."""

    WAITING = "waiting"
    RUNNING = "running"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"


class Event(str, Enum):
    """What a source tells its listeners."""

    FIT_START = "fit_start"
    EPOCH = "epoch"
    BATCH = "batch"  # a batch ended (every batch: listeners throttle themselves)
    FLUSH = "flush"  # new columns reached the stats
    ALERT = "alert"
    FIT_END = "fit_end"


class RunStatus(NamedTuple):
    """A snapshot of a source's progress, for headers and logs."""

    state: RunState = RunState.WAITING
    fit: int = 0  # fits begun so far (the current one's number while running)
    fit_id: int = 0  # unique id of the current or last fit; stop requests name it
    batch: int = 0  # batches recorded so far over all fits: the charts' x
    fit_batches: int = 0  # batches of the current (or last) fit
    epoch: int | None = None  # 0-based, when the loop has epochs
    epochs: int | None = None
    epoch_batch: int = 0  # batches done in the current epoch
    epoch_batches: int | None = None
    phase: str = "train"
    elapsed: float = 0.0  # seconds since the fit began (until it ended)
    message: str = ""  # how it stopped or why it failed
    stoppable: bool = False  # a stop request can act now


Listener = Callable[[Event, "Source"], None]


@runtime_checkable
class Source(Protocol):
    """What the widget needs from the thing it shows.

    - `stats`: a consistent snapshot of the recorded stats (it never changes after return);
    - `status`: a `RunStatus`; `alerts`: every alert so far, in order;
    - `request_stop(fit_id)`: ask the running fit to end at its next batch boundary; False
      when nothing runs or `fit_id` names another fit (a stale click);
    - `subscribe(listener)`: `listener(event, source)` is called on every `Event`, possibly
      from a training thread; returns the function that unsubscribes. A listener's error
      is logged and never reaches the training loop.
    """

    @property
    def stats(self) -> RunStats: ...

    @property
    def status(self) -> RunStatus: ...

    @property
    def alerts(self) -> list[Alert]: ...

    def request_stop(self, fit_id: int | None = None) -> bool: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]: ...


class Listeners:
    """A thread-safe set of listeners; `emit` calls each and contains its failures."""

    def __init__(self) -> None:
        self._items: list[Listener] = []
        self._lock = threading.Lock()
        self._failed: set[int] = set()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._items = [*self._items, listener]
        return lambda: self.remove(listener)

    def remove(self, listener: Listener) -> None:
        with self._lock:
            self._items = [x for x in self._items if x is not listener]

    def emit(self, event: Event, source: Source) -> None:
        for listener in self._items:  # a copy-on-write list: safe to change while emitting
            try:
                listener(event, source)
            except Exception:
                if id(listener) not in self._failed:  # logged once per listener
                    self._failed.add(id(listener))
                    _log.exception("actwidget: a listener failed on %s; training goes on", event)


class StaticSource:
    """Stats recorded earlier (a `RunStats` or a saved file): finished, never changes."""

    def __init__(self, stats: RunStats) -> None:
        self._stats = stats.snapshot()
        fits = self._stats.fits
        self._status = RunStatus(state=RunState.FINISHED, fit=len(fits), batch=self._stats.batches)

    @property
    def stats(self) -> RunStats:
        return self._stats

    @property
    def status(self) -> RunStatus:
        return self._status

    @property
    def alerts(self) -> list[Alert]:
        return self._stats.alerts

    def request_stop(self, fit_id: int | None = None) -> bool:
        return False

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return lambda: None


_MEMBERS = ("stats", "status", "alerts", "request_stop", "subscribe")


def is_source(obj: Any) -> bool:
    """Whether `obj` implements `Source` (checked on its class: reading a live recorder's
    properties would flush it)."""
    return all(hasattr(type(obj), m) for m in _MEMBERS)


def as_source(obj: Any) -> Source:
    """The `Source` behind `obj`: a recorder, anything with a `.recorder` (the callbacks and
    loop adapters), a `RunStats`, a saved `.npz` path, or a run directory."""
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_dir():
            from .runfile import RunFollower  # only when a run directory is asked for

            return RunFollower(path)
        return StaticSource(RunStats.load(path))
    if isinstance(obj, RunStats):
        return StaticSource(obj)
    recorder = getattr(obj, "recorder", None)
    if recorder is not None and is_source(recorder):
        return recorder
    if is_source(obj):
        return obj
    raise TypeError(
        "expected a recorder (StatsHooks), a stats callback (StoreModuleStatsCB or an "
        "integrations StatsCallback), a RunStats, a saved stats file or a run directory, "
        f"not {type(obj).__name__}"
    )
