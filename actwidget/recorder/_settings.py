"""The recorder's settings, checked when it is built: a bad one fails there, in one clear
line, before anything is attached (never later, inside a training step). `Settings` is the
checked record the parts are built from; a `Setting` reads one back through the facade (and
changes it, checked again, where that is allowed)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar, overload

from torch import nn

from ..diagnose import KINDS, AlertConfig
from ..stats import RunStats, StatsConfig

__all__ = [
    "Setting",
    "Settings",
    "check",
    "check_batches",
    "check_int",
    "check_seconds",
    "materialize",
    "names_not_needed",
]

T = TypeVar("T")


class Settings(NamedTuple):
    """A recorder's settings, checked (see `StatsHooks` for what each one means)."""

    stats: RunStats  # the given stats, or new ones with the given config
    alerts: AlertConfig | None  # the rules; None: none
    stop_on: frozenset[str]
    run_dir: Path | None
    mods: Any  # as given, an iterator made a list (resolved at each attach)
    model: nn.Module | None
    mod_filter: Callable[[nn.Module], Any] | None
    on_train: bool
    on_valid: bool
    periodicity: int
    root_rank: int
    flush_every: int
    flush_interval: float
    auto_step: bool


def check_int(name: str, value: Any, lo: int) -> None:
    """An int >= lo, else TypeError / ValueError saying so."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {lo}, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


def check_batches(name: str, value: Any) -> None:
    """A number of batches (an int >= 1), else TypeError / ValueError saying so."""
    check_int(name, value, 1)


def check_seconds(name: str, value: Any) -> None:
    """A number of seconds >= 0 (inf allowed), else TypeError / ValueError saying so."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check(
    *,
    mods: Any,
    model: Any,
    mod_filter: Any,
    on_train: Any,
    on_valid: Any,
    periodicity: Any,
    config: Any,
    stats: Any,
    alerts: Any,
    stop_on: Any,
    run_dir: Any,
    root_rank: Any,
    flush_every: Any,
    flush_interval: Any,
    auto_step: Any,
) -> Settings:
    """Check every `StatsHooks` argument; raise TypeError / ValueError naming the bad one."""
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mod_filter is not None and not callable(mod_filter):
        raise TypeError(f"mod_filter must be callable, got {mod_filter!r}")
    for name, value in (("on_train", on_train), ("on_valid", on_valid), ("auto_step", auto_step)):
        _bool(name, value)
    check_int("periodicity", periodicity, 1)
    check_int("flush_every", flush_every, 1)
    check_int("root_rank", root_rank, 0)
    check_seconds("flush_interval", flush_interval)
    if config is not None and not isinstance(config, StatsConfig):
        raise TypeError(f"config must be a StatsConfig, got {type(config).__name__}")
    if stats is not None and not isinstance(stats, RunStats):
        raise TypeError(f"stats must be a RunStats, got {type(stats).__name__}")
    if stats is not None and config is not None and stats.config != config:
        raise ValueError("give either stats or config, not both with different settings")
    if alerts is True:
        rules: AlertConfig | None = AlertConfig()
    elif alerts is False or alerts is None:
        rules = None
    elif isinstance(alerts, AlertConfig):
        rules = alerts
    else:
        raise TypeError(f"alerts must be True, False or an AlertConfig, got {alerts!r}")
    kinds = {stop_on} if isinstance(stop_on, str) else stop_on
    if not isinstance(kinds, Iterable) or not all(isinstance(k, str) for k in kinds):
        raise TypeError(f"stop_on must be alert kinds (strings), got {stop_on!r}")
    kinds = frozenset(kinds)
    if kinds - set(KINDS):
        raise ValueError(
            f"stop_on: unknown alert kinds {sorted(kinds - set(KINDS))}; known: {list(KINDS)}"
        )
    if kinds and rules is None:
        raise ValueError("stop_on needs the alert rules: leave alerts on")
    if kinds - set(rules.kinds if rules else ()):
        raise ValueError(
            f"stop_on: kinds {sorted(kinds - set(rules.kinds))} are not in alerts.kinds"
        )
    path = None
    if run_dir is not None:
        if not isinstance(run_dir, (str, os.PathLike)):
            raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
        from ..runfile import check_run_dir

        path = check_run_dir(run_dir)
    return Settings(
        stats if stats is not None else RunStats(config), rules, kinds, path, materialize(mods),
        model, mod_filter, on_train, on_valid, periodicity, root_rank, flush_every,
        flush_interval, auto_step,
    )  # fmt: skip


def materialize(mods: Any) -> Any:
    """`mods` with an iterator (a generator such as `model.children()`) turned into a list,
    so that it can be checked now and resolved again at each attach."""
    if mods is None or isinstance(mods, (str, nn.Module, list, tuple)):
        return mods
    if isinstance(mods, Iterable):
        return list(mods)
    return mods


def names_not_needed(mods: Any) -> bool:
    """Whether `mods` can be resolved without the model (no dotted names in it)."""
    if mods is None or isinstance(mods, str):
        return False
    if isinstance(mods, nn.Module):
        return True
    if isinstance(mods, (list, tuple)):
        return not any(isinstance(m, str) for m in mods)
    return False


class Setting(Generic[T]):
    """A recorder setting read back from the facade: an attribute of the facade's `part`
    of the same name. With `check` it may be changed too (checked first, as when built)."""

    def __init__(
        self, part: str, doc: str, check: Callable[[str, Any], None] | None = None
    ) -> None:
        self.part, self.check, self.__doc__ = part, check, doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Setting[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> T | Setting[T]:
        if obj is None:
            return self
        return getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj: object, value: T) -> None:
        if self.check is None:
            raise AttributeError(f"{self.name} is read-only: it is set when the recorder is built")
        self.check(self.name, value)
        setattr(getattr(obj, self.part), self.name, value)
