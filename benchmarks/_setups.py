"""What the benchmark measures: the nets, the data, and every way of hooking a layer.

A setup is a name and a function `(model, mods) -> Handle` that registers its hooks and
returns something with `step()` (called after each optimizer step) and `close()`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from actwidget.recorder import StatsHooks
from actwidget.stats import StatsConfig


def heavy_net() -> nn.Module:
    """Five 3x3 conv layers with 32-64 channels at full 28x28 resolution, then a linear head."""
    chans = [1, 32, 64, 64, 64, 64]
    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(chans):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def deep_mlp(blocks: int = 100, width: int = 64) -> nn.Sequential:
    """`blocks` x (Linear(width, width), ReLU): many small layers, where fixed costs show."""
    return nn.Sequential(*[m for _ in range(blocks) for m in (nn.Linear(width, width), nn.ReLU())])


class Encoder(nn.Module):
    """Token embedding, a 6-layer TransformerEncoder (d 64, 4 heads), a classification head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 64)
        layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)
        self.head = nn.Linear(64, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(1))


def encoder_modules(model: nn.Module) -> list[nn.Module]:
    """Every Linear, LayerNorm and attention module (those a forward calls)."""
    kinds = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention)
    return [m for n, m in model.named_modules() if isinstance(m, kinds) and "out_proj" not in n]


def conv_outputs(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are recorded: each conv (+ReLU) layer's output."""
    mods = list(model.layers) if hasattr(model, "layers") else list(model)
    return [m for i, m in enumerate(mods) if isinstance(m, nn.ReLU) or hasattr(m, "nonlinearity")
            or (isinstance(m, nn.Conv2d) and i == len(mods) - 1)]  # fmt: skip


def make_batches(n: int, bs: int, device: str, shape=(1, 28, 28)) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(bs, *shape, generator=g).to(device),
         torch.randint(0, 10, (bs,), generator=g).to(device))
        for _ in range(n)
    ]  # fmt: skip


class Handle(NamedTuple):
    """Hooks of one setup: `step()` after each optimizer step, `close()` at the end."""

    step: Callable[[], Any]
    close: Callable[[], Any]


def _plain(mods: list[nn.Module], fn: Callable[..., Any]) -> Handle:
    handles = [m.register_forward_hook(fn) for m in mods]
    return Handle(lambda: None, lambda: [h.remove() for h in handles])


def _actwidget(config: StatsConfig | None = None, alerts: bool = True):
    def make(model: nn.Module, mods: list[nn.Module]) -> Handle:
        hooks = StatsHooks(mods, model=model, config=config, alerts=alerts)
        hooks.begin_fit()

        def close() -> None:
            hooks.end_fit()
            hooks.remove()

        return Handle(hooks.end_batch, close)

    return make


def _course(model: nn.Module, mods: list[nn.Module]) -> Handle:
    """The course's approach: copy each activation to the CPU, then mean, std and histc."""
    kept: list[tuple] = []

    def hook(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        acts = out.detach().cpu()
        kept.append((acts.mean(), acts.std(), acts.abs().histc(40, 0, 10)))

    return _plain(mods, hook)


def _fastai(model: nn.Module, mods: list[nn.Module]) -> Handle:
    """fastai's `ActivationStats(with_hist=True)`: its own hook function and `Hooks`."""
    from fastai.callback.hook import ActivationStats, Hooks

    acts = ActivationStats(with_hist=True)
    hooks = Hooks(mods, acts.hook, detach=True, cpu=True)  # HookCallback's defaults
    stats: list[Any] = []
    return Handle(lambda: stats.append(hooks.stored), hooks.remove)


def _sum_hook(m: nn.Module, i: Any, o: Any) -> None:
    (o if isinstance(o, torch.Tensor) else o[0]).sum()  # one extra read: the floor for any
    # exact statistic (attention returns a tuple: its first tensor)


SETUPS: dict[str, Callable[[nn.Module, list[nn.Module]], Handle | None]] = {
    "none": lambda model, mods: None,
    "no-op hook": lambda model, mods: _plain(mods, lambda m, i, o: None),
    "o.sum() hook (floor)": lambda model, mods: _plain(mods, _sum_hook),
    "actwidget default": _actwidget(),
    "default + gradients": _actwidget(StatsConfig(grads=True)),
    "default, no alerts": _actwidget(alerts=False),
    "sampled moments": _actwidget(StatsConfig(exact_moments=False)),
    "all exact": _actwidget(StatsConfig(sample_size=None)),
    "course (to CPU, mean/std/histc)": _course,
    "fastai ActivationStats(with_hist)": _fastai,
}


def have_fastai() -> bool:
    try:
        import fastai.callback.hook  # noqa: F401
    except ImportError:
        return False
    return True
