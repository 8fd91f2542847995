"""actwidget: see inside a PyTorch model while it trains in a notebook, and act on it.

`from actwidget import *` brings the training loop, the data, the reference model, the
activation-stats hooks, their static plots and the live widget.
"""

from __future__ import annotations

# The names the course notebooks use alongside ours, so the reference code runs as is.
import torch
import torch.nn.functional as F
from torch import nn, optim

from ._util import noop, set_seed
from .callbacks import DeviceCB, MetricsCB, ProgressCB, default_device, to_device
from .callbacks.hooks import HooksCallback, StoreModuleStatsCB
from .callbacks.metrics import MulticlassAccuracy
from .data import DataLoaders, fashion_mnist
from .hooks import Hook, Hooks, StatsHooks, StoreModuleStats
from .learner import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    Learner,
    TrainLearner,
)
from .models import CNN, Conv2dWithReLU
from .plots import hist_plot, mean_std_plot, near_zero_plot
from .stats import LayerStats, RunStats, StatsConfig
from .widget import ActivationWidget

__version__ = "0.1.0"

__all__ = [
    "CNN",
    "ActivationWidget",
    "Callback",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "Conv2dWithReLU",
    "DataLoaders",
    "DeviceCB",
    "F",
    "Hook",
    "Hooks",
    "HooksCallback",
    "LayerStats",
    "Learner",
    "MetricsCB",
    "MulticlassAccuracy",
    "ProgressCB",
    "RunStats",
    "StatsConfig",
    "StatsHooks",
    "StoreModuleStats",
    "StoreModuleStatsCB",
    "TrainLearner",
    "default_device",
    "fashion_mnist",
    "hist_plot",
    "mean_std_plot",
    "near_zero_plot",
    "nn",
    "noop",
    "optim",
    "set_seed",
    "to_device",
    "torch",
]
