"""Headless demo: train the reference CNN on Fashion-MNIST and save the static stats plots.

```sh
python -m actwidget.demo                       # 1 epoch, bs 1024, into a new temp folder
python -m actwidget.demo --epochs 2 --out runs/demo
```

It is the course's activations setup (SGD at lr 0.6, no special init), with the progress
shown in the terminal. It writes `mean_std.png`, `hist.png`, `near_zero.png` and the
recorded stats `stats.npz` (reload with `StoreModuleStatsCB().load(path)`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PLOTS", "main", "run"]

PLOTS = ("mean_std", "hist", "near_zero")
"""The plot files written, as `<name>.png`, by the function of `actwidget.plots` named
`<name>_plot`."""


def run(
    epochs: int = 1,
    bs: int = 1024,
    out: str | Path | None = None,
    root: str | Path | None = None,
) -> dict[str, Path]:
    """Train, then save the three plots and the stats into `out`; return the files by name.

    `out` defaults to a new folder `actwidget-demo-*` in the temp dir; `root` is passed to
    `fashion_mnist` (None: the cache / Debian package lookup).
    """
    import matplotlib.pyplot as plt
    import torch.nn.functional as F
    from torcheval.metrics import MulticlassAccuracy

    from . import plots
    from ._util import set_seed
    from .callbacks import DeviceCB, MetricsCB, ProgressCB
    from .callbacks.hooks import StoreModuleStatsCB
    from .data import fashion_mnist
    from .learner import TrainLearner
    from .models import CNN

    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="actwidget-demo-"))
    folder.mkdir(parents=True, exist_ok=True)

    # The reference setup of the course notebooks.
    cbs = [MetricsCB(MulticlassAccuracy(num_classes=10)), DeviceCB(), ProgressCB(plot=True)]
    set_seed(42)
    model = CNN()
    cb = StoreModuleStatsCB(mods=model.layers)
    dls = fashion_mnist(bs=bs, root=root)
    print(f"training the reference CNN on Fashion-MNIST ({dls}), {epochs} epoch(s), bs {bs}")
    TrainLearner(model, dls, F.cross_entropy, lr=0.6, cbs=[*cbs, cb]).fit(epochs)

    stats = cb.stats
    files: dict[str, Path] = {}
    for name in PLOTS:
        fig = getattr(plots, f"{name}_plot")(stats)
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files[name] = path
    files["stats"] = cb.save(folder / "stats.npz")
    return files


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of `python -m actwidget.demo`."""
    parser = argparse.ArgumentParser(
        prog="python -m actwidget.demo",
        description="Train the reference CNN on Fashion-MNIST and save activation-stats plots.",
    )
    parser.add_argument("--epochs", type=_positive, default=1, help="epochs (default 1)")
    parser.add_argument("--bs", type=_positive, default=1024, help="batch size (default 1024)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a new temp folder)"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="torchvision root holding FashionMNIST/raw (default: cache or Debian package)",
    )
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    files = run(epochs=args.epochs, bs=args.bs, out=args.out, root=args.root)
    folder = files["stats"].parent
    print(f"wrote to {folder}:")
    for path in files.values():
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
