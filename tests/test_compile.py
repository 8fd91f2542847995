"""Recording under `torch.compile`: traced into the graph (`fullgraph=True` works), the same
numbers as eager, and every batch recorded however the model was compiled before."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import no_hooks
from torch import nn

from actwidget.recorder import StatsHooks
from actwidget.stats import Field, StatsConfig


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(8 * 12 * 12, 10)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).flatten(1))


def data(n: int):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 12, 12, generator=g), torch.randint(0, 10, (16,), generator=g))
            for _ in range(n)]  # fmt: skip


def run(model, step_model, hooks, batches):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with hooks:
        for xb, yb in batches:
            nn.functional.cross_entropy(step_model(xb), yb).backward()
            opt.step()
            opt.zero_grad()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fullgraph_compiled_recording_equals_eager(exact, channels_last):
    torch.manual_seed(0)
    eager = Small()
    compiled = copy.deepcopy(eager)
    config = StatsConfig(grads=True, sample_size=None if exact else 1024)
    batches = data(3)
    if channels_last:  # a convolution's output in channels-last memory order, as oneDNN makes it
        batches = [(x.to(memory_format=torch.channels_last), y) for x, y in batches]
    h_eager = StatsHooks(model=eager, config=config)  # every leaf module
    run(eager, eager, h_eager, batches)
    h_comp = StatsHooks(model=compiled, config=config)
    run(compiled, torch.compile(compiled, fullgraph=True), h_comp, batches)
    assert no_hooks(compiled)
    a, b = h_eager.stats, h_comp.stats
    for name in h_eager.names:
        x, y = a[name].columns, b[name].columns
        assert len(x) == len(y) == 3, name
        for f in (Field.NUMEL, Field.COUNT, Field.NONFINITE, Field.UNITS, Field.DEAD):
            np.testing.assert_array_equal(x[:, f], y[:, f], err_msg=f"{name} {f.name}")
        np.testing.assert_allclose(a[name].mean, b[name].mean, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(a[name].std, b[name].std, rtol=1e-5)
        np.testing.assert_allclose(a[name].near_zero, b[name].near_zero, rtol=1e-12)
        np.testing.assert_allclose(a[name].hist, b[name].hist, rtol=1e-12)
        np.testing.assert_allclose(a[name].grad_std, b[name].grad_std, rtol=1e-5)
        np.testing.assert_allclose(a[name].grad_abs, b[name].grad_abs, rtol=1e-5)


def test_a_layer_far_from_zero_keeps_its_spread():
    """A mean 1e4 times the spread: the first batch, summed before any shift is known, falls
    back to the sample's moments; from the next batch on the sums are centred and exact."""
    g = torch.Generator().manual_seed(0)
    xs = [100.0 + 0.01 * torch.randn(64, 512, generator=g) for _ in range(3)]
    model = nn.Sequential(nn.Identity(), nn.Linear(512, 4))
    hooks = StatsHooks(model[0], model=model)
    step = torch.compile(model, fullgraph=True)
    with hooks:
        for x in xs:
            step(x)
            hooks.end_batch()
    s = hooks.stats["0 (Identity)"]
    ref = [x.double() for x in xs]
    np.testing.assert_allclose(s.mean[0], ref[0].mean().item(), rtol=1e-5)  # ~1024 values
    np.testing.assert_allclose(s.std[0], ref[0].std().item(), rtol=0.1)
    np.testing.assert_allclose(s.mean[1:], [r.mean().item() for r in ref[1:]], rtol=1e-9)
    np.testing.assert_allclose(s.std[1:], [r.std().item() for r in ref[1:]], rtol=1e-6)


def test_hooks_trace_without_graph_breaks():
    model = Small()
    with StatsHooks(model=model, config=StatsConfig(grads=True)):
        explained = torch._dynamo.explain(model)(torch.randn(4, 1, 12, 12))
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_a_model_compiled_before_the_hooks_attach_records_every_batch():
    first, second = Small(), Small()
    c_first, c_second = torch.compile(first), torch.compile(second)
    x = torch.randn(4, 1, 12, 12)
    c_first(x), c_second(x)  # both compiled without hooks (the second reuses the first's code)
    hooks = StatsHooks(model=second)
    run(second, c_second, hooks, data(3))
    assert [len(hooks.stats[n]) for n in hooks.names] == [3, 3, 3]
    again = StatsHooks(model=first)  # the instance that was compiled first, too
    run(first, c_first, again, data(2))
    assert [len(again.stats[n]) for n in again.names] == [2, 2, 2]


def test_after_removal_the_compiled_model_runs_without_recording():
    model = Small()
    compiled = torch.compile(model)
    hooks = StatsHooks(model=model)
    run(model, compiled, hooks, data(2))
    before = hooks.stats[hooks.names[0]].columns.copy()
    compiled(torch.randn(4, 1, 12, 12))  # re-traced without the hooks
    assert no_hooks(model)
    np.testing.assert_array_equal(hooks.stats[hooks.names[0]].columns, before)
    assert not hooks._collector.touched


def test_a_function_compiled_around_the_model_records_too():
    model = Small()

    @torch.compile
    def forward(x):
        return model(x)

    forward(torch.randn(4, 1, 12, 12))  # compiled around the model, before the hooks
    hooks = StatsHooks(model=model)
    run(model, forward, hooks, data(3))
    assert [len(hooks.stats[n]) for n in hooks.names] == [3, 3, 3]


def test_optimizer_steps_that_record_nothing_are_reported():
    model = Small()
    unused = nn.Linear(3, 3)  # hooked, never called: what unreachable compiled code looks like
    model.spare = unused
    hooks = StatsHooks([unused], model=model)
    with pytest.warns(UserWarning, match="recorded nothing.*torch.compile"):
        run(model, model, hooks, data(4))
