"""Training-loop callbacks, one per module."""

from __future__ import annotations

from actwidget.callbacks.device import DeviceCB, default_device, to_device
from actwidget.callbacks.metrics import MetricsCB
from actwidget.callbacks.progress import ProgressCB

__all__ = ["DeviceCB", "MetricsCB", "ProgressCB", "default_device", "to_device"]
