"""The course's reference code runs unchanged after `from actwidget import *`."""

from __future__ import annotations

import struct

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torchvision

from actwidget import data

REFERENCE = """
def train(model, extra_cbs=None):
    cbs = [MetricsCB(MulticlassAccuracy(num_classes=10)), DeviceCB(), ProgressCB(plot=True)]
    if extra_cbs: cbs.extend(extra_cbs)
    return TrainLearner(model, fashion_mnist(), F.cross_entropy, lr=0.6, cbs=cbs).fit()
set_seed(42)
model = CNN(); cb = StoreModuleStatsCB(mods=model.layers)
train(model=model, extra_cbs=[cb]); cb.mean_std_plot(); cb.hist_plot()
"""

N_TRAIN, N_TEST = 600, 100  # 3 training batches of the default 256 (the last one 88)


def write_raw(folder, n: int, split: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
    for kind, t, magic in (("images-idx3", images, 0x0803), ("labels-idx1", labels, 0x0801)):
        header = struct.pack(f">{1 + t.ndim}i", magic, *t.shape)
        (folder / f"{split}-{kind}-ubyte").write_bytes(header + t.numpy().tobytes())


@pytest.fixture
def small_fashion_mnist(monkeypatch, tmp_path):
    """Small IDX files in a tmp ACTWIDGET_DATA cache; no Debian package, no download."""
    cache = tmp_path / "cache"
    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_raw(raw, N_TRAIN, "train", 0)
    write_raw(raw, N_TEST, "t10k", 1)
    monkeypatch.setenv("ACTWIDGET_DATA", str(cache))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")

    def no_download(self):
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_download)
    yield
    plt.close("all")


def test_reference_code_runs_unchanged(small_fashion_mnist, capsys):
    ns: dict = {}
    exec("from actwidget import *", ns)
    before = set(plt.get_fignums())
    exec(REFERENCE, ns)
    cb, model = ns["cb"], ns["model"]
    stats = cb.stats
    assert list(stats) == [f"layers.{i} (Conv2dWithReLU)" for i in range(4)] + ["layers.4 (Conv2d)"]
    assert cb.batches == 3
    for i, s in enumerate(stats.values()):
        assert len(s) == 3, s  # one column per training batch
        np.testing.assert_array_equal(s.batches, 1)
        np.testing.assert_array_equal(s.batch, [0, 1, 2])
        assert np.isfinite(s.mean).all() and (s.std > 0).all()
        np.testing.assert_array_equal(s.nonfinite, 0)
        np.testing.assert_allclose(s.hist.sum(1), s.numel, rtol=1e-9)
        if i < 4:
            assert (s.near_zero > 0).all()  # ReLU layers have zeros
    np.testing.assert_array_equal(
        stats["layers.0 (Conv2dWithReLU)"].numel, [256 * 8 * 14 * 14] * 2 + [88 * 8 * 14 * 14]
    )
    np.testing.assert_array_equal(stats["layers.4 (Conv2d)"].numel, [2560, 2560, 880])
    assert all(not m._forward_hooks for m in model.modules())
    new = set(plt.get_fignums()) - before
    assert len(new) == 2  # the mean/std figure and the histograms
    out = capsys.readouterr().out
    assert "MulticlassAccuracy" in out and "eval" in out


# The course code actwidget's seed comes from (jeremyadamsfisher/SlowAI, its notebooks on
# fast.ai course22p2's activations lesson: nbs/08_activations.ipynb, 09_initializations):
# its construction and plotting calls, as written. What actwidget provides (Conv2dWithReLU,
# StoreModuleStats, StoreModuleStatsCB, HooksCallback, the Learner, fashion_mnist) comes from
# actwidget; the notebooks' own classes (CNN, GeneralReLU, ...) are defined as they are
# there. Not run: the course's hist_plot body (torch.stack(h.hists) needs a list of tensors;
# get_grid/show_image are not actwidget's) and MomentumCB/LRFinderCB (not provided).
COURSE = '''
set_seed(42)
plt.style.use("ggplot")

class CNN(nn.Module):
    """Six layer convolutional neural network"""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            Conv2dWithReLU(1, 8, kernel_size=5, stride=2, padding=2),  # 14x14
            Conv2dWithReLU(8, 16, kernel_size=3, stride=2, padding=1),  # 7x7
            Conv2dWithReLU(16, 32, kernel_size=3, stride=2, padding=1),  # 4x4
            Conv2dWithReLU(32, 64, kernel_size=3, stride=2, padding=1),  # 2x2
            nn.Conv2d(64, 10, kernel_size=3, stride=2, padding=1),  # 1x1
        )

    def forward(self, x):
        return rearrange(self.layers(x), "bs c w h -> bs (c w h)")

def train(model, extra_cbs=None):
    cbs = [
        MetricsCB(MulticlassAccuracy(num_classes=10)),
        DeviceCB(),
        ProgressCB(plot=True),
    ]
    if extra_cbs:
        cbs.extend(extra_cbs)
    learn = TrainLearner(
        model,
        fashion_mnist(),
        F.cross_entropy,
        lr=0.6,
        cbs=cbs,
    ).fit()
    return learn

model = CNN()
cb = StoreModuleStatsCB(mods=model.layers)
train(model=model, extra_cbs=[cb])
cb.mean_std_plot()
cb.hist_plot()

# The course's StoreModuleStats hooks, plotted by its mean_std_plot body: h.plot(ax0, ax1, label)
hooks_cb = HooksCallback(StoreModuleStats, mods=model.layers)
train(model=model, extra_cbs=[hooks_cb])
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
ax0, ax1 = axes
ax0.set(title="Mean")
ax1.set(title="STD")
for i, h in enumerate(hooks_cb.hooks):
    h.plot(*axes, label=f"layer {i}")
fig.legend()
fig.tight_layout()

# nbs/09_initializations.ipynb: positional conv arguments, a ModuleList, a custom nonlinearity
class GeneralReLU(nn.Module):
    """Generalized ReLU activation function with normalization and leakiness"""
    def __init__(self, leak=None, sub=None, max_=None):
        super().__init__()
        self.leak = leak
        self.sub = sub
        self.max_ = max_
    def forward(self, x):
        if self.leak:
            x = F.leaky_relu(x, self.leak)
        else:
            x = F.relu(x)
        if self.sub:
            x -= self.sub
        if self.max_:
            x.clamp_max_(self.max_)
        return x

C = Conv2dWithReLU
class CNNWithGeneralReLU(nn.Module):
    """Six layer convolutional neural network with GeneralRelU"""
    def __init__(self, gr=lambda: GeneralReLU(leak=0.1, sub=0.4)):
        super().__init__()
        layers = [  #
            C(1, 8, kernel_size=5, stride=2, padding=2, nonlinearity=gr()),  # 14x14
            C(8, 16, 3, 2, 1, nonlinearity=gr()),  # 7x7
            C(16, 32, 3, 2, 1, nonlinearity=gr()),  # 4x4
            C(32, 64, 3, 2, 1, nonlinearity=gr()),  # 2x2
            nn.Conv2d(64, 10, 3, 2, 1),  # 1x1
        ]
        self.layers = nn.ModuleList(layers)
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        *_, w, h = x.shape
        assert w == h == 1
        return rearrange(x, "bs c w h -> bs (c w h)")

def init_leaky_weights(module, leak=0.0):
    if isinstance(module, (nn.Conv2d,)):
        init.kaiming_normal_(module.weight, a=leak)  # weirdly, called `a` here

leak = 0.1
model2 = CNNWithGeneralReLU(gr=lambda: GeneralReLU(leak=leak, sub=0.4))
model2.apply(partial(init_leaky_weights, leak=leak))
stats = StoreModuleStatsCB(mods=model2.layers)
cbs = [
    MetricsCB(MulticlassAccuracy(num_classes=10)),
    DeviceCB(),
    ProgressCB(plot=True),
    stats,
]
TrainLearner(
    model2,
    fashion_mnist(),
    F.cross_entropy,
    lr=0.25,
    cbs=cbs,
).fit(2)
stats.mean_std_plot()
'''


def rearrange(x: torch.Tensor, pattern: str) -> torch.Tensor:
    """Stand-in for einops.rearrange (a course dependency, not installed): the one pattern used."""
    assert pattern == "bs c w h -> bs (c w h)"
    return x.reshape(x.shape[0], -1)


def test_course_construction_and_plotting_calls_run_as_written(small_fashion_mnist, capsys):
    from functools import partial

    from torch.nn import init

    ns: dict = {"rearrange": rearrange, "plt": plt, "partial": partial, "init": init}
    exec("from actwidget import *", ns)
    before = set(plt.get_fignums())
    with matplotlib.rc_context():  # the course's plt.style.use stays inside this test
        exec(COURSE, ns)
    names = [f"layers.{i} (Conv2dWithReLU)" for i in range(4)] + ["layers.4 (Conv2d)"]
    cb, hooks_cb, stats = ns["cb"], ns["hooks_cb"], ns["stats"]
    assert list(cb.stats) == names and list(stats.stats) == names
    assert [len(s) for s in cb.stats.values()] == [3] * 5  # one column per training batch
    assert [len(s) for s in stats.stats.values()] == [6] * 5  # 2 epochs of 3 batches
    for s in (*cb.stats.values(), *stats.stats.values()):
        assert np.isfinite(s.mean).all() and (s.std > 0).all()
    # The course's hooks: one record per training call, plotted on the course's two axes.
    assert len(hooks_cb) == 5
    ax0, ax1 = ns["fig"].axes  # the mean/std figure built by the course code
    assert (ax0.get_title(), ax1.get_title()) == ("Mean", "STD")
    for i, (h, line0, line1) in enumerate(zip(hooks_cb.hooks, ax0.lines, ax1.lines, strict=True)):
        assert h.moments.shape == (3, 2) and h.hists.shape[0] == 3
        assert line0.get_label() == f"layer {i}"
        np.testing.assert_allclose(line0.get_ydata(), h.moments[:, 0])
        np.testing.assert_allclose(line1.get_ydata(), h.moments[:, 1])
    assert all(not m._forward_hooks for m in ns["model"].modules())
    assert all(not m._forward_hooks for m in ns["model2"].modules())
    # cb.mean_std_plot, cb.hist_plot, the course's figure, stats.mean_std_plot
    assert len(set(plt.get_fignums()) - before) == 4
    assert "MulticlassAccuracy" in capsys.readouterr().out
