"""`MetricsCB`: exact epoch metrics, the terminal log and the growing notebook table."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torcheval.metrics import MulticlassAccuracy

from actwidget._util import set_seed
from actwidget.callbacks import MetricsCB
from actwidget.callbacks import metrics as metrics_mod
from actwidget.learner import TrainLearner


def make_learner(cbs) -> TrainLearner:
    set_seed(0)
    x, y = torch.randn(22, 1, 8, 8), torch.randint(0, 10, (22,))
    dls = SimpleNamespace(  # uneven last batches: the loss must be weighted by batch size
        train=DataLoader(TensorDataset(x[:12], y[:12]), batch_size=5),
        valid=DataLoader(TensorDataset(x[12:], y[12:]), batch_size=4),
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=cbs)


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setattr(metrics_mod, "in_notebook", lambda: False)


def test_rows_hold_exact_validation_metrics(terminal):
    cb = MetricsCB(MulticlassAccuracy(num_classes=10))
    learn = make_learner([cb])
    learn.fit(2)
    assert [(r["epoch"], r["train"]) for r in cb.log] == [
        (0, "train"), (0, "eval"), (1, "train"), (1, "eval"),
    ]  # fmt: skip
    xv, yv = learn.dls.valid.dataset.tensors
    with torch.no_grad():
        out = learn.model(xv)
    last = cb.log[-1]
    assert last["loss"] == pytest.approx(F.cross_entropy(out, yv).item(), abs=1e-5)
    acc = (out.argmax(1) == yv).float().mean().item()
    assert last["MulticlassAccuracy"] == pytest.approx(acc)
    assert learn.metrics is cb
    assert cb.loss.device == yv.device


def test_named_metrics_and_terminal_table(terminal, capsys):
    cb = MetricsCB(acc=MulticlassAccuracy(num_classes=10))
    make_learner([cb]).fit(1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["acc", "loss", "epoch", "train"]
    assert len(lines) == 3
    assert lines[1].split()[2:] == ["0", "train"] and lines[2].split()[3] == "eval"
    assert lines[1].split()[1] == f"{cb.log[0]['loss']:.3f}"
    starts = [[m.start() for m in re.finditer(r"\S+", line)] for line in lines]
    assert starts[0] == starts[1] == starts[2]  # columns line up


def test_cancelled_or_empty_phase_logs_no_row(terminal):
    cb = MetricsCB()
    learn = make_learner([cb])
    learn.fit(1, valid=False)
    assert [r["train"] for r in cb.log] == ["train"]
    cb2 = MetricsCB()
    make_learner([cb2]).fit(1, train=False)
    assert [r["train"] for r in cb2.log] == ["eval"]


def test_notebook_shows_one_table_that_grows(monkeypatch):
    shown = []

    class Handle:
        def __init__(self):
            self.updates = []

        def update(self, obj):
            self.updates.append(obj)

    def fake_display(obj, display_id=False):
        assert display_id is True
        shown.append((obj, Handle()))
        return shown[-1][1]

    monkeypatch.setattr(metrics_mod, "in_notebook", lambda: True)
    monkeypatch.setattr(metrics_mod, "display", fake_display)
    cb = MetricsCB(MulticlassAccuracy(num_classes=10))
    make_learner([cb]).fit(2)
    assert len(shown) == 1
    first, handle = shown[0]
    assert first.data.count("<tr>") == 2  # header + 1 row
    assert len(handle.updates) == 3
    final = handle.updates[-1].data
    assert final.count("<tr>") == 5 and "<th>MulticlassAccuracy</th>" in final
    assert f"<td>{cb.log[-1]['loss']:.3f}</td>" in final
