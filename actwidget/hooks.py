"""Forward hooks that record activation stats, usable in any PyTorch loop.

Hooks are registered in one place (`Hook.__init__`), keep their handles, and are removed by
`remove()` or on leaving a `with` block; nothing relies on `__del__`.

```python
with StatsHooks(model.layers, model=model) as hooks:   # a plain PyTorch loop
    for xb, yb in dl:
        loss = loss_fn(model(xb), yb); ...
hooks.stats["layers.0 (Conv2dWithReLU)"].mean
```
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ._summary import Sampler, flat_float, summarize, to_columns
from .stats import RunStats, StatsConfig

__all__ = [
    "Hook",
    "Hooks",
    "StatsHooks",
    "StoreModuleStats",
    "flush_hooks",
    "module_names",
    "select_modules",
]


class Hook:
    """A forward hook on module `m` calling `f(hook, module, inputs, output)`."""

    def __init__(self, m: nn.Module, f: Callable[..., Any]) -> None:
        self.module = m
        self.handle = m.register_forward_hook(partial(f, self))

    def remove(self) -> None:
        """Unregister the hook (idempotent)."""
        self.handle.remove()

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Hooks(list):
    """A list of hooks removed together, on `remove()` or when its `with` block ends."""

    def __init__(self, hooks: Iterable[Hook]) -> None:
        super().__init__(hooks)

    def remove(self) -> None:
        """Unregister every hook."""
        for h in self:
            h.remove()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def first_float_tensor(out: Any) -> torch.Tensor | None:
    """The first floating-point tensor in a (nested) tensor/tuple/list/dict output, else None."""
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    items = out.values() if isinstance(out, Mapping) else out
    if isinstance(items, (Sequence, type({}.values()))) and not isinstance(items, str):
        for o in items:
            t = first_float_tensor(o)
            if t is not None:
                return t
    return None


class StoreModuleStats(Hook):
    """Records mean, std, near-zero and non-finite counts and a |a| histogram per forward call.

    Records every `periodicity`-th call made in a recorded mode (`on_train`: module in train
    mode, `on_valid`: in eval mode). Tuple/list/dict outputs: the first floating tensor is
    recorded. Non-floating outputs are skipped with one warning. Each call is its own record
    unless `step` is set (the callback sets it per batch): calls with equal steps combine.
    Results stay on the module's device until `flush()` moves them in bulk.
    """

    def __init__(
        self,
        m: nn.Module,
        on_train: bool = True,
        on_valid: bool = False,
        periodicity: int = 1,
        *,
        name: str | None = None,
        stats: RunStats | None = None,
        config: StatsConfig | None = None,
        flush_every: int = 64,
    ) -> None:
        if periodicity < 1:
            raise ValueError(f"periodicity must be >= 1, got {periodicity}")
        self.on_train, self.on_valid, self.periodicity = on_train, on_valid, periodicity
        self.stats = stats if stats is not None else RunStats(config)
        self.name = name or type(m).__name__
        self.stats.layer(self.name)
        self.step: int | None = None
        self.calls = 0  # forward calls made in a recorded mode
        self.flush_every = flush_every
        self._config = self.stats.config
        self._lock = self.stats.lock
        size = self._config.sample_size
        self._sampler = None if size is None else Sampler(self.name, size)
        self._pending: list[tuple] = []
        self._warned = False
        super().__init__(m, type(self)._record)

    def _record(self, m: nn.Module, inputs: Any, out: Any) -> None:
        # The hot path: a few attribute reads, one strided copy (and two sums with
        # exact_moments); no host sync. Everything else happens in `flush_hooks`.
        if not (self.on_train if m.training else self.on_valid):
            return
        self.calls += 1
        if self.periodicity > 1 and (self.calls - 1) % self.periodicity:
            return
        t = out if type(out) is torch.Tensor else first_float_tensor(out)
        if t is None or not t.is_floating_point() or t.numel() == 0:
            self._warn(out)
            return
        with torch.inference_mode():  # skips autograd's dispatch work: measurably cheaper
            x = flat_float(t)
            n = x.numel()
            if self._sampler is None:  # exact mode: summarise now, keep only the summary
                kept, full, taken = summarize(x[None], self._config, precise=True)[0], None, n
            else:  # sampled: keep the sample, summarise many at once in `flush_hooks`
                kept, full = self._sampler(x, self._config.exact_moments)
                taken = kept.numel()
        step = self.calls - 1 if self.step is None else self.step
        with self._lock:  # a reader in another thread may be taking the pending list
            self._pending.append((kept, full, n, taken, step))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def _warn(self, out: Any) -> None:
        if self._warned:
            return
        self._warned = True
        what = f"{out.dtype} tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            what = "an empty tensor"
        warnings.warn(
            f"actwidget: layer {self.name!r} output is {what}, not a non-empty floating "
            "tensor; skipping it",
            stacklevel=2,
        )

    def flush(self) -> None:
        """Move this hook's pending records to the host stats (one transfer)."""
        flush_hooks([self])

    @property
    def layer_stats(self):
        """This layer's recorded series (flushed first)."""
        self.flush()
        return self.stats[self.name]

    @property
    def moments(self) -> np.ndarray:
        """(records, 2) array of mean and std, as in the course notebooks."""
        return self.layer_stats.moments

    @property
    def hists(self) -> np.ndarray:
        """(records, bins) histogram counts of |a|, as in the course notebooks."""
        return self.layer_stats.hists


def flush_hooks(hooks: Iterable[StoreModuleStats]) -> None:
    """Move all pending records of `hooks` to their host stats: one device->host copy."""
    groups: dict[StatsConfig, list[tuple[StoreModuleStats, list]]] = {}
    for h in hooks:
        with h._lock:
            pending, h._pending = h._pending, []
        if pending:
            groups.setdefault(h.stats.config, []).append((h, pending))
    for config, taken in groups.items():
        records = [r for _, pending in taken for r in pending]
        if config.sample_size is None:  # exact mode: records hold finished summaries
            summary = torch.stack([r[0] for r in records])
        else:  # one `summarize` per sample length (small layers are sampled whole)
            order = sorted(range(len(records)), key=lambda i: records[i][0].numel())
            parts, rows = [], []
            for _, idx in itertools.groupby(order, key=lambda i: records[i][0].numel()):
                idx = list(idx)
                parts.append(summarize(torch.stack([records[i][0] for i in idx]), config))
                rows += idx
            summary = torch.cat(parts)[torch.argsort(torch.tensor(rows))]
        nan = torch.full((), float("nan"), device=summary.device)  # float32, like the sums
        full = torch.stack([s for r in records for s in (r[1] or (nan, nan))]).view(-1, 2)
        host = torch.cat([summary, full.to(summary.dtype)], 1).cpu().numpy()
        meta = np.array([r[2:] for r in records], dtype=np.float64)
        has_full = np.array([r[1] is not None for r in records])
        cols = to_columns(host[:, :-2], host[:, -2:], meta[:, 0], meta[:, 1], meta[:, 2], has_full)
        start = 0
        for h, pending in taken:
            h.stats.append(h.name, cols[start : start + len(pending)])
            start += len(pending)


def select_modules(
    model: nn.Module | None, mods: Any = None, mod_filter: Callable[[nn.Module], Any] | None = None
) -> list[nn.Module]:
    """The modules to hook: `mods` (a container means its children), else `model`'s filtered."""
    if mods is None:
        if model is None:
            raise ValueError("give the modules to hook (mods=...) or a model")
        chosen = [m for m in model.modules() if mod_filter is None or mod_filter(m)]
        if not chosen:
            raise ValueError("mod_filter selected no modules of the model: nothing to hook")
        return chosen
    if isinstance(mods, (nn.Sequential, nn.ModuleList)):
        chosen = list(mods)
    elif isinstance(mods, nn.ModuleDict):
        chosen = list(mods.values())
    elif isinstance(mods, nn.Module):
        chosen = [mods]
    else:
        chosen = list(mods)
    if not chosen:
        raise ValueError("mods is empty: nothing to hook")
    bad = [m for m in chosen if not isinstance(m, nn.Module)]
    if bad:
        raise TypeError(f"mods must be torch.nn.Module objects, got {type(bad[0]).__name__}")
    return chosen


def module_names(model: nn.Module | None, mods: Sequence[nn.Module]) -> list[str]:
    """Readable unique names such as 'layers.0 (Conv2dWithReLU)', from `model.named_modules()`."""
    paths = {id(m): n for n, m in model.named_modules()} if model is not None else {}
    names: list[str] = []
    for i, m in enumerate(mods):
        path = paths.get(id(m), str(i)) or "model"
        name = f"{path} ({type(m).__name__})"
        while name in names:
            name += "'"
        names.append(name)
    return names


class StatsHooks(Hooks):
    """`StoreModuleStats` on several modules sharing one `RunStats`; for plain PyTorch loops."""

    def __init__(
        self,
        mods: Any,
        *,
        model: nn.Module | None = None,
        on_train: bool = True,
        on_valid: bool = False,
        periodicity: int = 1,
        config: StatsConfig | None = None,
        stats: RunStats | None = None,
    ) -> None:
        mods = select_modules(model, mods)
        self._stats = stats if stats is not None else RunStats(config)
        names = module_names(model, mods)
        super().__init__(
            StoreModuleStats(m, on_train, on_valid, periodicity, name=n, stats=self._stats)
            for m, n in zip(mods, names, strict=True)
        )

    def set_step(self, step: int | None) -> None:
        """Group the next calls under batch `step` (None: each call is its own record)."""
        for h in self:
            h.step = step

    def flush(self) -> None:
        """Move every pending record to the host in one transfer."""
        flush_hooks(self)

    @property
    def stats(self) -> RunStats:
        """The recorded stats of all hooked layers (flushed first)."""
        self.flush()
        return self._stats

    def remove(self) -> None:
        """Flush what was recorded, then unregister every hook."""
        self.flush()
        super().remove()
