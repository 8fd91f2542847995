"""Training-loop callbacks, one per module; each name loads its module on first use."""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "DeviceCB": ".device",
    "default_device": ".device",
    "to_device": ".device",
    "MetricsCB": ".metrics",
    "ProgressCB": ".progress",
    "HooksCallback": ".hooks",
    "StoreModuleStatsCB": ".hooks",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'actwidget.callbacks' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name], __name__), name)
