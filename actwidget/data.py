"""Fashion-MNIST as fast, whole-tensor DataLoaders for the demos and notebooks.

The raw IDX files are looked up in this order:

1. an explicit ``root=`` (a torchvision root: files in ``<root>/FashionMNIST/raw/``);
2. the cache folder, ``$ACTWIDGET_DATA`` or else ``~/.cache/actwidget`` (same layout);
3. Debian's ``dataset-fashion-mnist`` package (``DEBIAN_DIR``), gunzipped once into the cache;
4. torchvision's download into the cache.

Offline with none of these, a ``RuntimeError`` says what to install. Each split is parsed
once by torchvision into uint8 tensors; batches are cut by tensor indexing.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "DEBIAN_DIR",
    "MEAN",
    "STD",
    "DataLoaders",
    "ImageLabels",
    "cache_dir",
    "fashion_mnist",
    "fashion_mnist_root",
    "load_split",
]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the gzipped IDX files."""

MEAN, STD = 0.2860, 0.3530
"""Pixel mean and std of the 60k training images, on the 0..1 scale."""

RAW_FILES = tuple(
    f"{split}-{kind}-ubyte"
    for split in ("train", "t10k")
    for kind in ("images-idx3", "labels-idx1")
)

_HELP = (
    "Fashion-MNIST not found. Install it with `sudo apt-get install dataset-fashion-mnist` "
    "(Debian/Ubuntu), allow network access for torchvision's download, or pass "
    "`root=` a folder holding FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."
)


def cache_dir() -> Path:
    """The data cache folder: ``$ACTWIDGET_DATA`` or ``~/.cache/actwidget``."""
    return Path(os.environ.get("ACTWIDGET_DATA") or Path.home() / ".cache" / "actwidget")


def _has_raw(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    return all((raw / name).is_file() for name in RAW_FILES)


def _unpack_debian(cache: Path) -> bool:
    """Gunzip the Debian package's files into the cache, atomically; False if absent."""
    if not all((DEBIAN_DIR / f"{name}.gz").is_file() for name in RAW_FILES):
        return False
    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        if (raw / name).is_file():
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=raw)
        try:
            with gzip.open(DEBIAN_DIR / f"{name}.gz") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, raw / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return True


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """Return a torchvision root holding the raw Fashion-MNIST files, fetching them if needed."""
    if root is not None:
        root = Path(root).expanduser()
        if not _has_raw(root):
            raise FileNotFoundError(f"No FashionMNIST/raw files under root={root}. {_HELP}")
        return root
    cache = cache_dir()
    if _has_raw(cache) or _unpack_debian(cache):
        return cache
    try:
        torchvision.datasets.FashionMNIST(cache, train=True, download=True)
    except Exception as e:
        raise RuntimeError(f"{_HELP} (download failed: {e})") from e
    return cache


class ImageLabels(Dataset):
    """uint8 images and labels in whole tensors; ``__getitems__`` cuts normalised batches."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = self.__getitems__([i])
        return xb[0], yb[0]

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        xb = self.images[idx].unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
        return xb, self.labels[idx]


def _batch(b: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn: ``__getitems__`` already returns the batch."""
    return b


class DataLoaders:
    """A ``train`` and a ``valid`` DataLoader; iterating yields the two."""

    def __init__(self, train: DataLoader, valid: DataLoader) -> None:
        self.train, self.valid = train, valid

    def __iter__(self) -> Iterator[DataLoader]:
        return iter((self.train, self.valid))

    def __repr__(self) -> str:
        return f"DataLoaders(train={len(self.train.dataset)}, valid={len(self.valid.dataset)})"


def load_split(root: Path, train: bool) -> ImageLabels:
    """Parse one split with torchvision's own reader (no download) into whole tensors."""
    ds = torchvision.datasets.FashionMNIST(root, train=train, download=False)
    return ImageLabels(ds.data, ds.targets)


def fashion_mnist(
    bs: int = 256,
    root: str | os.PathLike | None = None,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoaders:
    """Fashion-MNIST as DataLoaders of normalised (bs, 1, 28, 28) floats and int64 labels."""
    path = fashion_mnist_root(root)
    kw = dict(batch_size=bs, collate_fn=_batch, num_workers=num_workers, pin_memory=pin_memory)
    train = DataLoader(load_split(path, True), shuffle=True, generator=generator, **kw)
    valid = DataLoader(load_split(path, False), shuffle=False, **kw)
    return DataLoaders(train, valid)
