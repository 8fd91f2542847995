"""The collector: device accumulators -> one packed copy per batch -> stats columns.

Each device that holds recorded outputs has one (layers x `Acc`) float64 accumulator. At a
batch boundary the eager slots are folded in (`actwidget._fold`), the whole accumulator is
copied to the host in one transfer (on an accelerator: non-blocking, into a pinned buffer,
read once its copy has finished, so the host never waits for the device) and zeroed. The
host turns each packed copy into one column per recorded layer (`columns`) and decides where
each layer's sums are centred next (`estimator` shift rule). Under torch.distributed the
packed copy also holds each layer's per-unit totals of the batch (`_fold.UnitSums`), so that
the ranks can pool dead units over the global batch.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from .._fold import Filled, Folder, UnitSums
from ..estimator import Acc, Bins, Scratch, acc_width, bucket_bins, next_shift
from ..stats import Field, StatsConfig
from ._columns import columns

if TYPE_CHECKING:
    from torch import nn

    from ._taps import Tap

__all__ = ["Arrived", "Batch", "Collector"]

_RING = 8  # packed copies in flight per accelerator before the oldest is waited for
_BACKLOG = 64  # packed copies kept before they are turned into columns, whatever is due


class Batch(NamedTuple):
    """One batch's packed accumulators, on the host: (layers, Acc fields + bins), and under
    torch.distributed each layer's per-unit totals (by layer; eager calls only)."""

    index: int
    rows: np.ndarray
    units: dict[int, np.ndarray]


class Arrived(NamedTuple):
    """Columns that reached the host (one batch's or several): the layer of each, the
    columns (`Field` layout), and under torch.distributed the per-unit totals by (layer,
    batch) of the layers whose every call of the batch was judged for dead units."""

    layers: np.ndarray
    cols: np.ndarray
    units: dict[tuple[int, int], np.ndarray]


class _Device:
    """One device's accumulator, bins, folder and (accelerators) copies in flight."""

    def __init__(self, n: int, config: StatsConfig, device: torch.device) -> None:
        with torch.inference_mode(False), torch.no_grad():
            self.acc = torch.zeros(n, acc_width(config), dtype=torch.float64, device=device)
            self.clear = torch.ones(acc_width(config), dtype=torch.bool, device=device)
            self.clear[Acc.SHIFT] = False  # zeroing keeps the shifts
            self.bins: Bins = bucket_bins(config, device)
        self.folder = Folder(config, self.bins)
        self.units: UnitSums | None = None  # under torch.distributed
        self.async_copy = device.type not in ("cpu", "meta")
        self.flight: deque[_Copy] = deque()
        self.free: list[torch.Tensor] = []

    def push(self, index: int) -> None:
        """Start copying the accumulator of batch `index` (and the per-unit totals) to the
        host, in one transfer; zero them."""
        packed, segments = self.acc.view(-1), {}
        if self.units is not None:
            buf, segments = self.units.take()
            packed = torch.cat([packed, buf])
        if not self.async_copy:  # (a `cat` is a copy already)
            host = packed if self.units is not None else packed.clone()
            self.flight.append(_Copy(index, host, None, segments))
        else:
            host = self.free.pop() if self.free else None
            if host is None or host.shape != packed.shape:
                host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            event = torch.Event(self.acc.device)
            event.record()
            self.flight.append(_Copy(index, host, event, segments))
        self.acc.masked_fill_(self.clear, 0.0)

    def pop(self, wait: bool, upto: int = -1) -> list[Batch]:
        """The copies that have arrived (all of them when `wait`; those of batches up to
        `upto` in any case), oldest first."""
        out = []
        while self.flight:
            copy = self.flight[0]
            if copy.event is not None:
                due = wait or copy.index <= upto or len(self.flight) >= _RING
                if not due and not copy.event.query():
                    break
                copy.event.synchronize()
            self.flight.popleft()
            flat = copy.host.numpy().copy()
            rows = flat[: self.acc.numel()].reshape(self.acc.shape)
            units = {r: flat[self.acc.numel() + o :][:n] for r, (o, n) in copy.segments.items()}
            out.append(Batch(copy.index, rows, units))
            if copy.event is not None:
                self.free.append(copy.host)
        return out


class _Copy(NamedTuple):
    """A packed copy on its way to the host."""

    index: int
    host: torch.Tensor
    event: torch.Event | None  # None: already there (a CPU copy)
    segments: dict[int, tuple[int, int]]  # per-unit totals: row -> (offset, units)


class Collector:
    """Accumulators of one recorder's layers, on every device they record on."""

    def __init__(self, n_layers: int, config: StatsConfig, model: nn.Module | None = None):
        self.n, self.config, self.model = n_layers, config, model
        self.scratch = Scratch()
        self.touched = False  # a call was recorded since the last boundary (set by hooks)
        self._devices: dict[torch.device, _Device] = {}
        self._filled: list[Tap] = []
        self._lock = threading.Lock()
        self.forward: list[int] = []  # layers in the order the last batch first called them
        self.pool_units = False  # keep per-unit totals (the ranks pool them: distributed)

    # --- what hooks use ------------------------------------------------------------------
    def prepare(self, taps: list[Tap], devices: set[torch.device]) -> None:
        """Make accumulators and sample offsets on `devices` before anything is traced
        (compiled code cannot make them; eager calls make them on first use)."""
        for device in devices:
            self._device(device)
            for tap in taps:
                tap._offsets(device)

    def row(self, index: int, device: torch.device) -> torch.Tensor:
        """Layer `index`'s accumulator row on `device`."""
        return self._device(device).acc[index]

    def bins(self, device: torch.device) -> Bins:
        return self._device(device).bins

    def _device(self, device: torch.device) -> _Device:
        d = self._devices.get(device)
        if d is None:
            d = self._devices[device] = _Device(self.n, self.config, device)
        return d

    def filled(self, tap: Tap) -> None:
        """`tap` wrote slots since the boundary (a call or its gradient)."""
        self.touched = True
        if not tap.listed:
            with self._lock:
                tap.listed = True
                self._filled.append(tap)

    def spill(self, tap: Tap, grad: bool) -> None:
        """Fold `tap`'s forward (or gradient) slots now, to reuse them in this batch."""
        slots = tap.grad if grad else tap.fwd
        both = tap.fwd is tap.grad
        entry = Filled(tap.index, slots, fwd=not grad or both, grad=grad or both)
        d = self._device(slots.sums.device)
        d.folder.fold(d.acc, [entry], d.units)
        if entry.fwd:
            tap.fwd = None
        if entry.grad:
            tap.grad = None

    # --- the batch boundary -----------------------------------------------------------------
    def boundary(self, index: int) -> bool:
        """End batch `index`: fold the slots, start the packed copy, zero the accumulators.
        False (and nothing done) when no call was recorded since the last boundary."""
        with self._lock:
            filled, self._filled = self._filled, []
            touched, self.touched = self.touched, False
            for tap in filled:
                tap.listed = False
        if not touched and not filled:
            return False
        self.forward = [tap.index for tap in filled]  # eager calls: the forward order
        by_device: dict[torch.device, list[Filled]] = {}
        for tap in filled:
            if tap.fwd is not None and tap.grad is not None and tap.fwd is not tap.grad:
                self.spill(tap, grad=True)
            slots = tap.fwd or tap.grad
            if slots is None:
                continue
            entry = Filled(tap.index, slots, tap.fwd is not None, tap.grad is not None)
            by_device.setdefault(slots.sums.device, []).append(entry)
            tap.fwd = tap.grad = None
        for d in self._devices.values():
            if self.pool_units != (d.units is not None):
                d.units = UnitSums(d.acc.device) if self.pool_units else None
        for device, entries in by_device.items():
            self._fold(self._device(device), entries, {t.index: t for t in filled})
        for d in self._devices.values():
            d.push(index)
        return True

    def _fold(self, d: _Device, entries: list[Filled], taps: dict[int, Tap]) -> None:
        """Fold all entries at once; if that fails, one by one, so that a layer that
        cannot be folded loses only its own calls (with a warning naming it)."""
        try:
            d.folder.fold(d.acc, entries, d.units)
            return
        except Exception:
            pass
        for entry in entries:
            try:
                d.folder.fold(d.acc, [entry], d.units)
            except Exception as e:
                taps[entry.row].warn(f"not summarisable at the batch end ({type(e).__name__}: {e})")

    @property
    def backlog(self) -> bool:
        """Whether so many packed copies wait that they should be taken now (bounded memory
        with a large `flush_every`)."""
        return any(len(d.flight) >= _BACKLOG for d in self._devices.values())

    def arrived(self, wait: bool = False, upto: int = -1) -> list[Batch]:
        """Packed copies that reached the host, in batch order (all of them when `wait`;
        those of batches up to `upto` in any case): one (layers, fields) array per batch,
        summed over devices."""
        got: dict[int, Batch] = {}
        for d in self._devices.values():
            for b in d.pop(wait, upto):
                got[b.index] = _add(got[b.index], b) if b.index in got else b
        return [got[i] for i in sorted(got)]

    def take(self, taps: list[Tap], wait: bool, upto: int = -1) -> Arrived | None:
        """The columns of every packed copy that reached the host (see `arrived`), turned at
        once (None: none arrived); each layer's shift follows its last column."""
        batches = self.arrived(wait, upto)
        if not batches:
            return None
        n = len(batches[0].rows)
        rows = np.concatenate([b.rows for b in batches])
        at, cols = columns(rows, np.repeat([b.index for b in batches], n), self.config)
        layers = at % n
        last = dict(zip(layers.tolist(), range(len(layers)), strict=True))  # layer -> column
        count = cols[:, Field.COUNT]
        with np.errstate(invalid="ignore", divide="ignore"):
            var = cols[:, Field.M2] / np.maximum(count - 1, 1)
        for i, j in last.items():
            new = next_shift(taps[i].shift, float(cols[j, Field.MEAN]), float(var[j]), count[j] > 1)
            if new is not None:
                self.set_shift(taps[i], new)
        units = {(i, b.index): u for b in batches for i, u in _judged_units(b).items()}
        return Arrived(layers, cols, units)

    def set_shift(self, tap: Tap, shift: float) -> None:
        """Centre `tap`'s sums on `shift` from the next call on (every device)."""
        tap.shift = shift
        for d in self._devices.values():
            d.acc[tap.index, Acc.SHIFT] = shift

    def clear(self) -> None:
        """Forget everything pending (a reset)."""
        with self._lock:
            for tap in self._filled:
                tap.listed = False
            self._filled, self.touched = [], False
        for d in self._devices.values():
            d.pop(wait=True)
            d.acc.zero_()
            d.units = None  # made anew at the next boundary

    def free(self) -> None:
        """Release the device memory (hooks removed)."""
        self.clear()
        self._devices.clear()
        self.scratch.clear()


def _add(a: Batch, b: Batch) -> Batch:
    """Two devices' copies of one batch, summed."""
    units = dict(a.units)
    for row, u in b.units.items():
        units[row] = units[row] + u if row in units and len(units[row]) == len(u) else u
    return Batch(a.index, a.rows + b.rows, units)


def _judged_units(batch: Batch) -> dict[int, np.ndarray]:
    """The per-unit totals of the layers whose every call of the batch was judged for dead
    units (values all >= 0, the same units): only those can be pooled."""
    out: dict[int, np.ndarray] = {}
    for i, u in batch.units.items():
        calls = batch.rows[i, Acc.CALLS]
        if calls > 0 and batch.rows[i, Acc.UNITS] == calls * len(u):
            out[i] = u
    return out
