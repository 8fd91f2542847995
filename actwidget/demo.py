"""Headless demo: train the reference CNN on Fashion-MNIST, say what went wrong, save the plots.

```sh
python -m actwidget                              # 1 epoch, lr 0.6: alerts, on purpose
python -m actwidget --lr 0.2 --init kaiming      # the fix: no alert
python -m actwidget demo --epochs 2 --out runs/demo
```

The default is the course's activations setup (SGD at lr 0.6, no special init): too high
a learning rate for a network without normalisation, chosen so that the alerts have
something to say. Progress shows in the terminal, each alert on a line of its own after
the progress line, then a one-line verdict. It writes `mean_std.png`, `hist.png`,
`near_zero.png` and the recorded stats `stats.npz` (reload with `RunStats.load(path)`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli import OneLineParser, positive_float, positive_int

__all__ = ["DESCRIPTION", "PLOTS", "add_arguments", "main", "run", "verdict"]

PLOTS = ("mean_std", "hist", "near_zero")
"""The plot files written, as `<name>.png`, by the function of `actwidget.plots` named
`<name>_plot`."""

DESCRIPTION = (
    "Train the reference CNN on Fashion-MNIST with its activation stats recorded, print "
    "the alerts and a verdict, and save the static plots. The defaults (lr 0.6, default "
    "init) go wrong on purpose; --lr 0.2 --init kaiming is the fix."
)
_BROKEN = (0.6, "default")  # the setup that goes wrong on purpose
_FIX = "python -m actwidget --lr 0.2 --init kaiming"


def run(
    epochs: int = 1,
    bs: int = 1024,
    out: str | Path | None = None,
    root: str | Path | None = None,
    lr: float = 0.6,
    init: str = "default",
) -> dict[str, Path]:
    """Train, print the verdict, then save the three plots and the stats into `out`;
    return the files by name.

    `out` defaults to a new folder `actwidget-demo-*` in the temp dir; `root` is passed to
    `fashion_mnist` (None: the cache / Debian package lookup); `init`: "default" (PyTorch's)
    or "kaiming" (`kaiming_normal_` on the conv weights, zero biases).
    """
    import matplotlib.pyplot as plt
    import torch.nn.functional as F
    from torch import nn

    from . import plots
    from ._util import set_seed
    from .callbacks import DeviceCB, MetricsCB, ProgressCB
    from .callbacks.hooks import StoreModuleStatsCB
    from .callbacks.metrics import MulticlassAccuracy  # imported with torcheval's warning off
    from .data import fashion_mnist
    from .learner import TrainLearner
    from .models import CNN

    if init not in ("default", "kaiming"):
        raise ValueError(f'init must be "default" or "kaiming", got {init!r}')
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="actwidget-demo-"))
    folder.mkdir(parents=True, exist_ok=True)

    metrics = MetricsCB(MulticlassAccuracy(num_classes=10))
    cbs = [metrics, DeviceCB(), ProgressCB(plot=True)]
    set_seed(42)
    model = CNN()
    if init == "kaiming":
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
    cb = StoreModuleStatsCB(mods=model.layers)
    dls = fashion_mnist(bs=bs, root=root)
    print(
        f"training the reference CNN on Fashion-MNIST ({dls}): {epochs} epoch(s), bs {bs}, "
        f"lr {lr:g}, {init} init"
    )
    TrainLearner(model, dls, F.cross_entropy, lr=lr, cbs=[*cbs, cb]).fit(epochs)

    stats = cb.stats
    files: dict[str, Path] = {}
    for name in PLOTS:
        fig = getattr(plots, f"{name}_plot")(stats)
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files[name] = path
    files["stats"] = cb.save(folder / "stats.npz")
    print(f"wrote to {folder}: {', '.join(p.name for p in files.values())}")
    print(verdict(stats.alerts, _accuracy(metrics.log), lr, init))
    return files


def verdict(alerts: Sequence[Any], accuracy: float | None, lr: float, init: str) -> str:
    """One line on how the run went: its alerts (and, for the setup that goes wrong on
    purpose, the command that fixes it), or that it stayed healthy."""
    acc = "" if accuracy is None else f", accuracy {accuracy:.3f}"
    if not alerts:
        return f"verdict: no alerts, the activations stayed healthy (lr {lr:g}, {init} init{acc})"
    kinds = ", ".join(dict.fromkeys(a.kind for a in alerts))
    seen = f"{len(alerts)} alert{'s' * (len(alerts) > 1)} above ({kinds})"
    if (lr, init) == _BROKEN:
        return (
            f"verdict: lr 0.6 with the default init goes wrong on purpose: {seen}{acc}.\n"
            f"         the fix: {_FIX}"
        )
    return f"verdict: {seen}{acc}; each alert says what usually fixes it"


def _accuracy(log: list[dict[str, Any]]) -> float | None:
    """The last evaluation's accuracy in a `MetricsCB.log`, if any."""
    rows = [r for r in log if r.get("train") == "eval" and "MulticlassAccuracy" in r]
    return float(rows[-1]["MulticlassAccuracy"]) if rows else None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options, on `parser`."""
    parser.add_argument("--epochs", type=positive_int, default=1, help="epochs (default 1)")
    parser.add_argument("--bs", type=positive_int, default=1024, help="batch size (default 1024)")
    parser.add_argument(
        "--lr", type=positive_float, default=0.6, help="learning rate (default 0.6: too high)"
    )
    parser.add_argument(
        "--init", choices=("default", "kaiming"), default="default",
        help="weight init of the convs (default: PyTorch's; kaiming: the fix)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a new temp folder)"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="torchvision root holding FashionMNIST/raw (default: cache or Debian package)",
    )
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the demo with parsed options (files only: no plot window)."""
    import matplotlib

    matplotlib.use("Agg")
    run(epochs=args.epochs, bs=args.bs, out=args.out, root=args.root, lr=args.lr, init=args.init)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of `python -m actwidget.demo` (as `python -m actwidget demo`)."""
    parser = add_arguments(OneLineParser(prog="python -m actwidget.demo", description=DESCRIPTION))
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
