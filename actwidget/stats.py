"""Recorded activation statistics: bounded, exactly mergeable time columns per layer.

Each layer keeps at most `capacity` time columns. A column holds one batch at first; when
the columns fill up, neighbours are merged pairwise (counts and histograms add, means and
variances combine with Chan's parallel formula), so totals are never lost and memory stays
bounded however long the run. All columns but the last span the same number of batches.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["LayerStats", "RunStats", "StatsConfig", "merge_groups"]

# Column layout: one float64 row per time column.
BATCHES, STEP_SUM, STEP_FIRST, STEP_LAST, NUMEL, COUNT, MEAN, M2, NEAR_ZERO, NONFINITE = range(10)
HIST = 10
_ADDITIVE = [BATCHES, STEP_SUM, NUMEL, COUNT, NEAR_ZERO, NONFINITE]
_FORMAT = "actwidget-stats/1"


@dataclass(frozen=True)
class StatsConfig:
    """What is recorded per forward call, and how much is kept.

    - `bins`, `hist_max`: the histogram of |a| has `bins` equal bins over [0, hist_max];
      values above `hist_max` are counted in the last bin, so the bins add up to the number
      of finite values. Bins are closed on the left, like `torch.histc`.
    - `near_zero`: a value counts as near zero when |a| <= near_zero. The default 0.05 is
      fastai's `near_zero` threshold; the course's looser "dead chart" is the first histogram
      bin, |a| < hist_max / bins (0.25 by default), available as `hist[:, 0]`.
    - `capacity`: time columns kept per layer (even); older columns merge pairwise.
    - `sample_size`: about this many values per layer and call, at fixed strided positions,
      give the histogram, near-zero and non-finite counts (scaled to the full size), and the
      mean and std. Layers no larger than it are recorded exactly. `None`: everything exact
      (several passes over each activation: slow on large ones).
    - `exact_moments`: with a sample, also compute the exact mean and std over the whole
      activation (two more passes), which also detects any non-finite value (counted as at
      least one even when the sample misses it).
    """

    bins: int = 40
    hist_max: float = 10.0
    near_zero: float = 0.05
    capacity: int = 1024
    sample_size: int | None = 2048
    exact_moments: bool = False

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"bins must be >= 1, got {self.bins}")
        if not self.hist_max > 0:
            raise ValueError(f"hist_max must be > 0, got {self.hist_max}")
        if self.near_zero < 0:
            raise ValueError(f"near_zero must be >= 0, got {self.near_zero}")
        if self.capacity < 2 or self.capacity % 2:
            raise ValueError(f"capacity must be an even number >= 2, got {self.capacity}")
        if self.sample_size is not None and self.sample_size < 1:
            raise ValueError(f"sample_size must be >= 1 or None, got {self.sample_size}")

    @property
    def width(self) -> int:
        """Number of float64 fields in one column."""
        return HIST + self.bins


def merge_groups(cols: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Merge consecutive runs of columns exactly; run i starts at row `starts[i]`."""
    out = np.empty((len(starts), cols.shape[1]))
    add = np.add.reduceat
    out[:, _ADDITIVE] = add(cols[:, _ADDITIVE], starts, axis=0)
    out[:, HIST:] = add(cols[:, HIST:], starts, axis=0)
    out[:, STEP_FIRST] = np.minimum.reduceat(cols[:, STEP_FIRST], starts)
    out[:, STEP_LAST] = np.maximum.reduceat(cols[:, STEP_LAST], starts)
    n = cols[:, COUNT]
    has = n > 0
    mean = np.where(has, cols[:, MEAN], 0.0)
    tot = out[:, COUNT]
    with np.errstate(invalid="ignore", divide="ignore"):
        gmean = np.where(tot > 0, add(n * mean, starts) / tot, np.nan)
    sizes = np.diff(np.append(starts, len(cols)))
    dev = np.where(has, mean - np.repeat(np.nan_to_num(gmean), sizes), 0.0)
    out[:, MEAN] = gmean
    out[:, M2] = add(np.where(has, cols[:, M2], 0.0) + n * dev * dev, starts)
    return out


def _combine_steps(rows: np.ndarray) -> np.ndarray:
    """Merge consecutive rows of the same step (calls within one batch) into one batch each."""
    step = rows[:, STEP_FIRST]
    starts = np.flatnonzero(np.r_[True, step[1:] != step[:-1]])
    if len(starts) == len(rows):
        return rows
    out = merge_groups(rows, starts)
    out[:, BATCHES] = 1
    out[:, STEP_SUM] = out[:, STEP_FIRST]
    return out


class LayerStats:
    """The recorded series of one layer, as numpy arrays with one entry per time column."""

    def __init__(self, name: str, config: StatsConfig, cols: np.ndarray | None = None) -> None:
        self.name = name
        self.config = config
        self._cols = np.empty((0, config.width)) if cols is None else np.asarray(cols, float)
        self._width = 1  # batches per full column
        if len(self._cols):
            self._width = int(2 ** np.ceil(np.log2(max(self._cols[:, BATCHES].max(), 1))))

    def __len__(self) -> int:
        return len(self._cols)

    def __repr__(self) -> str:
        return f"LayerStats({self.name!r}, columns={len(self)}, batches={self.batches.sum():.0f})"

    @property
    def columns(self) -> np.ndarray:
        """The raw (columns, fields) float64 array; see the field constants in this module."""
        return self._cols

    @property
    def batches_per_column(self) -> int:
        """How many batches each full column spans (doubles whenever columns merge)."""
        return self._width

    def append(self, cols: np.ndarray) -> None:
        """Add one-batch columns in step order; calls of the same step combine into one batch."""
        rows = np.asarray(cols, float)
        if not len(rows):
            return
        rows = _combine_steps(rows)
        if len(self._cols) and self._cols[-1, STEP_LAST] == rows[0, STEP_FIRST]:
            # More calls of the batch the last column ended with: no new batch.
            both = merge_groups(np.stack([self._cols[-1], rows[0]]), np.array([0]))
            both[0, BATCHES] -= 1
            both[0, STEP_SUM] -= rows[0, STEP_FIRST]
            self._cols = np.concatenate([self._cols[:-1], both])
            rows = rows[1:]
            if not len(rows):
                return
        if len(self._cols) and self._cols[-1, BATCHES] < self._width:
            rows = np.concatenate([self._cols[-1:], rows])  # the partial column fills up first
            self._cols = self._cols[:-1]
        done = np.cumsum(rows[:, BATCHES]) - rows[:, BATCHES]
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
        out = LayerStats(self.name, self.config, self._cols)
        out._width = self._width
        while len(out._cols) > max_columns:
            out._compact()
        return out

    # The public series.
    @property
    def step(self) -> np.ndarray:
        """The mean batch index of each column (the x axis)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._cols[:, STEP_SUM] / self._cols[:, BATCHES]

    @property
    def batches(self) -> np.ndarray:
        """How many batches each column spans."""
        return self._cols[:, BATCHES]

    @property
    def numel(self) -> np.ndarray:
        """Activation values seen per column, finite or not."""
        return self._cols[:, NUMEL]

    @property
    def mean(self) -> np.ndarray:
        """Mean of the finite activation values in each column."""
        return self._cols[:, MEAN]

    @property
    def std(self) -> np.ndarray:
        """Standard deviation (unbiased, like `Tensor.std`) of the finite values per column."""
        n = self._cols[:, COUNT]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.where(n > 1, self._cols[:, M2] / (n - 1), np.nan))

    @property
    def near_zero(self) -> np.ndarray:
        """Fraction of values with |a| <= config.near_zero in each column."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._cols[:, NEAR_ZERO] / self._cols[:, NUMEL]

    @property
    def nonfinite(self) -> np.ndarray:
        """Count of NaN/inf values per column."""
        return self._cols[:, NONFINITE]

    @property
    def hist(self) -> np.ndarray:
        """Histogram counts of |a|, shape (columns, bins)."""
        return self._cols[:, HIST:]

    @property
    def moments(self) -> np.ndarray:
        """(columns, 2) array of mean and std, as in the course's `moments`."""
        return np.stack([self.mean, self.std], axis=1)

    @property
    def hists(self) -> np.ndarray:
        """(columns, bins) histogram counts, as in the course's `hists`."""
        return self.hist


class RunStats(Mapping[str, LayerStats]):
    """The stats of one run: layer name -> LayerStats, plus the settings; saved and loaded."""

    def __init__(self, config: StatsConfig | None = None) -> None:
        self.config = config or StatsConfig()
        self._layers: dict[str, LayerStats] = {}
        self.lock = threading.RLock()
        self.version = 0  # bumped on every change, so viewers can tell when to redraw

    def __getitem__(self, name: str) -> LayerStats:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return f"RunStats({list(self._layers)}, {self.config})"

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

    def clear(self) -> None:
        """Forget all recorded layers."""
        with self.lock:
            self._layers.clear()
            self.version += 1

    def save(self, path: str | Path) -> Path:
        """Write the stats, layer names and settings to an `.npz` file; returns its path."""
        path = Path(path)
        with self.lock:
            meta = {"format": _FORMAT, "config": asdict(self.config), "layers": list(self)}
            arrays = {f"layer{i}": s.columns for i, s in enumerate(self._layers.values())}
            with path.open("wb") as f:
                np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunStats:
        """Read stats written by `save`."""
        not_ours = ValueError(f"{path} is not an actwidget stats file")
        try:
            data = np.load(Path(path), allow_pickle=False)
        except ValueError as e:  # not an .npy/.npz file
            raise not_ours from e
        if not isinstance(data, Mapping):  # a single .npy array
            raise not_ours
        with data:
            try:
                meta = json.loads(str(data["meta"]))
            except (KeyError, ValueError):
                meta = None
            if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
                raise not_ours
            out = cls(StatsConfig(**meta["config"]))
            for i, name in enumerate(meta["layers"]):
                out._layers[name] = LayerStats(name, out.config, data[f"layer{i}"])
        return out
