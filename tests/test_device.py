"""`DeviceCB` and `to_device`: choice of device and moving the model and batches."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actwidget.callbacks import DeviceCB, default_device, to_device
from actwidget.learner import Callback, TrainLearner


def test_default_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    assert DeviceCB().device == torch.device("cuda")


def test_to_device_handles_nested_structures():
    Pair = namedtuple("Pair", "a b")
    x = torch.ones(2, dtype=torch.int16)
    out = to_device({"t": (x, [x, 3]), "p": Pair(x, "s")}, "meta")
    assert out["t"][0].device.type == "meta" and out["t"][0].dtype == torch.int16
    assert isinstance(out["t"], tuple) and isinstance(out["t"][1], list)
    assert out["t"][1][0].is_meta and out["t"][1][1] == 3
    assert isinstance(out["p"], Pair) and out["p"].a.is_meta and out["p"].b == "s"


def test_device_cb_moves_model_and_batch_before_other_callbacks():
    seen = []

    class Spy(Callback):
        order = -1  # even early callbacks see the moved batch

        def before_batch(self, learn):
            seen.append(learn.batch[0].device.type)

        def after_predict(self, learn):
            seen.append(learn.preds.device.type)

    ds = TensorDataset(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    dls = SimpleNamespace(valid=DataLoader(ds, batch_size=2))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    learn = TrainLearner(model, dls, F.cross_entropy, cbs=[Spy(), DeviceCB("meta")])
    learn.fit(1, train=False)
    assert seen == ["meta"] * 4
    assert all(p.is_meta for p in model.parameters())
