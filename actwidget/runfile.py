"""Run directories: a run written to disk as it trains, read or followed from elsewhere.

`StatsHooks(..., run_dir=PATH)` (and `run_dir=` on every loop adapter) writes the run into
`PATH/run.sqlite`: config, layer names, the stats columns as they flush, fit boundaries,
state and alerts. Under torch.distributed only the root rank writes (the global view).

```python
RunStats.load("runs/a")            # finished or still being written
ActivationWidget("runs/a")         # follows it live; Stop writes a stop request
actwidget.request_stop("runs/a")   # same from code; `python -m actwidget stop runs/a`
```

Each flush is one transaction (readers never see a torn column, and every layer at the
same batch), so a crash at any moment leaves the run readable up to its last flush. The
file holds exactly what the recorder's in-memory store holds: at most `config.capacity`
columns per layer, older ones merged pairwise (each layer's merge is its own transaction,
an exact coarser view of the same batches, so no transaction rewrites the whole file). Its
size is bounded however long the run: about 0.5 MB per layer at the default settings, plus
a write-ahead log truncated to 8 MiB (58 MB for 100 layers, for 10^6 batches as for 2,048).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import _rundb as db
from ._follow import RunFollower
from .source import RunState, RunStatus
from .stats import Alert, FitMark, LayerStats, RunStats, StatsConfig, StatsFileError

__all__ = ["RunFollower", "RunWriter", "check_run_dir", "read_run", "request_stop"]

CHECK_INTERVAL = db.CHECK_INTERVAL
_OPEN: set[Path] = set()  # run directories a writer of this process holds
_OPEN_LOCK = threading.Lock()


def check_run_dir(path: str | os.PathLike) -> Path:
    """`path` as a run directory this process could write, or a one-line error saying why
    not (a file, under a file, not writable, a file that is not a run, another writer).
    Creates nothing."""
    p = Path(path).expanduser()
    for parent in [p, *p.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == p else f"is under a file ({parent})"
                raise ValueError(f"run_dir {str(p)!r} {what}: give a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f"run_dir {str(p)!r}: {parent} is not writable")
            break
    file = db.db_path(p)
    if file.exists():
        try:
            conn = db.connect(p)
            try:
                db.read_state(conn)
            finally:
                conn.close()
        except (sqlite3.DatabaseError, StatsFileError) as e:
            if "no such table" not in str(e):
                raise ValueError(
                    f"run_dir {str(p)!r}: {db.DB_NAME} is not an actwidget run ({e}); delete "
                    "it or give another run_dir"
                ) from None
    with _OPEN_LOCK:
        if p.resolve() in _OPEN:
            raise RuntimeError(
                f"run_dir {str(p)!r} is being written by another recorder in this process; "
                "give this one another run_dir"
            )
    return p


class RunWriter:
    """Writes one run into a directory (the recorder's run-file sink).

    A new writer starts the run afresh (a previous run in the directory is replaced, unless
    another live process on this host is still writing it). `stats`: columns recorded
    before the writer existed, written first. Thread-safe."""

    def __init__(
        self,
        path: str | Path,
        config: StatsConfig,
        names: Sequence[str],
        *,
        stats: RunStats | None = None,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.path = check_run_dir(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config, self.names = config, list(names)
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._fit_id: int | None = None  # the running fit's id (None: none runs)
        self._stop_floor = 0  # stop requests up to this id predate the running fit
        self._stop_seen = False
        self._next_check = 0.0
        self._conn = db.connect(self.path, create=True)
        with _OPEN_LOCK:
            _OPEN.add(self.path.resolve())
        try:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")  # a process crash loses nothing
            self._conn.execute(f"PRAGMA journal_size_limit = {8 << 20}")
            self._conn.executescript(db.SCHEMA)
            self._start(stats)
        except BaseException:
            self.close()
            raise

    def _start(self, stats: RunStats | None) -> None:
        self._layers = [LayerStats(n, self.config) for n in self.names]
        with self._lock, db.transaction(self._conn, write=True) as c:
            self._refuse_live_writer(c)
            try:  # the sequence never repeats in this file: readers see the new run
                seq = db.read_state(c).seq + 1
            except StatsFileError:
                seq = 1
            for table in ("meta", "layers", "cols", "fits", "alerts", "state"):
                c.execute(f"DELETE FROM {table}")
            meta = {
                "format": db.FORMAT,
                "uid": uuid.uuid4().hex,
                "config": json.dumps(asdict(self.config)),
                "pid": str(os.getpid()),
                "host": socket.gethostname(),
            }
            c.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            c.executemany("INSERT INTO layers VALUES (?, ?, 0, 1, 0)", list(enumerate(self.names)))
            c.execute(
                "INSERT INTO state VALUES (0, ?, ?, ?)",
                (seq, db.status_json(RunStatus()), time.time()),
            )
            if stats is not None:
                for i, name in enumerate(self.names):
                    if name in stats and len(stats[name]):
                        self._layers[i] = LayerStats(name, self.config, stats[name].columns)
                        self._put_layer(c, i, self._layers[i], 0, seq)
                c.executemany("INSERT INTO fits VALUES (?, ?)", [tuple(f) for f in stats.fits])
                c.executemany(
                    "INSERT INTO alerts(alert) VALUES (?)",
                    [(db.alert_json(a),) for a in stats.alerts],
                )

    def _refuse_live_writer(self, c: sqlite3.Connection) -> None:
        try:
            header = db.read_header(c, str(self.path))
            state = db.read_state(c)
        except StatsFileError:
            return  # new or unreadable: start afresh
        running = state.status.state is RunState.RUNNING
        if running and header.pid != os.getpid() and db.writer_alive(header) is not False:
            raise RuntimeError(
                f"{self.path} is being written by process {header.pid} on {header.host}; "
                "give this run another run_dir"
            )

    def _bump(self, c: sqlite3.Connection, status: RunStatus | None) -> int:
        """Bump the sequence number (and store `status`); returns the new number."""
        if status is None:
            c.execute("UPDATE state SET seq = seq + 1, updated = ? WHERE id = 0", (time.time(),))
        else:
            c.execute(
                "UPDATE state SET seq = seq + 1, status = ?, updated = ? WHERE id = 0",
                (db.status_json(status), time.time()),
            )
        return int(c.execute("SELECT seq FROM state WHERE id = 0").fetchone()[0])

    def _put_layer(
        self, c: sqlite3.Connection, i: int, layer: LayerStats, start: int, seq: int
    ) -> None:
        """Make layer i's rows those of `layer`, rewriting them from `start` on."""
        c.execute(
            "DELETE FROM cols WHERE id >= ? AND id < ?",
            (db.col_id(i, len(layer)), db.col_id(i + 1, 0)),
        )
        data = np.ascontiguousarray(layer.columns[start:])
        c.executemany(
            "INSERT OR REPLACE INTO cols VALUES (?, ?)",
            [(db.col_id(i, start + k), row.tobytes()) for k, row in enumerate(data)],
        )
        c.execute(
            "UPDATE layers SET n = ?, width = ?, seq = ? WHERE layer = ?",
            (len(layer), layer.batches_per_column, seq, i),
        )

    def _merge_first(self, i: int, after: LayerStats) -> int:
        """Layer i merges older columns in this flush: first rewrite what it held at the new
        resolution (its own transaction: an exact, coarser view of the same batches), so
        that no transaction rewrites every layer at once. Returns the first row that the
        flush's own transaction must still write."""
        merged = self._layers[i]
        while merged.batches_per_column < after.batches_per_column and len(merged) > 1:
            merged = merged.coarsened(len(merged) - 1)  # one pairwise merge
        with db.transaction(self._conn, write=True) as c:
            self._put_layer(c, i, merged, 0, self._bump(c, None))
        self._layers[i] = merged
        m = min(len(merged), len(after))
        a, b = merged.columns[:m], after.columns[:m]
        differ = np.flatnonzero(~((a == b) | (np.isnan(a) & np.isnan(b))).all(axis=1))
        return int(differ[0]) if len(differ) else m

    # --- what the recorder calls -----------------------------------------------------
    def begin_fit(self, mark: FitMark, status: RunStatus) -> None:
        """A fit begins: its mark and the running status."""
        with self._lock, db.transaction(self._conn, write=True) as c:
            c.execute("INSERT OR REPLACE INTO fits VALUES (?, ?)", tuple(mark))
            self._bump(c, status)
            self._stop_floor = c.execute("SELECT coalesce(max(id), 0) FROM stops").fetchone()[0]
        self._fit_id, self._stop_seen, self._next_check = status.fit_id, False, 0.0

    def write(self, new: Mapping[str, np.ndarray], status: RunStatus | None = None) -> None:
        """New one-batch columns per layer (one flush), and the status: one transaction
        (preceded, when older columns merge, by one per merging layer)."""
        index = {n: i for i, n in enumerate(self.names)}
        with self._lock:
            staged = []
            for name, cols in new.items():
                if not len(cols):
                    continue
                i = index[name]
                before = self._layers[i]
                after = before.copy()
                after.append(np.asarray(cols, float))
                if after.batches_per_column != before.batches_per_column:
                    start = self._merge_first(i, after)
                else:
                    start = max(len(before) - 1, 0)  # the last column may have grown
                staged.append((i, after, start))
            with db.transaction(self._conn, write=True) as c:
                seq = self._bump(c, status)
                for i, after, start in staged:
                    self._put_layer(c, i, after, start, seq)
            for i, after, _ in staged:
                self._layers[i] = after

    def alert(self, a: Alert) -> None:
        """Record an alert."""
        with self._lock, db.transaction(self._conn, write=True) as c:
            c.execute("INSERT INTO alerts(alert) VALUES (?)", (db.alert_json(a),))
            self._bump(c, None)

    def end_fit(self, status: RunStatus) -> None:
        """The fit ended: finished, stopped or failed (with its message) in `status`."""
        with self._lock, db.transaction(self._conn, write=True) as c:
            self._bump(c, status)
        self._fit_id = None

    def stop_requested(self) -> bool:
        """Whether a stop request for the running fit was written into the run. Cheap: reads
        the database at most every `check_interval` seconds."""
        if self._stop_seen or self._fit_id is None:
            return self._stop_seen
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_interval
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM stops WHERE id > ? AND (fit_id IS NULL OR fit_id = ?) LIMIT 1",
                (self._stop_floor, self._fit_id),
            ).fetchone()
        self._stop_seen = row is not None
        return self._stop_seen

    def reset(self) -> None:
        """Forget everything written (the recorder was reset): a new run in the directory."""
        self._start(None)

    def close(self) -> None:
        """Close the database (what was written stays); the directory is free again."""
        with self._lock:
            self._conn.close()
        with _OPEN_LOCK:
            _OPEN.discard(self.path.resolve())


def read_run(path: str | Path) -> RunStats:
    """The stats of a run directory, finished or still being written (a consistent snapshot
    as of its last flush). Raises `StatsFileError` for anything unreadable."""
    source = str(path)
    try:
        conn = db.connect(path)
        try:
            with db.transaction(conn) as c:
                header = db.read_header(c, source)
                width = header.config.width
                layers = {n: db.read_columns(c, i, 0, width) for i, n in enumerate(header.names)}
                fits = db.read_fits(c)
                alerts, _ = db.read_alerts(c)
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise StatsFileError(f"{source}: not a readable actwidget run ({e})") from e
    return RunStats.from_parts(header.config, layers, fits, alerts, source=source)


def request_stop(path: str | Path, fit_id: int | None = None) -> bool:
    """Ask the fit running in run directory `path` to stop at its next check (within about
    `CHECK_INTERVAL` seconds plus a batch, or two under torch.distributed).

    False when nothing runs there (or `fit_id` is given and is not the running fit's)."""
    return db.write_stop_request(path, fit_id)
