"""The Hugging Face adapter against the real Trainer: one exact column per optimizer step, stop
at a step boundary (request, Ctrl-C, the widget's Stop), hooks gone on every exit, no eager
import."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import EXACT, Capture, assert_column, click_stop, no_hooks, tiny_cnn
from torch import nn
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from actwidget import ActivationWidget
from actwidget.integrations.transformers import StatsCallback


class Classifier(nn.Module):
    """tiny_cnn returning the loss the Trainer needs; raises on forward call `fail_at`."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x, labels):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError(f"boom at call {self.calls}")
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Random(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class AtStepEnd(TrainerCallback):
    """Calls `f(global_step)` at each step end; listed before the StatsCallback."""

    def __init__(self, f) -> None:
        self.f = f

    def on_step_end(self, args, state, control, **kwargs):
        self.f(state.global_step)


def trainer(model, callbacks, tmp_path, epochs: int = 1, n: int = 32, **kw) -> Trainer:
    """n / 8 optimizer steps per epoch on CPU; no reports, saving, logging or progress bars."""
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, use_cpu=True, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, num_train_epochs=epochs, learning_rate=0.1,
        remove_unused_columns=False, dataloader_num_workers=0, **kw,
    )  # fmt: skip
    eval_ds = Random(16) if kw.get("eval_strategy") else None
    t = Trainer(model, args, train_dataset=Random(n), eval_dataset=eval_ds, callbacks=callbacks)
    t.remove_callback(PrinterCallback)
    return t


def test_one_column_per_optimizer_step_equal_to_an_independent_capture(tmp_path, seeded):
    model = Classifier()
    before = signal.getsignal(signal.SIGINT)
    cb = StatsCallback(["net.0", "net.2"], config=EXACT)  # dotted names, resolved at fit
    cap = Capture([model.net[0], model.net[2]])
    trainer(model, [cb], tmp_path, epochs=2).train()
    cap.remove()
    assert cb.recorder.names == ["net.0 (Conv2d)", "net.2 (Conv2d)"]
    stats = cb.stats
    for name, m in zip(cb.recorder.names, [model.net[0], model.net[2]], strict=True):
        assert len(cap.outs[m]) == 8 and len(stats[name]) == 8
        for i, out in enumerate(cap.outs[m]):
            assert_column(stats[name], i, [out])
    st = cb.status
    assert (st.state.value, st.batch, st.epoch, st.epochs, st.epoch_batches) == (
        "finished", 8, 1, 2, 4,
    )  # fmt: skip
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before


def test_gradient_accumulation_micro_batches_share_a_column(tmp_path, seeded):
    model = Classifier()
    cb = StatsCallback([model.net[1]], config=EXACT)  # a module object
    cap = Capture([model.net[1]])
    trainer(model, [cb], tmp_path, gradient_accumulation_steps=2).train()
    cap.remove()
    outs, layer = cap.outs[model.net[1]], cb.stats["net.1 (ReLU)"]
    assert len(outs) == 4 and len(layer) == 2 and cb.status.epoch_batches == 2
    for i in range(2):
        assert_column(layer, i, outs[2 * i : 2 * i + 2])


def test_on_valid_gives_evaluation_batches_columns(tmp_path, seeded):
    model = Classifier()
    cb = StatsCallback(["net.3"], on_valid=True, config=EXACT)
    cap = Capture([model.net[3]])
    trainer(model, [cb], tmp_path, eval_strategy="epoch").train()
    cap.remove()
    outs, modes = cap.outs[model.net[3]], cap.modes[model.net[3]]
    assert modes == [True] * 4 + [False] * 2
    layer = cb.stats["net.3 (ReLU)"]
    assert len(layer) == 6
    for i, out in enumerate(outs):
        assert_column(layer, i, [out])
    assert no_hooks(model)


def test_request_stop_at_step_k_ends_training_at_that_boundary(tmp_path):
    model = Classifier()
    cb = StatsCallback(["net.1"])
    stopper = AtStepEnd(lambda step: step == 3 and cb.request_stop())
    t = trainer(model, [stopper, cb], tmp_path, epochs=3)
    t.train()
    assert t.state.global_step == 3 and model.calls == 3
    assert cb.batches == 3 and cb.status.state.value == "stopped"
    assert cb.status.message == "at epoch 1, batch 3"
    assert no_hooks(model) and not cb.should_stop


def test_an_exception_mid_training_fails_the_fit_and_removes_the_hooks(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    model = Classifier(fail_at=3)
    cb = StatsCallback()  # every leaf module
    with pytest.raises(RuntimeError, match="boom at call 3"):
        trainer(model, [cb], tmp_path).train()
    assert cb.status.state.value == "failed" and "boom at call 3" in cb.status.message
    assert cb.batches == 2 and len(cb.recorder.names) == 6
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before


def test_added_after_construction_with_cb_removes_the_hooks_on_an_exception(tmp_path):
    model = Classifier(fail_at=2)
    cb = StatsCallback(["net.1"])
    t = trainer(model, [], tmp_path)
    t.add_callback(cb)  # on_init_end never reached it: `with cb:` guards the run
    with pytest.raises(RuntimeError, match="boom at call 2"), cb:
        t.train()
    assert cb.status.state.value == "failed" and no_hooks(model)


def test_added_after_construction_without_with_warns_and_guards_the_next_train(tmp_path):
    model = Classifier()
    cb = StatsCallback(["net.1"])
    t = trainer(model, [], tmp_path)
    t.add_callback(cb)
    with pytest.warns(UserWarning, match="added after the Trainer was built"):
        t.train()
    assert cb.status.state.value == "finished" and no_hooks(model)
    model.fail_at = model.calls + 2
    with pytest.raises(RuntimeError, match="boom"):
        t.train()  # guarded now: the hooks go
    assert cb.status.state.value == "failed" and no_hooks(model)


def test_first_ctrl_c_stops_at_the_step_a_second_interrupts(tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("must run in the main thread")
    before = signal.getsignal(signal.SIGINT)
    model = Classifier()
    cb = StatsCallback(["net.1"])
    once = AtStepEnd(lambda step: step == 2 and signal.raise_signal(signal.SIGINT))
    t = trainer(model, [once, cb], tmp_path, epochs=2)
    t.train()
    assert t.state.global_step == 2 and cb.status.state.value == "stopped"
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before

    def two_ctrl_c(step):
        if step == 2:
            signal.raise_signal(signal.SIGINT)  # a stop request
            signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(model, [AtStepEnd(two_ctrl_c), cb], tmp_path, epochs=2).train()
    assert cb.status.state.value == "stopped" and cb.status.message == "interrupted"
    assert no_hooks(model) and signal.getsignal(signal.SIGINT) is before


def test_the_widget_follows_the_fit_and_its_stop_ends_it(tmp_path):
    model = Classifier()
    cb = StatsCallback(["net.1", "net.3"])
    w = ActivationWidget(cb, interval=0)
    w.stop_button.send = lambda content, buffers=None: None
    assert w.state == "waiting" and not w.stop_button.running
    seen = []

    def click_stop_at_2(step):
        seen.append((w.state, w.stop_button.running))
        if step == 2:  # the front end's stop message, handled off the training thread
            click_stop(w)

    trainer(model, [AtStepEnd(click_stop_at_2), cb], tmp_path, epochs=2).train()
    assert set(seen) == {("running", True)}
    assert w.state == "stopped" and "at epoch 1, batch 2" in w.header.value
    assert not w.stop_button.running
    trainer(model, [cb], tmp_path).train()  # a second fit appends: 2 + 4 steps
    assert w.state == "finished" and cb.batches == 6
    assert len(w.stats["net.1 (ReLU)"]) == 6 and no_hooks(model)


def test_importing_the_integrations_package_loads_no_framework():
    code = (
        "import sys, actwidget, actwidget.integrations\n"
        "print([m for m in ('transformers', 'accelerate') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
