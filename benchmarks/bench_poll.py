"""Benchmark: what reading widget messages at batch boundaries costs a blocking fit.

During a blocking fit the widget polls the kernel for the front end's messages at every
batch boundary, throttled to one read per `POLL_INTERVAL` (actwidget/widget/_kernel.py).
This measures it where it runs: inside a real ipykernel (started with jupyter_client, no
server), on its main thread, on the reference CNN (batch 256, every conv layer recorded):

  1. step time (the process's CPU time: on a shared machine wall time swings far more)
     with the recorder and a listener that polls at every batch (as the widget does)
     against the same loop whose listener does not poll: setups interleaved per round,
     the median of per-round ratios;
  2. one `poll()`: a throttled call (returns at once), and a read with nothing waiting;
     the cost per batch they add up to at this step time, as a share of a step.

    python benchmarks/bench_poll.py            # prints markdown
    python benchmarks/bench_poll.py --quick    # fewer steps and rounds, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Runs in the kernel (a cell): prints one JSON line with the measurements.
KERNEL_CODE = """\
import json, statistics, sys, time
import torch, torch.nn.functional as F
sys.path.insert(0, {here!r})
from _setups import conv_outputs, make_batches
from actwidget.models import CNN
from actwidget.recorder import StatsHooks
from actwidget.source import Event
from actwidget.widget import _kernel

torch.set_num_threads(1)  # one thread: no spinning workers for other processes to disturb
poller = _kernel.poller()
assert poller is not None, "no poller: not the kernel's main thread?"
torch.manual_seed(0)
model = CNN()
mods = conv_outputs(model)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
batches = make_batches({steps}, 256, "cpu")

def polling(event, source):
    if event is Event.BATCH:
        poller.poll()

def quiet(event, source):
    pass

def seconds_per_step(listener):
    hooks = StatsHooks(mods, model=model)
    hooks.subscribe(listener)
    hooks.begin_fit()
    try:
        def one(xb, yb) -> None:
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            hooks.end_batch()

        for xb, yb in batches[:2]:  # warm-up (the first batch flushes at once)
            one(xb, yb)
        t0 = time.process_time()  # CPU time of all threads: others' load disturbs it less
        for xb, yb in batches:
            one(xb, yb)
        hooks.end_fit()
        return (time.process_time() - t0) / len(batches)
    finally:
        hooks.remove()

times = {{"quiet": [], "polling": []}}
reads0 = None
for r in range({rounds}):
    order = ["quiet", "polling"] if r % 2 == 0 else ["polling", "quiet"]
    for name in order:
        times[name].append(seconds_per_step(polling if name == "polling" else quiet))

def per_call(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n

poller._last = time.perf_counter()
throttled = min(per_call(poller.poll, 100_000) for _ in range(5))
read = min(per_call(lambda: poller.poll(force=True), 2_000) for _ in range(5))
print(json.dumps({{"times": times, "throttled": throttled, "read": read,
                  "interval": poller.interval, "torch": torch.__version__,
                  "threads": torch.get_num_threads()}}))
"""


def run_in_kernel(code: str, timeout: float) -> dict:
    """Run `code` in a fresh ipykernel; returns the JSON it printed."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(HERE))
    try:
        msg_id = kc.execute(code)
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "stream":
                out.append(m["content"]["text"])
            elif m["msg_type"] == "error":
                raise RuntimeError("\n".join(m["content"]["traceback"]))
            elif m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
        else:
            raise TimeoutError(f"the benchmark cell ran past {timeout} s")
        return json.loads("".join(out).strip().splitlines()[-1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def report(r: dict, rounds: int, steps: int) -> str:
    quiet, polling = r["times"]["quiet"], r["times"]["polling"]
    ratios = [p / q for p, q in zip(polling, quiet, strict=True)]
    step = median(quiet)
    reads_per_batch = min(1.0, step / r["interval"])
    per_batch = r["throttled"] + reads_per_batch * (r["read"] - r["throttled"])
    lines = [
        "#### Polling for widget messages during a blocking fit (benchmarks/bench_poll.py)",
        "",
        f"{platform.machine()}, Python {platform.python_version()}, torch {r['torch']} "
        f"({r['threads']} threads), inside ipykernel on its main thread; reference CNN, "
        f"batch 256, 5 layers recorded; {steps} steps x {rounds} rounds, interleaved; "
        f"one read at most every {r['interval'] * 1e3:.0f} ms.",
        "",
        "| setup | CPU ms/step | ratio (median, min-max over rounds) |",
        "|---|---|---|",
        f"| recorder + listener, no polling | {step * 1e3:.2f} | 1.000 |",
        f"| recorder + listener polling at every batch | {median(polling) * 1e3:.2f} | "
        f"{median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |",
        "",
        "| poll() | us |",
        "|---|---|",
        f"| throttled call (returns at once) | {r['throttled'] * 1e6:.2f} |",
        f"| a read, nothing waiting | {r['read'] * 1e6:.1f} |",
        f"| per batch at {step * 1e3:.1f} ms/step ({reads_per_batch:.2f} reads/batch) | "
        f"{per_batch * 1e6:.2f} ({per_batch / step:.3%} of a step) |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--steps", type=int, default=200, help="steps per setup and round")
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args(argv)
    steps, rounds = (40, 4) if args.quick else (args.steps, args.rounds)
    code = KERNEL_CODE.format(here=str(HERE), steps=steps, rounds=rounds)
    print(report(run_in_kernel(code, timeout=3600), rounds, steps), flush=True)


if __name__ == "__main__":
    sys.exit(main())
