"""actwidget: see inside a PyTorch model while it trains in a notebook, and act on it.

`from actwidget import *` brings the training loop, the data, the reference model, the
recorder and its course-style callbacks, the static plots and the live widget. Importing
the package itself is light: each name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it (relative to this package, or absolute).
_NAMES: dict[str, str] = {
    # the names the course notebooks use alongside ours, so the reference code runs as is
    "torch": "torch",
    "nn": "torch.nn",
    "optim": "torch.optim",
    "F": "torch.nn.functional",
    "noop": "._util",
    "set_seed": "._util",
    "DeviceCB": ".callbacks.device",
    "default_device": ".callbacks.device",
    "to_device": ".callbacks.device",
    "MetricsCB": ".callbacks.metrics",
    "MulticlassAccuracy": ".callbacks.metrics",
    "ProgressCB": ".callbacks.progress",
    "HooksCallback": ".callbacks.hooks",
    "StoreModuleStatsCB": ".callbacks.hooks",
    "DataLoaders": ".data",
    "fashion_mnist": ".data",
    "Hook": ".hooks",
    "Hooks": ".hooks",
    "StoreModuleStats": ".hooks",
    "StatsHooks": ".recorder",
    "Callback": ".learner",
    "CancelBatchException": ".learner",
    "CancelEpochException": ".learner",
    "CancelFitException": ".learner",
    "Learner": ".learner",
    "TrainLearner": ".learner",
    "CNN": ".models",
    "Conv2dWithReLU": ".models",
    "hist_plot": ".plots",
    "mean_std_plot": ".plots",
    "near_zero_plot": ".plots",
    "Alert": ".stats",
    "LayerStats": ".stats",
    "RunStats": ".stats",
    "StatsConfig": ".stats",
    "AlertConfig": ".diagnose",
    "RunState": ".source",
    "RunStatus": ".source",
    "request_stop": ".runfile",
    "ActivationWidget": ".widget",
}
_MODULE_ATTRS = {"torch", "nn", "optim", "F"}  # the value is the module itself

__all__ = [  # every name of _NAMES (a test holds them equal)
    "CNN",
    "ActivationWidget",
    "Alert",
    "AlertConfig",
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
    "RunState",
    "RunStats",
    "RunStatus",
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
    "request_stop",
    "set_seed",
    "to_device",
    "torch",
]


def __getattr__(name: str) -> Any:
    where = _NAMES.get(name)
    if where is None:
        raise AttributeError(f"module 'actwidget' has no attribute {name!r}")
    module = importlib.import_module(where, __name__)
    value = module if name in _MODULE_ATTRS else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES})


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    import torch
    import torch.nn.functional as F
    from torch import nn, optim

    from ._util import noop, set_seed
    from .callbacks.device import DeviceCB, default_device, to_device
    from .callbacks.hooks import HooksCallback, StoreModuleStatsCB
    from .callbacks.metrics import MetricsCB, MulticlassAccuracy
    from .callbacks.progress import ProgressCB
    from .data import DataLoaders, fashion_mnist
    from .diagnose import AlertConfig
    from .hooks import Hook, Hooks, StoreModuleStats
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
    from .recorder import StatsHooks
    from .runfile import request_stop
    from .source import RunState, RunStatus
    from .stats import Alert, LayerStats, RunStats, StatsConfig
    from .widget import ActivationWidget
