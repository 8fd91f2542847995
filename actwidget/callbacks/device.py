"""`DeviceCB`: puts the model and each batch on one device (CUDA, else MPS, else CPU)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from actwidget.learner import Callback

__all__ = ["DeviceCB", "default_device", "to_device"]


def default_device() -> torch.device:
    """The best available device: CUDA if available, else MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def to_device(x: Any, device: torch.device | str) -> Any:
    """Move tensors in `x` (nested tuples, lists, namedtuples, dicts) to `device`."""
    if isinstance(x, torch.Tensor):
        device = torch.device(device)
        return x.to(device, non_blocking=device.type == "cuda")
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
        return type(x)(*(to_device(o, device) for o in x))
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(o, device) for o in x)
    return x


class DeviceCB(Callback):
    """Moves the model to `device` at fit start and every batch before it is used."""

    order = -10  # before callbacks that read the batch

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()

    def before_fit(self, learn: Any) -> None:
        learn.model.to(self.device)

    def before_batch(self, learn: Any) -> None:
        learn.batch = to_device(learn.batch, self.device)
