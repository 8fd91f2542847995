"""Static matplotlib plots of recorded stats (Agg backend, no display)."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actwidget.callbacks.hooks import StoreModuleStatsCB
from actwidget.hooks import StatsHooks
from actwidget.learner import TrainLearner
from actwidget.plots import hist_plot, mean_std_plot, near_zero_plot
from actwidget.stats import RunStats, StatsConfig


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def stats() -> RunStats:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    config = StatsConfig(hist="linear", bins=10, capacity=8)
    with StatsHooks(model, model=model, config=config) as hooks:
        for _ in range(13):
            model(torch.randn(5, 4))
            hooks.end_batch()
    stats = hooks.stats
    stats.layer("never called")
    return stats


NAMES = ["0 (Linear)", "1 (ReLU)", "2 (Linear)"]


def test_mean_std_plot(stats):
    fig = mean_std_plot(stats, layers=NAMES)
    assert isinstance(fig, Figure)
    means, stds = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["Means", "Stdevs"]
    assert [line.get_label() for line in means.get_lines()] == NAMES
    assert len(stds.get_lines()) == 3
    s = stats["1 (ReLU)"]
    np.testing.assert_array_equal(means.get_lines()[1].get_xdata(), s.batch)
    np.testing.assert_array_equal(means.get_lines()[1].get_ydata(), s.mean)
    np.testing.assert_array_equal(stds.get_lines()[1].get_ydata(), s.std)
    assert len(mean_std_plot(stats).axes[0].get_lines()) == 4  # all layers by default


def test_near_zero_plot(stats):
    fig = near_zero_plot(stats, layers=NAMES[1:])
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == NAMES[1:]
    np.testing.assert_array_equal(lines[0].get_ydata(), stats["1 (ReLU)"].near_zero)
    assert ax.get_ylim() == (0, 1)
    assert "0.05" in ax.get_title()


@pytest.mark.parametrize(("ncols", "rows"), [(2, 2), (1, 4), (5, 1)])
def test_hist_plot_one_image_per_layer(stats, ncols, rows):
    fig = hist_plot(stats, ncols=ncols)
    assert len(fig.axes) == rows * ncols
    images = [ax.get_images() for ax in fig.axes]
    assert [len(i) for i in images[:4]] == [1, 1, 1, 0]  # the empty layer has no image
    assert all(not i for i in images[4:])
    assert [ax.get_title() for ax in fig.axes[:4]] == [*NAMES, "never called"]
    s = stats["2 (Linear)"]
    data = images[2][0].get_array()
    assert data.shape == (10, len(s))  # bins x columns
    np.testing.assert_allclose(data, np.log1p(s.hist.T))
    x0, x1, y0, y1 = images[2][0].get_extent()
    assert (x0, x1, y0, y1) == (s.batch[0], s.batch[-1] + 1, 0, 10)
    assert all(not ax.axison for ax in fig.axes[4:])


def test_hist_plot_log_bins_are_labelled_by_powers_of_two():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with StatsHooks(model, model=model) as hooks:  # the default: log bins
        for _ in range(3):
            model(torch.randn(5, 4))
            hooks.end_batch()
    fig = hist_plot(hooks.stats)
    ax = fig.axes[0]
    assert ax.get_images()[0].get_extent()[3] == 34  # one row per bin
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "0" and labels[1].startswith("2^")


def test_unknown_layer_raises(stats):
    for plot in (mean_std_plot, near_zero_plot, hist_plot):
        with pytest.raises(KeyError, match="nope"):
            plot(stats, layers=["0 (Linear)", "nope"])


def test_callback_plot_methods():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    dl = DataLoader(TensorDataset(torch.randn(6, 4), torch.randn(6, 8)), batch_size=2)
    cb = StoreModuleStatsCB(mods=model)
    TrainLearner(model, SimpleNamespace(train=dl, valid=dl), cbs=[cb]).fit(1)
    assert [len(s) for s in cb.stats.values()] == [3, 3]
    for method in (cb.mean_std_plot, cb.hist_plot, cb.near_zero_plot):
        before = set(plt.get_fignums())
        assert method() is None
        (num,) = set(plt.get_fignums()) - before
        fig = plt.figure(num)
        lines = sum(len(ax.get_lines()) for ax in fig.axes)
        images = sum(len(ax.get_images()) for ax in fig.axes)
        assert lines + images >= 2
    cb.hist_plot(layers=["1 (ReLU)"])
    assert len(plt.gcf().axes[0].get_images()) == 1
    with pytest.raises(KeyError):
        cb.mean_std_plot(layers=["x"])
