"""Device-side summaries of activations: what a hook keeps per call, and how it becomes columns.

The hot path (one hook call) only launches a few device ops and never synchronises:
- exact sums of a and a*a over the whole activation (float32, on its device);
- a fixed random sample of `sample_size` values (a copy of the whole activation when smaller).
Histograms, near-zero and non-finite counts are computed later for many samples at once
(`summarize`, one call per sample length), and moved to the host in one transfer.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from .stats import (
    BATCHES,
    COUNT,
    HIST,
    M2,
    MEAN,
    NEAR_ZERO,
    NONFINITE,
    NUMEL,
    STEP_FIRST,
    STEP_LAST,
    STEP_SUM,
    StatsConfig,
)

# Columns of a `summarize` row.
S1, S2, NZ, BAD, H = 0, 1, 2, 3, 4


class Sampler:
    """Takes a fixed per-layer sample of an activation, the same positions every call."""

    def __init__(self, name: str, size: int) -> None:
        self.size = size
        self._seed = zlib.crc32(name.encode())
        self._index: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __call__(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Return (sample, exact (sum, sum of squares) or None).

        The sums are None when the sample is a copy of the whole activation.
        """
        n = x.numel()
        if n <= self.size:
            return x.clone(), None
        key = (n, x.device)
        idx = self._index.get(key)
        if idx is None:
            if len(self._index) > 8:  # a few shapes (e.g. the last, short batch) are enough
                self._index.clear()
            # Drawn on x's device: no host->device copy (a sync on CUDA), even the first time.
            gen = torch.Generator(x.device).manual_seed(self._seed ^ n)
            idx = torch.randint(n, (self.size,), generator=gen, device=x.device).sort().values
            self._index[key] = idx
        return x[idx], (x.sum(), torch.dot(x, x))  # stacked later, in bulk: fewer launches


def flat_float(x: torch.Tensor) -> torch.Tensor:
    """The activation as a detached 1-D float32 tensor (a view when it already is one)."""
    x = x.detach().reshape(-1)
    return x if x.dtype == torch.float32 else x.float()


def summarize(samples: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    """Per row of (rows, k) samples: finite sum, finite sum of squares, near-zero, non-finite,
    then the histogram of |a| (values above hist_max in the last bin)."""
    finite = samples.isfinite()
    vals = torch.where(finite, samples, 0.0)
    a = vals.abs()
    bins = config.bins
    b = (a * (bins / config.hist_max)).floor_().clamp_(max=bins - 1).long()
    b = torch.where(finite, b, bins)  # the extra last bucket holds the non-finite values
    rows = samples.shape[0]
    b += torch.arange(rows, device=b.device).unsqueeze(1) * (bins + 1)
    # scatter_add_, not bincount: bincount on CUDA reads the maximum back to the host (a sync,
    # and exact mode summarises in the hot path)
    flat = b.reshape(-1)
    hist = torch.zeros(rows * (bins + 1), dtype=torch.long, device=b.device)
    hist = hist.scatter_add_(0, flat, flat.new_ones(()).expand_as(flat)).reshape(rows, bins + 1)
    near = ((a <= config.near_zero) & finite).sum(1)
    dtype = torch.float32 if a.device.type == "mps" else torch.float64  # MPS has no float64
    v = vals.to(dtype)  # float32 squares overflow above ~1e19 and lose digits in the sums
    cols = [v.sum(1), (v * v).sum(1), near, hist[:, bins], hist[:, :bins]]
    return torch.cat([c.reshape(rows, -1).to(dtype) for c in cols], 1)


def to_columns(
    summary: np.ndarray,
    full: np.ndarray,
    numel: np.ndarray,
    taken: np.ndarray,
    steps: np.ndarray,
) -> np.ndarray:
    """Turn `summarize` rows into one-batch stats columns, scaling sampled counts to `numel`.

    `full` holds the exact [sum, sum of squares] per row; it is ignored (NaN) where the sample
    is the whole activation (`taken == numel`). When those sums are not finite (NaN/inf
    present, or float32 overflow), mean and std come from the sample's finite values and at
    least one non-finite value is counted.
    """
    bad = summary[:, BAD]  # non-finite values in the sample
    scale = numel / np.maximum(taken, 1)
    exact = np.asarray(taken) >= numel  # not NaN sums: a NaN in a sampled layer makes those
    full_ok = ~exact & np.isfinite(full).all(1)

    out = np.zeros((len(summary), HIST + summary.shape[1] - H))
    out[:, BATCHES] = 1
    out[:, STEP_SUM] = out[:, STEP_FIRST] = out[:, STEP_LAST] = steps
    out[:, NUMEL] = numel
    nonfinite = np.where(exact, bad, np.where(full_ok, 0.0, np.maximum(bad * scale, 1.0)))
    out[:, NONFINITE] = nonfinite
    out[:, NEAR_ZERO] = summary[:, NZ] * scale
    out[:, HIST:] = summary[:, H:] * scale[:, None]

    # Moments: exact sums where usable, else the sample's finite values scaled up.
    s1 = np.where(full_ok, full[:, 0], summary[:, S1])
    s2 = np.where(full_ok, full[:, 1], summary[:, S2])
    n = np.where(full_ok, numel, taken - bad)
    count = numel - nonfinite
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s1 / n, np.nan)
        m2 = np.maximum(s2 - s1 * np.nan_to_num(mean), 0.0) * np.where(n > 0, count / n, 0.0)
    out[:, COUNT] = count
    out[:, MEAN] = mean
    out[:, M2] = m2
    return out
