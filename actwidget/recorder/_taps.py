"""Taps: which modules a recorder watches and their hooks (what each hooked call does is in
`_calls`).

Every hook is registered in `Taps.attach` and removed in `Taps.detach`, nowhere else. A
module is watched by one recorder at a time: attaching another replaces the first, with a
warning (re-running a notebook cell). Attaching and detaching drop compiled code traced
with (or without) the hooks, so that a compiled model re-traces.
"""

from __future__ import annotations

import struct
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..estimator import FALLBACK_SAMPLE
from ._calls import Tap

if TYPE_CHECKING:
    from ._collector import Collector

__all__ = ["Tap", "Taps"]

_OWNERS: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()
_OWNERS_LOCK = threading.Lock()


class Taps:
    """The watched modules of one recorder and their hooks."""

    def __init__(
        self,
        collector: Collector,
        *,
        on_train: bool,
        on_valid: bool,
        periodicity: int,
        grads: bool,
        sample_size: int | None,
        near_zero: float,
    ) -> None:
        self.collector = collector
        self.on_train, self.on_valid, self.periodicity = on_train, on_valid, periodicity
        self.grads = grads
        self.exact = sample_size is None
        self.sample_size = sample_size or FALLBACK_SAMPLE
        self.near_zero = near_zero
        self.near_bits = struct.unpack("<i", struct.pack("<f", near_zero))[0]
        self.taps: list[Tap] = []
        self.after_call: Callable[[], Any] | None = None  # eager: after each recorded call
        self._handles: list[Any] = []
        self._owner: Any = None

    def __len__(self) -> int:
        return len(self.taps)

    def __iter__(self):
        return iter(self.taps)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def bind(self, modules: list[nn.Module], names: list[str]) -> None:
        """Set what is watched (before the first attach; later only the same layers)."""
        if self.taps and len(modules) != len(self.taps):
            raise ValueError(f"the modules changed between fits: {self.names} -> {names}")
        if self.taps:
            for tap, m in zip(self.taps, modules, strict=True):
                if tap.module is not m:
                    tap.module, tap.slots, tap.fwd, tap.grad = m, {}, None, None
            return
        self.taps = [
            Tap(self, i, m, n) for i, (m, n) in enumerate(zip(modules, names, strict=True))
        ]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.taps]

    def attach(self, owner: Any, on_replace: Callable[[Any], None]) -> None:
        """Register every hook (all or none). A module another live recorder watches is
        taken over: `on_replace(that recorder)` is called first (it removes its hooks)."""
        with _OWNERS_LOCK:
            others = {id(o): o for t in self.taps if (o := _OWNERS.get(t.module)) is not None}
        for other in others.values():
            if other is not owner:
                on_replace(other)
        handles = []
        try:
            for tap in self.taps:
                handles.append(tap.module.register_forward_hook(tap.hook))
        except BaseException:
            for h in handles:
                h.remove()
            raise
        self._handles, self._owner = handles, owner
        with _OWNERS_LOCK:
            for tap in self.taps:
                _OWNERS[tap.module] = owner
        _invalidate_compiled([t.module for t in self.taps], self.collector.model)

    def detach(self) -> None:
        """Remove every hook; idempotent."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()
        with _OWNERS_LOCK:
            for tap in self.taps:
                if self._owner is not None and _OWNERS.get(tap.module) is self._owner:
                    del _OWNERS[tap.module]
                tap.fwd = tap.grad = None
        self._owner = None
        if handles:
            _invalidate_compiled([t.module for t in self.taps], self.collector.model)


def _invalidate_compiled(modules: list[nn.Module], model: nn.Module | None) -> None:
    """Drop compiled code that may have been traced with (or without) our hooks, so that
    the next call of a compiled model re-traces: dynamo does not guard on module hooks.

    Code objects: the forward of every module class in the model, and `nn.Module`'s call
    path (what `torch.compile(module)` compiles). A function compiled around the model
    (`@torch.compile def train_step(...)`) cannot be found here: the recorder warns when
    an optimizer step of the model finds no recorded call (see `Clock`)."""
    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is None or not _has_compiled_code():
        return
    try:
        from torch._C._dynamo.eval_frame import reset_code
    except ImportError:  # pragma: no cover - other torch versions
        return
    classes = {type(m) for m in modules}
    if model is not None:
        classes |= {type(m) for m in model.modules()}
    codes = {nn.Module._call_impl.__code__, nn.Module._wrapped_call_impl.__code__}
    for cls in classes:
        forward = getattr(cls, "forward", None)
        code = getattr(forward, "__code__", None)
        if code is not None:
            codes.add(code)
    for code in codes:
        reset_code(code)


def _has_compiled_code() -> bool:
    """Whether dynamo was ever used in this process (only then is there code to drop)."""
    import sys

    return "torch._dynamo.eval_frame" in sys.modules
