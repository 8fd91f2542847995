"""`ProgressCB`: the terminal line, and the notebook bar and live loss plot."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actwidget._util import set_seed
from actwidget.callbacks import ProgressCB
from actwidget.callbacks import progress as progress_mod
from actwidget.learner import Callback, CancelFitException, TrainLearner


def make_learner(cbs) -> TrainLearner:
    set_seed(0)

    def dl(n: int) -> DataLoader:
        ds = TensorDataset(torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,)))
        return DataLoader(ds, batch_size=4)

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    dls = SimpleNamespace(train=dl(12), valid=dl(6))
    return TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=cbs)


class LossLog(Callback):
    """Records each batch loss on the host (tests only)."""

    def __init__(self):
        self.train, self.valid = [], []

    def after_batch(self, learn):
        (self.train if learn.training else self.valid).append(
            (learn.loss.item(), len(learn.batch[0]))
        )


def test_terminal_line_updates_in_place_with_a_final_line_per_epoch(monkeypatch, capsys):
    monkeypatch.setattr(progress_mod, "in_notebook", lambda: False)
    monkeypatch.setattr(progress_mod, "display", lambda *a, **k: pytest.fail("displayed"))
    cb = ProgressCB(plot=True)
    make_learner([cb]).fit(2)
    out = capsys.readouterr().out
    lines = out.split("\n")
    assert lines[-1] == ""  # ends on a fresh line
    finals = [line.rsplit("\r", 1)[-1] for line in lines[:-1]]
    assert len(finals) == 4  # 2 epochs x (train, valid)
    assert finals[0].startswith("epoch 1/2 train [####################] 3/3 ")
    assert finals[3].startswith("epoch 2/2 eval ") and " 2/2 " in finals[3]
    assert all(line.startswith("\r") for line in lines[:-1])
    assert cb.bar is None and cb.fig is None


def test_terminal_line_is_ended_when_fit_is_cancelled(monkeypatch, capsys):
    class Stop(Callback):
        def after_batch(self, learn):
            raise CancelFitException

    monkeypatch.setattr(progress_mod, "in_notebook", lambda: False)
    make_learner([ProgressCB(), Stop()]).fit(2)
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1 and " 1/3 " in out


def test_notebook_bar_and_plot(monkeypatch):
    shown = []
    monkeypatch.setattr(progress_mod, "in_notebook", lambda: True)
    monkeypatch.setattr(progress_mod, "display", shown.append)
    cb, losses = ProgressCB(plot=True), LossLog()
    make_learner([cb, losses]).fit(2)

    assert len(shown) == 1 and cb.fig in shown[0].children
    assert cb.bar.value == cb.bar.max == 2  # last phase: 2 valid batches
    assert cb.label.value.startswith("epoch 2/2 eval") and "batch 2/2" in cb.label.value

    x, y = cb.train_line.x, cb.train_line.y
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_allclose(y, [v for v, _ in losses.train], rtol=1e-6)
    np.testing.assert_allclose(x, [1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2], rtol=1e-6)

    vy = cb.valid_line.y
    assert vy.dtype == np.float32 and cb.valid_line.x.tolist() == [1.0, 2.0]
    v = np.array(losses.valid).reshape(2, 2, 2)  # epoch, batch, (loss, size)
    expected = (v[..., 0] * v[..., 1]).sum(1) / v[..., 1].sum(1)
    np.testing.assert_allclose(vy, expected, rtol=1e-6)


def test_notebook_without_plot_shows_only_the_bar(monkeypatch):
    shown = []
    monkeypatch.setattr(progress_mod, "in_notebook", lambda: True)
    monkeypatch.setattr(progress_mod, "display", shown.append)
    cb = ProgressCB()
    make_learner([cb]).fit(1, valid=False)
    assert len(shown) == 1 and cb.fig is None
    assert cb.bar.value == cb.bar.max == 3


class Poison(Callback):
    """Replaces some batches' losses (as the host sees them) by a spike, inf and NaN."""

    order = -100  # before ProgressCB reads the loss

    def __init__(self, bad: dict[int, float]):
        self.bad, self.n = bad, 0

    def after_batch(self, learn):
        if learn.training:
            if self.n in self.bad:
                learn.loss = torch.tensor(self.bad[self.n])
            self.n += 1


def test_loss_plot_is_not_flattened_by_a_spike_and_marks_nan(monkeypatch):
    monkeypatch.setattr(progress_mod, "in_notebook", lambda: True)
    monkeypatch.setattr(progress_mod, "display", lambda *a, **k: None)
    cb = ProgressCB(plot=True)
    bad = {1: 5e34, 3: float("inf"), 4: float("nan")}  # 6 train batches over 2 epochs
    make_learner([Poison(bad), cb]).fit(2)
    scale = cb.train_line.scales["y"]
    assert np.isfinite([scale.min, scale.max]).all() and scale.max < 100  # not 5e34
    up = cb.off_scale[0]
    assert up.x.tolist() == pytest.approx([2 / 3]) and up.y.tolist() == [np.float32(scale.max)]
    y = cb.train_line.y
    assert y.dtype == np.float32 and not np.isinf(y).any() and np.isfinite(y[-1])
    bands = np.atleast_2d(cb.nonfinite.x)  # one red band per NaN/inf loss
    assert len(bands) == 2 and len(cb.nonfinite.fill_opacities) == 2
    centres = bands[:, :4].mean(axis=1)
    np.testing.assert_allclose(sorted(centres), [4 / 3, 5 / 3], rtol=1e-5)


def test_a_plot_failure_is_logged_and_never_stops_the_fit(monkeypatch, caplog):
    import actwidget.ranges as ranges

    monkeypatch.setattr(progress_mod, "in_notebook", lambda: True)
    monkeypatch.setattr(progress_mod, "display", lambda *a, **k: None)

    def broken(*args, **kwargs):
        raise RuntimeError("plot broke")

    monkeypatch.setattr(ranges, "robust_range", broken)
    cb = ProgressCB(plot=True)
    learn = make_learner([cb])
    learn.fit(2)
    assert learn.epoch == 1 and cb.fig is None and cb.bar.value == cb.bar.max
    assert any("loss plot failed" in r.getMessage() for r in caplog.records)


def test_loss_plot_before_any_valid_loss(monkeypatch):
    monkeypatch.setattr(progress_mod, "in_notebook", lambda: True)
    monkeypatch.setattr(progress_mod, "display", lambda *a, **k: None)
    cb = ProgressCB(plot=True)
    make_learner([cb]).fit(1, valid=False)  # no valid point: an empty valid line
    assert len(cb.valid_line.y) == 0 and len(cb.train_line.y) == 3


def test_one_epoch_plot_draws_its_single_valid_point(monkeypatch, caplog):
    monkeypatch.setattr(progress_mod, "in_notebook", lambda: True)
    monkeypatch.setattr(progress_mod, "display", lambda *a, **k: None)
    cb = ProgressCB(plot=True)
    make_learner([cb]).fit(1)
    assert cb.fig is not None and not caplog.records  # drawn, not given up
    assert np.unique(cb.valid_line.x).tolist() == [1.0] and np.isfinite(cb.valid_line.y).all()


class Alerting(Callback):
    """Logs an alert on the actwidget logger at training batch 1, as the recorder does."""

    def after_batch(self, learn):
        if learn.training and learn.iter == 1:
            logging.getLogger("actwidget").warning("actwidget alert: something at batch 1")


def terminal_lines(monkeypatch, capsys, **consts) -> list[str]:
    """A terminal fit's stdout, the actwidget logger printing to the same stream (the order
    a terminal shows), split into lines."""
    monkeypatch.setattr(progress_mod, "in_notebook", lambda: False)
    for name, value in consts.items():
        monkeypatch.setattr(progress_mod, name, value)
    log = logging.getLogger("actwidget")
    handler = logging.StreamHandler(sys.stdout)
    log.addHandler(handler)
    try:
        make_learner([ProgressCB(), Alerting()]).fit(1, valid=False)
    finally:
        log.removeHandler(handler)
    assert not log.filters  # the fit took its hold away
    return capsys.readouterr().out.split("\n")


def test_alerts_wait_for_the_progress_line_and_get_a_line_each(monkeypatch, capsys):
    lines = terminal_lines(monkeypatch, capsys)
    i = lines.index("actwidget alert: something at batch 1")  # a line of its own
    assert lines[i - 1].split("\r")[-1].startswith("epoch 1/1 train [####################] 3/3")


def test_an_alert_held_too_long_ends_the_line_early(monkeypatch, capsys):
    lines = terminal_lines(monkeypatch, capsys, _TEXT_EVERY=0.0, _HOLD_MAX=-1.0)
    i = lines.index("actwidget alert: something at batch 1")
    assert " 2/3 " in lines[i - 1].split("\r")[-1]  # the bar stopped where it was
    assert " 3/3 " in lines[i + 1].split("\r")[-1]  # and went on below
