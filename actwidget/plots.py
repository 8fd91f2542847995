"""Static matplotlib plots of recorded stats, as in the fast.ai course notebooks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .stats import LayerStats, RunStats

__all__ = ["hist_plot", "mean_std_plot", "near_zero_plot"]


def _figure(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    import matplotlib.pyplot as plt  # pyplot so that notebooks show the figure inline

    fig, axs = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    return fig, axs


def _layers(stats: RunStats, layers: Sequence[str] | None) -> list[LayerStats]:
    names = list(stats) if layers is None else list(layers)
    missing = [n for n in names if n not in stats]
    if missing:
        raise KeyError(f"no recorded layer {missing[0]!r}; recorded: {list(stats)}")
    return [stats[n] for n in names]


def mean_std_plot(stats: RunStats, layers: Sequence[str] | None = None, figsize=(10, 4)) -> Figure:
    """Two panels: each layer's activation mean, and std, against the batch count."""
    fig, axs = _figure(1, 2, figsize)
    for s in _layers(stats, layers):
        axs[0, 0].plot(s.batch, s.mean, label=s.name)
        axs[0, 1].plot(s.batch, s.std, label=s.name)
    for ax, title in zip(axs[0], ["Means", "Stdevs"], strict=True):
        ax.set_title(title)
        ax.set_xlabel("batch")
    axs[0, 0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def near_zero_plot(stats: RunStats, layers: Sequence[str] | None = None, figsize=(6, 4)) -> Figure:
    """Each layer's fraction of near-zero activations (|a| <= config.near_zero) over time."""
    fig, axs = _figure(1, 1, figsize)
    ax = axs[0, 0]
    for s in _layers(stats, layers):
        ax.plot(s.batch, s.near_zero, label=s.name)
    ax.set_ylim(0, 1)
    ax.set_title(f"Fraction near zero (|a| <= {stats.config.near_zero:g})")
    ax.set_xlabel("batch")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def hist_plot(
    stats: RunStats, layers: Sequence[str] | None = None, ncols: int = 2, figsize=None
) -> Figure:
    """One heatmap per layer: batch on x, |a| bin on y (powers of two, or linear: see
    `StatsConfig.hist`), log1p(count) as colour."""
    chosen = _layers(stats, layers)
    nrows = max(1, math.ceil(len(chosen) / ncols))
    fig, axs = _figure(nrows, ncols, figsize or (5 * ncols, 3 * nrows))
    config = stats.config
    linear = config.hist == "linear"
    top = config.hist_max if linear else config.bins
    for ax, s in zip(axs.flat, chosen, strict=False):
        if len(s):
            x0, x1 = s.batch[0], s.batch[-1] + 1
            ax.imshow(np.log1p(s.hist.T), origin="lower", aspect="auto", extent=(x0, x1, 0, top))
        ax.set_title(s.name, fontsize="small")
        ax.set_xlabel("batch")
        ax.set_ylabel("|a|")
        if not linear:  # one row per power of two: label every few
            ticks = list(range(0, config.bins, max(config.bins // 6, 1)))
            ax.set_yticks([t + 0.5 for t in ticks], [config.bin_label(t) for t in ticks])
    for ax in list(axs.flat)[len(chosen) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
