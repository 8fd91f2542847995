"""The Lightning adapter against the real library: one exact column per training step, stop at
a step boundary (request, Ctrl-C, the widget's Stop), hooks gone on every exit, no eager import."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import EXACT, Capture, assert_column, click_stop, no_hooks, tiny_cnn, tiny_dls

from actwidget import ActivationWidget
from actwidget.integrations.lightning import StatsCallback

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


class Classifier(pl.LightningModule):
    """tiny_cnn with cross-entropy and SGD; raises at training batch `fail_at`."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.fail_at = fail_at

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, i):
        if i == self.fail_at:
            raise RuntimeError(f"boom at batch {i}")
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Validated(Classifier):
    def validation_step(self, batch, i):
        x, y = batch
        return F.cross_entropy(self(x), y)


class AtBatchEnd(pl.Callback):
    """Calls `f(batch_idx)` at each training batch end; listed before the StatsCallback."""

    def __init__(self, f) -> None:
        self.f = f

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.f(batch_idx)


def fit(model, callbacks, tmp_path, epochs: int = 1, valid: bool = False, **kw) -> pl.Trainer:
    """8 training batches per epoch (and 2 validation batches when `valid`), no framework noise."""
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, **kw,
    )  # fmt: skip
    dls = tiny_dls()
    val = tiny_dls(n=16).valid if valid else None
    trainer.fit(model, dls.train, val)
    return trainer


def test_one_column_per_training_step_equal_to_an_independent_capture(tmp_path, seeded):
    model = Validated()
    before = signal.getsignal(signal.SIGINT)
    cb = StatsCallback(["net.0", "net.2"], config=EXACT)  # dotted names, resolved at fit
    cap = Capture([model.net[0], model.net[2]])
    fit(model, [cb], tmp_path, epochs=2, valid=True)  # validation and sanity check unrecorded
    cap.remove()
    stats = cb.stats
    assert cb.recorder.names == ["net.0 (Conv2d)", "net.2 (Conv2d)"]
    for name, m in zip(cb.recorder.names, [model.net[0], model.net[2]], strict=True):
        train_outs = [o for o, t in zip(cap.outs[m], cap.modes[m], strict=True) if t]
        assert len(train_outs) == 16 and len(stats[name]) == 16
        for i, out in enumerate(train_outs):
            assert_column(stats[name], i, [out])
    st = cb.status
    assert (st.state.value, st.batch, st.epoch, st.epochs, st.epoch_batches) == (
        "finished", 16, 1, 2, 8,
    )  # fmt: skip
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before


def test_on_valid_gives_validation_batches_columns_but_not_the_sanity_check(tmp_path, seeded):
    model = Validated()
    cb = StatsCallback([model.net[3]], on_valid=True, config=EXACT)  # a module object
    cap = Capture([model.net[3]])
    fit(model, [cb], tmp_path, valid=True, num_sanity_val_steps=2)
    cap.remove()
    outs, modes = cap.outs[model.net[3]], cap.modes[model.net[3]]
    assert modes == [False] * 2 + [True] * 8 + [False] * 2  # sanity check, train, validation
    layer = cb.stats["net.3 (ReLU)"]
    assert len(layer) == 10
    for i, out in enumerate(outs[2:]):
        assert_column(layer, i, [out])
    assert no_hooks(model)


def test_request_stop_at_step_k_ends_training_at_that_boundary(tmp_path):
    model = Classifier()
    cb = StatsCallback(["net.1"])
    stopper = AtBatchEnd(lambda i: i == 2 and cb.request_stop())
    trainer = fit(model, [stopper, cb], tmp_path, epochs=3)
    assert trainer.should_stop and trainer.global_step == 3
    assert cb.batches == 3 and len(cb.stats["net.1 (ReLU)"]) == 3
    assert cb.status.state.value == "stopped"
    assert cb.status.message == "at epoch 1, batch 3"
    assert no_hooks(model) and not cb.should_stop  # the request belonged to that fit


def test_an_exception_mid_training_fails_the_fit_and_removes_the_hooks(tmp_path):
    model = Classifier(fail_at=3)
    before = signal.getsignal(signal.SIGINT)
    cb = StatsCallback()  # every leaf module
    with pytest.raises(RuntimeError, match="boom at batch 3"):
        fit(model, [cb], tmp_path)
    assert len(cb.recorder.names) == 6
    assert cb.status.state.value == "failed" and "boom at batch 3" in cb.status.message
    assert cb.batches == 3
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before


def test_first_ctrl_c_stops_at_the_batch_a_second_interrupts(tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("must run in the main thread")
    before = signal.getsignal(signal.SIGINT)
    model = Classifier()
    cb = StatsCallback(["net.1"])
    once = AtBatchEnd(lambda i: i == 1 and signal.raise_signal(signal.SIGINT))
    trainer = fit(model, [once, cb], tmp_path, epochs=2)
    assert trainer.global_step == 2 and cb.status.state.value == "stopped"
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before

    def two_ctrl_c(i):
        if i == 1:
            signal.raise_signal(signal.SIGINT)  # a stop request
            signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt

    twice = AtBatchEnd(two_ctrl_c)
    with pytest.raises(SystemExit):  # Lightning's answer to KeyboardInterrupt
        fit(model, [twice, cb], tmp_path, epochs=2)
    assert cb.status.state.value == "stopped" and cb.status.message == "interrupted"
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before


def test_the_widget_follows_the_fit_and_its_stop_ends_it(tmp_path):
    model = Classifier()
    cb = StatsCallback(["net.1", "net.3"])
    w = ActivationWidget(cb, interval=0)
    w.stop_button.send = lambda content, buffers=None: None
    assert w.state == "waiting" and not w.stop_button.running
    seen = []

    def click_stop_at_2(i):
        seen.append((w.state, w.stop_button.running))
        if i == 2:  # the front end's stop message, handled off the training thread
            click_stop(w)

    fit(model, [AtBatchEnd(click_stop_at_2), cb], tmp_path, epochs=2)
    assert set(seen) == {("running", True)}
    assert w.state == "stopped" and "at epoch 1, batch 3" in w.header.value
    assert not w.stop_button.running
    fit(model, [cb], tmp_path)  # a second fit appends: 3 + 8 batches
    assert w.state == "finished" and cb.batches == 11
    assert len(w.stats["net.1 (ReLU)"]) == 11 and no_hooks(model)


def test_importing_the_integrations_package_loads_no_framework():
    code = (
        "import sys, actwidget, actwidget.integrations\n"
        "print([m for m in ('lightning', 'pytorch_lightning') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
