"""What one hooked call does: `Tap` (one watched module's per-call state and device work)
and the hook objects registered for it (registered and removed by `Taps`, in `_taps`).

A hook acts only for the module object it was registered on: copies of a hooked model
(`copy.deepcopy`, `pickle`, `torch.save`, an EMA/SWA copy) carry an inert hook that records
nothing and removes itself on its first call.

A call never raises into the user's forward: a failure skips that call only, with one
warning naming the layer. Under `torch.compile` the hook is traced into the graph: it adds
the call's summary to its accumulator row in tensor ops (`estimator.accumulate`), reads no
Python state that changes between batches, and writes only a flag.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._modules import CHANNELS_FIRST, first_float_tensor, unsummarizable
from ..estimator import Slots, accumulate, accumulate_grad, first_shift, jitter, plan

if TYPE_CHECKING:
    from ._taps import Taps

__all__ = ["Tap"]


class _Inert:
    """What a copy of a hooked module gets instead of our hook: nothing, gone on first call."""

    def __call__(self, module: nn.Module, *args: Any) -> None:
        for hooks in (module._forward_hooks, module._forward_hooks_with_kwargs):
            for key, hook in list(hooks.items()):
                if hook is self:
                    hooks.pop(key, None)
                    module._forward_hooks_always_called.pop(key, None)
                    module._forward_hooks_with_kwargs.pop(key, None)


class _Hook:
    """The forward hook of one tap (a callable object, so that copies and pickles of the
    model get an `_Inert` one instead of the recorder)."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        tap = self.tap
        if module is not tap.module:
            return  # a shallow copy sharing our hook dict: not the module we watch
        if torch.compiler.is_compiling():
            tap.traced(module, output)
        else:
            tap.eager(module, output)

    def __deepcopy__(self, memo: dict) -> _Inert:
        return _Inert()

    def __reduce__(self) -> tuple:
        return (_Inert, ())


class _GradHook:
    """The tensor hook that records the gradient flowing back into a recorded output."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    def __call__(self, g: torch.Tensor) -> None:
        self.tap.eager_grad(g)

    def __deepcopy__(self, memo: dict) -> None:
        return None

    def __reduce__(self) -> tuple:
        return (type(None), ())


def _plain(t: torch.Tensor) -> bool:
    """A dense, real, non-empty tensor with data, outside any torch.func transform (the
    common case, checked quickly)."""
    return (
        t.layout is torch.strided
        and t.ndim > 0
        and t.numel() > 0
        and not t.is_meta
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
    )


class Tap:
    """One watched module: its name, its hook, and its per-call state (eager plans and
    slots per shape and device, the shift its sums are centred on)."""

    def __init__(self, taps: Taps, index: int, module: nn.Module, name: str) -> None:
        self.taps, self.index, self.module, self.name = taps, index, module, name
        self.channels_first = isinstance(module, CHANNELS_FIRST)
        self.calls = 0  # recorded-mode calls, for periodicity
        self.shift: float | None = None  # None: set from the first call's sample
        self.fwd: Slots | None = None  # slots a forward call wrote since the boundary
        self.grad: Slots | None = None  # slots a gradient wrote since the boundary
        self.slots: dict[torch.Size, Slots] = {}
        self.listed = False  # in the collector's list of taps to fold
        self.offsets: dict[torch.device, torch.Tensor] = {}
        self.warned = False
        self.hook = _Hook(self)
        self.grad_hook = _GradHook(self)

    def __repr__(self) -> str:
        return f"Tap({self.name!r})"

    # --- eager --------------------------------------------------------------------------
    def eager(self, module: nn.Module, output: Any) -> None:
        taps = self.taps
        try:
            if not (taps.on_train if module.training else taps.on_valid):
                return
            self.calls += 1
            if taps.periodicity > 1 and (self.calls - 1) % taps.periodicity:
                taps.collector.touched = True  # the batch counts (the x axis is real batches)
                if taps.after_call is not None:
                    taps.after_call()
                return
            t = output
            if not (type(t) is torch.Tensor and t.dtype is torch.float32 and _plain(t)):
                bare = isinstance(output, torch.Tensor)
                t = self._readable(output if bare else first_float_tensor(output))
                if t is None:
                    return
            x = t.detach()
            if x.dtype is not torch.float32:
                x = x.float()
            if not x.is_contiguous():
                x = x.contiguous()
            slots = self.slots.get(x.shape)
            if slots is None or slots.device != x.device:
                slots = self._slots(x)
            col = taps.collector
            if self.fwd is not None:  # a second call in this batch: fold the first now
                col.spill(self, grad=False)
            if self.shift is None:
                col.set_shift(self, first_shift(x, slots.plan))
            slots.record(x, self.shift, col.scratch)
            self.fwd = slots
            col.filled(self)
            if taps.grads and t.requires_grad and torch.is_grad_enabled():
                t.register_hook(self.grad_hook)
            if taps.after_call is not None:
                taps.after_call()
        except Exception as e:
            self.fwd = None
            self.slots.clear()  # e.g. the output moved to another device: plan again
            self.warn(f"not summarisable ({type(e).__name__}: {e})")

    def eager_grad(self, g: torch.Tensor) -> None:
        try:
            if g is None or g.layout is not torch.strided or g.is_nested:
                return
            x = g.detach().float().contiguous()
            slots = self.slots.get(x.shape)
            if slots is None or slots.device != x.device:
                slots = self._slots(x)
            if self.grad is not None:
                self.taps.collector.spill(self, grad=True)
            slots.record_grad(x)
            self.grad = slots
            self.taps.collector.filled(self)
        except Exception as e:
            self.grad = None
            self.warn(f"gradient not summarisable ({type(e).__name__}: {e})")

    def _readable(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """The tensor to summarise (a DTensor's local part, where this rank holds it), or
        None with a warning naming what it is."""
        if t is not None and type(t).__name__ == "DTensor":
            from .._dtensor import local_part

            t = local_part(t, self.warn)
            if t is None:
                return None
        why = unsummarizable(t)
        if why is None and torch._C._functorch.is_functorch_wrapped_tensor(t):
            why = "a tensor inside a torch.func transform (vmap, grad, ...)"
        if why is not None:
            self.warn(why)
            return None
        return t

    def _slots(self, x: torch.Tensor) -> Slots:
        """New slots for outputs shaped like `x` (a few shapes are kept: e.g. the last,
        short batch's), made outside inference mode so that they work in and out of it."""
        if len(self.slots) > 8:
            self.slots.clear()
        with torch.inference_mode(False), torch.no_grad():
            p = plan(x.shape, self.channels_first, self._offsets(x.device), self.taps.exact)
            bins = self.taps.collector.bins(x.device)
            slots = self.slots[x.shape] = Slots(p, self.taps.exact, x.device, bins, self.taps.grads)
        return slots

    def _offsets(self, device: torch.device) -> torch.Tensor:
        off = self.offsets.get(device)
        if off is None:
            k = self.taps.sample_size
            off = self.offsets[device] = jitter(self.name, k).to(device)
        return off

    # --- traced (torch.compile) -------------------------------------------------------------
    def traced(self, module: nn.Module, output: Any) -> None:
        taps = self.taps
        if not (taps.on_train if module.training else taps.on_valid):
            return
        t = output if isinstance(output, torch.Tensor) else first_float_tensor(output)
        if t is None or unsummarizable(t) is not None:
            return  # decided when tracing; the eager path is where warnings are given
        col = taps.collector
        off = self.offsets.get(t.device)
        if off is None:
            return  # a device the recorder did not prepare for (see Collector.prepare)
        p = plan(t.shape, self.channels_first, off, taps.exact)
        accumulate(col.row(self.index, t.device), t.detach(), p, col.bins(t.device),
                   taps.exact, taps.near_zero)  # fmt: skip
        col.touched = True
        if taps.grads and t.requires_grad:
            row = col.row(self.index, t.device)

            def on_grad(g: torch.Tensor) -> None:  # traced into the backward graph
                accumulate_grad(row, g, p)
                col.touched = True

            t.register_hook(on_grad)

    def warn(self, what: str) -> None:
        if self.warned:
            return
        self.warned = True
        warnings.warn(f"actwidget: layer {self.name!r} output is {what}; skipping it", stacklevel=4)
