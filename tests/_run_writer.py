"""Processes that write a run directory, for the run-file tests and the follow e2e test.

    python tests/_run_writer.py synthetic RUN_DIR BATCHES
    python tests/_run_writer.py loop RUN_DIR [SLEEP_S]

- `synthetic`: a `RunWriter` fed crafted columns (batch b of layer l: 10 values of mean
  b + l, all in histogram bin b % bins) in flushes of 1 to 7 batches, capacity 16, so
  that columns merge often and every merged column can be checked exactly (`check`).
- `loop`: a plain training loop under `with StatsHooks(..., run_dir=RUN_DIR)`, sleeping
  SLEEP_S per batch, until asked to stop (at most 120 s); then prints
  "stopped at batch N" and exits 0.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np

from actwidget.runfile import RunWriter
from actwidget.source import RunState, RunStatus
from actwidget.stats import HIST, Field, FitMark, LayerStats, StatsConfig

SYNTHETIC = StatsConfig(capacity=16)
LAYERS = ["a", "b", "c"]


def synthetic_columns(layer: int, first: int, n: int) -> np.ndarray:
    """Crafted one-batch columns of batches first .. first + n - 1 of layer `layer`."""
    steps = np.arange(first, first + n)
    cols = np.zeros((n, SYNTHETIC.width))
    cols[:, Field.BATCHES] = 1
    cols[:, Field.BATCH_SUM] = cols[:, Field.BATCH_FIRST] = cols[:, Field.BATCH_LAST] = steps
    cols[:, Field.NUMEL] = cols[:, Field.COUNT] = 10
    cols[:, Field.MEAN] = steps + layer
    cols[:, Field.G_MEAN] = np.nan  # no gradients
    cols[np.arange(n), HIST + steps % SYNTHETIC.bins] = 10
    return cols


def check(layer: int, s: LayerStats) -> int:
    """Assert that `s` holds exactly merged synthetic columns of batches 0 .. N-1 with
    nothing torn, missing or out of order; returns N."""
    c = s.columns
    if not len(c):
        return 0
    n = c[:, Field.BATCHES]
    first, last = c[:, Field.BATCH_FIRST], c[:, Field.BATCH_LAST]
    assert first[0] == 0, first
    np.testing.assert_array_equal(first[1:], last[:-1] + 1)  # contiguous, in order
    np.testing.assert_array_equal(n, last - first + 1)
    np.testing.assert_array_equal(c[:, Field.BATCH_SUM], (first + last) * n / 2)
    np.testing.assert_array_equal(c[:, Field.NUMEL], 10 * n)
    np.testing.assert_array_equal(c[:, Field.COUNT], 10 * n)
    np.testing.assert_allclose(c[:, Field.MEAN], (first + last) / 2 + layer, rtol=1e-12)
    np.testing.assert_allclose(c[:, Field.M2], 10 * (n**2 - 1) * n / 12, rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(c[:, HIST:].sum(axis=1), 10 * n)
    return int(n.sum())


def synthetic(run_dir: Path, batches: int) -> None:
    writer = RunWriter(run_dir, SYNTHETIC, LAYERS)
    status = RunStatus(state=RunState.RUNNING, fit=1, fit_id=1, stoppable=True)
    writer.begin_fit(FitMark(1, 0), status)
    rng = random.Random(0)
    done = 0
    while done < batches:
        n = min(rng.randint(1, 7), batches - done)
        writer.write(
            {name: synthetic_columns(i, done, n) for i, name in enumerate(LAYERS)},
            status._replace(batch=done + n, fit_batches=done + n),
        )
        done += n
    writer.end_fit(status._replace(state=RunState.FINISHED, batch=done, stoppable=False))


def loop(run_dir: Path, sleep: float) -> None:
    import torch
    from torch import nn

    from actwidget.recorder import StatsHooks

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    deadline = time.monotonic() + 120
    batch = 0
    with StatsHooks(list(model), model=model, run_dir=run_dir, flush_every=4) as hooks:
        while time.monotonic() < deadline:
            model(torch.randn(8, 6)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            batch += 1
            if hooks.should_stop:
                break
            time.sleep(sleep)
    print(f"stopped at batch {batch}" if hooks.status.state is RunState.STOPPED else "timed out")
    sys.exit(0 if hooks.status.state is RunState.STOPPED else 1)


if __name__ == "__main__":
    mode, path = sys.argv[1], Path(sys.argv[2])
    if mode == "synthetic":
        synthetic(path, int(sys.argv[3]))
    elif mode == "loop":
        loop(path, float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
