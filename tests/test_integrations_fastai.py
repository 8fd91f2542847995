"""The fastai adapter against the real Learner: one exact column per training batch, stop at a
batch boundary (request, Ctrl-C, the widget's Stop), hooks gone on every exit, no eager import."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import EXACT, Capture, assert_column, click_stop, no_hooks, tiny_cnn, tiny_dls

with warnings.catch_warnings():  # fastai's import warns about torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import SGD

from actwidget import ActivationWidget
from actwidget.integrations.fastai import StatsCallback


class AtBatchEnd(Callback):
    """Calls `f(iter)` after each training batch (before the StatsCallback, order 90)."""

    order = 50

    def __init__(self, f) -> None:
        self.f = f

    def after_batch(self) -> None:
        if self.training:
            self.f(self.iter)


class FailAt(Callback):
    """Raises in the forward pass of training batch `at`."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_pred(self) -> None:
        if self.training and self.iter == self.at:
            raise RuntimeError(f"boom at batch {self.at}")


def learner(model, cbs=(), valid: int = 16) -> Learner:
    """8 training batches per epoch and valid / 8 validation batches, on the CPU."""
    train = tiny_dls().train
    dls = DataLoaders(train, tiny_dls(n=valid).valid, device=torch.device("cpu"))
    return Learner(dls, model, loss_func=F.cross_entropy, opt_func=SGD, lr=0.1, cbs=list(cbs))


def fit(learn: Learner, epochs: int = 1, **kw) -> Learner:
    with learn.no_logging():  # no epoch table on stdout
        learn.fit(epochs, **kw)
    return learn


def test_one_column_per_training_batch_equal_to_an_independent_capture(seeded):
    model = tiny_cnn()
    before = signal.getsignal(signal.SIGINT)
    cb = StatsCallback(["0", "2"], config=EXACT)  # dotted names, resolved at fit
    cap = Capture([model[0], model[2]])
    learn = fit(learner(model, [cb]), epochs=2)  # validation runs, unrecorded
    cap.remove()
    assert cb.recorder.names == ["0 (Conv2d)", "2 (Conv2d)"]
    stats = cb.stats
    for name, m in zip(cb.recorder.names, [model[0], model[2]], strict=True):
        train_outs = [o for o, t in zip(cap.outs[m], cap.modes[m], strict=True) if t]
        assert len(train_outs) == 16 and len(stats[name]) == 16
        for i, out in enumerate(train_outs):
            assert_column(stats[name], i, [out])
    st = cb.status
    assert (st.state.value, st.batch, st.epoch, st.epochs, st.epoch_batches) == (
        "finished", 16, 1, 2, 8,
    )  # fmt: skip
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before
    assert "fit" in vars(learn)  # guarded while attached ...
    learn.remove_cb(cb)
    assert "fit" not in vars(learn)  # ... and no longer after


def test_on_valid_gives_validation_batches_columns(seeded):
    model = tiny_cnn()
    cb = StatsCallback([model[3]], on_valid=True, config=EXACT)  # a module object
    cap = Capture([model[3]])
    fit(learner(model, [cb]))
    cap.remove()
    outs, modes = cap.outs[model[3]], cap.modes[model[3]]
    assert modes == [True] * 8 + [False] * 2
    layer = cb.stats["3 (ReLU)"]
    assert len(layer) == 10
    for i, out in enumerate(outs):
        assert_column(layer, i, [out])
    assert no_hooks(model)


def test_request_stop_at_step_k_ends_training_at_that_boundary():
    model = tiny_cnn()
    cb = StatsCallback(["1"])
    learn = fit(learner(model, [AtBatchEnd(lambda i: i == 2 and cb.request_stop()), cb]), 3)
    assert (learn.epoch, learn.iter, learn.train_iter) == (0, 2, 3)
    assert cb.batches == 3 and cb.status.state.value == "stopped"
    assert cb.status.message == "at epoch 1, batch 3"
    assert no_hooks(model) and not cb.should_stop


@pytest.mark.parametrize("given", ["to the Learner", "to fit"])
def test_an_exception_mid_training_fails_the_fit_and_removes_the_hooks(given):
    before = signal.getsignal(signal.SIGINT)
    model = tiny_cnn()
    cb = StatsCallback()  # every leaf module
    learn = learner(model, [cb, FailAt(3)] if given == "to the Learner" else [FailAt(3)])
    with pytest.raises(RuntimeError, match="boom at batch 3"):
        fit(learn, **({} if given == "to the Learner" else {"cbs": [cb]}))
    assert cb.status.state.value == "failed" and "boom at batch 3" in cb.status.message
    assert cb.batches == 4 and len(cb.recorder.names) == 6  # batch 3's forward ran: kept
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before


def test_first_ctrl_c_stops_at_the_batch_a_second_interrupts():
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("must run in the main thread")
    before = signal.getsignal(signal.SIGINT)
    model = tiny_cnn()
    cb = StatsCallback(["1"])
    once = AtBatchEnd(lambda i: i == 1 and signal.raise_signal(signal.SIGINT))
    learn = fit(learner(model, [once, cb]), 2)
    assert learn.train_iter == 2 and cb.status.state.value == "stopped"
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before

    def two_ctrl_c(i):
        if i == 1:
            signal.raise_signal(signal.SIGINT)  # a stop request
            signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(learner(model, [AtBatchEnd(two_ctrl_c), cb]), 2)
    assert cb.status.state.value == "stopped" and cb.status.message == "interrupted"
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before


def test_the_widget_follows_the_fit_and_its_stop_ends_it():
    model = tiny_cnn()
    cb = StatsCallback(["1", "3"])
    w = ActivationWidget(cb, interval=0)
    w.stop_button.send = lambda content, buffers=None: None
    assert w.state == "waiting" and not w.stop_button.running
    seen = []

    def click_stop_at_2(i):
        seen.append((w.state, w.stop_button.running))
        if i == 2:  # the front end's stop message, handled off the training thread
            click_stop(w)

    learn = fit(learner(model, [AtBatchEnd(click_stop_at_2), cb]), 2)
    assert set(seen) == {("running", True)}
    assert w.state == "stopped" and "at epoch 1, batch 3" in w.header.value
    assert not w.stop_button.running
    learn.remove_cb(learn.at_batch_end)
    fit(learn)  # a second fit appends: 3 + 8 batches
    assert w.state == "finished" and cb.batches == 11
    assert len(w.stats["1 (ReLU)"]) == 11 and no_hooks(model)


def test_importing_the_integrations_package_loads_no_framework():
    code = (
        "import sys, actwidget, actwidget.integrations\n"
        "print([m for m in ('fastai', 'fastcore') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
