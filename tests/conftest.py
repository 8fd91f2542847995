"""Shared helpers and fixtures: tiny models and data, an independent capture of layer
outputs, and the plain float64 computation that recorded stats are checked against."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actwidget.learner import Callback, TrainLearner
from actwidget.recorder import first_float_tensor
from actwidget.stats import StatsConfig

EXACT = StatsConfig(sample_size=None)


class Capture:
    """A separate forward hook per module that keeps a clone of every output (and its mode)."""

    def __init__(self, mods):
        mods = list(mods)
        self.outs = {m: [] for m in mods}
        self.modes = {m: [] for m in mods}
        self.handles = [m.register_forward_hook(self._hook) for m in mods]

    def _hook(self, m, inputs, out):
        self.outs[m].append(first_float_tensor(out).detach().clone())
        self.modes[m].append(m.training)

    def remove(self):
        for h in self.handles:
            h.remove()


def direct(acts, config: StatsConfig = EXACT) -> dict:
    """The stats of the values of `acts` (one batch, maybe several calls), computed plainly."""
    a = torch.cat([t.reshape(-1).float() for t in acts])
    ok = a.isfinite()
    fin = a[ok].double()
    mag = fin.abs()
    if config.hist == "linear":
        hist = torch.histc(mag.clamp(max=config.hist_max), config.bins, 0, config.hist_max)
    else:
        edges = torch.tensor(config.edges[1:-1], dtype=torch.float64)
        hist = torch.bincount(torch.bucketize(mag, edges, right=True), minlength=config.bins)
    return {
        "numel": a.numel(),
        "mean": fin.mean().item(),
        "std": fin.std().item(),
        "near_zero": (a.abs() <= config.near_zero).sum().item() / a.numel(),
        "nonfinite": (~ok).sum().item(),
        "hist": hist.double().numpy(),
    }


def assert_column(layer, i: int, acts, config: StatsConfig = EXACT) -> None:
    """Column i of `layer` holds exactly the stats of the activations `acts`."""
    d = direct(acts, config)
    assert layer.numel[i] == d["numel"]
    assert layer.mean[i] == pytest.approx(d["mean"], rel=1e-6, abs=1e-7)
    assert layer.std[i] == pytest.approx(d["std"], rel=1e-5, abs=1e-7)
    assert layer.near_zero[i] == pytest.approx(d["near_zero"], rel=1e-12)
    assert layer.nonfinite[i] == d["nonfinite"]
    np.testing.assert_array_equal(layer.hist[i], d["hist"])


def assert_exact(layer, outs, config: StatsConfig = EXACT) -> None:
    """Each column of `layer` holds exactly the stats of the matching activation."""
    assert len(layer) == len(outs)
    for i, out in enumerate(outs):
        assert_column(layer, i, [out], config)


def click_stop(widget) -> None:
    """What the browser's Stop does: the front end's stop message for the running fit,
    handled off the training thread (as the kernel's comm thread would)."""
    msg = {"type": "stop", "fit_id": widget.stop_button.fit_id}
    t = threading.Thread(target=widget.stop_button._handle_stop_msg, args=(None, msg, []))
    t.start()
    t.join()


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


class Every(Callback):
    """Runs `f(learn)` after every batch."""

    def __init__(self, f):
        self.f = f

    def after_batch(self, learn):
        self.f(learn)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
    )


def tiny_dls(n: int = 64, bs: int = 8, shape=(1, 8, 8), classes: int = 10):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(
        torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    )
    return SimpleNamespace(train=DataLoader(ds, batch_size=bs), valid=DataLoader(ds, batch_size=bs))


def fit(model, cbs, epochs: int = 1, dls=None) -> TrainLearner:
    learn = TrainLearner(model, dls or tiny_dls(), F.cross_entropy, lr=0.1, cbs=list(cbs))
    learn.fit(epochs)
    return learn


def plain_loop(model, hooks, steps: int, bs: int = 8, n_in: int = 6, seed: int = 0):
    """A plain PyTorch training loop of `steps` optimizer steps on random data."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = model(torch.randn(bs, n_in, generator=g)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if hooks.should_stop:
            break


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    yield
