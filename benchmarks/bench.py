"""Benchmark: what recording activation stats every batch costs, and what the widget costs.

Prints one markdown table per section, with the machine, torch version and settings:
  1. step time with each hook setup / without hooks: the reference CNN and a heavier net;
     the floor (a hook doing only `o.sum()`), actwidget's default and its variants, the
     course's approach and fastai's `ActivationStats(with_hist=True)`; a compiled model;
  2. microseconds per hooked call (forward only, one thread), by hooked-layer count, and
     per hooked layer in a full training step, with and without gradient stats;
  3. the sampled histogram and near-zero fraction against exact, on the heavy net;
  4. memory of the stats store after 10^5 and 10^6 batches of 10 layers;
  5. alert rules: microseconds per layer and batch;
  6. widget: Python-side time and bytes per redraw; step time with the live widget;
  7. on CUDA: host synchronisations per hooked step.
Ratios are measured side by side in one process (setups interleaved per round, medians
over rounds), never compared with absolute thresholds. Per-call costs use the thread's CPU
time, which other processes on the machine disturb far less than wall time.

    python benchmarks/bench.py            # everything this machine can run
    python benchmarks/bench.py --quick    # fewer steps, for a smoke run
    python benchmarks/bench.py --core     # no notebook packages needed (no widget rows)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setups import (
    SETUPS,
    Encoder,
    conv_outputs,
    deep_mlp,
    encoder_modules,
    have_fastai,
    heavy_net,
    make_batches,
)


def timed(handle, one_step, batches, warmup, clock=time.perf_counter, sync=lambda: None) -> float:
    """Seconds (of `clock`) per call of `one_step(batch)` over `batches`, each followed by
    `handle.step()`, after `warmup` untimed ones (plans made; a recorder's first batch,
    which it flushes at once, done). The final flush (`handle.close()`) is timed too."""
    try:
        for b in warmup:
            one_step(b)
            if handle is not None:
                handle.step()
        sync()
        t0 = clock()
        for b in batches:
            one_step(b)
            if handle is not None:
                handle.step()
        if handle is not None:
            handle, close = None, handle.close
            close()
        sync()
        return (clock() - t0) / len(batches)
    finally:
        if handle is not None:
            handle.close()


def train_steps(model, batches, setup: str, mods, opt, warmup: int = 2) -> float:
    """Seconds per training step (forward, loss, backward, SGD step) with `setup` on."""

    def one_step(batch) -> None:
        xb, yb = batch
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()

    sync = torch.cuda.synchronize if batches[0][0].is_cuda else (lambda: None)
    handle = SETUPS[setup](model, mods)
    return timed(handle, one_step, batches, batches[:warmup], sync=sync)


def ratios(times: dict[str, list[float]], base: str = "none") -> dict[str, float]:
    return {
        s: statistics.median([a / b for a, b in zip(t, times[base], strict=True)])
        for s, t in times.items()
    }


def step_table(device: str, rounds: int, steps: dict[str, int], compiled: bool) -> list[list]:
    """1: step-time ratios per setup, interleaved per round, medians over rounds."""
    from actwidget.models import CNN

    setups = [s for s in SETUPS if "fastai" not in s or have_fastai()]
    rows = []
    for net, make in [("reference CNN", CNN), ("heavy CNN", heavy_net)]:
        torch.manual_seed(0)
        model = make().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        batches = make_batches(steps[net], 256, device)
        mods = conv_outputs(model)
        times: dict[str, list[float]] = {s: [] for s in setups}
        for _ in range(rounds):
            for s in setups:
                times[s].append(train_steps(model, batches, s, mods, opt))
        r = ratios(times)
        rows += [[net, s, f"{statistics.median(times[s]) * 1e3:.2f}", f"{r[s]:.3f}"]
                 for s in setups]  # fmt: skip
    if compiled:
        rows += compiled_rows(device, max(rounds // 3, 2), steps["reference CNN"])
    return rows


COMPILED_NETS = ("reference CNN", "TransformerEncoder")
COMPILED_SETUPS = ("none", "actwidget default", "default + gradients")


def compiled_rows(device: str, rounds: int, n: int) -> list[list]:
    """`torch.compile(model, fullgraph=True)` with and without recording, each setup in a
    fresh process (in one process the compiler reuses one instance's code for another of
    the same class, hooks or not); rounds interleave the setups, ratios are per round."""
    import subprocess

    rows = []
    for net in COMPILED_NETS:
        times: dict[str, list[float]] = {s: [] for s in COMPILED_SETUPS}
        for _ in range(rounds):
            for setup in COMPILED_SETUPS:
                cmd = [sys.executable, __file__, "--compiled-one", net, setup, "--device", device,
                       "--steps", str(n)]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                times[setup].append(json.loads(out.strip().splitlines()[-1])["s"])
        r = ratios(times)
        rows += [[f"{net}, compiled (fullgraph)", s, f"{statistics.median(times[s]) * 1e3:.2f}",
                  f"{r[s]:.3f}"] for s in COMPILED_SETUPS]  # fmt: skip
    return rows


def compiled_one(net: str, setup: str, device: str, n: int) -> float:
    """Seconds per compiled training step of `net` with `setup` (run in a process of its own)."""
    from actwidget.models import CNN

    torch.manual_seed(0)
    if net == "reference CNN":
        model = CNN().to(device)
        batches = make_batches(n + 5, 256, device)
        mods = conv_outputs(model)
    else:
        model = Encoder().to(device)
        g = torch.Generator().manual_seed(0)
        ids = [torch.randint(0, 100, (32, 32), generator=g) for _ in range(n + 5)]
        batches = [(x.to(device), x[:, 0].remainder(10).to(device)) for x in ids]
        mods = encoder_modules(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    handle = SETUPS[setup](model, mods)  # hooks first, then compile: traced into the graph
    run = torch.compile(model, fullgraph=True)

    def one_step(batch) -> None:
        xb, yb = batch
        F.cross_entropy(run(xb), yb).backward()
        opt.step()
        opt.zero_grad()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return timed(handle, one_step, batches[5:], batches[:5], sync=sync)


def per_call_table(rounds: int, passes: int) -> list[list]:
    """2: microseconds per hooked call of a deep MLP, forward only, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = deep_mlp(100)
        x = torch.randn(64, 64)
        relus = [m for m in model if isinstance(m, torch.nn.ReLU)]

        def forward(_) -> None:
            with torch.no_grad():
                model(x)

        setups = ["none", "no-op hook", "o.sum() hook (floor)", "actwidget default",
                  "sampled moments", "all exact"]  # fmt: skip
        rows = []
        for k in (3, 24, 100):
            mods = relus[:: max(len(relus) // k, 1)][:k]
            times: dict[str, list[float]] = {s: [] for s in setups}
            for _ in range(rounds):
                for s in setups:
                    handle = SETUPS[s](model, mods)
                    clock = time.thread_time
                    times[s].append(timed(handle, forward, range(passes), range(2), clock))
            base = statistics.median(times["none"])
            for s in setups[1:]:
                us = (statistics.median(times[s]) - base) / k * 1e6
                rows.append([k, s, f"{us:.1f}"])
        rows += per_layer_training(rounds, passes, relus)
        return rows
    finally:
        torch.set_num_threads(threads)


def per_layer_training(rounds: int, steps: int, relus) -> list[list]:
    """Microseconds per hooked layer in a full training step (forward + backward + SGD)."""
    model = deep_mlp(100)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = make_batches(steps, 64, "cpu", shape=(64,))
    mods = [m for m in model if isinstance(m, torch.nn.ReLU)]
    setups = ["none", "o.sum() hook (floor)", "actwidget default", "default + gradients"]
    times: dict[str, list[float]] = {s: [] for s in setups}

    def one_step(batch) -> None:
        model(batch[0]).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(rounds):
        for s in setups:
            handle = SETUPS[s](model, mods)
            times[s].append(timed(handle, one_step, batches, batches[:1], time.thread_time))
    base = statistics.median(times["none"])
    return [[f"{len(mods)}, training step", s,
             f"{(statistics.median(times[s]) - base) / len(mods) * 1e6:.1f}"]
            for s in setups[1:]]  # fmt: skip


def deep_table(rounds: int, steps: int) -> list[list]:
    """2b: training-step ratios of deep models, every interesting module hooked (1 thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        g = torch.Generator().manual_seed(0)
        nets = [
            ("TransformerEncoder, 6 layers", Encoder, encoder_modules,
             [(torch.randint(0, 100, (32, 32), generator=g), torch.randint(0, 10, (32,)))
              for _ in range(steps)]),
            ("100-block MLP", deep_mlp, lambda m: [x for x in m if isinstance(x, torch.nn.ReLU)],
             make_batches(steps, 64, "cpu", shape=(64,))),
        ]  # fmt: skip
        setups = ["none", "o.sum() hook (floor)", "actwidget default", "default + gradients"]
        for net, make, pick, batches in nets:
            torch.manual_seed(0)
            model = make()
            mods = pick(model)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            times: dict[str, list[float]] = {s: [] for s in setups}

            def one_step(batch, model=model, opt=opt) -> None:
                xb, yb = batch
                out = model(xb)
                loss = out.pow(2).mean() if out.shape[-1] != 10 else F.cross_entropy(out, yb)
                loss.backward()
                opt.step()
                opt.zero_grad()

            for _ in range(rounds):
                for s in setups:
                    handle = SETUPS[s](model, mods)
                    clock = time.thread_time
                    times[s].append(timed(handle, one_step, batches, batches[:1], clock))
            r = ratios(times)
            base = statistics.median(times["none"])
            for s in setups:
                us = (statistics.median(times[s]) - base) / len(mods) * 1e6
                rows.append([net, len(mods), s, f"{base * 1e3:.1f}", f"{r[s]:.3f}",
                             f"{us:.0f}" if s != "none" else ""])  # fmt: skip
        return rows
    finally:
        torch.set_num_threads(threads)


def estimator_table(device: str) -> list[list]:
    """3: the default (sampled histogram and near-zero, exact moments) vs all exact."""
    from actwidget.recorder import StatsHooks
    from actwidget.stats import StatsConfig

    torch.manual_seed(0)
    model = heavy_net().to(device)
    mods = conv_outputs(model)
    batches = make_batches(4, 256, device)
    sampled = StatsHooks(mods, model=model)
    exact = StatsHooks(mods, model=model, config=StatsConfig(sample_size=None))
    for hooks in (sampled, exact):  # one recorder at a time watches a module: in turn
        with hooks, torch.no_grad():
            for xb, _ in batches:
                model(xb)
                hooks.end_batch()
    rows = []
    for name in exact.stats:
        s, e = sampled.stats[name], exact.stats[name]
        ps, pe = s.hist / s.hist.sum(1, keepdims=True), e.hist / e.hist.sum(1, keepdims=True)
        rows.append([name, f"{int(e.numel[0]):,}",
                     f"{np.abs(s.mean - e.mean).max() / e.std.max():.1e}",
                     f"{np.abs(s.std / e.std - 1).max():.1e}",
                     f"{np.abs(s.near_zero - e.near_zero).max():.4f}",
                     f"{0.5 * np.abs(ps - pe).sum(1).max():.4f}"])  # fmt: skip
    return rows


def moments_accuracy_table() -> list[list]:
    """3b: mean and std of large activations (12.8M values) against float64: the recorder's
    partial sums (float32 runs of at most 16384 values, added in float64) vs one float32
    `sum` and `dot` over the whole activation (what the recorder did before)."""
    from actwidget.recorder import StatsHooks

    rows = []
    g = torch.Generator().manual_seed(0)
    for name, make in [
        ("N(0, 1)", lambda: torch.randn(256, 64, 28, 28, generator=g)),
        ("ReLU(N(0.5, 1))", lambda: (torch.randn(256, 64, 28, 28, generator=g) + 0.5).relu()),
        ("N(3, 0.5)", lambda: 3 + 0.5 * torch.randn(256, 64, 28, 28, generator=g)),
    ]:
        x = make()
        ref = x.double().reshape(-1)
        rm, rs = ref.mean().item(), ref.std().item()
        flat = x.reshape(-1)
        n = flat.numel()
        s1, s2 = flat.sum().item(), torch.dot(flat, flat).item()
        old_std = ((s2 - s1 * s1 / n) / (n - 1)) ** 0.5
        layer = torch.nn.Identity()
        with StatsHooks([layer], alerts=False) as hooks:
            layer(x)
            hooks.end_batch()
        st = hooks.stats[hooks.names[0]]
        rows.append([name, f"{abs(st.mean[0] - rm) / rs:.1e}", f"{abs(st.std[0] / rs - 1):.1e}",
                     f"{abs(s1 / n - rm) / rs:.1e}", f"{abs(old_std / rs - 1):.1e}"])  # fmt: skip
    return rows


def synthetic_stats(n_batches: int, n_layers: int, chunk: int = 20_000):
    """A RunStats fed `n_batches` one-batch columns per layer (numpy only, fast)."""
    from actwidget.stats import HIST, Field, RunStats

    stats = RunStats()
    rng = np.random.default_rng(0)
    for start in range(0, n_batches, chunk):
        k = min(chunk, n_batches - start)
        cols = np.zeros((k, stats.config.width))
        steps = np.arange(start, start + k)
        cols[:, Field.BATCHES] = 1
        cols[:, Field.BATCH_SUM] = cols[:, Field.BATCH_FIRST] = cols[:, Field.BATCH_LAST] = steps
        cols[:, Field.NUMEL] = cols[:, Field.COUNT] = 1000
        cols[:, Field.MEAN] = rng.normal(size=k)
        cols[:, Field.M2] = 999
        cols[:, Field.UNITS] = 10
        cols[:, HIST:] = rng.poisson(25, (k, stats.config.bins))
        for i in range(n_layers):
            stats.append(f"layer{i}", cols)
    return stats


def memory_table() -> list[list]:
    """4: bytes held by the store after 10^5 and 10^6 batches of 10 layers."""
    rows = []
    for n in (10**5, 10**6):
        stats = synthetic_stats(n, 10, chunk=50_000)
        nbytes = sum(s.columns.nbytes for s in stats.values())
        cols = len(next(iter(stats.values())))
        rows.append([f"{n:,}", "10", cols, f"{nbytes / 2**20:.2f}"])
    return rows


def alerts_table() -> list[list]:
    """5: cost of the alert rules per flush, per layer and batch."""
    from actwidget.diagnose import AlertConfig, Diagnoser

    rows = []
    for layers, batches in ((5, 64), (100, 64)):
        stats = synthetic_stats(batches * 20, layers)
        cols = {n: s.columns for n, s in stats.items()}
        d = Diagnoser(AlertConfig(), list(cols))
        times = []
        for i in range(20):
            new = {n: c[i * batches : (i + 1) * batches] for n, c in cols.items()}
            t0 = time.thread_time()
            d.update(new, lambda b: 0, 1)
            times.append(time.thread_time() - t0)
        us = statistics.median(times) / (layers * batches) * 1e6
        rows.append([layers, batches, f"{us:.2f}"])
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


class GrowingSource:
    """A source whose stats grow between redraws, as a live run's do (a `RunStats` given to
    the widget directly is a finished snapshot)."""

    def __init__(self, stats) -> None:
        self._stats = stats

    @property
    def stats(self):
        return self._stats

    @property
    def status(self):
        from actwidget.source import RunState, RunStatus

        return RunStatus(state=RunState.FINISHED, fit=1, batch=self._stats.batches)

    @property
    def alerts(self) -> list:
        return self.stats.alerts

    def request_stop(self, fit_id: int | None = None) -> bool:
        return False

    def subscribe(self, listener):
        return lambda: None


def widget_table() -> list[list]:
    """6a: Python-side time and bytes per redraw, by layers and run length."""
    from actwidget.stats import Field
    from actwidget.widget import ActivationWidget

    rows = []
    for layers in (5, 100):
        for size in (100, 10_000, 100_000):
            stats = synthetic_stats(size, layers)
            w = ActivationWidget(GrowingSource(stats))
            comms = []
            for child in _all_widgets(w):
                child.comm = RecordingComm()
                comms.append(child.comm)
            one = synthetic_stats(1, 1)["layer0"].columns.copy()
            times, sent, n = [], 0, size
            for _ in range(5):
                n += 1  # a new batch arrives between redraws, as in a live run
                one[0, [Field.BATCH_SUM, Field.BATCH_FIRST, Field.BATCH_LAST]] = n
                for name in list(stats):
                    stats.append(name, one)
                before = sum(c.bytes for c in comms)
                t0 = time.perf_counter()
                w.redraw()
                times.append(time.perf_counter() - t0)
                sent = sum(c.bytes for c in comms) - before
            w.close()
            rows.append([layers, f"{size:,}", f"{statistics.median(times) * 1e3:.1f}",
                         f"{sent / 1024:.0f}"])  # fmt: skip
    return rows


def widget_overhead(rounds: int, n_steps: int) -> list[list]:
    """6b: step time with the widget redrawing at its default rate / without it."""
    from actwidget.callbacks.hooks import StoreModuleStatsCB
    from actwidget.data import DataLoaders
    from actwidget.learner import TrainLearner
    from actwidget.models import CNN
    from actwidget.widget import ActivationWidget

    batches = make_batches(n_steps, 256, "cpu")
    dls = DataLoaders(batches, batches[:1])
    times: dict[str, list[float]] = {"callback": [], "callback + widget": []}
    redraws = 0
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
            if w is not None:
                redraws = w.redraws
                w.close()
    r = ratios(times, "callback")
    return [[s, f"{statistics.median(t) * 1e3:.2f}", f"{r[s]:.3f}",
             redraws if "widget" in s else ""] for s, t in times.items()]  # fmt: skip


def cuda_sync_table(steps: int) -> list[list]:
    """7: host synchronisations per hooked step on CUDA (none expected)."""
    from actwidget.models import CNN

    rows = []
    for net, make in [("reference CNN", CNN), ("heavy CNN", heavy_net)]:
        model = make().cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        batches = make_batches(steps, 256, "cuda")
        counts = {}
        for setup in ("none", "actwidget default"):
            handle = SETUPS[setup](model, conv_outputs(model))
            for xb, yb in batches[:2]:  # warm-up: sample positions are made once per shape
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                opt.zero_grad()
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for xb, yb in batches:
                    F.cross_entropy(model(xb), yb).backward()
                    opt.step()
                    opt.zero_grad()
            torch.cuda.set_sync_debug_mode("default")
            counts[setup] = sum("synchroniz" in str(w.message) for w in caught)
            if handle is not None:
                handle.close()  # flushes: one transfer for everything recorded
        extra = counts["actwidget default"] - counts["none"]
        rows.append([net, steps, counts["none"], counts["actwidget default"],
                     f"{extra / steps:.2f}"])  # fmt: skip
    return rows


def table(title: str, header: list[str], rows: list[list]) -> str:
    lines = [f"\n#### {title}\n", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]  # fmt: skip
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--core", action="store_true", help="skip the widget (no notebook stack)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--only", help="run only the sections whose title contains this")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    ap.add_argument("--compiled-one", nargs=2, metavar=("NET", "SETUP"), help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=40, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.compiled_one:
        s = compiled_one(*args.compiled_one, args.device, args.steps)
        print(json.dumps({"s": s}))
        return
    logging.getLogger("actwidget").setLevel(logging.ERROR)  # the alerts of the test nets
    rounds = 3 if args.quick else 9
    steps = {"reference CNN": 20 if args.quick else 100, "heavy CNN": 2 if args.quick else 4}
    passes = 5 if args.quick else 20
    if args.device == "cuda":
        steps = {"reference CNN": 100, "heavy CNN": 50}
    out = [f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
           f"Python {platform.python_version()}, torch {torch.__version__}, device "
           f"{args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda"
                               else "")
           + f"; batch 256 of 1x28x28; {rounds} rounds; steps per round {steps}"]  # fmt: skip
    print(out[0], flush=True)
    sections = [
        ("1. Step time with each hook setup / no hooks (every batch, every conv layer)",
         ["net", "hooks", "ms/step", "ratio"],
         lambda: step_table(args.device, rounds, steps, not args.no_compile)),
        ("2. Microseconds per hooked call: 100-block MLP (Linear 64 + ReLU), bs 64, 1 thread",
         ["hooked layers", "hooks", "us per hooked call"],
         lambda: per_call_table(rounds, passes)),
        ("2b. Deep models: training step with every interesting module hooked, 1 thread",
         ["net", "hooked", "hooks", "ms/step, no hooks", "ratio", "us per hooked layer"],
         lambda: deep_table(rounds, 10 if args.quick else 30)),
        ("3b. Mean and std of a 12.8M-value activation vs float64 (relative to the std)",
         ["values", "mean err", "std rel err", "float32 sum: mean err", "float32 sum+dot: std"],
         moments_accuracy_table),
        ("3. Sampled histogram and near-zero fraction vs exact, heavy net, 4 batches",
         ["layer", "values/batch", "mean err / std", "std rel err", "near-zero abs err",
          "hist TV distance"], lambda: estimator_table(args.device)),
        ("4. Stats store memory (capacity 1024 columns/layer)",
         ["batches", "layers", "columns/layer", "MB"], memory_table),
        ("5. Alert rules, per flush", ["layers", "batches per flush", "us per layer-batch"],
         alerts_table),
    ]  # fmt: skip
    if not args.core:
        sections += [
            ("6a. Widget redraw, Python side", ["layers", "batches", "ms", "KiB sent"],
             widget_table),
            ("6b. Step time with the live widget (default refresh) / without, reference CNN",
             ["setup", "ms/step", "ratio", "redraws"],
             lambda: widget_overhead(rounds, 120 if args.quick else 400)),
        ]  # fmt: skip
    if args.device == "cuda":
        sections.append(
            ("7. CUDA host synchronisations during hooked steps (sync debug mode)",
             ["net", "steps", "syncs, no hooks", "syncs, hooks", "extra per step"],
             lambda: cuda_sync_table(20))
        )  # fmt: skip
    for title, header, run in sections:
        if args.only and args.only not in title:
            continue
        text = table(title, header, run())
        print(text, flush=True)
        out.append(text)
    if args.out:
        args.out.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
