"""The course's reference code runs unchanged after `from actwidget import *`."""

from __future__ import annotations

import struct

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torchvision

from actwidget import data

REFERENCE = """
def train(model, extra_cbs=None):
    cbs = [MetricsCB(MulticlassAccuracy(num_classes=10)), DeviceCB(), ProgressCB(plot=True)]
    if extra_cbs: cbs.extend(extra_cbs)
    return TrainLearner(model, fashion_mnist(), F.cross_entropy, lr=0.6, cbs=cbs).fit()
set_seed(42)
model = CNN(); cb = StoreModuleStatsCB(mods=model.layers)
train(model=model, extra_cbs=[cb]); cb.mean_std_plot(); cb.hist_plot()
"""

N_TRAIN, N_TEST = 600, 100  # 3 training batches of the default 256 (the last one 88)


def write_raw(folder, n: int, split: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
    for kind, t, magic in (("images-idx3", images, 0x0803), ("labels-idx1", labels, 0x0801)):
        header = struct.pack(f">{1 + t.ndim}i", magic, *t.shape)
        (folder / f"{split}-{kind}-ubyte").write_bytes(header + t.numpy().tobytes())


@pytest.fixture
def small_fashion_mnist(monkeypatch, tmp_path):
    """Small IDX files in a tmp ACTWIDGET_DATA cache; no Debian package, no download."""
    cache = tmp_path / "cache"
    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_raw(raw, N_TRAIN, "train", 0)
    write_raw(raw, N_TEST, "t10k", 1)
    monkeypatch.setenv("ACTWIDGET_DATA", str(cache))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")

    def no_download(self):
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_download)
    yield
    plt.close("all")


def test_reference_code_runs_unchanged(small_fashion_mnist, capsys):
    ns: dict = {}
    exec("from actwidget import *", ns)
    before = set(plt.get_fignums())
    exec(REFERENCE, ns)
    cb, model = ns["cb"], ns["model"]
    stats = cb.stats
    assert list(stats) == [f"layers.{i} (Conv2dWithReLU)" for i in range(4)] + ["layers.4 (Conv2d)"]
    assert cb.batches == 3
    for i, s in enumerate(stats.values()):
        assert len(s) == 3, s  # one column per training batch
        np.testing.assert_array_equal(s.batches, 1)
        np.testing.assert_array_equal(s.step, [0, 1, 2])
        assert np.isfinite(s.mean).all() and (s.std > 0).all()
        np.testing.assert_array_equal(s.nonfinite, 0)
        np.testing.assert_allclose(s.hist.sum(1), s.numel, rtol=1e-9)
        if i < 4:
            assert (s.near_zero > 0).all()  # ReLU layers have zeros
    np.testing.assert_array_equal(
        stats["layers.0 (Conv2dWithReLU)"].numel, [256 * 8 * 14 * 14] * 2 + [88 * 8 * 14 * 14]
    )
    np.testing.assert_array_equal(stats["layers.4 (Conv2d)"].numel, [2560, 2560, 880])
    assert all(not m._forward_hooks for m in model.modules())
    new = set(plt.get_fignums()) - before
    assert len(new) == 2  # the mean/std figure and the histograms
    out = capsys.readouterr().out
    assert "MulticlassAccuracy" in out and "eval" in out
