"""Benchmark: what recording activation stats every batch costs, and what the widget costs.

Prints one markdown table per figure, with the machine, torch version and settings:
  1. step time with stats recording / without hooks (reference CNN and a heavier net), for
     the default sampled estimator, exact mode and the reference approach (copy to the CPU,
     then mean, std, abs().histc(40, 0, 10)); plus the estimator's error against exact;
  2. widget: Python-side time and bytes per redraw at batch 100, 10,000 and 100,000;
  3. memory of the stats store after 10^5 and 10^6 batches of 10 layers;
  4. step time with the live widget attached (default refresh) / without;
  5. on CUDA: host synchronisations per hooked step, and target 1's ratio there.
Ratios are measured side by side in one process (configurations interleaved per round,
medians over rounds), never compared with absolute thresholds.

    python benchmarks/bench.py            # everything this machine can run
    python benchmarks/bench.py --quick    # fewer steps, for a smoke run
    python benchmarks/bench.py --core     # only 1, 3 and 5: no notebook packages needed
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _core_only_import() -> None:
    """Import actwidget's core modules without the notebook stack (e.g. on a bare GPU box)."""
    pkg = types.ModuleType("actwidget")
    pkg.__path__ = [str(ROOT / "actwidget")]
    sys.modules["actwidget"] = pkg


def heavy_net() -> nn.Module:
    """Five 3x3 conv layers with 32-64 channels at full 28x28 resolution, then a linear head."""
    chans = [1, 32, 64, 64, 64, 64]
    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(chans):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def conv_outputs(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are recorded: each conv (+ReLU) layer's output."""
    mods = list(model.layers) if hasattr(model, "layers") else list(model)
    return [m for i, m in enumerate(mods) if isinstance(m, nn.ReLU) or hasattr(m, "nonlinearity")
            or (isinstance(m, nn.Conv2d) and i == len(mods) - 1)]  # fmt: skip


class ReferenceHooks:
    """The reference approach: copy each activation to the CPU, then mean, std and histc."""

    def __init__(self, mods: list[nn.Module]) -> None:
        self.stats: list[tuple] = []
        self.handles = [m.register_forward_hook(self.hook) for m in mods]

    def hook(self, m, inp, out) -> None:
        acts = out.detach().cpu()
        self.stats.append((acts.mean(), acts.std(), acts.abs().histc(40, 0, 10)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def make_batches(n: int, bs: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(bs, 1, 28, 28, generator=g).to(device),
         torch.randint(0, 10, (bs,), generator=g).to(device))
        for _ in range(n)
    ]  # fmt: skip


def time_steps(model, batches, setup, device) -> float:
    """Seconds per training step (forward, loss, backward, SGD step) with `setup` hooks on."""
    from actwidget.hooks import StatsHooks
    from actwidget.stats import StatsConfig

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mods = conv_outputs(model)
    hooks: object = None
    if setup == "sampled":
        hooks = StatsHooks(mods, model=model)
    elif setup == "sampled + exact moments":
        hooks = StatsHooks(mods, model=model, config=StatsConfig(exact_moments=True))
    elif setup == "exact":
        hooks = StatsHooks(mods, model=model, config=StatsConfig(sample_size=None))
    elif setup == "reference":
        hooks = ReferenceHooks(mods)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    try:
        for xb, yb in batches[:2]:  # warm-up
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
        sync()
        t0 = time.perf_counter()
        for xb, yb in batches:
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            if isinstance(hooks, StatsHooks) and hooks[0].calls % 64 == 0:
                hooks.flush()  # what the callback does every 64 batches
        sync()
        return (time.perf_counter() - t0) / len(batches)
    finally:
        if hooks is not None:
            hooks.remove()


def overhead_table(device: str, rounds: int, steps: dict[str, int]) -> list[list]:
    """Target 1: step-time ratios, interleaved per round, medians over rounds."""
    from actwidget.models import CNN

    rows = []
    for net, make in [("reference CNN", CNN), ("heavy CNN", heavy_net)]:
        torch.manual_seed(0)
        model = make().to(device)
        batches = make_batches(steps[net], 256, device)
        setups = ["none", "sampled", "sampled + exact moments", "exact", "reference"]
        times: dict[str, list[float]] = {s: [] for s in setups}
        for _ in range(rounds):
            for s in setups:
                times[s].append(time_steps(model, batches, s, device))
        base = times["none"]
        for s in setups:
            ratios = [t / b for t, b in zip(times[s], base, strict=True)]
            rows.append([net, s, f"{statistics.median(times[s]) * 1e3:.2f}",
                         f"{statistics.median(ratios):.3f}"])  # fmt: skip
    return rows


def estimator_error(device: str) -> list[list]:
    """Sampled (default) vs exact stats on the same activations of the heavy net."""
    from actwidget.hooks import StatsHooks
    from actwidget.stats import StatsConfig

    torch.manual_seed(0)
    model = heavy_net().to(device)
    mods = conv_outputs(model)
    sampled = StatsHooks(mods, model=model)
    exact = StatsHooks(mods, model=model, config=StatsConfig(sample_size=None))
    with torch.no_grad():
        for xb, _ in make_batches(4, 256, device):
            model(xb)
    sampled.remove()
    exact.remove()
    rows = []
    for name in exact.stats:
        s, e = sampled.stats[name], exact.stats[name]
        ps, pe = s.hist / s.hist.sum(1, keepdims=True), e.hist / e.hist.sum(1, keepdims=True)
        rows.append([name, f"{int(e.numel[0]):,}",
                     f"{np.abs(s.mean - e.mean).max() / e.std.max():.4f}",
                     f"{np.abs(s.std / e.std - 1).max():.4f}",
                     f"{np.abs(s.near_zero - e.near_zero).max():.4f}",
                     f"{0.5 * np.abs(ps - pe).sum(1).max():.4f}"])  # fmt: skip
    return rows


def synthetic_stats(n_batches: int, n_layers: int, chunk: int = 20_000):
    """A RunStats fed `n_batches` one-batch columns per layer (numpy only, fast)."""
    from actwidget.stats import (
        BATCHES,
        COUNT,
        HIST,
        M2,
        MEAN,
        NUMEL,
        STEP_FIRST,
        STEP_LAST,
        STEP_SUM,
        RunStats,
    )

    stats = RunStats()
    rng = np.random.default_rng(0)
    for start in range(0, n_batches, chunk):
        k = min(chunk, n_batches - start)
        cols = np.zeros((k, stats.config.width))
        steps = np.arange(start, start + k)
        cols[:, BATCHES] = 1
        cols[:, STEP_SUM] = cols[:, STEP_FIRST] = cols[:, STEP_LAST] = steps
        cols[:, NUMEL] = cols[:, COUNT] = 1000
        cols[:, MEAN] = rng.normal(size=k)
        cols[:, M2] = 999
        cols[:, HIST:] = rng.poisson(25, (k, stats.config.bins))
        for i in range(n_layers):
            stats.append(f"layer{i}", cols)
    return stats


def memory_table() -> list[list]:
    """Target 3: bytes held by the store after 10^5 and 10^6 batches of 10 layers."""
    rows = []
    for n in (10**5, 10**6):
        stats = synthetic_stats(n, 10, chunk=50_000)
        nbytes = sum(s.columns.nbytes for s in stats.values())
        cols = len(next(iter(stats.values())))
        rows.append([f"{n:,}", "10", cols, f"{nbytes / 2**20:.2f}"])
    return rows


class RecordingComm:
    """Stands in for a kernel comm: serialises each message as ipykernel would, counts bytes."""

    def __init__(self) -> None:
        self.bytes = self.messages = 0
        self.comm_id = "bench"
        self.kernel = True  # ipywidgets only sends when the comm has a kernel

    def send(self, data=None, metadata=None, buffers=None) -> None:
        self.messages += 1
        self.bytes += len(json.dumps(data, default=str)) + sum(
            memoryview(b).nbytes for b in (buffers or [])
        )

    def on_msg(self, *a) -> None: ...
    def on_close(self, *a) -> None: ...
    def close(self, *a, **k) -> None: ...


def widget_table() -> list[list]:
    """Target 2: Python-side time and bytes per redraw, flat in run length."""
    from actwidget.widget import ActivationWidget

    rows = []
    for size in (100, 10_000, 100_000):
        stats, n = synthetic_stats(size, 5), size
        w = ActivationWidget(stats)
        comms = []
        for child in _all_widgets(w):
            child.comm = RecordingComm()
            comms.append(child.comm)
        one = synthetic_stats(1, 1)["layer0"].columns.copy()
        for heat in (False, True):
            times = []
            for _ in range(5):
                n += 1  # a new batch arrives between redraws, as in a live run
                one[0, [1, 2, 3]] = n
                for name in list(stats):
                    stats.append(name, one)
                before = sum(c.bytes for c in comms)
                t0 = time.perf_counter()
                w._redraw(heatmaps=heat, force=True)
                times.append(time.perf_counter() - t0)
                sent = sum(c.bytes for c in comms) - before
            what = "lines + heatmaps" if heat else "lines"
            ms = statistics.median(times) * 1e3
            rows.append([f"{size:,}", what, f"{ms:.1f}", f"{sent / 1024:.0f}"])
    return rows


def _all_widgets(root):
    import ipywidgets

    seen, todo = [], [root]
    while todo:
        w = todo.pop()
        if not isinstance(w, ipywidgets.Widget) or any(w is s for s in seen):
            continue
        seen.append(w)
        for name in w.keys:
            v = getattr(w, name, None)
            todo += v if isinstance(v, (list, tuple)) else [v]
            if isinstance(v, dict):
                todo += list(v.values())
    return seen


def widget_overhead(rounds: int, n_steps: int) -> list[list]:
    """Target 4: step time with the widget redrawing at its default rate / without it."""
    from actwidget.callbacks.hooks import StoreModuleStatsCB
    from actwidget.data import DataLoaders
    from actwidget.learner import TrainLearner
    from actwidget.models import CNN
    from actwidget.widget import ActivationWidget

    batches = make_batches(n_steps, 256, "cpu")
    dls = DataLoaders(batches, batches[:1])
    times: dict[str, list[float]] = {"callback": [], "callback + widget": []}
    for _ in range(rounds):
        for setup in times:
            torch.manual_seed(0)
            model = CNN()
            cb = StoreModuleStatsCB(mods=model.layers)
            w = ActivationWidget(cb) if "widget" in setup else None
            if w is not None:
                for child in _all_widgets(w):
                    child.comm = RecordingComm()
            learn = TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=[cb])
            t0 = time.perf_counter()
            learn.fit(1, valid=False)
            times[setup].append((time.perf_counter() - t0) / n_steps)
            redraws = w.redraws if w is not None else 0
    base = times["callback"]
    return [[s, f"{statistics.median(t) * 1e3:.2f}",
             f"{statistics.median([a / b for a, b in zip(t, base, strict=True)]):.3f}",
             redraws if "widget" in s else ""] for s, t in times.items()]  # fmt: skip


def cuda_sync_table(steps: int) -> list[list]:
    """Target 5: host synchronisations per hooked step on CUDA (none expected)."""
    from actwidget.hooks import StatsHooks
    from actwidget.models import CNN

    rows = []
    for net, make in [("reference CNN", CNN), ("heavy CNN", heavy_net)]:
        model = make().cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        batches = make_batches(steps, 256, "cuda")
        counts = {}
        for setup in ("none", "sampled"):
            hooks = StatsHooks(conv_outputs(model), model=model) if setup == "sampled" else None
            for xb, yb in batches[:2]:  # warm-up: index tensors are made once per shape
                F.cross_entropy(model(xb), yb).backward()
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for xb, yb in batches:
                    F.cross_entropy(model(xb), yb).backward()
                    opt.step()
                    opt.zero_grad()
            torch.cuda.set_sync_debug_mode("default")
            counts[setup] = sum("synchroniz" in str(w.message) for w in caught)
            if hooks is not None:
                hooks.remove()  # flushes: one transfer for everything recorded
        extra = counts["sampled"] - counts["none"]
        rows.append([net, steps, counts["none"], counts["sampled"], f"{extra / steps:.2f}"])
    return rows


def table(title: str, header: list[str], rows: list[list]) -> str:
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]  # fmt: skip
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--core", action="store_true", help="skip the widget (no notebook stack)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = ap.parse_args(argv)
    if args.core:
        _core_only_import()
    rounds = 3 if args.quick else 9
    steps = {"reference CNN": 20 if args.quick else 200, "heavy CNN": 3 if args.quick else 5}
    if args.device == "cuda":
        steps = {"reference CNN": 100, "heavy CNN": 50}
    out = [f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
           f"{platform.python_version()}, torch {torch.__version__}, device {args.device}"
           + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
           + f"; batch 256 of 1x28x28; {rounds} rounds; steps per round {steps}"]  # fmt: skip
    print(out[0], flush=True)
    sections = [
        ("1. Step time, recording every batch of every conv layer / no hooks",
         ["net", "hooks", "ms/step", "ratio"], lambda: overhead_table(args.device, rounds, steps)),
        ("1b. Default estimator (~2048 sampled values/layer) vs exact, heavy net, 4 batches",
         ["layer", "values/batch", "mean err / std", "std rel err", "near-zero abs err",
          "hist TV distance"],
         lambda: estimator_error(args.device)),
        ("3. Stats store memory (capacity 1024 columns/layer)",
         ["batches", "layers", "columns/layer", "MB"], memory_table),
    ]  # fmt: skip
    if not args.core:
        sections += [
            ("2. Widget redraw, Python side (5 layers, 40 bins)",
             ["batches", "redraw", "ms", "KiB sent"], widget_table),
            ("4. Step time with the live widget (default refresh) / without, reference CNN",
             ["setup", "ms/step", "ratio", "redraws"],
             lambda: widget_overhead(rounds, 120 if args.quick else 400)),
        ]  # fmt: skip
    if args.device == "cuda":
        sections.append(
            ("5. CUDA host synchronisations during hooked steps (sync debug mode)",
             ["net", "steps", "syncs, no hooks", "syncs, hooks", "extra per step"],
             lambda: cuda_sync_table(20))
        )  # fmt: skip
    for title, header, run in sections:
        text = table(title, header, run())
        print(text, flush=True)
        out.append(text)
    if args.out:
        args.out.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
