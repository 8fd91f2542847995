"""Run directories: written by the recorder, read back, followed live, stopped from outside."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _run_writer import LAYERS, SYNTHETIC, check, synthetic_columns
from conftest import plain_loop
from torch import nn

import actwidget
from actwidget import _rundb
from actwidget.recorder import StatsHooks
from actwidget.runfile import RunFollower, RunWriter, read_run, request_stop
from actwidget.source import Event, RunState, RunStatus, as_source
from actwidget.stats import Field, FitMark, RunStats, StatsConfig, StatsFileError

HELPER = Path(__file__).with_name("_run_writer.py")
TIMEOUT = 120


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def assert_same(a: RunStats, b: RunStats) -> None:
    assert list(a) == list(b)
    assert a.config == b.config
    assert a.fits == b.fits
    assert a.alerts == b.alerts
    for name in a:
        np.testing.assert_array_equal(a[name].columns, b[name].columns)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HELPER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until(what: str, cond, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)  # polling interval, bounded by the deadline
    raise AssertionError(f"timed out waiting for {what}")


def rows_in_file(run: Path) -> dict[int, int]:
    with sqlite3.connect(run / _rundb.DB_NAME) as conn:
        ids = [i for (i,) in conn.execute("SELECT id FROM cols")]
    layers, counts = np.unique(np.array(ids) >> _rundb.ID_BITS, return_counts=True)
    return dict(zip(layers.tolist(), counts.tolist(), strict=True))


# --- writing and reading back -----------------------------------------------------------


def test_round_trip_equals_the_recorder(tmp_path):
    model = mlp()
    with StatsHooks(list(model), model=model, run_dir=tmp_path, flush_every=3) as hooks:
        plain_loop(model, hooks, steps=7)
        model(torch.full((2, 6), float("nan")))  # an alert, in the file too
        hooks.end_batch()
    with hooks:  # a second fit, same file
        plain_loop(model, hooks, steps=5, seed=1)
    mem = hooks.stats
    assert len(mem.fits) == 2 and len(mem.alerts) >= 1
    assert_same(read_run(tmp_path), mem)
    assert_same(RunStats.load(tmp_path), mem)  # RunStats.load reads run directories too
    assert isinstance(as_source(tmp_path), RunFollower)
    st = RunFollower(tmp_path).status
    assert (st.state, st.fit, st.batch) == (RunState.FINISHED, 2, 13)


def test_merging_keeps_the_file_equal_to_the_store_with_no_stale_rows(tmp_path):
    model = mlp()
    config = StatsConfig(capacity=4)
    with StatsHooks(list(model), model=model, config=config, run_dir=tmp_path) as hooks:
        for steps in (1, 2, 5, 9, 17, 3):  # flushes of several sizes, merges in most
            plain_loop(model, hooks, steps=steps)
            hooks.flush()
            mem, disk = hooks.stats, read_run(tmp_path)
            assert_same(disk, mem)
            assert rows_in_file(tmp_path) == {i: len(mem[n]) for i, n in enumerate(mem)}
    assert mem[hooks.names[0]].batches_per_column == 16


def test_a_new_recorder_replaces_the_run_and_reset_clears_it(tmp_path):
    model = mlp()
    with StatsHooks(list(model), model=model, run_dir=tmp_path) as hooks:
        plain_loop(model, hooks, steps=6)
    follower = RunFollower(tmp_path)
    assert follower.stats[hooks.names[0]].batches.sum() == 6
    hooks.reset()
    assert read_run(tmp_path)[hooks.names[0]].batches.sum() == 0
    with StatsHooks(list(model), model=model, run_dir=tmp_path) as again:
        plain_loop(model, again, steps=2)
    follower.poll()  # a new run in the same directory: read afresh
    assert follower.stats[again.names[0]].batches.sum() == 2
    assert_same(follower.stats, again.stats)


def test_recorded_stats_given_to_the_recorder_are_written_first(tmp_path):
    model = mlp()
    with StatsHooks(list(model), model=model) as first:
        plain_loop(model, first, steps=4)
    with StatsHooks(list(model), model=model, stats=first.stats, run_dir=tmp_path) as hooks:
        plain_loop(model, hooks, steps=3)
    assert_same(read_run(tmp_path), hooks.stats)
    assert read_run(tmp_path)[hooks.names[0]].batches.sum() == 7


def test_unreadable_directories_raise_stats_file_error(tmp_path):
    with pytest.raises(StatsFileError, match="not an actwidget run"):
        read_run(tmp_path)
    (tmp_path / _rundb.DB_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StatsFileError, match=str(tmp_path)):
        RunStats.load(tmp_path)


# --- bounded disk -----------------------------------------------------------------------


def _write_synthetic(run: Path, config: StatsConfig, layers: int, batches: int, flush: int):
    names = [f"l{i}" for i in range(layers)]
    w = RunWriter(run, config, names)
    w.begin_fit(FitMark(1, 0), RunStatus(state=RunState.RUNNING, fit=1, fit_id=1))
    sizes = []  # bytes after each flush: the database's pages, its file, the WAL file
    reader = sqlite3.connect(run / _rundb.DB_NAME)
    page = reader.execute("PRAGMA page_size").fetchone()[0]
    for b in range(0, batches, flush):
        cols = synthetic_columns(0, b, flush)
        w.write(dict.fromkeys(names, cols))
        pages = reader.execute("PRAGMA page_count").fetchone()[0] * page
        wal = run / (_rundb.DB_NAME + "-wal")
        sizes.append((pages, (run / _rundb.DB_NAME).stat().st_size, wal.stat().st_size))
    reader.close()
    w.close()
    return np.array(sizes)


def test_disk_is_bounded_however_long_the_run(tmp_path):
    config = StatsConfig(capacity=16)  # SYNTHETIC's width, merged every 16 columns
    sizes = _write_synthetic(tmp_path, config, layers=4, batches=16 * 400, flush=8)
    pages, file, wal = sizes.T
    assert pages.max() == pages[: len(pages) // 8].max()  # reached when the columns filled up
    assert file.max() <= pages.max()  # the file holds no more than that
    assert wal.max() <= 8 << 20  # checkpointed every ~4 MB, truncated to 8 MiB
    stats = read_run(tmp_path)
    assert all(len(s) <= 16 and check(0, s) == 16 * 400 for s in stats.values())


def test_disk_bound_for_a_million_batches_of_100_layers(tmp_path):
    """The file holds at most `capacity` columns per layer at any run length (the test
    above), so its largest size is reached when the columns first fill up: measure it for
    10 layers at the default settings, scale to 100 layers, add the WAL's 8 MiB cap."""
    config = StatsConfig()
    sizes = _write_synthetic(tmp_path, config, layers=10, batches=2 * config.capacity, flush=64)
    pages, _, wal = sizes.T
    estimate = 100 * pages.max() / 10 + (8 << 20)
    print(f"\nrun file: {pages.max() / 10 / 1e6:.2f} MB per layer at {config.capacity} columns, "
          f"largest WAL {wal.max() / 1e6:.1f} MB; 100 layers: at most {estimate / 1e6:.0f} MB "
          "for 10^6 batches as for 2,048")  # fmt: skip
    assert estimate < 100e6


# --- live readers -----------------------------------------------------------------------


def test_a_reader_polling_during_writes_never_sees_a_torn_or_disordered_column(tmp_path):
    proc = spawn("synthetic", str(tmp_path), "3000")
    follower = RunFollower(tmp_path, interval=0.01)
    seen, stages = 0, set()

    def read_and_check() -> int:
        stats = read_run(tmp_path)
        follower.poll()
        for snap in (stats, follower.stats):  # a whole read, and the follower's increments
            totals = {check(i, snap[n]) for i, n in enumerate(LAYERS) if n in snap}
            assert len(totals) <= 1, totals  # a flush reaches all layers at once
            total = totals.pop() if totals else 0
            assert total >= seen  # never backwards
        return total

    try:
        while proc.poll() is None:
            try:
                seen = read_and_check()
                stages.add(seen)
            except StatsFileError:  # no run yet, or the writer is still creating its tables
                continue
    finally:
        out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out
    assert read_and_check() == 3000
    assert_same(follower.stats, read_run(tmp_path))
    assert len(stages - {0, 3000}) > 5, stages  # it read while the writer wrote


def test_a_writer_killed_mid_run_leaves_a_run_that_loads(tmp_path):
    proc = spawn("loop", str(tmp_path))  # flushes every 4 batches, as fast as it can
    try:
        follower = RunFollower(tmp_path)
        wait_until("40 batches", lambda: follower.status.batch >= 40)
        with pytest.raises(RuntimeError, match="being written by process"):
            RunWriter(tmp_path, StatsConfig(), ["x"])  # not while another process writes
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # at any moment, likely mid-transaction
        proc.communicate(timeout=TIMEOUT)
    stats = read_run(tmp_path)
    name = next(iter(stats))
    layer = stats[name]
    assert layer.batches.sum() >= 40
    np.testing.assert_array_equal(
        layer.columns[1:, Field.BATCH_FIRST], layer.columns[:-1, Field.BATCH_LAST] + 1
    )
    assert all(stats[n].batches.sum() == layer.batches.sum() for n in stats)
    follower.poll()
    st = follower.status
    assert st.state is RunState.FAILED and "ended without closing" in st.message
    assert not request_stop(tmp_path)
    RunWriter(tmp_path, StatsConfig(), ["x"]).close()  # the dead writer's run can be replaced


def test_killed_at_random_moments_the_run_always_loads_whole(tmp_path):
    """The synthetic writer (merging often) killed at 5 random points: every time the run
    loads, with every column exact and every layer at the same batch."""
    rng = np.random.default_rng(0)
    for k, at in enumerate(rng.integers(50, 2500, size=5)):
        run = tmp_path / str(k)
        proc = spawn("synthetic", str(run), "1000000")
        try:
            wait_until(f"batch {at}", lambda run=run, at=at: _batches(run) >= at)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=TIMEOUT)
        stats = read_run(run)
        totals = {check(i, stats[n]) for i, n in enumerate(LAYERS)}
        assert len(totals) == 1 and totals.pop() >= at


def _batches(run: Path) -> int:
    try:
        return RunFollower(run).status.batch
    except FileNotFoundError:
        return 0


def test_follower_events_and_state(tmp_path):
    follower = RunFollower(tmp_path, interval=0.02)  # nothing there yet: it waits
    assert follower.status.state is RunState.WAITING
    events: list[Event] = []
    got = threading.Condition()

    def listen(event: Event, source) -> None:
        assert source is follower
        with got:
            events.append(event)
            got.notify_all()

    unsubscribe = follower.subscribe(listen)

    def wait_event(event: Event) -> None:
        with got:
            assert got.wait_for(lambda: event in events, timeout=TIMEOUT), events

    model = mlp()
    hooks = StatsHooks(list(model), model=model, run_dir=tmp_path, flush_every=2)
    with hooks:
        hooks.begin_epoch(0, steps=10)
        plain_loop(model, hooks, steps=5)
        wait_event(Event.FIT_START)
        # flushed after the first batch, then every 2
        wait_until("the 5 batches", lambda: follower.status.batch >= 5)
        st = follower.status
        assert st.state is RunState.RUNNING and st.stoppable and st.fit_id == hooks.status.fit_id
        assert st.epoch == 0 and st.epoch_batches == 10
        model(torch.full((2, 6), float("nan")))
        hooks.end_batch()
        hooks.flush()  # written now, not at the next flush_every / flush_interval
        wait_event(Event.ALERT)
        assert follower.alerts == hooks.alerts
        assert not follower.request_stop(hooks.status.fit_id + 1)  # another fit's: refused
    wait_event(Event.FIT_END)
    assert follower.status.state is RunState.FINISHED
    assert not follower.request_stop()  # nothing runs
    assert_same(follower.stats, hooks.stats)
    start, end = events.index(Event.FIT_START), events.index(Event.FIT_END)
    assert start < end and Event.FLUSH in events[start:end], events
    thread = follower._thread
    assert thread is not None and thread.is_alive()
    unsubscribe()  # the last listener: polling stops
    assert follower._thread is None and not thread.is_alive()
    follower.close()


# --- stop requests ----------------------------------------------------------------------


def test_a_plain_loop_honours_a_stop_request_written_into_the_run(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    asked_at = batches = 0
    deadline = time.monotonic() + TIMEOUT
    with StatsHooks(list(model), model=model, run_dir=tmp_path) as hooks:
        while time.monotonic() < deadline:
            model(torch.randn(8, 6)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            batches += 1
            if batches == 20:
                assert actwidget.request_stop(tmp_path)
                asked_at = time.monotonic()
            if hooks.should_stop:
                break
    took = time.monotonic() - asked_at
    assert asked_at and hooks.status.state is RunState.STOPPED, hooks.status
    assert took < 1.0, took  # checked by time, every 0.5 s
    assert batches > 20  # not a read per batch: the request is seen at the next check
    assert RunFollower(tmp_path).status.state is RunState.STOPPED
    # A request for a fit that ended never stops the next one.
    with StatsHooks(list(model), model=model, run_dir=tmp_path) as hooks:
        plain_loop(model, hooks, steps=3)
        assert not hooks.should_stop
    assert hooks.status.state is RunState.FINISHED


def test_stale_requests_are_ignored_by_the_next_fit(tmp_path):
    w = RunWriter(tmp_path, SYNTHETIC, LAYERS, check_interval=0.0)
    running = RunStatus(state=RunState.RUNNING, fit=1, fit_id=7, stoppable=True)
    w.begin_fit(FitMark(1, 0), running)
    assert not w.stop_requested()
    assert not request_stop(tmp_path, fit_id=8)  # names another fit
    assert request_stop(tmp_path, fit_id=7)
    assert w.stop_requested()
    w.end_fit(running._replace(state=RunState.STOPPED))
    assert not request_stop(tmp_path)
    w.begin_fit(FitMark(2, 0), running._replace(fit=2, fit_id=9))
    assert not w.stop_requested()  # the old request belonged to fit 7
    w.close()


def test_stop_checks_read_the_database_at_most_every_half_second(tmp_path, monkeypatch):
    w = RunWriter(tmp_path, SYNTHETIC, LAYERS)
    w.begin_fit(FitMark(1, 0), RunStatus(state=RunState.RUNNING, fit=1, fit_id=1))
    reads = []
    real = w._conn
    monkeypatch.setattr(w, "_conn", _Counting(real, reads))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.2:
        w.stop_requested()
    assert 2 <= len(reads) <= 3, len(reads)  # at 0, 0.5 and 1.0 s
    real.close()


class _Counting:
    def __init__(self, conn, calls):
        self.conn, self.calls = conn, calls

    def execute(self, *a):
        self.calls.append(a)
        return self.conn.execute(*a)


def test_cli_stop(tmp_path):
    w = RunWriter(tmp_path, SYNTHETIC, LAYERS, check_interval=0.0)
    w.begin_fit(FitMark(1, 0), RunStatus(state=RunState.RUNNING, fit=1, fit_id=3, batch=12))
    cli = [sys.executable, "-m", "actwidget"]
    done = subprocess.run([*cli, "stop", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "stop requested" in done.stdout and "batch 12" in done.stdout
    assert w.stop_requested()
    w.end_fit(RunStatus(state=RunState.STOPPED, fit=1, fit_id=3))
    done = subprocess.run([*cli, "stop", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "stopped" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([*cli, "stop", str(empty)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not an actwidget run" in done.stderr
    done = subprocess.run([*cli, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "demo" in done.stdout and "stop" in done.stdout
    done = subprocess.run([*cli, "demo", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--epochs" in done.stdout
    w.close()
