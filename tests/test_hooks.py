"""Forward hooks (`actwidget.hooks`): recorded stats against direct torch computations on the
same activations, sampling, NaN/inf, periodicity, modes, output types, names and removal."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from actwidget._summary import Sampler
from actwidget.hooks import (
    Hook,
    Hooks,
    StatsHooks,
    StoreModuleStats,
    first_float_tensor,
    flush_hooks,
    module_names,
    select_modules,
)
from actwidget.models import Conv2dWithReLU
from actwidget.stats import RunStats, StatsConfig

EXACT = StatsConfig(sample_size=None)
DEFAULT = StatsConfig()


class Capture:
    """A separate forward hook per module that keeps a clone of every output."""

    def __init__(self, mods):
        self.outs = {m: [] for m in mods}
        self.handles = [m.register_forward_hook(self._hook) for m in mods]

    def _hook(self, m, inputs, out):
        self.outs[m].append(first_float_tensor(out).detach().clone())

    def remove(self):
        for h in self.handles:
            h.remove()


def direct(acts, config: StatsConfig) -> dict:
    """The stats of the values of `acts` (one batch, maybe several calls), computed plainly."""
    a = torch.cat([t.reshape(-1).float() for t in acts])
    ok = a.isfinite()
    fin = a[ok]
    return {
        "numel": a.numel(),
        "mean": fin.double().mean().item(),
        "std": fin.double().std().item(),
        "near_zero": (a.abs() <= config.near_zero).sum().item() / a.numel(),
        "nonfinite": (~ok).sum().item(),
        "hist": torch.histc(
            fin.abs().clamp(max=config.hist_max), config.bins, 0, config.hist_max
        ).numpy(),
    }


def assert_exact(layer, outs, config):
    """Each column of `layer` holds exactly the stats of the matching captured activation."""
    assert len(layer) == len(outs)
    for i, out in enumerate(outs):
        d = direct([out], config)
        assert layer.numel[i] == d["numel"]
        assert layer.mean[i] == pytest.approx(d["mean"], rel=1e-6, abs=1e-7)
        assert layer.std[i] == pytest.approx(d["std"], rel=1e-6, abs=1e-7)
        assert layer.near_zero[i] == pytest.approx(d["near_zero"], rel=1e-12)
        assert layer.nonfinite[i] == d["nonfinite"]
        np.testing.assert_array_equal(layer.hist[i], d["hist"])


class Poison(nn.Module):
    """A Linear layer whose output gets NaN, inf and -inf at fixed positions."""

    def __init__(self, n_in: int, n_out: int, where=((0, 0), (1, 1), (2, 2))):
        super().__init__()
        self.lin = nn.Linear(n_in, n_out)
        self.where = where

    def forward(self, x):
        y = self.lin(x).clone()
        for (i, j), v in zip(self.where, [float("nan"), float("inf"), -float("inf")], strict=False):
            y[i, j] = v
        return y


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), Poison(16, 12), nn.Tanh(), nn.Linear(12, 40), nn.ReLU()
    )


def run(model, n_calls: int, bs: int, n_in: int, scale: float = 3.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(n_calls):
            model(torch.randn(bs, n_in, generator=g) * scale)


@pytest.mark.parametrize("config", [EXACT, DEFAULT], ids=["exact", "small-layers"])
def test_stats_equal_torch_on_the_same_activations(config):
    model = small_model()
    assert (config.sample_size or 10**9) >= 5 * 40  # every layer is small: exact either way
    cap = Capture(list(model))
    with StatsHooks(model, model=model, config=config) as hooks:
        run(model, n_calls=7, bs=5, n_in=6)
    cap.remove()
    stats = hooks.stats
    assert list(stats) == [
        "0 (Linear)",
        "1 (ReLU)",
        "2 (Poison)",
        "3 (Tanh)",
        "4 (Linear)",
        "5 (ReLU)",
    ]
    for m, name in zip(model, stats, strict=True):
        assert_exact(stats[name], cap.outs[m], config)
        np.testing.assert_array_equal(stats[name].step, np.arange(7))
    poison = stats["2 (Poison)"]
    np.testing.assert_array_equal(poison.nonfinite, 3)
    assert np.isfinite(poison.mean).all() and np.isfinite(poison.std).all()
    np.testing.assert_array_equal(poison.hist.sum(1), 5 * 12 - 3)  # finite values only
    assert (stats["1 (ReLU)"].near_zero > 0.3).all()  # ReLU zeros count as near zero


def test_sampled_large_layer():
    torch.manual_seed(1)
    big = nn.Sequential(nn.Linear(8, 2500), nn.ReLU())  # 32 * 2500 = 80000 values per call
    small = nn.Linear(2500, 3)  # flushed together with the big ones
    model = nn.Sequential(big, small)
    mods = [big[0], big[1], small]
    cap = Capture(mods)
    config = StatsConfig(sample_size=4096, exact_moments=True)
    with StatsHooks(mods, model=model, config=config) as hooks:
        run(model, n_calls=4, bs=32, n_in=8, scale=2.0)
    cap.remove()
    stats = hooks.stats
    names = ["0.0 (Linear)", "0.1 (ReLU)", "1 (Linear)"]
    assert list(stats) == names
    assert_exact(stats["1 (Linear)"], cap.outs[small], DEFAULT)
    for m, name in zip(mods[:2], names[:2], strict=True):
        s = stats[name]
        assert len(s) == 4
        for i, out in enumerate(cap.outs[m]):
            d = direct([out], DEFAULT)
            n = d["numel"]
            assert n == 80_000 and s.numel[i] == n
            # exact_moments: mean and std from sums over the whole activation.
            assert s.mean[i] == pytest.approx(d["mean"], rel=1e-5, abs=1e-6)
            assert s.std[i] == pytest.approx(d["std"], rel=1e-5)
            assert s.nonfinite[i] == 0
            # Histogram and near-zero come from ~4096 sampled values, scaled to the full size:
            # a proportion p has a standard error sqrt(p(1-p)/4000) <= 0.008; allow ~5 of them.
            assert s.hist[i].sum() == pytest.approx(n, rel=1e-9)
            assert np.abs(s.hist[i] / n - d["hist"] / n).max() < 0.04
            assert s.near_zero[i] == pytest.approx(d["near_zero"], abs=0.04)
    relu = stats["0.1 (ReLU)"]
    assert (relu.near_zero > 0.4).all() and (relu.hist[:, 0] / relu.numel > 0.4).all()


def test_default_estimator_on_a_large_layer():
    """The default samples everything, mean and std included: close, within stated bounds."""
    torch.manual_seed(3)
    lin = nn.Linear(8, 5000)  # 64 * 5000 = 320,000 values per call
    cap = Capture([lin])
    hook = StoreModuleStats(lin)
    with torch.no_grad():
        for _ in range(3):
            lin(torch.randn(64, 8) * 3)
    hook.remove()
    cap.remove()
    s = hook.layer_stats
    for i, out in enumerate(cap.outs[lin]):
        d = direct([out], DEFAULT)
        k = DEFAULT.sample_size
        # A sample of ~k values: standard errors std/sqrt(k) for the mean, ~std/sqrt(2k)
        # for the std, sqrt(p(1-p)/k) <= 0.011 for proportions; allow about 5 of them.
        assert s.mean[i] == pytest.approx(d["mean"], abs=5 * d["std"] / k**0.5)
        assert s.std[i] == pytest.approx(d["std"], rel=5 / (2 * k) ** 0.5)
        assert s.near_zero[i] == pytest.approx(d["near_zero"], abs=0.055)
        assert np.abs(s.hist[i] - d["hist"]).max() / d["numel"] < 0.055
        assert s.hist[i].sum() == pytest.approx(d["numel"]) and s.nonfinite[i] == 0


@pytest.mark.parametrize("in_sample", [False, True])
def test_single_nan_in_a_big_sampled_layer(in_sample):
    n = 20_000
    lin = nn.Linear(4, n // 5)
    name = "big"
    positions = Sampler(name, 4096)(torch.arange(n, dtype=torch.float32))[0].long()
    sampled = set(positions.tolist())
    where = positions[100].item() if in_sample else min(set(range(n)) - sampled)

    def poison(m, inputs, out):
        out = out.clone()
        out.view(-1)[where] = float("nan")
        return out

    lin.register_forward_hook(poison)  # registered first: the stats hook sees the NaN
    config = StatsConfig(sample_size=4096, exact_moments=True)  # the sums see every value
    hook = StoreModuleStats(lin, name=name, config=config)
    with torch.no_grad():
        out = lin(torch.randn(5, 4))
    hook.remove()
    s = hook.layer_stats
    assert torch.isnan(out.view(-1)[where])
    assert s.nonfinite[0] >= 1
    assert np.isfinite(s.mean[0]) and np.isfinite(s.std[0])
    d = direct([out], DEFAULT)
    # Without usable exact sums, mean and std come from the sample: close, not exact.
    assert s.mean[0] == pytest.approx(d["mean"], abs=0.1 * d["std"])
    assert s.std[0] == pytest.approx(d["std"], rel=0.1)
    assert s.numel[0] == n


def test_periodicity_standalone():
    lin = nn.Linear(3, 4)
    cap = Capture([lin])
    hook = StoreModuleStats(lin, periodicity=3, config=EXACT)
    for i in range(10):
        lin(torch.full((2, 3), float(i)))
    hook.remove()
    cap.remove()
    s = hook.layer_stats
    assert hook.calls == 10
    np.testing.assert_array_equal(s.step, [0, 3, 6, 9])
    assert_exact(s, [cap.outs[lin][i] for i in (0, 3, 6, 9)], EXACT)
    with pytest.raises(ValueError, match="periodicity"):
        StoreModuleStats(lin, periodicity=0)
    assert not lin._forward_hooks


@pytest.mark.parametrize(
    ("on_train", "on_valid", "recorded"),
    [(True, False, [0, 1]), (False, True, [2]), (True, True, [0, 1, 2]), (False, False, [])],
)
def test_on_train_on_valid_standalone(on_train, on_valid, recorded):
    lin = nn.Linear(3, 4)
    cap = Capture([lin])
    hook = StoreModuleStats(lin, on_train, on_valid, config=EXACT)
    lin.train()
    lin(torch.randn(2, 3))
    lin(torch.randn(2, 3))
    lin.eval()
    lin(torch.randn(2, 3))
    hook.remove()
    s = hook.layer_stats
    assert_exact(s, [cap.outs[lin][i] for i in recorded], EXACT)
    assert hook.calls == len(recorded)


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
    assert_exact(hooks.stats["0 (Returns)"], [x * 2], EXACT)


def test_non_floating_output_is_skipped_with_one_warning():
    m = Returns(lambda x: x.argmax(1))
    ok = nn.Linear(5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with StatsHooks([m, ok], config=EXACT) as hooks:
            for _ in range(3):
                m(ok(torch.randn(3, 5)))
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1, msgs
    assert "'0 (Returns)'" in msgs[0] and "torch.int64" in msgs[0]
    assert len(hooks.stats["0 (Returns)"]) == 0
    assert len(hooks.stats["1 (Linear)"]) == 3


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda x: x[:0], "an empty tensor"),
        (lambda x: (x.argmax(1), "text"), "tuple"),
        (lambda x: None, "NoneType"),
        (lambda x: "text", "str"),
    ],
)
def test_empty_and_other_outputs_are_skipped(make, what):
    m = Returns(make)
    with pytest.warns(UserWarning, match=what):
        hook = StoreModuleStats(m, name="odd")
        m(torch.randn(3, 5))
    m(torch.randn(3, 5))
    hook.remove()
    assert len(hook.layer_stats) == 0


def test_first_float_tensor():
    x = torch.randn(2)
    assert first_float_tensor(x) is x
    assert first_float_tensor(((torch.ones(2, dtype=torch.long),), {"a": [x]})) is x
    assert first_float_tensor([torch.ones(1, dtype=torch.bool), "ab", 3]) is None
    assert first_float_tensor("abc") is None and first_float_tensor(None) is None


def test_calls_with_the_same_step_combine():
    lin = nn.Linear(3, 4)
    cap = Capture([lin])
    with StatsHooks([lin], config=EXACT) as hooks:
        for step in range(3):
            hooks.set_step(step)
            lin(torch.randn(2, 3))
            lin(torch.randn(5, 3))
            hooks.flush()  # a flush between batches or inside one changes nothing
            lin(torch.randn(1, 3))
    cap.remove()
    s = hooks.stats["0 (Linear)"]
    assert len(s) == 3
    np.testing.assert_array_equal(s.batches, 1)
    np.testing.assert_array_equal(s.numel, 4 * 8)
    for i in range(3):
        d = direct(cap.outs[lin][3 * i : 3 * i + 3], EXACT)
        assert s.mean[i] == pytest.approx(d["mean"], rel=1e-6)
        assert s.std[i] == pytest.approx(d["std"], rel=1e-6)
        np.testing.assert_array_equal(s.hist[i], d["hist"])


def test_hooks_are_removed_by_with_blocks_even_on_error():
    model = small_model()
    stats = RunStats()
    with StatsHooks(model, model=model, stats=stats) as hooks:
        assert all(len(m._forward_hooks) == 1 for m in model)
        run(model, 2, 5, 6)
        assert len(stats["0 (Linear)"]) == 0  # still pending on the device
    assert all(not m._forward_hooks for m in model)
    assert len(stats["0 (Linear)"]) == 2  # flushed on exit
    assert hooks.stats is stats
    with pytest.raises(RuntimeError, match="boom"), StatsHooks(model, model=model):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model)
    hooks.remove()  # idempotent

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


def test_pending_records_stay_on_device_until_flushed():
    lin = nn.Linear(3, 4)
    hook = StoreModuleStats(lin, name="lin", flush_every=4)
    for _ in range(3):
        lin(torch.randn(2, 3))
    assert len(hook._pending) == 3 and len(hook.stats["lin"]) == 0
    lin(torch.randn(2, 3))  # the 4th call flushes
    assert len(hook._pending) == 0 and len(hook.stats["lin"]) == 4
    lin(torch.randn(2, 3))
    assert hook.moments.shape == (5, 2) and hook.hists.shape == (5, 40)
    hook.remove()


def test_hooks_sharing_stats_with_different_configs_flush_together():
    a, b = nn.Linear(3, 4), nn.Linear(3, 5)
    sa, sb = RunStats(EXACT), RunStats(StatsConfig(bins=5, sample_size=3))
    ha = StoreModuleStats(a, stats=sa, name="a")
    hb = StoreModuleStats(b, stats=sb, name="b")
    for _ in range(2):
        b(a(torch.randn(2, 3))[:, :3])
    flush_hooks([ha, hb])
    assert len(sa["a"]) == 2 and len(sb["b"]) == 2
    assert sb["b"].hist.shape == (2, 5) and sb["b"].hist.sum() == pytest.approx(20)
    Hooks([ha, hb]).remove()


def test_module_names_and_selection():
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
    assert module_names(None, [stranger]) == ["0 (ReLU)"]
    # Containers stand for their children; a module for itself; a list for its items.
    assert select_modules(None, model.layers) == list(model.layers)
    assert select_modules(None, nn.ModuleList([model.head])) == [model.head]
    assert select_modules(None, nn.ModuleDict({"h": model.head})) == [model.head]
    assert select_modules(None, model.head) == [model.head]
    assert select_modules(None, (m for m in [model.head])) == [model.head]
    assert select_modules(model, None, lambda m: isinstance(m, nn.Linear)) == [model.head]
    assert len(select_modules(model, None)) == 5  # no filter: every module, model included
    for empty in ([], nn.Sequential(), ()):
        with pytest.raises(ValueError, match="empty"):
            select_modules(model, empty)
        with pytest.raises(ValueError, match="empty"):
            StatsHooks(empty)
    with pytest.raises(ValueError, match="selected no modules"):
        select_modules(model, None, lambda m: False)
    with pytest.raises(ValueError, match="mods="):
        select_modules(None, None)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        select_modules(None, [model.head, "layer"])
    with StatsHooks(model.layers, model=model) as hooks:
        model.layers(torch.randn(2, 1, 7, 7))
    assert list(hooks.stats) == ["layers.0 (Conv2dWithReLU)", "layers.1 (Conv2dWithReLU)"]
    assert [len(s) for s in hooks.stats.values()] == [1, 1]
    with StatsHooks(model.layers) as hooks:
        assert list(hooks.stats) == ["0 (Conv2dWithReLU)", "1 (Conv2dWithReLU)"]
    assert not any(m._forward_hooks for m in model.modules())
