"""A DDP training script for the torch.distributed tests, run as
`torchrun --nproc-per-node 2 tests/_dist_worker.py MODE OUT RUN_DIR [STEPS [ROOT]]`.

Each rank trains the same small model (DDP, gloo, CPU) on its own data, scaled differently
per rank, with `StatsHooks(..., run_dir=RUN_DIR, root_rank=ROOT)` (ROOT: 0 by default):
- `stats`: STEPS steps; every rank saves the outputs of the hooked layers (an independent
  forward hook) to OUT/acts{rank}.pt, so the test can pool them itself;
- `stop`: trains until the hooks say stop (at most 120 s); writes OUT/rank{rank}.json
  with its last step and the time it stopped; OUT/pid{rank} holds its pid once it runs.
- `tp`: tensor parallelism over both ranks: a column-wise sharded Linear (its output a
  DTensor sharded on the features) and a row-wise one (output replicated); STEPS forward
  passes; rank 0 saves the full logical outputs to OUT/full.pt.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from actwidget.recorder import StatsHooks
from actwidget.stats import StatsConfig

BATCH = {0: 8, 1: 5}  # ranks hold different numbers of rows


def batch_of(rank: int, step: int) -> torch.Tensor:
    """Rank `rank`'s input at `step`: scaled and shifted by rank."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(BATCH.get(rank, 6), 6, generator=g) * (1 + 2 * rank) + rank


def model_() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def tensor_parallel(out: Path, run_dir: Path, steps: int) -> None:
    """`tp` mode: the recorded stats of DTensor outputs are those of the full tensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 4))
    parallelize_module(
        model,
        mesh,
        {
            "0": ColwiseParallel(use_local_output=False),
            "1": RowwiseParallel(use_local_output=False),
        },
    )
    full: dict[int, list] = {0: [], 1: []}
    for i, m in enumerate(model):
        m.register_forward_hook(
            lambda m, a, o, i=i: full[i].append(o.full_tensor().detach().numpy().copy())
        )
    config = StatsConfig(sample_size=None)
    hooks = StatsHooks(list(model), model=model, config=config, run_dir=run_dir, flush_every=2)
    with hooks, torch.no_grad():
        for step in range(steps):
            g = torch.Generator().manual_seed(step)  # the same input on every rank
            model(torch.randn(8, 6, generator=g) * 2 + 1)
            hooks.end_batch()
    if rank == 0:
        torch.save(full, out / "full.pt")


def main(mode: str, out: Path, run_dir: Path, steps: int, root: int) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if mode == "tp":
        tensor_parallel(out, run_dir, steps)
        dist.destroy_process_group()
        return
    torch.set_num_threads(1)
    model = model_()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    acts: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(model))}
    if mode == "stats":
        for i, m in enumerate(model):
            m.register_forward_hook(lambda m, a, o, i=i: acts[i].append(o.detach().clone()))
    config = StatsConfig(sample_size=None)  # exact: pooled values are comparable
    hooks = StatsHooks(
        list(model), model=model, config=config, run_dir=run_dir, flush_every=4, root_rank=root
    )
    (out / f"pid{rank}").write_text(str(os.getpid()))
    step = 0
    deadline = time.time() + 120
    with hooks:
        while step < steps if mode == "stats" else time.time() < deadline:
            ddp(batch_of(rank, step)).pow(2).mean().backward()
            opt.step()  # ends the batch: flushes every 4, agrees on stopping every batch
            opt.zero_grad()
            step += 1
            if hooks.should_stop:
                break
    stopped = time.time()
    if mode == "stats":
        torch.save(acts, out / f"acts{rank}.pt")
    report = {
        "rank": rank,
        "step": step,
        "time": stopped,
        "state": hooks.status.state.value,
        "batches": hooks.stats.batches,  # what this rank keeps: nothing unless it is the root
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, out, run_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 10**9
    main(mode, out, run_dir, steps, int(sys.argv[5]) if len(sys.argv) > 5 else 0)
