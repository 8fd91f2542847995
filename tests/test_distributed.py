"""torch.distributed: global stats over both ranks, and a Stop every rank agrees on.

Each test launches `torchrun --standalone --nproc-per-node 2 tests/_dist_worker.py` (gloo,
DDP on CPU), with a timeout so that a hang fails instead of blocking CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from conftest import assert_column

from actwidget.runfile import RunFollower, read_run, request_stop
from actwidget.source import RunState
from actwidget.stats import Field, StatsConfig

WORKER = Path(__file__).with_name("_dist_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TIMEOUT = 240  # seconds for a whole torchrun job on two busy cores
STOP_WITHIN = 2.0  # seconds from the request to both ranks out of their loop


def launch(
    mode: str, tmp: Path, steps: int = 10**9, root: int = 0
) -> tuple[subprocess.Popen, Path, Path]:
    out, run = tmp / "out", tmp / "run"
    out.mkdir()
    cmd = [*TORCHRUN, str(WORKER), mode, str(out), str(run), str(steps), str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # killed as a group on timeout
    )
    return proc, out, run


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> str:
    """Wait for the job; kill it (and fail) if it hangs. Returns its output."""
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        raise AssertionError(f"torchrun job hung for {timeout} s:\n{text[-4000:]}") from None
    assert proc.returncode == 0, text[-4000:]
    return text


def wait_for(what: str, cond, proc: subprocess.Popen, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"job ended before {what}:\n{proc.communicate()[0][-4000:]}")
        time.sleep(0.05)  # polling interval, bounded by the deadline
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"timed out waiting for {what}")


def running_batches(run: Path) -> int:
    if not (run / "run.sqlite").exists():
        return 0
    follower = RunFollower(run)
    try:
        st = follower.status
        return st.batch if st.state is RunState.RUNNING else 0
    finally:
        follower.close()


def reports(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_recorded_stats_are_the_pooled_stats_of_both_ranks(tmp_path):
    proc, out, run = launch("stats", tmp_path, steps=10)
    finish(proc)
    stats = read_run(run)
    acts = [torch.load(out / f"acts{r}.pt") for r in (0, 1)]
    config = StatsConfig(sample_size=None)
    assert list(stats) == ["0 (Linear)", "1 (ReLU)", "2 (Linear)"]
    for i, name in enumerate(stats):
        layer = stats[name]
        assert len(layer) == 10  # one column per step: the ranks' batches merged
        np.testing.assert_array_equal(layer.batches, 1)
        np.testing.assert_array_equal(layer.columns[:, Field.BATCH_FIRST], np.arange(10))
        np.testing.assert_array_equal(layer.columns[:, Field.BATCH_LAST], np.arange(10))
        for step in range(10):
            a0, a1 = acts[0][i][step], acts[1][i][step]
            assert len(a0) != len(a1)  # different numbers of rows per rank
            assert_column(layer, step, [a0, a1], config)
    # Dead units are judged over the global batch: a unit is dead when it gave nothing on
    # either rank (per-rank counts, summed, would differ in some of these batches).
    relu = stats["1 (ReLU)"]
    pooled, per_rank = [], []
    for step in range(10):
        a0, a1 = acts[0][1][step], acts[1][1][step]
        pooled.append(_dead_units(torch.cat([a0, a1])))
        per_rank.append((_dead_units(a0) + _dead_units(a1)) / 2)
    np.testing.assert_array_equal(relu.columns[:, Field.UNITS], 16)
    np.testing.assert_array_equal(relu.columns[:, Field.DEAD], pooled)
    assert pooled != per_rank
    # Not either rank's local value: the ranks' data differ (scaled 1x and 3x).
    std = stats["0 (Linear)"].std[0]
    local = [acts[r][0][0].std().item() for r in (0, 1)]
    assert local[1] > 1.5 * local[0]
    assert local[0] < std < local[1]
    r0, r1 = reports(out)
    assert r0["state"] == r1["state"] == "finished" and r0["step"] == r1["step"] == 10
    assert (r0["batches"], r1["batches"]) == (10, 0)  # only the root keeps the global view


def _dead_units(a: torch.Tensor) -> int:
    """Units (features) of a (rows, units) ReLU output that gave nothing over all its rows."""
    totals = a.double().sum(0)
    return int((totals <= 1e-4 * totals.mean()).sum())


def test_stop_requested_through_the_run_dir_ends_both_ranks_at_the_same_step(tmp_path):
    proc, out, run = launch("stop", tmp_path, root=1)  # rank 1 writes the run
    wait_for("20 batches", lambda: running_batches(run) >= 20, proc)
    asked = time.time()
    assert request_stop(run)
    finish(proc)
    r0, r1 = reports(out)
    assert r0["step"] == r1["step"], (r0, r1)
    assert r0["state"] == r1["state"] == "stopped"
    took = max(r0["time"], r1["time"]) - asked
    print(f"\nstop via run dir: both ranks stopped at step {r0['step']}, {took:.3f} s after")
    assert took < STOP_WITHIN, took
    follower = RunFollower(run)
    assert follower.status.state is RunState.STOPPED
    assert follower._header.pid == int((out / "pid1").read_text())  # the root rank wrote it
    assert read_run(run)["0 (Linear)"].batches.sum() == r0["step"] == r1["batches"]
    assert r0["batches"] == 0


def test_ctrl_c_on_one_rank_stops_both_at_the_same_step(tmp_path):
    proc, out, run = launch("stop", tmp_path)
    wait_for("20 batches", lambda: running_batches(run) >= 20, proc)
    pid = int((out / "pid1").read_text())
    asked = time.time()
    os.kill(pid, signal.SIGINT)  # rank 1 only, not the writing rank
    finish(proc)
    r0, r1 = reports(out)
    assert r0["step"] == r1["step"], (r0, r1)
    assert r0["state"] == r1["state"] == "stopped"
    took = max(r0["time"], r1["time"]) - asked
    print(f"\nCtrl-C on rank 1: both ranks stopped at step {r0['step']}, {took:.3f} s after")
    assert took < STOP_WITHIN, took


def test_dtensor_outputs_are_recorded_as_their_full_tensors(tmp_path):
    """Tensor parallelism: a sharded output is recorded from every rank's shard, a
    replicated one once; the pooled columns are the stats of the full logical tensors."""
    proc, out, run = launch("tp", tmp_path, steps=5)
    finish(proc)
    full = torch.load(out / "full.pt", weights_only=False)  # numpy arrays, written by the test
    stats = read_run(run)
    config = StatsConfig(sample_size=None)
    for i, name in enumerate(stats):
        s = stats[name]
        assert len(s) == 5, name
        for b, t in enumerate(full[i]):
            assert_column(s, b, [torch.from_numpy(t)], config)
