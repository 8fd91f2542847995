"""The course's hooks (`actwidget.hooks`): `Hook`, `Hooks` and the one-module
`StoreModuleStats`, used and plotted the way the course notebooks do."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from conftest import EXACT, Capture, assert_exact
from torch import nn

from actwidget.hooks import Hook, Hooks, StoreModuleStats


def test_hook_and_hooks_remove_on_exit():
    calls = []
    lin = nn.Linear(2, 2)
    with Hooks([Hook(lin, lambda h, m, i, o: calls.append((h, m))) for _ in range(2)]) as hs:
        lin(torch.randn(1, 2))
    assert [c[0] for c in calls] == list(hs) and all(c[1] is lin for c in calls)
    assert not lin._forward_hooks
    lin(torch.randn(1, 2))
    assert len(calls) == 2
    with Hook(lin, lambda *a: None) as h:
        assert h.module is lin and len(lin._forward_hooks) == 1
    assert not lin._forward_hooks


def test_store_module_stats_records_each_call():
    lin = nn.Linear(3, 4)
    cap = Capture([lin])
    hook = StoreModuleStats(lin, config=EXACT)
    for i in range(5):
        lin(torch.full((2, 3), float(i)) + torch.randn(2, 3))
    hook.remove()
    cap.remove()
    assert hook.module is lin and hook.calls == 5 and hook.name == "0 (Linear)"
    assert_exact(hook.layer_stats, cap.outs[lin])
    assert hook.moments.shape == (5, 2) and hook.hists.shape == (5, EXACT.bins)
    assert not lin._forward_hooks


def test_periodicity_and_modes():
    lin = nn.Linear(3, 4)
    hook = StoreModuleStats(lin, periodicity=3, name="lin")
    for i in range(10):
        lin(torch.full((2, 3), float(i)))
    lin.eval()
    lin(torch.randn(2, 3))  # eval mode: not recorded by default
    hook.remove()
    np.testing.assert_array_equal(hook.layer_stats.batch, [0, 3, 6, 9])  # x: the call count
    assert hook.calls == 10
    with pytest.raises(ValueError, match="periodicity"):
        StoreModuleStats(lin, periodicity=0)


def test_course_construction_and_plot():
    """As the course does it: one StoreModuleStats per layer, then plot(ax0, ax1, label)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    hooks = [StoreModuleStats(m) for m in model]
    for _ in range(4):
        model(torch.randn(5, 6))
    fig, (ax0, ax1) = plt.subplots(1, 2)
    for i, h in enumerate(hooks):
        h.plot(ax0, ax1, label=f"layer {i}")
        h.remove()
    assert [line.get_label() for line in ax0.lines] == ["layer 0", "layer 1", "layer 2"]
    np.testing.assert_allclose(ax1.lines[0].get_ydata(), hooks[0].moments[:, 1])
    assert len(ax0.lines[2].get_xdata()) == 4
    plt.close(fig)
