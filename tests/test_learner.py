"""The callback training loop: events, cleanup, cancels, errors, stop requests and SIGINT."""

from __future__ import annotations

import os
import re
import signal
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actwidget._interrupt import graceful_sigint
from actwidget._util import set_seed
from actwidget.learner import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    Learner,
    TrainLearner,
    run_cbs,
)

EVENTS = [
    f"{when}_{what}"
    for what in ("fit", "epoch", "batch")
    for when in ("before", "after", "cleanup")
] + ["after_predict", "after_loss", "after_backward", "after_step"]


def make_learner(n_train: int = 8, n_valid: int = 4, bs: int = 4, cbs=None) -> TrainLearner:
    set_seed(0)

    def dl(n: int) -> DataLoader:
        ds = TensorDataset(torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,)))
        return DataLoader(ds, batch_size=bs)

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    dls = SimpleNamespace(train=dl(n_train), valid=dl(n_valid))
    return TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=cbs)


class Recorder(Callback):
    """Records every event; `on` maps an event name to an action run with the learner."""

    def __init__(self, on=None):
        self.events: list[str] = []
        self.on = on or {}

    def __getattr__(self, name):
        if name not in EVENTS:
            raise AttributeError(name)

        def record(learn):
            self.events.append(name)
            if name in self.on:
                self.on[name](learn)

        return record

    def count(self, name: str) -> int:
        return self.events.count(name)


def raiser(exc):
    def act(learn):
        raise exc

    return act


TRAIN_BATCH = ["before_batch", "after_predict", "after_loss", "after_backward", "after_step"]
VALID_BATCH = ["before_batch", "after_predict", "after_loss"]


def test_event_order_for_one_epoch():
    rec = Recorder()
    learn = make_learner(n_train=8, n_valid=4, cbs=[rec])
    assert learn.fit(1) is None
    batch_end = ["after_batch", "cleanup_batch"]
    assert rec.events == [
        "before_fit",
        "before_epoch",
        *(TRAIN_BATCH + batch_end) * 2,
        "after_epoch",
        "cleanup_epoch",
        "before_epoch",
        *(VALID_BATCH + batch_end),
        "after_epoch",
        "cleanup_epoch",
        "after_fit",
        "cleanup_fit",
    ]
    assert learn.error is None and learn.stopped_at is None


def test_run_cbs_sorts_by_order_and_skips_missing():
    calls = []

    class A(Callback):
        order = 2

        def before_fit(self, learn):
            calls.append(("A", learn))

    class B(Callback):
        order = 1

        def before_fit(self, learn):
            calls.append(("B", learn))

    run_cbs([A(), Callback(), B()], "before_fit", "L")
    assert calls == [("B", "L"), ("A", "L")]


def test_cancel_batch_skips_rest_of_that_batch_only():
    rec = Recorder(on={"after_predict": raiser(CancelBatchException)})
    learn = make_learner(cbs=[rec])
    learn.fit(1, valid=False)
    assert rec.count("after_predict") == 2
    assert rec.count("after_loss") == rec.count("after_batch") == 0
    assert rec.count("cleanup_batch") == 2
    assert rec.events[-4:] == ["after_epoch", "cleanup_epoch", "after_fit", "cleanup_fit"]


def test_cancel_epoch_skips_rest_of_epoch_and_goes_on():
    rec = Recorder(on={"before_epoch": raiser(CancelEpochException)})
    learn = make_learner(cbs=[rec])
    learn.fit(2)
    assert rec.count("before_batch") == rec.count("after_epoch") == 0
    assert rec.count("cleanup_epoch") == 4  # 2 epochs x (train, valid)
    assert rec.events[-2:] == ["after_fit", "cleanup_fit"]


def test_cancel_fit_runs_every_cleanup_and_returns_normally():
    rec = Recorder(on={"after_loss": raiser(CancelFitException)})
    learn = make_learner(cbs=[rec])
    assert learn.fit(3) is None
    assert rec.events[-4:] == ["after_loss", "cleanup_batch", "cleanup_epoch", "cleanup_fit"]
    assert rec.count("after_fit") == 0
    assert learn.error is None and learn.stopped_at is None


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt()])
def test_error_propagates_after_cleanup_and_is_visible_to_cleanup(exc):
    seen = {}
    rec = Recorder(on={"after_loss": raiser(exc), "cleanup_fit": lambda L: seen.update(e=L.error)})
    learn = make_learner(cbs=[rec])
    with pytest.raises(type(exc)):
        learn.fit(1)
    assert rec.events[-4:] == ["after_loss", "cleanup_batch", "cleanup_epoch", "cleanup_fit"]
    assert seen["e"] is exc and learn.error is exc
    rec.on = {}
    learn.fit(1)  # a later successful fit clears the error
    assert learn.error is None


def test_fit_cbs_apply_to_that_fit_only_even_after_error():
    rec = Recorder(on={"before_fit": raiser(RuntimeError())})
    learn = make_learner()
    with pytest.raises(RuntimeError):
        learn.fit(1, cbs=[rec])
    assert learn.cbs == []
    learn.fit(1)
    assert rec.count("before_fit") == 1


def test_lr_override_applies_to_that_fit_only():
    lrs = []
    rec = Recorder(on={"before_fit": lambda L: lrs.append(L.opt.param_groups[0]["lr"])})
    learn = make_learner(cbs=[rec])
    learn.fit(1, lr=0.5)
    learn.fit(1)
    assert lrs == [0.5, 0.1]


def test_learner_delegates_steps_to_callbacks():
    class Steps(Callback):
        def predict(self, learn):
            learn.preds = learn.model(learn.batch[0])

        def get_loss(self, learn):
            learn.loss = learn.loss_func(learn.preds, learn.batch[1])

        def backward(self, learn):
            learn.loss.backward()

        def step(self, learn):
            learn.opt.step()

        def zero_grad(self, learn):
            learn.opt.zero_grad()

    ref = make_learner()
    learn = Learner(ref.model, ref.dls, F.cross_entropy, cbs=[Steps()])
    before = ref.model[1].weight.detach().clone()
    learn.fit(1, valid=False)
    assert not torch.equal(before, ref.model[1].weight)
    assert all(p.grad is None or not p.grad.any() for p in ref.model.parameters())


def test_request_stop_from_another_thread_stops_at_next_batch_boundary():
    reached, go = threading.Event(), threading.Event()

    def pause(learn):
        if learn.training and learn.iter == 1:
            reached.set()
            assert go.wait(5)

    rec = Recorder(on={"after_batch": pause})
    learn = make_learner(n_train=16, cbs=[rec])
    assert learn.request_stop() is False  # nothing running
    errors = []
    t = threading.Thread(target=lambda: _run(learn.fit, 2, errors))
    t.start()
    assert reached.wait(5)
    assert learn.request_stop(learn.fit_id + 1) is False  # not the running fit
    assert learn.request_stop(learn.fit_id) is True
    go.set()
    t.join(5)
    assert not t.is_alive() and errors == []
    assert rec.count("before_batch") == 2  # stopped before the third batch
    assert learn.stopped_at == (0, 1)
    assert rec.events[-3:] == ["cleanup_batch", "cleanup_epoch", "cleanup_fit"]
    assert rec.count("after_fit") == 0 and learn.error is None


def _run(fit, n, errors):
    try:
        fit(n)
    except BaseException as e:
        errors.append(e)


def test_stale_or_leftover_stop_does_not_stop_a_later_fit():
    accepted = []
    rec = Recorder(on={"cleanup_fit": lambda L: accepted.append(L.request_stop())})
    learn = make_learner(cbs=[rec])
    learn.fit(1)  # the stop accepted during its last cleanup comes too late to act
    first = learn.fit_id
    assert accepted == [True] and learn.stopped_at is None
    assert learn.request_stop(first) is False
    rec.on = {"before_batch": lambda L: accepted.append(L.request_stop(first))}
    learn.fit(1)
    assert learn.fit_id == first + 1
    assert accepted[1:] == [False] * 3
    assert rec.count("after_fit") == 2 and learn.stopped_at is None


def _sentinel_handler(signum, frame):  # pragma: no cover - never called
    raise AssertionError("previous handler called")


@pytest.fixture
def sentinel_sigint():
    """Install a recognizable SIGINT handler for the test and restore the original after."""
    original = signal.signal(signal.SIGINT, _sentinel_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, original)


@pytest.mark.parametrize("send", [signal.raise_signal, lambda s: os.kill(os.getpid(), s)])
def test_first_sigint_stops_gracefully_and_restores_handler(sentinel_sigint, send):
    def interrupt(learn):
        if learn.iter == learn.n_iter - 1:  # the last train batch: the epoch must not end
            send(signal.SIGINT)

    rec = Recorder(on={"after_batch": interrupt})
    learn = make_learner(cbs=[rec])
    assert learn.fit(2) is None
    assert learn.stopped_at == (0, 1) and learn.error is None
    assert rec.count("before_batch") == 2 and rec.count("after_epoch") == 0
    assert rec.events[-3:] == ["cleanup_batch", "cleanup_epoch", "cleanup_fit"]
    assert signal.getsignal(signal.SIGINT) is _sentinel_handler


def test_second_sigint_raises_keyboard_interrupt_after_cleanup(sentinel_sigint):
    def interrupt_twice(learn):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)

    rec = Recorder(on={"after_loss": interrupt_twice})
    learn = make_learner(cbs=[rec])
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1)
    assert rec.events[-4:] == ["after_loss", "cleanup_batch", "cleanup_epoch", "cleanup_fit"]
    assert isinstance(learn.error, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is _sentinel_handler


def test_graceful_interrupt_can_be_switched_off(sentinel_sigint, monkeypatch):
    monkeypatch.setattr(Learner, "graceful_interrupt", False)
    seen = []
    rec = Recorder(on={"before_fit": lambda L: seen.append(signal.getsignal(signal.SIGINT))})
    make_learner(cbs=[rec]).fit(1)
    assert seen == [_sentinel_handler]


def test_graceful_sigint_does_nothing_outside_main_thread(sentinel_sigint):
    seen = []

    def body():
        with graceful_sigint(lambda: None):
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=body)
    t.start()
    t.join(5)
    assert seen == [_sentinel_handler]


@pytest.mark.parametrize("bad", [-1, -5, 1.5, 2.0, "2", None, True])
def test_fit_rejects_bad_epoch_counts_before_any_event(bad):
    rec = Recorder()
    learn = make_learner(cbs=[rec])
    before = [p.clone() for p in learn.model.parameters()]
    with pytest.raises((TypeError, ValueError), match=r"n_epochs must be an int >= 0, got"):
        learn.fit(bad, cbs=[Recorder()])
    assert rec.events == [] and learn.cbs == [rec]  # nothing ran, the fit's cbs were not added
    assert learn.request_stop() is False  # no fit is running
    for p, q in zip(before, learn.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_fit_accepts_numpy_ints_and_zero_epochs():
    import numpy as np

    rec = Recorder()
    learn = make_learner(cbs=[rec])
    learn.fit(np.int64(1))
    assert learn.n_epochs == 1 and type(learn.n_epochs) is int
    assert rec.count("before_batch") == 3  # 2 train + 1 valid batches
    rec.events.clear()
    learn.fit(0)
    assert rec.events == ["before_fit", "after_fit", "cleanup_fit"]


class DictDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"image": torch.randn(1, 8, 8), "label": i % 10}


@pytest.mark.parametrize(
    "batches, described",
    [
        (DataLoader(DictDataset(), batch_size=4), r"a dict with keys \['image', 'label'\]"),
        (DataLoader(torch.randn(8, 1, 8, 8), batch_size=4), r"a single tensor of shape \(4, 1"),
        ([(torch.randn(4, 1, 8, 8),)], r"a tuple of 1 item"),
    ],
)
def test_train_learner_says_which_batch_shape_it_expects(batches, described):
    rec = Recorder()
    learn = make_learner(cbs=[rec])
    learn.dls = SimpleNamespace(train=batches, valid=batches)
    with pytest.raises(TypeError, match=r"expects each batch to be a tuple or list \(inputs, "):
        learn.fit(1)
    assert isinstance(learn.error, TypeError)
    assert re.search(described, str(learn.error)), learn.error
    assert rec.count("cleanup_fit") == 1  # the usual cleanup on the way out


def test_train_learner_takes_extra_batch_items():
    learn = make_learner()
    ds = TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)), torch.ones(8))
    learn.dls = SimpleNamespace(train=DataLoader(ds, batch_size=4), valid=[])
    learn.fit(1)
    assert learn.loss is not None and torch.isfinite(learn.loss)


def test_a_failing_cleanup_never_skips_the_other_callbacks_cleanup():
    """One callback's cleanup_fit raising must not leave another's hooks on the model."""
    from conftest import no_hooks, tiny_cnn, tiny_dls

    from actwidget.callbacks.hooks import StoreModuleStatsCB

    class Broken(Callback):
        order = -100  # runs first

        def cleanup_fit(self, learn):
            raise RuntimeError("cleanup bug")

    model = tiny_cnn()
    cb = StoreModuleStatsCB(mods=[model[1]])
    learn = TrainLearner(model, tiny_dls(), F.cross_entropy, lr=0.1, cbs=[Broken(), cb])
    with pytest.raises(RuntimeError, match="cleanup bug"):
        learn.fit(1)
    assert no_hooks(model) and cb.status.state.value == "finished"
