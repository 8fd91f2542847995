"""Small shared helpers: the identity `noop`, seeding, and front-end detection."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def noop(x: Any = None, *args: Any, **kwargs: Any) -> Any:
    """Return `x` unchanged; the default for optional hooks and filters."""
    return x


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed torch, random and numpy; `deterministic` switches torch's deterministic algorithms."""
    torch.use_deterministic_algorithms(deterministic)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def in_notebook() -> bool:
    """True when running inside a Jupyter kernel (where widgets can be displayed)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
