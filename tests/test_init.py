"""The package's front door (`actwidget/__init__.py`): a light import, every course name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import actwidget

HEAVY = ("ipywidgets", "bqplot", "anywidget", "matplotlib", "torcheval", "IPython")
COURSE_NAMES = [
    "torch", "nn", "F", "optim", "set_seed", "CNN", "Conv2dWithReLU", "fashion_mnist",
    "DataLoaders", "TrainLearner", "Learner", "Callback", "MetricsCB", "DeviceCB",
    "ProgressCB", "MulticlassAccuracy", "StoreModuleStatsCB", "StoreModuleStats", "Hooks",
    "HooksCallback", "ActivationWidget", "mean_std_plot", "hist_plot", "StatsHooks",
]  # fmt: skip


def _run(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_is_light_and_the_recorder_loads_no_ui():
    # CPU time, not wall time: other processes on a shared machine barely change it.
    got = _run(
        "import json, sys, time\n"
        "import torch\n"
        "t = time.process_time()\n"
        "import actwidget\n"
        "t1 = time.process_time()\n"
        "import actwidget.hooks, actwidget.recorder, actwidget.callbacks.hooks\n"
        "t2 = time.process_time()\n"
        f"print(json.dumps({{'package': t1 - t, 'recorder': t2 - t, 'loaded': "
        f"[m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    assert got["loaded"] == [], got
    assert got["package"] < 0.05 and got["recorder"] < 0.3, got  # seconds beyond torch


def test_star_import_gives_every_course_name():
    ns: dict = {}
    exec("from actwidget import *", ns)
    missing = [n for n in COURSE_NAMES if n not in ns]
    assert not missing
    assert ns["nn"].Linear is not None and ns["F"].relu is not None
    assert sorted(actwidget.__all__) == sorted(actwidget._NAMES)
    for name in actwidget.__all__:
        assert getattr(actwidget, name) is not None


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="nope"):
        actwidget.nope  # noqa: B018
    assert "StatsHooks" in dir(actwidget)
