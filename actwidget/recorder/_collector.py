"""The collector: device accumulators -> one packed copy per batch -> stats columns.

Each device that holds recorded outputs has one (layers x `Acc`) float64 accumulator. At a
batch boundary the eager slots are folded in (`actwidget._fold`), the whole accumulator is
copied to the host in one transfer (on an accelerator: non-blocking, into a pinned buffer,
read once its copy has finished, so the host never waits for the device) and zeroed. The
host turns each packed copy into one column per recorded layer (`columns`) and decides where
each layer's sums are centred next (`estimator` shift rule).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from .._fold import Filled, Folder
from ..estimator import Acc, Bins, Scratch, acc_width, bucket_bins, next_shift
from ..stats import HIST, Field, StatsConfig

if TYPE_CHECKING:
    from torch import nn

    from ._taps import Tap

__all__ = ["Batch", "Collector", "columns"]

_RING = 8  # packed copies in flight per accelerator


class Batch(NamedTuple):
    """One batch's packed accumulators, on the host: (layers, Acc fields + bins)."""

    index: int
    rows: np.ndarray


class _Device:
    """One device's accumulator, bins, folder and (accelerators) copies in flight."""

    def __init__(self, n: int, config: StatsConfig, device: torch.device) -> None:
        with torch.inference_mode(False), torch.no_grad():
            self.acc = torch.zeros(n, acc_width(config), dtype=torch.float64, device=device)
            self.clear = torch.ones(acc_width(config), dtype=torch.bool, device=device)
            self.clear[Acc.SHIFT] = False  # zeroing keeps the shifts
            self.bins: Bins = bucket_bins(config, device)
        self.folder = Folder(config, self.bins)
        self.async_copy = device.type not in ("cpu", "meta")
        self.flight: deque[tuple[int, torch.Tensor, torch.Event]] = deque()
        self.free: list[torch.Tensor] = []

    def push(self, index: int) -> None:
        """Start copying the accumulator of batch `index` to the host; zero it."""
        if not self.async_copy:
            self.flight.append((index, self.acc.clone(), None))
        else:
            host = self.free.pop() if self.free else torch.empty(
                self.acc.shape, dtype=self.acc.dtype, pin_memory=True
            )  # fmt: skip
            host.copy_(self.acc, non_blocking=True)
            event = torch.Event(self.acc.device)
            event.record()
            self.flight.append((index, host, event))
        self.acc.masked_fill_(self.clear, 0.0)

    def pop(self, wait: bool, upto: int = -1) -> list[tuple[int, np.ndarray]]:
        """The copies that have arrived (all of them when `wait`; those of batches up to
        `upto` in any case), oldest first."""
        out = []
        while self.flight:
            index, host, event = self.flight[0]
            if event is not None:
                due = wait or index <= upto or len(self.flight) >= _RING
                if not due and not event.query():
                    break
                event.synchronize()
            self.flight.popleft()
            out.append((index, host.numpy().copy()))
            if event is not None:
                self.free.append(host)
        return out


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
        self._device(slots.sums.device).folder.fold(self._device(slots.sums.device).acc, [entry])
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
        for device, entries in by_device.items():
            self._fold(self._device(device), entries, {t.index: t for t in filled})
        for d in self._devices.values():
            d.push(index)
        return True

    def _fold(self, d: _Device, entries: list[Filled], taps: dict[int, Tap]) -> None:
        """Fold all entries at once; if that fails, one by one, so that a layer that
        cannot be folded loses only its own calls (with a warning naming it)."""
        try:
            d.folder.fold(d.acc, entries)
            return
        except Exception:
            pass
        for entry in entries:
            try:
                d.folder.fold(d.acc, [entry])
            except Exception as e:
                taps[entry.row].warn(f"not summarisable at the batch end ({type(e).__name__}: {e})")

    def arrived(self, wait: bool = False, upto: int = -1) -> list[Batch]:
        """Packed copies that reached the host, in batch order (all of them when `wait`;
        those of batches up to `upto` in any case): one (layers, fields) array per batch,
        summed over devices."""
        got: dict[int, np.ndarray] = {}
        for d in self._devices.values():
            for index, rows in d.pop(wait, upto):
                got[index] = got[index] + rows if index in got else rows
        return [Batch(i, got[i]) for i in sorted(got)]

    def take(self, taps: list[Tap], wait: bool, upto: int = -1):
        """The columns of every packed copy that reached the host (see `arrived`), as
        (layer indices, columns) per batch; each layer's shift follows its last column."""
        for batch in self.arrived(wait, upto):
            layers, cols = columns(batch.rows, batch.index, self.config)
            count = cols[:, Field.COUNT]
            with np.errstate(invalid="ignore", divide="ignore"):
                var = cols[:, Field.M2] / np.maximum(count - 1, 1)
            for i, mean, v, n in zip(layers.tolist(), cols[:, Field.MEAN], var, count, strict=True):
                new = next_shift(taps[i].shift, float(mean), float(v), n > 1)
                if new is not None:
                    self.set_shift(taps[i], new)
            yield layers, cols

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

    def free(self) -> None:
        """Release the device memory (hooks removed)."""
        self.clear()
        self._devices.clear()
        self.scratch.clear()


# --- packed rows -> stats columns ---------------------------------------------------------------
def columns(rows: np.ndarray, batch: int, config: StatsConfig) -> tuple[np.ndarray, np.ndarray]:
    """The one-batch stats columns (`Field` layout) of one packed copy: (layer index of each
    column, columns), for the layers that recorded anything in that batch."""
    present = (rows[:, Acc.CALLS] > 0) | (rows[:, Acc.G_NUMEL] > 0)
    layers = np.flatnonzero(present)
    r = rows[layers]
    out = np.zeros((len(layers), config.width))
    out[:, Field.BATCHES] = 1
    out[:, [Field.BATCH_SUM, Field.BATCH_FIRST, Field.BATCH_LAST]] = batch
    numel = r[:, Acc.NUMEL]
    exact_counts = config.sample_size is None
    bad = np.maximum(r[:, Acc.BAD], r[:, Acc.BAD_SEEN])
    bad = np.where(exact_counts, r[:, Acc.BAD], bad)
    bad = np.minimum(bad, numel)
    count = numel - bad
    shift, s1, s2 = r[:, Acc.SHIFT], r[:, Acc.SUM], r[:, Acc.SQ]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m2 = s2 - s1 * s1 / np.maximum(count, 1)
        clean = exact_counts | (bad == 0)
        usable = clean & np.isfinite(s1) & np.isfinite(s2) & ((m2 >= 1e-6 * s2) | (s2 == 0))
        mean = np.where(usable, shift + s1 / np.maximum(count, 1), r[:, Acc.S_MEAN])
        s_scale = count / np.maximum(r[:, Acc.S_COUNT], 1)
        m2 = np.where(usable, np.maximum(m2, 0.0), r[:, Acc.S_M2] * s_scale)
        has_mean = (count > 0) & (usable | (r[:, Acc.S_COUNT] > 0))
    out[:, Field.NUMEL] = numel
    out[:, Field.NONFINITE] = bad
    out[:, Field.COUNT] = count
    out[:, Field.MEAN] = np.where(has_mean, mean, np.nan)
    out[:, Field.M2] = np.where(has_mean, np.nan_to_num(m2), 0.0)
    out[:, Field.NEAR_ZERO] = np.minimum(r[:, Acc.NEAR], numel)
    out[:, Field.UNITS] = r[:, Acc.UNITS]
    out[:, Field.DEAD] = r[:, Acc.DEAD]
    out[:, HIST:] = r[:, Acc.HIST :]
    _grad_fields(out, r)
    return layers, out


def _grad_fields(out: np.ndarray, r: np.ndarray) -> None:
    n, s1, s2, sabs = r[:, Acc.G_NUMEL], r[:, Acc.G_SUM], r[:, Acc.G_SQ], r[:, Acc.G_ABS]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        bad = (r[:, Acc.G_BAD_SEEN] > 0) | ~(np.isfinite(s1) & np.isfinite(s2) & np.isfinite(sabs))
        bad &= n > 0
        out[:, Field.G_NONFINITE] = np.where(bad, 1.0, 0.0)
        out[:, Field.G_COUNT] = np.where(bad, 0.0, n)
        out[:, Field.G_MEAN] = np.where(bad | (n == 0), np.nan, s1 / np.maximum(n, 1))
        m2 = s2 - s1 * s1 / np.maximum(n, 1)
        m2 = np.where(m2 >= 1e-6 * s2, m2, 0.0)  # below what the sums resolve: none
        out[:, Field.G_M2] = np.where(bad, 0.0, np.maximum(np.nan_to_num(m2), 0.0))
        out[:, Field.G_ABS] = np.where(bad, 0.0, sabs)
