"""Recorded activation statistics: bounded, exactly mergeable time columns per layer.

Each layer keeps at most `capacity` time columns. A column holds one batch at first; when
the columns fill up, neighbours are merged pairwise (counts and histograms add, means and
variances combine with Chan's parallel formula), so totals are never lost and memory stays
bounded however long the run. All columns but the last span the same number of batches.
A `RunStats` also holds the run's fit marks and alerts; it saves to and loads from `.npz`
(and loads run directories, see `actwidget.runfile`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "HIST",
    "Alert",
    "Field",
    "FitMark",
    "LayerStats",
    "RunStats",
    "StatsConfig",
    "StatsFileError",
    "merge_groups",
]


class Field(IntEnum):
    """The fields of one time column (one float64 row); the |a| histogram follows at `HIST`."""

    BATCHES = 0  # batches in the column
    BATCH_SUM = 1  # sum of their batch indices (BATCH_SUM / BATCHES is the column's x)
    BATCH_FIRST = 2
    BATCH_LAST = 3
    NUMEL = 4  # activation values seen, finite or not
    COUNT = 5  # finite values (the moments below are over these)
    MEAN = 6
    M2 = 7  # sum of squared deviations from MEAN
    NEAR_ZERO = 8  # values with |a| <= near_zero
    NONFINITE = 9  # NaN/inf values
    UNITS = 10  # units (channels / features) seen, summed over batches
    DEAD = 11  # units whose largest value in their batch was <= near_zero
    G_COUNT = 12  # finite gradient values (of the loss w.r.t. the layer's output)
    G_MEAN = 13
    G_M2 = 14
    G_ABS = 15  # sum of |g|
    G_NONFINITE = 16


HIST = len(Field)  # first histogram bin
_MOMENTS = [(Field.COUNT, Field.MEAN, Field.M2), (Field.G_COUNT, Field.G_MEAN, Field.G_M2)]
_ADDITIVE = [f for f in Field if f not in (Field.BATCH_FIRST, Field.BATCH_LAST, *_MOMENTS[0][1:])]
_ADDITIVE = [f for f in _ADDITIVE if f not in _MOMENTS[1][1:]]
_FORMAT = "actwidget-stats/2"
_MAX_BINS = 4096
_MAX_CAPACITY = 1 << 16
_MAX_FLOATS = 1 << 23  # capacity * width: at most 64 MiB of columns per layer
_MAX_SAMPLE = 1 << 20  # values copied per call and layer (None: exact, nothing copied)
_F32_MAX = 3.4028234663852886e38


class FitMark(NamedTuple):
    """Where a fit began: its number (1, 2, ...) and its first batch index."""

    fit: int
    batch: int


class Alert(NamedTuple):
    """Something wrong, seen in a layer's stats: what, where, when, and what usually fixes it.

    `kind` is one of "nonfinite", "exploding", "vanishing", "dead"; `batch` is the batch
    index (the charts' x) where it was seen; `value` the number that triggered it; `origin`:
    this layer is where the fit's NaN/inf began (the first in forward order at the first bad
    batch).
    """

    kind: str
    layer: str
    batch: int
    epoch: int | None
    value: float
    message: str
    fit: int = 1
    origin: bool = False


class StatsFileError(ValueError):
    """A stats file or run directory that cannot be read: says which and what is wrong."""


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi], else a TypeError / ValueError that gives the range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _check_float(name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    """`value` as a finite float in [lo, hi] (or (lo, hi]), else an error that gives the range."""
    where = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
    ok_type = isinstance(value, (int, float, np.floating, np.integer))
    if isinstance(value, (bool, np.bool_)) or not ok_type:
        raise TypeError(f"{name} must be a finite number in {where}, got {value!r}")
    v = float(value) if not isinstance(value, int) or abs(value) < 2**1000 else math.inf
    if not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be a finite number in {where}, got {value}")
    return v


@dataclass(frozen=True)
class StatsConfig:
    """What is recorded per forward call, and how much is kept.

    - `hist`: how |a| is binned. "log" (default): one bin per power of two from
      2**log_range[0] to 2**log_range[1], plus a zero bin below and an overflow bin above,
      so that magnitudes of every order show. "linear": the course's view, `bins` equal
      bins over [0, hist_max], values above hist_max in the last bin. Bins are closed on the
      left and add up to the number of finite values.
    - `near_zero`: |a| <= near_zero counts as near zero (fastai's threshold, 0.05). A unit
      (channel or feature) is dead in a batch when its largest value is <= near_zero.
    - `capacity`: time columns kept per layer (even, 2 to 65536, with capacity * (bins +
      17) at most 2**23 floats: 64 MiB per layer); older columns merge pairwise.
    - `sample_size`: about this many values (16 to 2**20) per layer and call, at fixed
      random positions (drawn once per layer and shape), give the histogram and the
      near-zero fraction (scaled to the full size). Layers no larger are recorded exactly.
      `None`: everything exact (about 1.5 ns more per value on a CPU).
    - `exact_moments`: mean, std and NaN/inf detection over the whole activation (default);
      False takes them from the sample too (cheaper, std within a few percent).
    - `grads`: also record the gradient flowing back into each layer's output (its exact
      mean, std and NaN/inf, and mean |g| from the sample's positions), during backward.
      Off by default: two more reads per layer in every backward and a Python hook per
      output, +6 to +16% of a reference-CNN step (`benchmarks/results-cpu.md`).
    """

    hist: str = "log"
    bins: int | None = None
    hist_max: float = 10.0
    log_range: tuple[int, int] = (-24, 8)
    near_zero: float = 0.05
    capacity: int = 1024
    sample_size: int | None = 1024
    exact_moments: bool = True
    grads: bool = False

    def __post_init__(self) -> None:
        # Types and ranges are checked here, so that nothing fails later inside a forward;
        # numbers are stored as plain int / float (the config is saved as JSON).
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.hist not in ("log", "linear"):
            raise ValueError(f'hist must be "log" or "linear", got {self.hist!r}')
        if self.hist == "log":
            lr = self.log_range
            if isinstance(lr, (str, bytes)) or not hasattr(lr, "__len__") or len(lr) != 2:
                raise TypeError(f"log_range must be a pair of ints (lo, hi), got {lr!r}")
            lo = _check_int("log_range[0]", lr[0], -126, 126)
            hi = _check_int("log_range[1]", lr[1], lo + 1, 127)
            put("log_range", (lo, hi))
            if self.bins is not None and self.bins != hi - lo + 2:
                raise ValueError(
                    f'with hist="log", bins is one per power of two plus zero and overflow '
                    f"bins ({hi - lo + 2} for log_range {self.log_range}); leave it None"
                )
            put("bins", hi - lo + 2)
        else:
            put("bins", _check_int("bins", 40 if self.bins is None else self.bins, 1, _MAX_BINS))
        put("hist_max", _check_float("hist_max", self.hist_max, 0.0, _F32_MAX, lo_open=True))
        put("near_zero", _check_float("near_zero", self.near_zero, 0.0, _F32_MAX))
        put("capacity", _check_int("capacity", self.capacity, 2, _MAX_CAPACITY))
        if self.capacity % 2:
            raise ValueError(f"capacity must be even, got {self.capacity}")
        if self.capacity * self.width > _MAX_FLOATS:
            raise ValueError(
                f"capacity * (bins + {HIST}) must be at most {_MAX_FLOATS} (64 MiB per layer), "
                f"got {self.capacity} * {self.width}: lower capacity or bins"
            )
        if self.sample_size is not None:
            put("sample_size", _check_int("sample_size", self.sample_size, 16, _MAX_SAMPLE))
        for name in ("exact_moments", "grads"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def width(self) -> int:
        """Number of float64 fields in one column."""
        return HIST + self.bins

    @property
    def edges(self) -> np.ndarray:
        """The histogram's bin edges (bins + 1 values; the last bin also holds larger |a|)."""
        if self.hist == "linear":
            return np.linspace(0.0, self.hist_max, self.bins + 1)
        lo, hi = self.log_range
        return np.concatenate([[0.0], 2.0 ** np.arange(lo, hi + 1), [np.inf]])

    def bin_label(self, i: int) -> str:
        """A short label for bin `i`, e.g. '2^-3' (log) or '0.25' (linear lower edge)."""
        if self.hist == "linear":
            return f"{self.edges[i]:g}"
        lo = self.log_range[0]
        return "0" if i == 0 else f"2^{lo + i - 1}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StatsConfig:
        """A config from `asdict(config)` (as saved in files); unknown keys are an error."""
        d = dict(d)
        if "log_range" in d and d["log_range"] is not None:
            d["log_range"] = tuple(d["log_range"])
        d.setdefault("hist", "linear" if "log_range" not in d else "log")
        return cls(**d)


def merge_groups(cols: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Merge consecutive runs of columns exactly; run i starts at row `starts[i]`."""
    if len(starts) == len(cols):  # every run a single column: nothing to merge
        return np.array(cols, dtype=float)
    out = np.empty((len(starts), cols.shape[1]))
    add = np.add.reduceat
    out[:, _ADDITIVE] = add(cols[:, _ADDITIVE], starts, axis=0)
    out[:, HIST:] = add(cols[:, HIST:], starts, axis=0)
    out[:, Field.BATCH_FIRST] = np.minimum.reduceat(cols[:, Field.BATCH_FIRST], starts)
    out[:, Field.BATCH_LAST] = np.maximum.reduceat(cols[:, Field.BATCH_LAST], starts)
    sizes = np.diff(np.append(starts, len(cols)))
    for count, mean_f, m2_f in _MOMENTS:
        n = cols[:, count]
        has = n > 0
        mean = np.where(has, cols[:, mean_f], 0.0)
        tot = out[:, count]
        with np.errstate(invalid="ignore", divide="ignore"):
            gmean = np.where(tot > 0, add(n * mean, starts) / tot, np.nan)
        dev = np.where(has, mean - np.repeat(np.nan_to_num(gmean), sizes), 0.0)
        out[:, mean_f] = gmean
        out[:, m2_f] = add(np.where(has, cols[:, m2_f], 0.0) + n * dev * dev, starts)
    return out


def _combine_steps(rows: np.ndarray) -> np.ndarray:
    """Merge consecutive rows of the same step (calls within one batch) into one batch each."""
    step = rows[:, Field.BATCH_FIRST]
    starts = np.flatnonzero(np.r_[True, step[1:] != step[:-1]])
    if len(starts) == len(rows):
        return rows
    out = merge_groups(rows, starts)
    out[:, Field.BATCHES] = 1
    out[:, Field.BATCH_SUM] = out[:, Field.BATCH_FIRST]
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _std(m2: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.where(n > 1, m2 / np.maximum(n - 1, 1), np.nan))


class LayerStats:
    """The recorded series of one layer, as numpy arrays with one entry per time column.

    A `LayerStats` read from `RunStats.snapshot()` (what recorders hand out) never changes:
    its series always have equal lengths, whatever training does meanwhile.
    """

    def __init__(self, name: str, config: StatsConfig, cols: np.ndarray | None = None) -> None:
        self.name = name
        self.config = config
        self._cols = np.empty((0, config.width)) if cols is None else np.asarray(cols, float)
        self._width = 1  # batches per full column
        if len(self._cols):
            self._width = int(2 ** np.ceil(np.log2(max(self._cols[:, Field.BATCHES].max(), 1))))

    def __len__(self) -> int:
        return len(self._cols)

    def __repr__(self) -> str:
        return f"LayerStats({self.name!r}, columns={len(self)}, batches={self.batches.sum():.0f})"

    @property
    def columns(self) -> np.ndarray:
        """The raw (columns, fields) float64 array, indexed by `Field` (histogram at `HIST`)."""
        return self._cols

    @property
    def batches_per_column(self) -> int:
        """How many batches each full column spans (doubles whenever columns merge)."""
        return self._width

    def copy(self) -> LayerStats:
        """A copy that later appends to this one do not change (the arrays are shared:
        appends replace them, never write into them)."""
        out = LayerStats(self.name, self.config)
        out._cols, out._width = self._cols, self._width
        return out

    def append(self, cols: np.ndarray) -> None:
        """Add one-batch columns in step order; calls of the same step combine into one batch."""
        rows = np.asarray(cols, float)
        if not len(rows):
            return
        rows = _combine_steps(rows)
        if len(self._cols) and self._cols[-1, Field.BATCH_LAST] == rows[0, Field.BATCH_FIRST]:
            # More calls of the batch the last column ended with: no new batch.
            both = merge_groups(np.stack([self._cols[-1], rows[0]]), np.array([0]))
            both[0, Field.BATCHES] -= 1
            both[0, Field.BATCH_SUM] -= rows[0, Field.BATCH_FIRST]
            self._cols = np.concatenate([self._cols[:-1], both])
            rows = rows[1:]
            if not len(rows):
                return
        if len(self._cols) and self._cols[-1, Field.BATCHES] < self._width:
            rows = np.concatenate([self._cols[-1:], rows])  # the partial column fills up first
            self._cols = self._cols[:-1]
        done = np.cumsum(rows[:, Field.BATCHES]) - rows[:, Field.BATCHES]
        group = (done // self._width).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        self._cols = np.concatenate([self._cols, merge_groups(rows, starts)])
        while len(self._cols) > self.config.capacity:
            self._compact()

    def _compact(self) -> None:
        self._cols = merge_groups(self._cols, np.arange(0, len(self._cols), 2))
        self._width *= 2

    def coarsened(self, max_columns: int) -> LayerStats:
        """A copy with at most `max_columns` columns, neighbours merged exactly."""
        out = self.copy()
        while len(out._cols) > max_columns:
            out._compact()
        return out

    def since(self, batch: float) -> LayerStats:
        """A copy holding only the columns that end at or after `batch`."""
        out = self.copy()
        out._cols = self._cols[self._cols[:, Field.BATCH_LAST] >= batch]
        return out

    # The public series.
    @property
    def batch(self) -> np.ndarray:
        """The mean batch index of each column (the x axis)."""
        return _ratio(self._cols[:, Field.BATCH_SUM], self._cols[:, Field.BATCHES])

    @property
    def batches(self) -> np.ndarray:
        """How many batches each column spans."""
        return self._cols[:, Field.BATCHES]

    @property
    def numel(self) -> np.ndarray:
        """Activation values seen per column, finite or not."""
        return self._cols[:, Field.NUMEL]

    @property
    def mean(self) -> np.ndarray:
        """Mean of the finite activation values in each column."""
        return self._cols[:, Field.MEAN]

    @property
    def std(self) -> np.ndarray:
        """Standard deviation (unbiased, like `Tensor.std`) of the finite values per column."""
        return _std(self._cols[:, Field.M2], self._cols[:, Field.COUNT])

    @property
    def near_zero(self) -> np.ndarray:
        """Fraction of values with |a| <= config.near_zero in each column."""
        return _ratio(self._cols[:, Field.NEAR_ZERO], self._cols[:, Field.NUMEL])

    @property
    def nonfinite(self) -> np.ndarray:
        """Count of NaN/inf values per column (at least 1 where any was seen)."""
        return self._cols[:, Field.NONFINITE]

    @property
    def dead(self) -> np.ndarray:
        """Fraction of units (channels / features) that stayed near zero over a whole batch."""
        return _ratio(self._cols[:, Field.DEAD], self._cols[:, Field.UNITS])

    @property
    def grad_mean(self) -> np.ndarray:
        """Mean of the finite gradient values at the layer's output per column (NaN: none)."""
        return np.where(self._cols[:, Field.G_COUNT] > 0, self._cols[:, Field.G_MEAN], np.nan)

    @property
    def grad_std(self) -> np.ndarray:
        """Std of the finite gradient values at the layer's output per column."""
        return _std(self._cols[:, Field.G_M2], self._cols[:, Field.G_COUNT])

    @property
    def grad_abs(self) -> np.ndarray:
        """Mean |g| of the gradient at the layer's output per column."""
        return _ratio(self._cols[:, Field.G_ABS], self._cols[:, Field.G_COUNT])

    @property
    def grad_nonfinite(self) -> np.ndarray:
        """Count of NaN/inf gradient values per column (at least 1 where any was seen)."""
        return self._cols[:, Field.G_NONFINITE]

    @property
    def hist(self) -> np.ndarray:
        """Histogram counts of |a|, shape (columns, bins); bin edges in `config.edges`."""
        return self._cols[:, HIST:]

    @property
    def moments(self) -> np.ndarray:
        """(columns, 2) array of mean and std, as in the course's `moments`."""
        return np.stack([self.mean, self.std], axis=1)

    @property
    def hists(self) -> np.ndarray:
        """(columns, bins) histogram counts, as in the course's `hists`."""
        return self.hist


@dataclass
class _Meta:
    fits: list[FitMark] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


class RunStats(Mapping[str, LayerStats]):
    """The stats of one run: layer name -> LayerStats, the settings, fit marks and alerts.

    Writers (a recorder) change it under `lock`; readers take `snapshot()`, a frozen copy
    that costs no array copies.
    """

    def __init__(self, config: StatsConfig | None = None) -> None:
        self.config = config or StatsConfig()
        self._layers: dict[str, LayerStats] = {}
        self._meta = _Meta()
        self.lock = threading.RLock()
        self.version = 0  # bumped on every change, so viewers can tell when to redraw

    def __getitem__(self, name: str) -> LayerStats:
        try:
            return self._layers[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self._layers) or "none recorded yet"
            raise KeyError(f"no layer {name!r} in these stats; layers: {known}") from None

    def __getstate__(self) -> dict[str, Any]:
        """Pickles and copies: everything but the lock (a copy gets its own)."""
        with self.lock:
            state = dict(self.__dict__)
        del state["lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._layers))

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return f"RunStats({list(self._layers)}, {self.config})"

    @property
    def fits(self) -> list[FitMark]:
        """Where each fit began, in order."""
        return list(self._meta.fits)

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised in this run, in order."""
        return list(self._meta.alerts)

    @property
    def batches(self) -> int:
        """One past the last recorded batch index (0 when empty)."""
        ends = [s.columns[-1, Field.BATCH_LAST] + 1 for s in self._layers.values() if len(s)]
        return int(max(ends, default=0))

    def snapshot(self) -> RunStats:
        """A frozen, consistent copy: later recording does not change it."""
        with self.lock:
            out = RunStats(self.config)
            out._layers = {n: s.copy() for n, s in self._layers.items()}
            out._meta = _Meta(list(self._meta.fits), list(self._meta.alerts))
            out.version = self.version
        return out

    def layer(self, name: str) -> LayerStats:
        """The layer called `name`, created empty on first use."""
        with self.lock:
            if name not in self._layers:
                self._layers[name] = LayerStats(name, self.config)
                self.version += 1
            return self._layers[name]

    def append(self, name: str, cols: np.ndarray) -> None:
        """Append columns to a layer, under the lock."""
        with self.lock:
            self.layer(name).append(cols)
            self.version += 1

    def mark_fit(self, batch: int) -> FitMark:
        """Record that a new fit begins at `batch`; returns its mark."""
        with self.lock:
            mark = FitMark(len(self._meta.fits) + 1, int(batch))
            self._meta.fits.append(mark)
            self.version += 1
            return mark

    def add_alert(self, alert: Alert) -> None:
        """Record an alert."""
        with self.lock:
            self._meta.alerts.append(alert)
            self.version += 1

    def clear(self) -> None:
        """Forget all recorded layers, fits and alerts."""
        with self.lock:
            self._layers.clear()
            self._meta = _Meta()
            self.version += 1

    # Files.
    def save(self, path: str | Path) -> Path:
        """Write the stats, layer names, settings, fits and alerts to an `.npz` file."""
        path = Path(path)
        with self.lock:
            meta = {
                "format": _FORMAT,
                "config": asdict(self.config),
                "layers": list(self._layers),
                "fits": [list(f) for f in self._meta.fits],
                "alerts": [a._asdict() for a in self._meta.alerts],
            }
            arrays = {f"layer{i}": s.columns for i, s in enumerate(self._layers.values())}
        with path.open("wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunStats:
        """Read an `.npz` written by `save`, or a run directory (finished or still written).

        Everything is validated here: a file that is truncated, corrupted, not ours, or
        whose header and arrays disagree raises `StatsFileError`, naming the file and the
        problem (a missing file raises `FileNotFoundError`).
        """
        path = Path(path)
        if path.is_dir():
            from .runfile import read_run  # only when a run directory is asked for

            return read_run(path)
        from ._statsfile import read_npz

        return read_npz(cls, path)

    @classmethod
    def from_parts(
        cls,
        config: StatsConfig,
        layers: Mapping[str, np.ndarray],
        fits: list[FitMark] | None = None,
        alerts: list[Alert] | None = None,
        source: str = "stats",
    ) -> RunStats:
        """Build validated stats from raw columns (used by the file readers); raises
        `StatsFileError`, naming `source`, the layer and the problem."""
        out = cls(config)
        for name, cols in layers.items():
            name = str(name)
            out._layers[name] = LayerStats(name, config, _check_columns(cols, config, name, source))
        out._meta = _Meta(list(fits or []), list(alerts or []))
        return out


# Fields that count something (finite, >= 0), and those that must be whole numbers.
_COUNTS = [f for f in Field if f not in (Field.MEAN, Field.M2, Field.G_MEAN, Field.G_M2)]
_WHOLE = [Field.BATCHES, Field.BATCH_FIRST, Field.BATCH_LAST]


def _check_columns(cols: Any, config: StatsConfig, name: str, source: str) -> np.ndarray:
    """`cols` as (n, config.width) float64 columns, if they can be a layer's recorded
    columns: right shape, at most `capacity`, counts finite and >= 0, at least one batch
    each, batch indices whole and increasing; else `StatsFileError` saying what is wrong."""
    where = f"{source}: layer {name!r}"
    cols = np.asarray(cols)
    if cols.ndim != 2 or cols.shape[1] != config.width or cols.dtype.kind != "f":
        raise StatsFileError(
            f"{where} has columns of shape {cols.shape} ({cols.dtype}); expected "
            f"(n, {config.width}) floats for this config ({config.bins} bins)"
        )
    if len(cols) > config.capacity:
        raise StatsFileError(
            f"{where} has {len(cols)} columns, more than the capacity {config.capacity}"
        )
    cols = cols.astype(np.float64)
    if not len(cols):
        return cols

    def first_bad(bad: np.ndarray, fields: list[str], what: str) -> None:
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise StatsFileError(f"{where}: column {i}, {fields[j]}: {what}")

    names = [f.name for f in _COUNTS] + [f"hist bin {b}" for b in range(config.bins)]
    counts = np.concatenate([cols[:, _COUNTS], cols[:, HIST:]], 1)
    with np.errstate(invalid="ignore"):
        # Scaled estimates may miss 0 by a rounding error of the column's size.
        floor = -1e-9 * np.maximum(np.nan_to_num(cols[:, [Field.NUMEL]]), 1)
        first_bad(~(np.isfinite(counts) & (counts >= floor)), names, "not a finite count >= 0")
        whole = cols[:, _WHOLE]
        wnames = [f.name for f in _WHOLE]
        first_bad((whole != np.floor(whole)) | (whole > 2.0**53), wnames, "not a whole number")
        first_bad(cols[:, [Field.BATCHES]] < 1, ["BATCHES"], "a column without batches")
        first, last = cols[:, Field.BATCH_FIRST], cols[:, Field.BATCH_LAST]
        order = np.r_[False, first[1:] <= last[:-1]] | (first > last)
        first_bad(order[:, None], ["BATCH_FIRST"], "batch indices overlap or go backwards")
        m2 = cols[:, [Field.M2, Field.G_M2]]
        first_bad(
            ~(np.isfinite(m2) & (m2 >= 0)), ["M2", "G_M2"], "not a finite sum of squares >= 0"
        )
        means = cols[:, [Field.MEAN, Field.G_MEAN]]
        counted = cols[:, [Field.COUNT, Field.G_COUNT]] > 0
        first_bad(counted & ~np.isfinite(means), ["MEAN", "G_MEAN"], "not a finite mean")
    return cols
