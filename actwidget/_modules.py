"""Which modules a recorder hooks, what it calls them, and which outputs it can read."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHANNELS_FIRST",
    "first_float_tensor",
    "module_names",
    "select_modules",
    "unsummarizable",
]

CHANNELS_FIRST = (  # modules whose outputs put channels at dim 1
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def first_float_tensor(out: Any) -> torch.Tensor | None:
    """The first floating-point tensor in a (nested) tensor/tuple/list/dict output, else None."""
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, Mapping):
        items: Iterable[Any] = out.values()
    elif isinstance(out, (list, tuple)):
        items = out
    else:
        return None
    for o in items:
        t = first_float_tensor(o)
        if t is not None:
            return t
    return None


def unsummarizable(t: torch.Tensor | None) -> str | None:
    """Why an output can't be summarised (None: it can)."""
    if t is None:
        return "not a floating tensor"
    if t.is_complex():
        return "a complex tensor"
    if not t.is_floating_point():
        return f"a {t.dtype} tensor, not a floating one"
    if t.layout != torch.strided:
        return f"a {t.layout} tensor"
    if t.is_nested:
        return "a nested tensor"
    if t.is_quantized:
        return "a quantized tensor"
    if t.device.type == "meta":
        return "a meta tensor (no data)"
    if t.ndim == 0 or t.numel() == 0:
        return "an empty or 0-d tensor"
    return None


def select_modules(
    model: nn.Module | None, mods: Any = None, mod_filter: Callable[[nn.Module], Any] | None = None
) -> list[nn.Module]:
    """The modules to hook, each once, in the order given.

    `mods`: a module, a dotted name in `model` ("layers.0"), or any iterable of them (a list,
    a generator such as `model.children()`). A container given alone (a Sequential,
    ModuleList or ModuleDict, as an object or by name) means its children; inside a list,
    every module means itself. None: every module of `model` for which `mod_filter` is
    truthy (default: the leaf modules, those without children). Raises `TypeError` /
    `ValueError` naming the problem (an empty selection, a name the model lacks, a module
    given twice).
    """
    if mods is None:
        if model is None:
            raise ValueError("give the modules to hook (mods=...) or a model")
        keep = mod_filter or (lambda m: not any(True for _ in m.children()))
        chosen = [m for m in model.modules() if keep(m)]
        if not chosen:
            raise ValueError("mod_filter selected no modules of the model: nothing to hook")
        return chosen
    if isinstance(mods, (str, nn.Module)):
        alone = _resolve(model, mods)
        chosen: list[Any] = _children(alone) if isinstance(alone, _CONTAINERS) else [alone]
    elif isinstance(mods, Iterable) and not isinstance(mods, (bytes, Mapping)):
        chosen = [_resolve(model, m) for m in mods]
    else:
        raise TypeError(f"mods must be modules or dotted names, got {type(mods).__name__}")
    if not chosen:
        raise ValueError("mods is empty: nothing to hook")
    seen: set[int] = set()
    for m in chosen:
        if id(m) in seen:
            raise ValueError(f"mods lists {type(m).__name__} module {_label(model, m)} twice")
        seen.add(id(m))
    return chosen


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _children(m: nn.Module) -> list[nn.Module]:
    return list(m.values()) if isinstance(m, nn.ModuleDict) else list(m)


def _resolve(model: nn.Module | None, m: Any) -> nn.Module:
    """A module given as itself or as a dotted name in `model`."""
    if isinstance(m, str):
        if model is None:
            raise ValueError(f"mods names {m!r}: give the model to resolve it in")
        try:
            return model.get_submodule(m)
        except AttributeError as e:
            raise ValueError(f"the model has no module {m!r} ({e})") from None
    if not isinstance(m, nn.Module):
        raise TypeError(f"mods must be torch.nn.Module objects or names, got {m!r}")
    return m


def _label(model: nn.Module | None, m: nn.Module) -> str:
    if model is not None:
        for name, sub in model.named_modules():
            if sub is m:
                return repr(name or "model")
    return "(the same object)"


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
