"""Reading `.npz` stats files (written by `RunStats.save`), validating everything.

Anything wrong (a truncated or corrupted archive, a foreign file, a bad header, arrays that
disagree with it) raises one error type, `StatsFileError`, naming the file and the problem,
so that a loaded `RunStats` never fails later.
"""

from __future__ import annotations

import json
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .stats import _FORMAT, HIST, Alert, FitMark, RunStats, StatsConfig, StatsFileError

__all__ = ["read_npz"]

_V1 = "actwidget-stats/1"
_T = TypeVar("_T")

# What numpy / zipfile / zlib raise on damaged archives and arrays.
_DAMAGE = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    OverflowError,
    MemoryError,
    RuntimeError,  # a damaged flag or field: "encrypted", "compression method", "version"
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    SyntaxError,  # numpy parses a damaged .npy header as Python literals
    tokenize.TokenError,
)


def _read(source: str, what: str, read: Callable[[], _T]) -> _T:
    try:
        return read()
    except _DAMAGE as e:
        kind = type(e).__module__
        kind = type(e).__name__ if kind == "builtins" else f"{kind}.{type(e).__name__}"
        raise StatsFileError(f"{source}: {what} ({kind}: {e})") from e


def read_npz(cls: type[RunStats], path: Path) -> RunStats:
    """The stats saved in `path`; `StatsFileError` for anything unreadable or inconsistent."""
    source = str(path)
    with path.open("rb") as f:  # a missing or unreadable file raises as usual
        data = _read(
            source,
            "not an actwidget stats file, or truncated or corrupted",
            lambda: np.load(f, allow_pickle=False),
        )
        if not isinstance(data, Mapping):  # a single .npy array
            raise StatsFileError(f"{source}: not an actwidget stats file (a single .npy array)")
        with data:
            meta = _meta(data, source)
            config, names, fits, alerts = _header(meta, source)
            wanted = ["meta"] + [f"layer{i}" for i in range(len(names))]
            for i, name in enumerate(names):
                if f"layer{i}" not in data.files:
                    raise StatsFileError(f"{source}: layer {name!r} (array layer{i}) is missing")
            extra = sorted(set(data.files) - set(wanted))
            if extra:
                raise StatsFileError(f"{source}: arrays {extra} that the header does not name")
            arrays = {}
            for i, name in enumerate(names):
                cols = _read(
                    source,
                    f"layer {name!r} (array layer{i}) is corrupted",
                    lambda i=i: data[f"layer{i}"],
                )
                if meta["format"] == _V1 and cols.ndim == 2 and cols.shape[1] >= 10:
                    cols = _upgrade_v1(cols)
                arrays[name] = cols
    return cls.from_parts(config, arrays, fits, alerts, source=source)


def _meta(data: Any, source: str) -> dict[str, Any]:
    """The JSON header of an open archive, if it is one of ours."""
    if "meta" not in data.files:
        raise StatsFileError(f"{source}: not an actwidget stats file (no header)")
    text = _read(source, "the header is corrupted", lambda: data["meta"])
    if text.ndim != 0 or text.dtype.kind != "U":
        raise StatsFileError(f"{source}: not an actwidget stats file (no text header)")
    try:
        meta = json.loads(str(text))
    except ValueError as e:
        raise StatsFileError(f"{source}: not an actwidget stats file (header: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") not in (_FORMAT, _V1):
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise StatsFileError(f"{source}: not an actwidget stats file (format {found!r})")
    return meta


def _header(
    meta: dict[str, Any], source: str
) -> tuple[StatsConfig, list[str], list[FitMark], list[Alert]]:
    """The config, layer names, fit marks and alerts of a header, each checked."""

    def bad(what: str) -> StatsFileError:
        return StatsFileError(f"{source}: bad header: {what}")

    try:
        config = StatsConfig.from_dict(meta["config"])
    except KeyError:
        raise bad("no config") from None
    except (TypeError, ValueError) as e:
        raise bad(f"config: {e}") from e
    names = meta.get("layers")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad(f"layers must be a list of names, got {str(names)[:80]}")
    if len(set(names)) != len(names):
        raise bad(f"layer names repeat: {names}")
    fits = []
    for k, f in enumerate(meta.get("fits", [])):
        ok = isinstance(f, list) and len(f) == 2 and all(_is_int(v) for v in f)
        if not ok or f[0] != k + 1 or f[1] < (fits[-1].batch if fits else 0):
            raise bad(f"fit {k + 1} is {f!r}; fits are [number, first batch], in order")
        fits.append(FitMark(*f))
    alerts = []
    raw_alerts = meta.get("alerts", [])
    if not isinstance(raw_alerts, list):
        raise bad(f"alerts must be a list, got {type(raw_alerts).__name__}")
    for k, a in enumerate(raw_alerts):
        try:
            alerts.append(_alert(a))
        except (TypeError, ValueError, OverflowError) as e:
            raise bad(f"alert {k}: {e}") from e
    return config, names, fits, alerts


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _alert(a: Any) -> Alert:
    """An `Alert` from its saved dict, with the field types checked."""
    if not isinstance(a, dict) or set(a) - set(Alert._fields):
        raise TypeError(f"not an alert: {str(a)[:80]}")
    alert = Alert(**a)  # a missing field: TypeError
    ints = {"batch": alert.batch, "fit": alert.fit}
    if not all(isinstance(v, str) for v in (alert.kind, alert.layer, alert.message)):
        raise TypeError("kind, layer and message must be text")
    if not all(_is_int(v) for v in ints.values()) or not (
        alert.epoch is None or _is_int(alert.epoch)
    ):
        raise TypeError("batch, fit and epoch must be whole numbers")
    if isinstance(alert.value, bool) or not isinstance(alert.value, (int, float)):
        raise TypeError(f"value must be a number, got {alert.value!r}")
    return alert._replace(value=float(alert.value))


def _upgrade_v1(cols: np.ndarray) -> np.ndarray:
    """Columns of format 1 (10 fields, then the histogram) in today's layout."""
    out = np.zeros((len(cols), cols.shape[1] + HIST - 10))
    out[:, :10] = cols[:, :10]
    out[:, HIST:] = cols[:, 10:]
    return out
