"""`RunFollower`: a run directory that another process writes, followed live as a `Source`."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import _rundb as db
from .source import Event, Listener, Listeners, RunState, RunStatus
from .stats import Alert, FitMark, RunStats, StatsConfig, StatsFileError

__all__ = ["RunFollower"]

_log = logging.getLogger("actwidget")


class RunFollower:
    """A run directory as a `Source`: what another process writes there, followed live.

    It reads the run when created, then (while anyone subscribes) polls it every
    `interval` seconds in a background thread and tells listeners what changed. Without
    subscribers, reading `stats` / `status` / `alerts` polls when the data is older than
    `interval`. The directory may not hold a run yet: it waits for one."""

    def __init__(self, path: str | Path, *, interval: float = db.CHECK_INTERVAL) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no run directory {self.path}")
        self.interval = interval
        self._listeners = Listeners()
        self._lock = threading.RLock()  # the data below; held while polling
        self._conn: sqlite3.Connection | None = None
        self._header: db.Header | None = None
        self._state = db.State(-1, RunStatus(), 0.0)
        self._cols: dict[int, np.ndarray] = {}
        self._shape: dict[int, tuple[int, int]] = {}  # layer -> (n, width) as read
        self._fits: list[FitMark] = []
        self._alerts: list[Alert] = []
        self._last_alert = 0
        self._snapshot: RunStats | None = None
        self._last_poll = 0.0
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._failed = False
        self.poll()

    def __repr__(self) -> str:
        return f"RunFollower({str(self.path)!r}, {self.status.state.value})"

    # --- Source -----------------------------------------------------------------------
    @property
    def stats(self) -> RunStats:
        """The run's stats as of the last poll (a snapshot that never changes)."""
        self._refresh()
        with self._lock:
            if self._snapshot is None:
                config = self._header.config if self._header else StatsConfig()
                names = self._header.names if self._header else []
                layers = {n: self._cols.get(i, np.zeros((0, config.width)))
                          for i, n in enumerate(names)}  # fmt: skip
                snap = RunStats.from_parts(config, layers, self._fits, self._alerts, str(self.path))
                snap.version = self._state.seq
                self._snapshot = snap
            return self._snapshot.snapshot()

    @property
    def status(self) -> RunStatus:
        """The writer's status as of the last poll; a run whose writer died is failed."""
        self._refresh()
        with self._lock:
            return self._effective(self._state)

    @property
    def alerts(self) -> list[Alert]:
        """Every alert written so far, in order."""
        self._refresh()
        with self._lock:
            return list(self._alerts)

    def request_stop(self, fit_id: int | None = None) -> bool:
        """Write a stop request into the run (see `request_stop`)."""
        try:
            return db.write_stop_request(self.path, fit_id)
        except StatsFileError:
            return False

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event, self)` on every change (from the polling thread)."""
        self._listeners.add(listener)
        self._start_thread()

        def unsubscribe() -> None:
            self._listeners.remove(listener)
            if not len(self._listeners):
                self._stop_thread()

        return unsubscribe

    def close(self) -> None:
        """Stop polling and close the database."""
        self._stop_thread()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- polling ----------------------------------------------------------------------
    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._halt = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._halt,), name="actwidget-follow", daemon=True
            )
            self._thread.start()

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        self._halt.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self, halt: threading.Event) -> None:
        while not halt.wait(self.interval):
            self.poll()

    def _refresh(self) -> None:
        if self._thread is None and time.monotonic() - self._last_poll >= self.interval:
            self.poll()

    def poll(self) -> bool:
        """Read what changed since the last poll and tell the listeners; True if anything did."""
        try:
            with self._lock:
                before = self._effective(self._state), len(self._alerts)
                changed = self._read()
                self._last_poll = time.monotonic()
                after = self._effective(self._state), len(self._alerts)
            self._failed = False
        except (sqlite3.DatabaseError, StatsFileError, OSError) as e:
            if not self._failed:
                _log.warning("actwidget: cannot read run %s (%s); retrying", self.path, e)
            self._failed = True
            with self._lock:
                self._drop_connection()
            return False
        for event in self._events(before, after, changed):
            self._listeners.emit(event, self)
        return changed or before != after

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _read(self) -> bool:
        if self._conn is None:
            if not db.db_path(self.path).is_file():
                return False  # no run yet
            self._conn = db.connect(self.path)
        with db.transaction(self._conn) as c:
            state = db.read_state(c)
            uid = c.execute("SELECT value FROM meta WHERE key = 'uid'").fetchone()
            same_run = self._header is not None and uid is not None and uid[0] == self._header.uid
            if state.seq == self._state.seq and same_run:
                self._state = state
                return False
            header = db.read_header(c, str(self.path))
            if self._header is None or header.uid != self._header.uid:  # a new run
                self._cols, self._shape, self._fits, self._alerts = {}, {}, [], []
                self._last_alert = 0
                self._state = db.State(-1, RunStatus(), 0.0)
            self._header = header
            width = header.config.width
            rows = c.execute(
                "SELECT layer, n, width FROM layers WHERE seq > ?", (max(self._state.seq, -1),)
            ).fetchall()
            for layer, n, w in rows:
                known_n, known_w = self._shape.get(layer, (0, 0))
                start = max(known_n - 1, 0) if w == known_w else 0
                old = self._cols.get(layer, np.zeros((0, width)))[:start]
                self._cols[layer] = np.concatenate([old, db.read_columns(c, layer, start, width)])
                self._shape[layer] = (n, w)
            self._fits = db.read_fits(c)
            new_alerts, self._last_alert = db.read_alerts(c, self._last_alert)
            self._alerts = self._alerts + new_alerts
            self._state = state
            self._snapshot = None
        return True

    def _effective(self, state: db.State) -> RunStatus:
        st = state.status
        if st.state is not RunState.RUNNING:
            return st
        if self._header is not None and db.writer_alive(self._header) is False:
            return st._replace(
                state=RunState.FAILED,
                message=f"the writing process ({self._header.pid}) ended without closing the run",
                stoppable=False,
            )
        return st._replace(elapsed=st.elapsed + max(time.time() - state.updated, 0.0))

    @staticmethod
    def _events(
        before: tuple[RunStatus, int], after: tuple[RunStatus, int], changed: bool
    ) -> list[Event]:
        """What listeners hear about a poll that moved the run from `before` to `after`
        (each: the effective status and the number of alerts)."""
        (old, old_alerts), (new, new_alerts) = before, after
        events = []
        running = new.state is RunState.RUNNING
        started = new.fit > old.fit or (running and old.state is not RunState.RUNNING)
        if started:
            events.append(Event.FIT_START)
        if running and (new.epoch != old.epoch or started):
            events.append(Event.EPOCH)
        if changed:
            events.append(Event.FLUSH)
        if new_alerts > old_alerts:
            events.append(Event.ALERT)
        if (
            not running
            and new.state is not RunState.WAITING
            and (old.state is RunState.RUNNING or started)
        ):
            events.append(Event.FIT_END)
        return events
