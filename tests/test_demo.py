"""The headless demo (`python -m actwidget.demo`) on small IDX data made here; no downloads."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
import torchvision

from actwidget import data, demo
from actwidget.stats import RunStats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_idx(folder, n_train: int, n_test: int) -> None:
    """The four Fashion-MNIST files, gzipped as in Debian's package, with random content."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        for kind, t, magic in (("images-idx3", images, 0x0803), ("labels-idx1", labels, 0x0801)):
            payload = struct.pack(f">{1 + t.ndim}i", magic, *t.shape) + t.numpy().tobytes()
            (folder / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(payload))


@pytest.fixture
def small_data(monkeypatch, tmp_path):
    """A tmp cache, a fake Debian folder of 96 train / 32 test images, and no downloads."""
    monkeypatch.setenv("ACTWIDGET_DATA", str(tmp_path / "cache"))
    debian = tmp_path / "debian"
    _write_idx(debian, 96, 32)
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)

    def no_download(self):
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_download)


def test_main_writes_plots_and_stats(small_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert demo.main(["--epochs", "2", "--bs", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    names = ["mean_std.png", "hist.png", "near_zero.png"]
    for name in [*names, "stats.npz"]:
        assert name in printed
    assert "epoch 2/2" in printed  # terminal progress

    for name in names:
        png = (out / name).read_bytes()
        assert png.startswith(PNG_MAGIC)
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 300 and height >= 200, (name, width, height)
        assert len(png) > 5_000, (name, len(png))  # drawn, not blank

    stats = RunStats.load(out / "stats.npz")
    assert len(stats) == 5  # the CNN's five layers
    for layer in stats.values():
        assert layer.batches.sum() == 2 * 6  # 2 epochs x 96/16 training batches
        assert np.isfinite(layer.mean).all() and (layer.std > 0).all()


def test_default_out_is_a_new_temp_folder(small_data, tmp_path, monkeypatch):
    monkeypatch.setattr(demo.tempfile, "tempdir", str(tmp_path))
    files = demo.run(epochs=1, bs=32)
    folder = files["stats"].parent
    assert folder.parent == tmp_path and folder.name.startswith("actwidget-demo-")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["mean_std.png", "hist.png", "near_zero.png", "stats.npz"]
    )
    assert files == {
        "mean_std": folder / "mean_std.png",
        "hist": folder / "hist.png",
        "near_zero": folder / "near_zero.png",
        "stats": folder / "stats.npz",
    }


def test_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])
    assert "must be >= 1" in capsys.readouterr().err
