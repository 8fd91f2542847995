"""Tests for actwidget.data: lookup order, Debian unpack, cache, batches; never downloads."""

from __future__ import annotations

import gzip
import os
import struct
import time
from pathlib import Path

import pytest
import torch
import torchvision

from actwidget import data

N_TRAIN, N_TEST = 64, 32


def _images(n: int, seed: int) -> torch.Tensor:
    """Random images whose pixel (0, 0) holds the item's index, so batches can be traced."""
    x = torch.randint(
        0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    x[:, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x


def _labels(n: int, seed: int) -> torch.Tensor:
    return (torch.arange(n) * 7 + seed) % 10


def _idx_bytes(t: torch.Tensor) -> bytes:
    magic = 0x0803 if t.ndim == 3 else 0x0801
    return struct.pack(f">{1 + t.ndim}i", magic, *t.shape) + t.to(torch.uint8).numpy().tobytes()


def write_idx(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> None:
    """Write the four Fashion-MNIST IDX files, gzipped like Debian's or plain like torchvision's."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        s = seed + (split == "t10k")
        for kind, t in (("images-idx3", _images(n, s)), ("labels-idx1", _labels(n, s))):
            name, payload = f"{split}-{kind}-ubyte", _idx_bytes(t)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Empty tmp cache, and torchvision's download raises instead of touching the network."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ACTWIDGET_DATA", str(cache))

    def no_download(self):
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_download)
    return cache


@pytest.fixture
def debian(monkeypatch, tmp_path):
    """A fake Debian package folder with 64 train / 32 test gzipped images."""
    folder = tmp_path / "debian"
    write_idx(folder, N_TRAIN, N_TEST, gz=True)
    monkeypatch.setattr(data, "DEBIAN_DIR", folder)
    return folder


def _check_batches(dl, n: int, seed: int, bs: int) -> list[int]:
    """Check shapes, dtypes, normalisation and labels of every batch; return the item order."""
    order = []
    for xb, yb in dl:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert xb.shape[1:] == (1, 28, 28) and xb.shape[0] == yb.shape[0] <= bs
        raw = (xb * data.STD + data.MEAN) * 255
        assert torch.allclose(raw, raw.round(), atol=1e-3)
        idx = raw[:, 0, 0, 0].round().long()
        assert torch.equal(raw.round().to(torch.uint8)[:, 0], _images(n, seed)[idx])
        assert torch.equal(yb, _labels(n, seed)[idx])
        order += idx.tolist()
    assert sorted(order) == list(range(n))
    return order


def test_unpacks_debian_into_cache_and_batches(debian, offline):
    dls = data.fashion_mnist(bs=10)
    raw = offline / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.RAW_FILES)
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + N_TRAIN * 784
    assert len(dls.train) == 7 and len(dls.valid) == 4
    assert len(dls.train.dataset) == N_TRAIN and len(dls.valid.dataset) == N_TEST
    train, valid = dls
    assert train is dls.train and valid is dls.valid
    assert _check_batches(dls.valid, N_TEST, 1, 10) == list(range(N_TEST))
    first = _check_batches(dls.train, N_TRAIN, 0, 10)
    second = _check_batches(dls.train, N_TRAIN, 0, 10)
    assert first != list(range(N_TRAIN)) and first != second


def test_single_item_and_generator(debian):
    a = data.fashion_mnist(bs=16, generator=torch.Generator().manual_seed(1))
    b = data.fashion_mnist(bs=16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(next(iter(a.train))[1], next(iter(b.train))[1])
    x, y = a.valid.dataset[3]
    assert x.shape == (1, 28, 28) and y.item() == _labels(N_TEST, 1)[3]


def test_second_call_uses_cache(debian, offline):
    data.fashion_mnist()
    raw_file = offline / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    mtime = raw_file.stat().st_mtime_ns
    for p in debian.iterdir():
        p.unlink()
    dls = data.fashion_mnist()
    assert len(dls.train.dataset) == N_TRAIN
    assert raw_file.stat().st_mtime_ns == mtime


def test_explicit_root_takes_precedence(debian, offline, tmp_path):
    data.fashion_mnist()  # fills the cache with 64 / 32
    root = tmp_path / "mine"
    write_idx(root / "FashionMNIST" / "raw", 16, 8, gz=False, seed=5)
    dls = data.fashion_mnist(bs=4, root=root)
    assert len(dls.train.dataset) == 16 and len(dls.valid.dataset) == 8
    _check_batches(dls.train, 16, 5, 4)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.fashion_mnist(root=tmp_path / "empty")


def test_interrupted_unpack_leaves_no_partial_file(debian, offline, monkeypatch):
    copy = data.shutil.copyfileobj

    def broken_copy(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError("disk full")

    monkeypatch.setattr(data.shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        data.fashion_mnist()
    assert list((offline / "FashionMNIST" / "raw").iterdir()) == []
    monkeypatch.setattr(data.shutil, "copyfileobj", copy)
    assert len(data.fashion_mnist().train.dataset) == N_TRAIN


def test_falls_back_to_torchvision_download_into_cache(monkeypatch, offline, tmp_path):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "absent")

    def fake_download(self):
        write_idx(Path(self.raw_folder), 20, 10, gz=False)

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", fake_download)
    dls = data.fashion_mnist()
    assert len(dls.train.dataset) == 20
    assert (offline / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()


def test_offline_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist") as e:
        data.fashion_mnist()
    assert "root=" in str(e.value) and "network disabled" in str(e.value)


def test_real_debian_package_loads_fast():
    if not data.DEBIAN_DIR.is_dir():
        msg = f"{data.DEBIAN_DIR} missing: `sudo apt-get install dataset-fashion-mnist`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    t0 = time.perf_counter()
    data.fashion_mnist()  # gunzips into the tmp cache, then parses
    t1 = time.perf_counter()
    dls = data.fashion_mnist()  # parses the cached files only
    t2 = time.perf_counter()
    assert len(dls.train.dataset) == 60000 and len(dls.valid.dataset) == 10000
    assert len(dls.train) == 235
    assert t2 - t1 < 3, f"cached load took {t2 - t1:.2f}s"
    assert t1 - t0 < 10, f"first load (unpack + parse) took {t1 - t0:.2f}s"
    x = dls.train.dataset.__getitems__(range(60000))[0]
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01
    print(f"real Fashion-MNIST: first {t1 - t0:.2f}s, cached {t2 - t1:.2f}s")
