"""Device-side summaries of activations: what a hook keeps per call, and how it becomes columns.

The hot path (one hook call) launches one or three device ops and never synchronises:
- a copy of about `sample_size` values at fixed strided positions (the whole activation
  when smaller);
- with `exact_moments`, also the exact sums of a and a*a over the whole activation.
Histograms, near-zero and non-finite counts and the sample's moments are computed later for
many samples at once (`summarize`, one call per sample length), and moved to the host in
one transfer.
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
    """Takes a fixed per-layer sample of an activation: the same positions every call.

    The positions are every `step`-th value from a per-layer offset, `step` a prime near
    numel/size, so they spread over batch items, channels and positions (a prime step is not
    a multiple of any image size) and the copy is one strided read, cheaper than a gather.
    """

    def __init__(self, name: str, size: int) -> None:
        self.size = size
        self._seed = zlib.crc32(name.encode())
        self._slices: dict[int, slice] = {}

    def positions(self, n: int) -> slice:
        """The sampled positions of an n-value activation (about `size` of them)."""
        where = self._slices.get(n)
        if where is None:
            if len(self._slices) > 8:  # a few shapes (e.g. the last, short batch) are enough
                self._slices.clear()
            step = _next_prime(max(n // self.size, 2))
            where = self._slices[n] = slice(self._seed % step, n, step)
        return where

    def __call__(
        self, x: torch.Tensor, sums: bool = True
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Return (sample, exact (sum, sum of squares) or None).

        The sums are None when the sample is a copy of the whole activation, or not `sums`.
        """
        n = x.numel()
        if n <= self.size:
            return x.clone(), None
        sample = x[self.positions(n)].clone()
        return sample, (x.sum(), torch.dot(x, x)) if sums else None


def _next_prime(k: int) -> int:
    """The smallest prime >= k."""
    while any(k % d == 0 for d in range(2, int(k**0.5) + 1)):
        k += 1
    return k


def flat_float(x: torch.Tensor) -> torch.Tensor:
    """The activation as a detached 1-D float32 tensor (a view when it already is one)."""
    x = x.detach().reshape(-1)
    return x if x.dtype == torch.float32 else x.float()


def summarize(samples: torch.Tensor, config: StatsConfig, precise: bool = False) -> torch.Tensor:
    """Per row of (rows, k) samples: finite sum, finite sum of squares, near-zero, non-finite,
    then the histogram of |a| (values above hist_max in the last bin).

    Sums are float32 per row (rows are short samples), float64 with `precise` (exact mode,
    where a row is a whole activation)."""
    rows, bins = samples.shape[0], config.bins
    a = samples.abs()
    bad = ~(a <= torch.finfo(a.dtype).max)  # NaN and inf
    # Bucket per value: its bin (overflow in the last), `bins` for non-finite; one count.
    b = (a * (bins / config.hist_max)).clamp_(max=bins - 0.5).masked_fill_(bad, bins)
    b += torch.arange(0, rows * (bins + 1), bins + 1, dtype=b.dtype, device=b.device)[:, None]
    hist = _count(b.view(-1).long(), rows * (bins + 1)).view(rows, bins + 1)
    near = (a <= config.near_zero).sum(1)  # NaN compares False
    vals = samples.masked_fill(bad, 0.0)
    if precise:
        vals = vals.double()
    dtype = torch.float32 if a.device.type == "mps" else torch.float64  # MPS has no float64
    cols = [vals.sum(1), (vals * vals).sum(1), near, hist[:, bins], hist[:, :bins]]
    return torch.cat([c.reshape(rows, -1).to(dtype) for c in cols], 1)


def _count(index: torch.Tensor, size: int) -> torch.Tensor:
    """How often each value in [0, size) occurs, without a host sync on accelerators."""
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=size)  # fastest on the CPU; syncs on CUDA
    ones = torch.ones(1, dtype=torch.int64, device=index.device).expand(index.numel())
    return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(0, index, ones)


def to_columns(
    summary: np.ndarray,
    full: np.ndarray,
    numel: np.ndarray,
    taken: np.ndarray,
    steps: np.ndarray,
    has_full: np.ndarray | None = None,
) -> np.ndarray:
    """Turn `summarize` rows into one-batch stats columns, scaling sampled counts to `numel`.

    `full` holds the exact [sum, sum of squares] per row where `has_full` (default: every row)
    and the sample is not the whole activation (`taken == numel`); elsewhere it is ignored and
    mean and std come from the sample. When those sums are not finite (NaN/inf
    present, or float32 overflow), mean and std come from the sample's finite values and at
    least one non-finite value is counted.
    """
    bad = summary[:, BAD]  # non-finite values in the sample
    scale = numel / np.maximum(taken, 1)
    exact = np.asarray(taken) >= numel  # not NaN sums: a NaN in a sampled layer makes those
    has_full = ~exact & (np.ones(len(summary), bool) if has_full is None else has_full)
    full_ok = has_full & np.isfinite(full).all(1)

    out = np.zeros((len(summary), HIST + summary.shape[1] - H))
    out[:, BATCHES] = 1
    out[:, STEP_SUM] = out[:, STEP_FIRST] = out[:, STEP_LAST] = steps
    out[:, NUMEL] = numel
    seen = np.where(has_full, np.maximum(bad * scale, 1.0), bad * scale)  # sums saw a NaN/inf
    nonfinite = np.where(exact, bad, np.where(full_ok, 0.0, seen))
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
