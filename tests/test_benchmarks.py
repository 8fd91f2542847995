"""The benchmarks still run against the package they measure (they reach into the recorder's
parts): each script in a short mode, its tables checked for their rows. Timings are not
judged here (see benchmarks/results-cpu.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "benchmarks"


def run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_distributed_benchmark_runs_two_ranks_and_reports_the_collectives():
    out = run(str(BENCH / "bench_dist.py"), "--quick", "--bs", "8")
    for row in ("| none |", "| hooks + combine + agreed stop |", "| combine (5 layers x"):
        assert row in out, out


def test_main_benchmark_runs_a_section():
    out = run(str(BENCH / "bench.py"), "--quick", "--no-compile", "--only", "5. Alert")
    assert "| 100 | 64 |" in out, out


def test_polling_benchmark_reports_its_share_of_a_step():
    out = run(str(BENCH / "bench_poll.py"), "--quick")
    assert "% of a step)" in out, out
