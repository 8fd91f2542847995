"""The SQLite layout of a run directory, and the small reads and writes on it.

One database file, `run.sqlite`, in WAL mode (a reader never blocks the writer, and sees
whole transactions only). Tables:
- `meta`: format, run uid (new for every writer), config (JSON), writer pid and host;
- `layers`: per layer its name, column count `n`, batches per column `width`, and the
  sequence number of the transaction that last changed its columns;
- `cols`: one row per time column, `id = layer << 20 | column index`, data = float64 bytes;
- `fits`, `alerts`, `stops` (stop requests, with an optional fit id);
- `state`: one row: the sequence number (bumped by every write transaction), the writer's
  `RunStatus` as JSON, and when it was written (wall clock).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .source import RunState, RunStatus
from .stats import Alert, FitMark, StatsConfig, StatsFileError

DB_NAME = "run.sqlite"
FORMAT = "actwidget-run/1"
ID_BITS = 20  # column index bits of a `cols` id (capacity is at most 2**16)
BUSY_MS = 10_000
CHECK_INTERVAL = 0.5  # seconds between reads for stop requests (writer) / changes (follower)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layers(layer INTEGER PRIMARY KEY, name TEXT NOT NULL,
    n INTEGER NOT NULL, width INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cols(id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS fits(fit INTEGER PRIMARY KEY, batch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alerts(id INTEGER PRIMARY KEY, alert TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stops(id INTEGER PRIMARY KEY, fit_id INTEGER, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS state(id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL,
    status TEXT NOT NULL, updated REAL NOT NULL);
"""


class Header(NamedTuple):
    """What a run's `meta` and `layers` tables say about it."""

    uid: str
    config: StatsConfig
    names: list[str]
    pid: int
    host: str


class State(NamedTuple):
    """The `state` row: transaction sequence number, writer status, when it was written."""

    seq: int
    status: RunStatus
    updated: float


def db_path(path: str | Path) -> Path:
    return Path(path) / DB_NAME


def connect(path: str | Path, create: bool = False) -> sqlite3.Connection:
    """A connection (autocommit; transactions are explicit) to the run in directory `path`.

    Never creates the database unless `create`; raises `StatsFileError` when there is none."""
    file = db_path(path)
    if not create and not file.is_file():
        raise StatsFileError(f"{path}: not an actwidget run directory (no {DB_NAME})")
    mode = "rwc" if create else "rw"
    try:
        conn = sqlite3.connect(
            f"{file.resolve().as_uri()}?mode={mode}",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_MS / 1000,
        )
    except sqlite3.OperationalError:
        if create:
            raise
        conn = sqlite3.connect(  # a read-only copy of a run (e.g. an archive)
            f"{file.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
            check_same_thread=False, timeout=BUSY_MS / 1000,
        )  # fmt: skip
    conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, write: bool = False) -> Iterator[sqlite3.Connection]:
    """One transaction: a consistent snapshot for reads; all or nothing for writes."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def col_id(layer: int, index: int) -> int:
    return (layer << ID_BITS) | index


def status_json(status: RunStatus) -> str:
    d = status._asdict()
    d["state"] = status.state.value
    return json.dumps(d)


def status_from_json(text: str) -> RunStatus:
    d = json.loads(text)
    d["state"] = RunState(d["state"])
    return RunStatus(**{k: v for k, v in d.items() if k in RunStatus._fields})


def read_header(conn: sqlite3.Connection, source: str) -> Header:
    """The run's uid, config, layer names and writer; `StatsFileError` if malformed."""
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise StatsFileError(f"{source}: not an actwidget run (format {meta.get('format')})")
        config = StatsConfig.from_dict(json.loads(meta["config"]))
        names = [n for (n,) in conn.execute("SELECT name FROM layers ORDER BY layer")]
        return Header(meta["uid"], config, names, int(meta["pid"]), meta["host"])
    except StatsFileError:
        raise
    except (sqlite3.DatabaseError, KeyError, TypeError, ValueError) as e:
        raise StatsFileError(f"{source}: unreadable run header ({e})") from e


def read_state(conn: sqlite3.Connection) -> State:
    """The `state` row (sequence 0 and a waiting status before the writer wrote one)."""
    row = conn.execute("SELECT seq, status, updated FROM state WHERE id = 0").fetchone()
    if row is None:
        return State(0, RunStatus(), 0.0)
    try:
        return State(int(row[0]), status_from_json(row[1]), float(row[2]))
    except (TypeError, ValueError, KeyError) as e:
        raise StatsFileError(f"unreadable run state ({e})") from e


def read_columns(conn: sqlite3.Connection, layer: int, start: int, width: int) -> np.ndarray:
    """Columns `start`, `start + 1`, ... of `layer` as a (n, width) float64 array."""
    rows = conn.execute(
        "SELECT data FROM cols WHERE id >= ? AND id < ? ORDER BY id",
        (col_id(layer, start), col_id(layer + 1, 0)),
    ).fetchall()
    if not rows:
        return np.zeros((0, width))
    return np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float64).reshape(-1, width)


def read_fits(conn: sqlite3.Connection) -> list[FitMark]:
    return [FitMark(int(f), int(b)) for f, b in conn.execute("SELECT fit, batch FROM fits")]


def read_alerts(conn: sqlite3.Connection, after: int = 0) -> tuple[list[Alert], int]:
    """Alerts with id > `after`, in order, and the last id seen."""
    out, last = [], after
    for i, text in conn.execute("SELECT id, alert FROM alerts WHERE id > ? ORDER BY id", (after,)):
        out.append(Alert(**json.loads(text)))
        last = i
    return out, last


def alert_json(a: Alert) -> str:
    d: dict[str, Any] = a._asdict()
    return json.dumps(d)


def writer_alive(header: Header) -> bool | None:
    """Whether the run's writer process lives (None: it runs on another host)."""
    if header.host != socket.gethostname():
        return None
    if header.pid == os.getpid():
        return True
    try:
        os.kill(header.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_stop_request(path: str | Path, fit_id: int | None) -> bool:
    """Insert a stop request if a fit runs in `path` (and is `fit_id`'s, when given)."""
    conn = connect(path)
    try:
        with transaction(conn, write=True) as c:
            header = read_header(c, str(path))
            st = read_state(c).status
            if st.state is not RunState.RUNNING or writer_alive(header) is False:
                return False
            if fit_id is not None and fit_id != st.fit_id:
                return False
            c.execute("INSERT INTO stops(fit_id, at) VALUES (?, ?)", (fit_id, time.time()))
            return True
    finally:
        conn.close()
