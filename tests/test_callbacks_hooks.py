"""`HooksCallback` / `StoreModuleStatsCB` inside a real fit: what gets recorded per batch,
modes, periodicity, cleanup on every way out, appending fits, and no host syncs per batch."""

from __future__ import annotations

import collections
import sys
import traceback
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Capture, assert_column, direct, no_hooks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actwidget.callbacks.hooks import HooksCallback, StoreModuleStatsCB
from actwidget.hooks import StoreModuleStats
from actwidget.learner import Callback, CancelBatchException, CancelFitException, TrainLearner
from actwidget.models import CNN
from actwidget.stats import StatsConfig

DEFAULT = StatsConfig()
N_TRAIN, BS_TRAIN, N_VALID, BS_VALID = 12, 4, 6, 3  # 3 train batches of 4, 2 valid of 3


def make_learner(model=None, cbs=(), n_train=N_TRAIN, n_in=5) -> TrainLearner:
    torch.manual_seed(0)

    def dl(n, bs):
        return DataLoader(TensorDataset(torch.randn(n, n_in), torch.randint(0, 3, (n,))), bs)

    model = model or nn.Sequential(nn.Linear(n_in, 6), nn.ReLU(), nn.Linear(6, 3))
    dls = SimpleNamespace(train=dl(n_train, BS_TRAIN), valid=dl(N_VALID, BS_VALID))
    return TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=list(cbs))


class At(Callback):
    """Runs `action(learn)` at `event` of training batch `iter` (every epoch)."""

    order = 50

    def __init__(self, event, iter, action):
        self.event, self.iter, self.action = event, iter, action
        setattr(self, event, self._maybe)

    def _maybe(self, learn):
        if learn.training and learn.iter == self.iter:
            self.action(learn)


def raiser(exc):
    def act(learn):
        raise exc

    return act


def test_records_each_batch_exactly_with_layer_names():
    learn = make_learner()
    cap = [Capture([m]) for m in learn.model]
    cb = StoreModuleStatsCB(mods=learn.model)
    learn.fit(2, cbs=[cb])
    for c in cap:
        c.remove()
    stats = cb.stats
    assert list(stats) == ["0 (Linear)", "1 (ReLU)", "2 (Linear)"]
    assert cb.batches == 6 and no_hooks(learn.model)
    for c, m, name in zip(cap, learn.model, stats, strict=True):
        train = [o for o, training in zip(c.outs[m], c.modes[m], strict=True) if training]
        s = stats[name]
        assert len(s) == 6
        np.testing.assert_array_equal(s.batch, np.arange(6))
        for i, out in enumerate(train):
            assert_column(s, i, [out])


def test_cnn_layer_names():
    model = CNN()
    learn = make_learner(model, n_in=1)
    learn.dls.train = DataLoader(
        TensorDataset(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))), 2
    )
    cb = StoreModuleStatsCB(mods=model.layers)
    learn.fit(1, valid=False, cbs=[cb])
    assert list(cb.stats) == [f"layers.{i} (Conv2dWithReLU)" for i in range(4)] + [
        "layers.4 (Conv2d)"
    ]
    assert [len(s) for s in cb.stats.values()] == [2] * 5
    assert cb.stats["layers.0 (Conv2dWithReLU)"].numel[0] == 2 * 8 * 14 * 14


@pytest.mark.parametrize(
    ("on_train", "on_valid", "phases"),
    [
        (True, False, "ttt" * 2),
        (False, True, "vv" * 2),
        (True, True, "tttvv" * 2),
        (False, False, ""),
    ],
)
def test_on_train_on_valid_reach_the_hooks(on_train, on_valid, phases):
    learn = make_learner()
    m = learn.model[0]
    cap = Capture([m])
    cb = StoreModuleStatsCB(mods=m, on_train=on_train, on_valid=on_valid)
    learn.fit(2, cbs=[cb])
    cap.remove()
    s = cb.stats["0 (Linear)"]
    assert cb.batches == len(phases) == len(s)
    sizes = {"t": BS_TRAIN * 6, "v": BS_VALID * 6}
    np.testing.assert_array_equal(s.numel, [sizes[p] for p in phases])
    pairs = zip(cap.outs[m], cap.modes[m], strict=True)
    kept = [o for o, training in pairs if (on_train if training else on_valid)]
    for i, out in enumerate(kept):
        assert_column(s, i, [out])
    np.testing.assert_array_equal(s.batch, np.arange(len(phases)))
    # Also through the generic HooksCallback.
    hc = HooksCallback(
        StoreModuleStats, mods=[learn.model[0]], on_train=on_train, on_valid=on_valid
    )
    learn.fit(1, cbs=[hc])
    assert [(h.on_train, h.on_valid) for h in hc.hooks] == [(on_train, on_valid)]
    hc.hooks[0].flush()
    assert hc.hooks[0].calls == len(phases) // 2
    assert no_hooks(learn.model)


def test_periodicity_through_the_callback():
    learn = make_learner(n_train=40)  # 10 training batches
    m = learn.model[0]
    cap = Capture([m])
    cb = StoreModuleStatsCB(mods=[m], hook_kwargs={"periodicity": 3})
    learn.fit(1, cbs=[cb])
    s = cb.stats["0 (Linear)"]
    assert cb.batches == 10
    np.testing.assert_array_equal(s.batch, [0, 3, 6, 9])
    train = [o for o, training in zip(cap.outs[m], cap.modes[m], strict=True) if training]
    for i, batch in enumerate([0, 3, 6, 9]):
        assert_column(s, i, [train[batch]])


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.lin(torch.relu(self.lin(x))))


def test_module_called_twice_per_batch_is_one_column():
    learn = make_learner(Twice())
    cap = Capture([learn.model.lin])
    cb = StoreModuleStatsCB(mods=[learn.model.lin], on_valid=True)
    learn.fit(1, cbs=[cb])
    s = cb.stats["lin (Linear)"]
    assert len(s) == cb.batches == 5
    np.testing.assert_array_equal(s.batch, np.arange(5))
    np.testing.assert_array_equal(s.numel, [2 * BS_TRAIN * 5] * 3 + [2 * BS_VALID * 5] * 2)
    outs = cap.outs[learn.model.lin]
    for i in range(5):
        assert_column(s, i, outs[2 * i : 2 * i + 2])


def test_non_floating_output_warns_once_and_is_skipped():
    class Ids(nn.Module):
        def forward(self, x):
            return x.argmax(1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.ids = nn.Linear(5, 3), Ids()

        def forward(self, x):
            self.ids(x)
            return self.lin(x)

    learn = make_learner(Model())
    cb = StoreModuleStatsCB(mods=[learn.model.ids, learn.model.lin])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit(2, cbs=[cb])
    msgs = [str(w.message) for w in caught if "actwidget" in str(w.message)]
    assert len(msgs) == 1 and "'ids (Ids)'" in msgs[0]
    assert len(cb.stats["ids (Ids)"]) == 0 and len(cb.stats["lin (Linear)"]) == 6


@pytest.mark.parametrize(
    ("scenario", "exc", "columns"),
    [
        ("normal", None, 6),
        ("cancel fit", CancelFitException, 2),
        ("error mid-batch", RuntimeError, 2),
        ("KeyboardInterrupt", KeyboardInterrupt, 2),
        ("error in a later callback's before_batch", ValueError, 1),
    ],
)
def test_hooks_removed_on_every_way_out(scenario, exc, columns):
    learn = make_learner()
    cb = StoreModuleStatsCB(mods=learn.model)
    cbs = [cb]
    if scenario == "cancel fit":
        cbs.append(At("after_batch", 1, raiser(CancelFitException())))
    elif scenario == "error mid-batch":
        cbs.append(At("after_loss", 1, raiser(RuntimeError("mid-batch"))))
    elif scenario == "KeyboardInterrupt":
        cbs.append(At("after_predict", 1, raiser(KeyboardInterrupt())))
    elif scenario == "error in a later callback's before_batch":
        cbs.append(At("before_batch", 1, raiser(ValueError("before"))))
    learn.cbs = cbs
    if exc in (None, CancelFitException):
        learn.fit(2)
    else:
        with pytest.raises(exc):
            learn.fit(2)
    assert no_hooks(learn.model)
    # What was recorded so far is kept: here 2 batches, the second one interrupted after
    # its forward pass (before_batch errors come before the forward: nothing recorded).
    assert [len(s) for s in cb.stats.values()] == [columns] * 3
    assert cb.batches == columns
    for s in cb.stats.values():
        np.testing.assert_array_equal(s.batch, np.arange(columns))


def test_interrupted_batch_does_not_merge_with_the_next_fit():
    learn = make_learner()
    cb = StoreModuleStatsCB(mods=[learn.model[0]])
    with pytest.raises(RuntimeError):
        learn.fit(1, cbs=[cb, At("after_loss", 1, raiser(RuntimeError("mid-batch")))])
    learn.fit(1, cbs=[cb, At("after_predict", 0, raiser(CancelBatchException()))])
    s = cb.stats["0 (Linear)"]
    np.testing.assert_array_equal(s.numel, BS_TRAIN * 6)  # one forward per column
    np.testing.assert_array_equal(s.batch, np.arange(5))
    assert cb.batches == 5


def test_empty_selection_raises():
    with pytest.raises(ValueError, match="empty"):
        StoreModuleStatsCB(mods=[])
    with pytest.raises(ValueError, match="empty"):
        HooksCallback(StoreModuleStats, mods=nn.Sequential())
    learn = make_learner()
    cb = StoreModuleStatsCB(mod_filter=lambda m: isinstance(m, nn.Conv2d))
    with pytest.raises(ValueError, match="selected no modules"):
        learn.fit(1, cbs=[cb])
    assert no_hooks(learn.model) and len(cb.stats) == 0
    # The default selects every leaf module.
    cb = StoreModuleStatsCB()
    learn.fit(1, valid=False, cbs=[cb])
    assert list(cb.stats) == ["0 (Linear)", "1 (ReLU)", "2 (Linear)"]
    cb = StoreModuleStatsCB(mod_filter=lambda m: isinstance(m, nn.ReLU))
    learn.fit(1, valid=False, cbs=[cb])
    assert list(cb.stats) == ["1 (ReLU)"]


def test_fit_twice_appends_and_reset_starts_over(tmp_path):
    learn = make_learner()
    m = learn.model[2]
    cap = Capture([m])
    cb = StoreModuleStatsCB(mods=learn.model, config=StatsConfig(capacity=4))
    events = []
    cb.subscribe(lambda event, src: events.append((event.value, src.status.batch)))
    learn.fit(1, cbs=[cb])
    learn.fit(1, cbs=[cb])
    assert cb.batches == 6
    s = cb.stats["2 (Linear)"]
    assert s.batches.sum() == 6 and len(s) == 3 and s.batches_per_column == 2
    train = [o for o, training in zip(cap.outs[m], cap.modes[m], strict=True) if training]
    assert s.numel.sum() == sum(o.numel() for o in train)
    np.testing.assert_allclose(s.batch, [0.5, 2.5, 4.5])
    assert s.mean[1] == pytest.approx(direct(train[2:4])["mean"], rel=1e-6)
    assert [tuple(f) for f in cb.stats.fits] == [(1, 0), (2, 3)]
    assert [e for e in events if e[0] not in ("batch", "flush")] == [
        ("fit_start", 0),
        ("epoch", 0),
        ("epoch", 3),
        ("fit_end", 3),
        ("fit_start", 3),
        ("epoch", 3),
        ("epoch", 6),
        ("fit_end", 6),
    ]
    assert [b for e, b in events if e == "batch"] == [1, 2, 3, 4, 5, 6]
    # Save, reset, load.
    path = cb.save(tmp_path / "s.npz")
    cb.reset()
    assert cb.batches == 0 and all(len(s) == 0 for s in cb.stats.values())
    learn.fit(1, cbs=[cb])
    assert cb.batches == 3 and [len(s) for s in cb.stats.values()] == [3, 3, 3]
    np.testing.assert_array_equal(cb.stats["0 (Linear)"].batch, [0, 1, 2])
    back = cb.load(path)
    assert cb.batches == 6
    np.testing.assert_array_equal(back["2 (Linear)"].columns, s.columns)
    learn.fit(1, valid=False, cbs=[cb])  # continues the loaded run
    assert cb.batches == 9 and cb.stats["2 (Linear)"].batches.sum() == 9


def test_reset_during_a_fit_drops_pending_records():
    learn = make_learner()
    cb = StoreModuleStatsCB(mods=[learn.model[0]])
    learn.fit(1, valid=False, cbs=[cb, At("after_batch", 1, lambda learn: cb.reset())])
    s = cb.stats["0 (Linear)"]
    assert cb.batches == 1 and len(s) == 1  # only the batch after the reset
    np.testing.assert_array_equal(s.batch, [0])


class SyncCounter:
    """Counts calls of the tensor methods that move data to the host (or wait for it)."""

    METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")

    OURS = tuple(
        f"actwidget/{f}"
        for f in (
            "recorder/__init__.py", "recorder/_taps.py", "recorder/_collector.py",
            "recorder/_clock.py", "recorder/_sinks.py", "estimator.py", "_fold.py",
            "hooks.py", "stats.py", "callbacks/hooks.py",
        )
    )  # fmt: skip

    def __init__(self, monkeypatch):
        self.counts = collections.Counter()
        self.where = []
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(t, *args, **kwargs):
            # Only calls made from the stats code (the DataLoader calls .item() per epoch).
            f = sys._getframe(1)
            while f is not None:
                if f.f_code.co_filename.replace("\\", "/").endswith(self.OURS):
                    self.counts[name] += 1
                    self.where.append((name, "".join(traceback.format_stack(limit=5))))
                    break
                f = f.f_back
            return original(t, *args, **kwargs)

        return counted


@pytest.mark.parametrize("config", [StatsConfig(), StatsConfig(sample_size=None)])
def test_one_packed_copy_per_batch_and_no_other_host_reads(monkeypatch, config):
    """Every batch moves all layers' accumulators to the host in one copy (`numpy` of the
    packed rows: on an accelerator, a non-blocking copy read later, when the columns are
    published); nothing else reads a device value per batch: only each layer's first call,
    once, for where its sums are centred (`estimator.first_shift`). Reading the stats
    mid-fit reads only the packed copies not yet read."""
    model = nn.Sequential(nn.Linear(5, 300), nn.ReLU(), nn.Linear(300, 20), nn.Linear(20, 3))
    learn = make_learner(model, n_train=40)  # 10 training batches, the first layer sampled
    cb = StoreModuleStatsCB(mods=model, on_valid=True, config=config)
    cb.recorder.flush_interval = 1e9  # publish only when asked: count what happens meanwhile
    assert cb.recorder.flush_every > 12
    seen = {}

    class Probe(Callback):
        order = 100

        def after_epoch(self, learn):
            if learn.training:
                return
            seen["during"] = dict(counter.counts)
            seen["where"] = list(counter.where)
            counter.counts.clear()
            stats = cb.stats  # like a widget reading mid-fit
            seen["read"] = dict(counter.counts)
            seen["columns"] = [len(s) for s in stats.values()]

    counter = SyncCounter(monkeypatch)
    learn.fit(1, cbs=[cb, Probe()])
    # 10 training + 2 validation batches: one packed copy each; 4 layers' first calls.
    during, read = seen["during"], seen["read"]
    assert during.pop("__float__") == 4, seen["where"]
    assert set(during) | set(read) == {"numpy"}, (during, read)
    assert during["numpy"] + read["numpy"] == 12
    assert during["numpy"] == 1  # the fit's first batch is published at once
    assert seen["columns"] == [12] * 4


def test_hooks_callback_with_a_custom_hook():
    made = []

    class MyHook(StoreModuleStats):
        def __init__(self, m, on_train, on_valid, **kw):
            made.append(kw)
            super().__init__(m, on_train, on_valid, **kw)

    learn = make_learner()
    hc = HooksCallback(
        MyHook,
        mod_filter=lambda m: isinstance(m, nn.Linear),
        on_valid=True,
        hook_kwargs={"periodicity": 2},
    )
    learn.fit(1, cbs=[hc])
    assert made == [{"periodicity": 2}] * 2 and len(hc) == 2
    assert [h.module for h in hc] == [learn.model[0], learn.model[2]]
    assert [h.calls for h in hc] == [5, 5]
    assert [len(h.layer_stats) for h in hc] == [3, 3]  # calls 1, 3, 5
    assert no_hooks(learn.model)
