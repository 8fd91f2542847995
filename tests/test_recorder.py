"""The recorder (`StatsHooks`) in plain loops: recorded stats against float64 torch on the
same activations, batch grouping, gradients, stop requests, listeners, hook lifecycle,
module selection and names, bad outputs, and consistent reads from other threads."""

from __future__ import annotations

import signal
import threading
import warnings

import numpy as np
import pytest
import torch
from conftest import EXACT, Capture, assert_column, assert_exact, direct, no_hooks, plain_loop
from torch import nn

from actwidget.models import Conv2dWithReLU
from actwidget.recorder import StatsHooks, first_float_tensor, module_names, select_modules
from actwidget.source import Event, RunState
from actwidget.stats import RunStats, StatsConfig

DEFAULT = StatsConfig()


class Poison(nn.Module):
    """A Linear layer whose output gets NaN, inf and -inf at fixed positions."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.lin = nn.Linear(n_in, n_out)

    def forward(self, x):
        y = self.lin(x).clone()
        y[0, 0], y[1, 1], y[2, 2] = float("nan"), float("inf"), -float("inf")
        return y


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), Poison(16, 12), nn.Tanh(), nn.Linear(12, 40), nn.ReLU()
    )


def calls(model, hooks, n: int, bs: int = 5, n_in: int = 6, scale: float = 3.0):
    """n forward passes under no_grad, one batch each (`end_batch()`)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(n):
            model(torch.randn(bs, n_in, generator=g) * scale)
            hooks.end_batch()


@pytest.mark.parametrize("config", [EXACT, DEFAULT], ids=["exact", "default"])
def test_stats_equal_torch_on_the_same_activations(config):
    model = small_model()
    cap = Capture(model)
    with StatsHooks(model, model=model, config=config) as hooks:
        calls(model, hooks, 7)
    cap.remove()
    stats = hooks.stats
    names = ["0 (Linear)", "1 (ReLU)", "2 (Poison)", "3 (Tanh)", "4 (Linear)", "5 (ReLU)"]
    assert list(stats) == names
    for m, name in zip(model, names, strict=True):
        assert_exact(stats[name], cap.outs[m], config)  # every layer is small: exact
        np.testing.assert_array_equal(stats[name].batch, np.arange(7))
    poison = stats["2 (Poison)"]
    np.testing.assert_array_equal(poison.nonfinite, 3)
    assert np.isfinite(poison.mean).all() and np.isfinite(poison.std).all()
    np.testing.assert_array_equal(poison.hist.sum(1), 5 * 12 - 3)  # finite values only
    assert (stats["1 (ReLU)"].near_zero > 0.3).all()  # ReLU zeros count as near zero


def test_large_layers_exact_moments_sampled_histogram():
    torch.manual_seed(1)
    big = nn.Sequential(nn.Linear(8, 2500), nn.ReLU())  # 32 * 2500 = 80,000 values per call
    small = nn.Linear(2500, 3)
    model = nn.Sequential(big, small)
    mods = [big[0], big[1], small]
    cap = Capture(mods)
    with StatsHooks(mods, model=model) as hooks:
        calls(model, hooks, 4, bs=32, n_in=8, scale=2.0)
    cap.remove()
    stats = hooks.stats
    assert list(stats) == ["0.0 (Linear)", "0.1 (ReLU)", "1 (Linear)"]
    assert_exact(stats["1 (Linear)"], cap.outs[small], DEFAULT)
    for m, name in zip(mods[:2], ["0.0 (Linear)", "0.1 (ReLU)"], strict=True):
        s = stats[name]
        for i, out in enumerate(cap.outs[m]):
            d = direct([out], DEFAULT)
            n = d["numel"]
            assert n == 80_000 and s.numel[i] == n and s.nonfinite[i] == 0
            assert s.mean[i] == pytest.approx(d["mean"], rel=1e-5, abs=1e-6)  # exact
            assert s.std[i] == pytest.approx(d["std"], rel=1e-4)
            assert s.hist[i].sum() == pytest.approx(n, rel=1e-9)  # sampled, scaled
            assert np.abs(s.hist[i] - d["hist"]).sum() / 2 / n < 0.06
            assert s.near_zero[i] == pytest.approx(d["near_zero"], abs=0.05)
    relu = stats["0.1 (ReLU)"]
    assert (relu.near_zero > 0.4).all() and (relu.hist[:, 0] / relu.numel > 0.4).all()


def test_plain_loop_one_column_per_optimizer_step_with_gradients():
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 4))
    with StatsHooks(model, model=model, config=StatsConfig(grads=True)) as hooks:
        plain_loop(model, hooks, steps=5)
    s = hooks.stats
    assert all(len(layer) == 5 for layer in s.values())
    lin = s["0 (Linear)"]
    np.testing.assert_array_equal(lin.batch, np.arange(5))
    assert (lin.grad_std > 0).all() and (lin.grad_abs > 0).all()
    assert (lin.grad_nonfinite == 0).all() and np.isfinite(lin.grad_mean).all()
    assert hooks.status.state is RunState.FINISHED and hooks.status.fit_batches == 5
    assert no_hooks(model)


def test_gradients_are_off_by_default():
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
    with StatsHooks(model, model=model) as hooks:
        plain_loop(model, hooks, steps=2)
    for layer in hooks.stats.values():
        assert np.isnan(layer.grad_std).all() and np.isnan(layer.grad_abs).all()


def test_gradient_stats_equal_torch():
    lin = nn.Linear(5, 7)
    grads = []
    with StatsHooks([lin], config=StatsConfig(grads=True)) as hooks:
        for _ in range(3):
            out = lin(torch.randn(4, 5))
            out.register_hook(lambda g: grads.append(g.clone()))
            (out * torch.randn(4, 7)).sum().backward()
            hooks.end_batch()
    s = hooks.stats["0 (Linear)"]
    for i, g in enumerate(grads):
        g = g.double()
        assert s.grad_mean[i] == pytest.approx(g.mean().item(), rel=1e-5)
        assert s.grad_std[i] == pytest.approx(g.std().item(), rel=1e-5)
        assert s.grad_abs[i] == pytest.approx(g.abs().mean().item(), rel=1e-5)


def test_grad_accumulation_and_manual_step_group_as_asked():
    lin = nn.Linear(3, 4)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    cap = Capture([lin])
    with StatsHooks([lin], config=EXACT) as hooks:
        for _ in range(3):  # optimizer step every 2 forward passes
            for _ in range(2):
                lin(torch.randn(2, 3)).sum().backward()
            opt.step()
            opt.zero_grad()
    cap.remove()
    s = hooks.stats["0 (Linear)"]
    assert len(s) == 3 and (s.batches == 1).all()
    for i in range(3):
        assert_column(s, i, cap.outs[lin][2 * i : 2 * i + 2])
    # With auto_step=False only end_batch() ends a batch.
    with StatsHooks([lin], config=EXACT, auto_step=False) as hooks:
        for _ in range(4):
            lin(torch.randn(2, 3)).sum().backward()
            opt.step()
        hooks.end_batch()
    assert len(hooks.stats["0 (Linear)"]) == 1


def test_a_flush_inside_a_batch_changes_nothing():
    lin = nn.Linear(3, 4)
    cap = Capture([lin])
    with StatsHooks([lin], config=EXACT) as hooks:
        for _ in range(3):
            lin(torch.randn(2, 3))
            lin(torch.randn(5, 3))
            hooks.flush()
            lin(torch.randn(1, 3))
            hooks.end_batch()
    cap.remove()
    s = hooks.stats["0 (Linear)"]
    assert len(s) == 3 and (s.batches == 1).all() and (s.numel == 4 * 8).all()
    for i in range(3):
        assert_column(s, i, cap.outs[lin][3 * i : 3 * i + 3])


def test_request_stop_and_should_stop_belong_to_one_fit():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    hooks = StatsHooks(model, model=model)
    assert hooks.request_stop() is False  # nothing runs yet
    seen = []
    with hooks:
        fit_id = hooks.status.fit_id
        assert hooks.request_stop(fit_id + 1000) is False  # another fit's (stale) request
        g = torch.Generator().manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for i in range(10):
            model(torch.randn(4, 6, generator=g)).sum().backward()
            opt.step()
            if i == 2:
                assert hooks.request_stop(fit_id) is True
            seen.append(hooks.should_stop)
            if hooks.should_stop:
                break
    assert seen == [False, False, True]
    st = hooks.status
    assert st.state is RunState.STOPPED and st.message == "at batch 3" and st.fit_batches == 3
    assert not hooks.should_stop  # cleared: the next fit starts fresh
    with hooks:
        assert not hooks.should_stop and hooks.status.fit == 2


def test_first_sigint_asks_to_stop_second_interrupts():
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("must run in the main thread")
    model = nn.Sequential(nn.Linear(6, 8))
    before = signal.getsignal(signal.SIGINT)
    with StatsHooks(model, model=model) as hooks:
        signal.raise_signal(signal.SIGINT)
        assert hooks.should_stop
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert hooks.status.state is RunState.STOPPED
    assert signal.getsignal(signal.SIGINT) is before


def test_listeners_get_events_and_their_errors_never_reach_the_loop(caplog):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    hooks = StatsHooks(model, model=model, flush_every=2)
    events = []
    unsubscribe = hooks.subscribe(lambda e, src: events.append(e))

    def broken(e, src):
        raise RuntimeError("listener bug")

    hooks.subscribe(broken)
    with hooks:
        plain_loop(model, hooks, steps=4)
    assert events[0] is Event.FIT_START and events[-1] is Event.FIT_END
    assert events.count(Event.BATCH) == 4 and Event.FLUSH in events
    assert sum("listener" in r.getMessage() for r in caplog.records) == 1  # logged once
    unsubscribe()
    with hooks:
        plain_loop(model, hooks, steps=1)
    assert events[-1] is Event.FIT_END and events.count(Event.FIT_START) == 1


def test_hooks_removed_on_every_way_out():
    model = small_model()
    stats = RunStats()
    with StatsHooks(model, model=model, stats=stats) as hooks:
        assert all(len(m._forward_hooks) == 1 for m in model)
        calls(model, hooks, 2)
        assert len(stats["0 (Linear)"]) < 2  # pending on the device until a flush
    assert no_hooks(model) and len(stats["0 (Linear)"]) == 2  # flushed on exit
    with pytest.raises(RuntimeError, match="boom"), StatsHooks(model, model=model) as h2:
        raise RuntimeError("boom")
    assert no_hooks(model) and h2.status.state is RunState.FAILED
    assert "RuntimeError: boom" in h2.status.message
    with pytest.raises(KeyboardInterrupt), StatsHooks(model, model=model) as h3:
        raise KeyboardInterrupt
    assert no_hooks(model) and h3.status.state is RunState.STOPPED
    hooks.remove()  # idempotent


def test_a_layer_failing_at_the_batch_end_loses_only_its_own_calls(monkeypatch):
    from actwidget._fold import Folder

    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    real = Folder.fold

    def fails_for_layer_1(self, acc, filled, units=None):
        if any(f.row == 1 for f in filled):
            raise RuntimeError("device lost")
        return real(self, acc, filled, units)

    monkeypatch.setattr(Folder, "fold", fails_for_layer_1)
    warns = pytest.warns(UserWarning, match=r"'1 \(ReLU\)'.*device lost")
    with warns, StatsHooks(model, model=model) as hooks:
        calls(model, hooks, 3)
    assert no_hooks(model)
    stats = hooks.stats
    assert len(stats["0 (Linear)"]) == 3 and len(stats["2 (Linear)"]) == 3
    assert len(stats["1 (ReLU)"]) == 0


class Returns(nn.Module):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, x):
        return self.make(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda x: (x.argmax(1), x * 2, x),
        lambda x: [x.long(), [x * 2, x]],
        lambda x: {"ids": x.argmax(1), "out": x * 2, "other": x},
        lambda x: x * 2,
    ],
    ids=["tuple", "nested-list", "dict", "tensor"],
)
def test_container_outputs_record_the_first_floating_tensor(make):
    m = Returns(make)
    x = torch.randn(3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with StatsHooks([m], config=EXACT) as hooks:
            m(x)
            hooks.end_batch()
    assert_exact(hooks.stats["0 (Returns)"], [x * 2])


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda x: x.argmax(1), "int64 tensor, not a floating one"),
        (lambda x: x[:0], "empty"),
        (lambda x: x.sum(), "0-d"),
        (lambda x: x.to_sparse(), "sparse"),
        (lambda x: torch.empty(3, 5, device="meta"), "meta"),
        (lambda x: torch.complex(x, x), "complex"),
        (lambda x: (x.argmax(1), "text"), "not a floating tensor"),
        (lambda x: None, "not a floating tensor"),
    ],
    ids=["int", "empty", "0-d", "sparse", "meta", "complex", "tuple", "none"],
)
def test_outputs_that_cannot_be_summarised_are_skipped_with_one_warning(make, what):
    m, ok = Returns(make), nn.Linear(5, 5)
    with pytest.warns(UserWarning, match=what) as caught, StatsHooks([m, ok]) as hooks:
        for _ in range(3):
            m(ok(torch.randn(3, 5)))
            hooks.end_batch()
    assert len([w for w in caught if "actwidget" in str(w.message)]) == 1
    assert "'0 (Returns)'" in str(caught[0].message)
    assert len(hooks.stats["0 (Returns)"]) == 0 and len(hooks.stats["1 (Linear)"]) == 3


def test_first_float_tensor():
    x = torch.randn(2)
    assert first_float_tensor(x) is x
    assert first_float_tensor(((torch.ones(2, dtype=torch.long),), {"a": [x]})) is x
    assert first_float_tensor([torch.ones(1, dtype=torch.bool), "ab", 3]) is None
    assert first_float_tensor("abc") is None and first_float_tensor(None) is None


def test_periodicity_and_modes():
    lin = nn.Linear(3, 4)
    cap = Capture([lin])
    with StatsHooks([lin], periodicity=3, config=EXACT) as hooks:
        for i in range(10):
            lin(torch.full((2, 3), float(i)))
            hooks.end_batch()
    cap.remove()
    assert_exact(hooks.stats["0 (Linear)"], [cap.outs[lin][i] for i in (0, 3, 6, 9)])
    with pytest.raises(ValueError, match="periodicity"):
        StatsHooks([lin], periodicity=0)
    for on_train, on_valid, want in [(True, False, 2), (False, True, 1), (True, True, 3)]:
        with StatsHooks([lin], on_train=on_train, on_valid=on_valid) as hooks:
            for mode in (True, True, False):
                lin.train(mode)
                lin(torch.randn(2, 3))
                hooks.end_batch()
        assert len(hooks.stats["0 (Linear)"]) == want


def test_module_selection_and_names():
    model = nn.Sequential()
    model.add_module("layers", nn.Sequential(Conv2dWithReLU(1, 2, 3), Conv2dWithReLU(2, 2, 3)))
    model.add_module("head", nn.Linear(2, 2))
    assert module_names(model, list(model.layers)) == [
        "layers.0 (Conv2dWithReLU)",
        "layers.1 (Conv2dWithReLU)",
    ]
    stranger = nn.ReLU()
    assert module_names(model, [model, model.head, model.head, stranger]) == [
        "model (Sequential)",
        "head (Linear)",
        "head (Linear)'",
        "3 (ReLU)",
    ]
    # Containers stand for their children; a module for itself; names are resolved.
    assert select_modules(None, model.layers) == list(model.layers)
    assert select_modules(None, nn.ModuleList([model.head])) == [model.head]
    assert select_modules(None, nn.ModuleDict({"h": model.head})) == [model.head]
    assert select_modules(None, model.head) == [model.head]
    assert select_modules(model, ["layers.1", "head"]) == [model.layers[1], model.head]
    assert select_modules(model, "head") == [model.head]
    assert select_modules(model, None, lambda m: isinstance(m, nn.Linear)) == [model.head]
    assert select_modules(model, None) == [*model.layers, model.head]  # default: the leaves
    for empty in ([], nn.Sequential(), ()):
        with pytest.raises(ValueError, match="empty"):
            select_modules(model, empty)
    with pytest.raises(ValueError, match="selected no modules"):
        select_modules(model, None, lambda m: False)
    with pytest.raises(ValueError, match="mods="):
        select_modules(None, None)
    with pytest.raises(ValueError, match="no module 'nope'"):
        select_modules(model, ["nope"])
    with pytest.raises(ValueError, match="give the model"):
        select_modules(None, ["head"])
    with pytest.raises(TypeError, match="Module objects or names"):
        select_modules(None, [model.head, 3])
    with StatsHooks(["layers.0", "layers.1"], model=model) as hooks:
        model.layers(torch.randn(2, 1, 7, 7))
        hooks.end_batch()
    assert list(hooks.stats) == ["layers.0 (Conv2dWithReLU)", "layers.1 (Conv2dWithReLU)"]
    assert [len(s) for s in hooks.stats.values()] == [1, 1]
    assert no_hooks(model)


def test_reads_from_another_thread_are_consistent_and_keep_batches_in_order():
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(4)])
    hooks = StatsHooks(model, model=model, flush_every=10**6, flush_interval=10**6)
    done = threading.Event()
    problems = []

    def reader():
        while not done.is_set():
            stats = hooks.stats  # flushes from this thread while training runs
            for s in stats.values():
                if not (len(s.batch) == len(s.mean) == len(s.std) == len(s.hist)):
                    problems.append("lengths differ")
            _ = hooks.alerts

    t = threading.Thread(target=reader)
    t.start()
    try:
        with hooks, torch.no_grad():
            for _ in range(600):
                model(torch.randn(4, 16))
                hooks.end_batch()
    finally:
        done.set()
        t.join()
    assert not problems
    for s in hooks.stats.values():
        assert len(s) == 600 and (np.diff(s.batch) == 1).all(), "batches out of order"


def test_reset_and_a_second_fit_continue_the_x_axis():
    model = nn.Sequential(nn.Linear(6, 4))
    hooks = StatsHooks(model, model=model)
    with hooks:
        plain_loop(model, hooks, steps=3)
    with hooks:
        plain_loop(model, hooks, steps=2)
    s = hooks.stats
    np.testing.assert_array_equal(s["0 (Linear)"].batch, np.arange(5))
    assert [tuple(f) for f in s.fits] == [(1, 0), (2, 3)]
    hooks.reset()
    assert len(hooks.stats["0 (Linear)"]) == 0 and hooks.batches == 0
    with hooks:
        plain_loop(model, hooks, steps=1)
    np.testing.assert_array_equal(hooks.stats["0 (Linear)"].batch, [0])


def test_a_compiled_model_records_every_call_as_eager_does():
    """torch.compile (default backend): every call recorded, values as in eager mode."""
    data = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def train(compiled: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        run = torch.compile(model) if compiled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with StatsHooks(model, model=model) as hooks:
            for x in data:
                run(x).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
        assert no_hooks(model)
        return hooks.stats

    eager, compiled = train(False), train(True)
    for name in eager:
        e, c = eager[name], compiled[name]
        assert len(c) == len(e) == 3
        for field in ("mean", "std", "near_zero", "grad_mean", "grad_std", "dead"):
            np.testing.assert_allclose(getattr(c, field), getattr(e, field), rtol=1e-4, atol=1e-6)
