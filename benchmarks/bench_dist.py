"""Benchmark: what the distributed path costs, with 2 ranks, setups side by side in one run.

Every rank trains the reference CNN under DDP on its own batches; per round the setups run
interleaved, the same steps each:
  none             DDP alone;
  hooks, local     StatsHooks recording every batch of the 5 layers, as if one process;
  hooks + combine  the default under torch.distributed: the ranks' columns combined at each
                   flush (every 64 batches) and an agreed stop (one async all-reduce/batch);
  ... + run_dir    the same, the root rank also writing the run directory.
Reported: the slowest rank's time per step (median over rounds) and its ratio to "none";
the bytes each rank sends per flush; the time of one flush's collectives and of one
`agree_stop` in a tight loop (its full round trip: in training it overlaps a batch).

    python benchmarks/bench_dist.py                # spawns 2 ranks (gloo) on the CPU
    python benchmarks/bench_dist.py --quick
    python benchmarks/bench_dist.py --core --device cuda   # GPUs: NCCL for DDP if one
                                                   # per rank, else gloo on a shared GPU
    torchrun --nproc-per-node 2 benchmarks/bench_dist.py   # or launched by torchrun
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

ROOT = Path(__file__).resolve().parents[1]
SETUPS = ["none", "hooks, local", "hooks + combine + agreed stop", "... + run_dir (root writes)"]


def _core_only_import() -> None:
    """Import actwidget's core modules without the notebook stack (e.g. on a bare GPU box)."""
    pkg = types.ModuleType("actwidget")
    pkg.__path__ = [str(ROOT / "actwidget")]
    sys.modules["actwidget"] = pkg


@contextlib.contextmanager
def local_only():
    """The recorder as if this were one process: no combine, no agreed stop."""
    from actwidget.recorder import _sinks

    with (
        mock.patch.object(_sinks, "_distributed", lambda: False),
        mock.patch.dict(os.environ, {"WORLD_SIZE": "1"}),
    ):
        yield


def make_batches(n: int, bs: int, device: str, rank: int) -> list:
    g = torch.Generator().manual_seed(rank)
    return [
        (torch.randn(bs, 1, 28, 28, generator=g).to(device),
         torch.randint(0, 10, (bs,), generator=g).to(device))
        for _ in range(n)
    ]  # fmt: skip


def time_setup(ddp, opt, batches, hooks, setup: str, device: str) -> tuple[float, float]:
    """Wall and CPU (this process, all threads) seconds per step over `batches`, the fit's
    begin and end included."""

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    dist.barrier()
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    local = local_only() if setup == "hooks, local" else contextlib.nullcontext()
    with local, hooks if hooks is not None else contextlib.nullcontext():
        for xb, yb in batches:
            F.cross_entropy(ddp(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            if hooks is not None and hooks.should_stop:
                raise RuntimeError("nobody asked to stop")
    sync()
    return (time.perf_counter() - t0) / len(batches), (time.process_time() - c0) / len(batches)


def slowest(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0])


def step_table(args, device: str, rank: int, tmp: Path):
    from actwidget.models import CNN
    from actwidget.recorder import StatsHooks

    torch.manual_seed(0)
    model = CNN().to(device)
    ids = [torch.cuda.current_device()] if device == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    batches = make_batches(args.steps, args.bs, device, rank)
    mods = list(model.layers)
    with local_only():
        local = StatsHooks(mods, model=model)
    hooks = {
        "none": None,
        "hooks, local": local,
        SETUPS[2]: StatsHooks(mods, model=model),
        SETUPS[3]: StatsHooks(mods, model=model, run_dir=tmp / "run"),
    }
    wall: dict[str, list[float]] = {s: [] for s in SETUPS}
    cpu: dict[str, list[float]] = {s: [] for s in SETUPS}
    for r in range(args.rounds + 1):
        for s in SETUPS[r % 4 :] + SETUPS[: r % 4]:  # each setup in every position
            w, c = time_setup(ddp, opt, batches, hooks[s], s, device)
            w, c = slowest(w), slowest(c)
            if r:  # round 0 warms up
                wall[s].append(w)
                cpu[s].append(c)
    rows = []
    for s in SETUPS:
        ratio = [t / b for t, b in zip(wall[s], wall["none"], strict=True)]
        cpu_ratio = [t / b for t, b in zip(cpu[s], cpu["none"], strict=True)]
        rows.append([s, f"{statistics.median(wall[s]) * 1e3:.2f}",
                     f"{statistics.median(ratio):.3f}", f"{statistics.median(cpu[s]) * 1e3:.2f}",
                     f"{statistics.median(cpu_ratio):.3f}"])  # fmt: skip
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    syncs = sync_table(ddp, opt, batches, hooks[SETUPS[2]]) if device == "cuda" else []
    return rows, hooks[SETUPS[2]], params, syncs


def collective_table(combiner, n_layers: int, flush: int, rounds: int) -> list[list]:
    """Time of one flush's combine (5 layers of 32 units x `flush` batches) and of one
    agree_stop."""
    from actwidget.stats import HIST, Field, StatsConfig

    width = StatsConfig().width
    steps = np.repeat(np.arange(flush, dtype=float), n_layers)
    layers = np.tile(np.arange(n_layers), flush)
    rows = np.zeros((len(steps), width))
    rows[:, Field.BATCHES] = 1
    rows[:, Field.BATCH_FIRST] = rows[:, Field.BATCH_LAST] = rows[:, Field.BATCH_SUM] = steps
    rows[:, Field.NUMEL] = rows[:, Field.COUNT] = 100
    rows[:, Field.MEAN], rows[:, Field.M2], rows[:, HIST + 20] = 0.5, 10.0, 100
    units = {(i, b): np.ones(32) for i in range(n_layers) for b in range(flush)}  # 32 units
    combine, agree = [], []
    sent0 = combiner.bytes_sent
    for _ in range(rounds):
        dist.barrier()
        t0 = time.perf_counter()
        combiner.combine(layers, rows, units)
        combine.append(slowest(time.perf_counter() - t0))
    per_flush = (combiner.bytes_sent - sent0) / rounds
    dist.barrier()
    t0 = time.perf_counter()
    n = 200 * rounds
    for _ in range(n):
        combiner.agree_stop(False)
    combiner.finish()
    agree.append(slowest((time.perf_counter() - t0) / n))
    return [
        [f"combine ({n_layers} layers x {flush} batches)",
         f"{statistics.median(combine) * 1e3:.2f}", f"{per_flush / 1e3:.1f}"],
        ["agree_stop (tight loop: a full round trip)", f"{agree[0] * 1e3:.3f}", "0.004"],
    ]  # fmt: skip


def sync_table(ddp, opt, batches, hooks) -> list[list]:
    """On CUDA: host synchronisations per step (sync debug mode), none vs combine."""
    import warnings

    rows = []
    for setup in ("none", SETUPS[2]):
        h = hooks if setup != "none" else None
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            time_setup(ddp, opt, batches, h, setup, "cuda")
        torch.cuda.set_sync_debug_mode("default")
        count = sum("synchroniz" in str(w.message) for w in caught)
        rows.append([setup, len(batches), count, f"{count / len(batches):.2f}"])
    return rows


def table(title: str, header: list[str], rows: list[list]) -> str:
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]  # fmt: skip
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def run(args) -> None:
    device = args.device
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    one_each = device == "cuda" and torch.cuda.device_count() >= world
    dist.init_process_group("nccl" if one_each else "gloo")
    logging.getLogger("actwidget").setLevel(logging.ERROR)  # no alert lines in the tables
    torch.set_num_threads(args.threads)
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    with tempfile.TemporaryDirectory() as tmp:
        rows, hooks, params, syncs = step_table(args, device, rank, Path(tmp))
        combiner = hooks._sinks.combiner
        coll = collective_table(combiner, len(hooks.names), hooks.flush_every, args.rounds)
    if rank == 0:
        out = [
            f"Machine: {platform.machine()}, {world} ranks x {args.threads} torch thread(s), "
            f"Python {platform.python_version()}, torch {torch.__version__}, device {device}, "
            f"DDP over {dist.get_backend()}; reference CNN, batch {args.bs} per rank; "
            f"{args.rounds} rounds of {args.steps} steps per setup; flush every 64 batches"
        ]
        head = ["setup", "wall ms/step", "ratio", "CPU ms/step", "CPU ratio"]
        out.append(table("Step time (slowest rank) / no hooks, medians over rounds", head, rows))
        out.append(
            table(
                "Collectives of the stats path (slowest rank)",
                ["what", "ms", "KB sent per rank"],
                coll,
            )
        )
        out.append(f"\nFor scale: DDP all-reduces {params / 1e3:.0f} KB of gradients per step.")
        if syncs:  # one transfer per flush expected (64 batches), none per batch
            out.append(
                table(
                    "CUDA host synchronisations (rank 0, sync debug mode)",
                    ["setup", "steps", "syncs", "per step"],
                    syncs,
                )
            )
        text = "\n".join(out)  # fmt: skip
        print(text, flush=True)
        if args.out:
            args.out.write_text(text + "\n")
    dist.destroy_process_group()


def _spawned(rank: int, world: int, port: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # fmt: skip
    if args.core:
        _core_only_import()
    run(args)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--core", action="store_true", help="no notebook stack needed")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--ranks", type=int, default=2, help="ranks to spawn (not under torchrun)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--bs", type=int, default=64, help="batch per rank")
    ap.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = ap.parse_args(argv)
    args.rounds, args.steps = (4, 64) if args.quick else (16, 128)
    if "RANK" in os.environ:  # launched by torchrun
        if args.core:
            _core_only_import()
        run(args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_spawned, args=(args.ranks, port, args), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
