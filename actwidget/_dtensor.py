"""DTensor outputs (tensor parallelism): the part of the logical tensor this rank records.

The recorder combines ranks by adding their columns (see `actwidget._dist`). For the sum to be
the statistics of the full logical tensor, each value must be recorded by exactly one rank:
a sharded placement is recorded by every rank (each holds its own shard), a replicated one
only by the rank at coordinate 0 of that mesh dimension. Partial placements (values still to
be reduced) are not values of the tensor: they are skipped, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["local_part"]


def local_part(t: torch.Tensor, warn: Callable[[str], None]) -> torch.Tensor | None:
    """This rank's share of DTensor `t` to record, or None (nothing to record here)."""
    mesh, placements = t.device_mesh, t.placements
    for dim, placement in enumerate(placements):
        if placement.is_partial():
            warn("a DTensor with a Partial placement (not reduced yet)")
            return None
        if placement.is_replicate() and mesh.get_local_rank(dim) != 0:
            return None  # another rank records this copy
    local = t.to_local()
    return local if local.numel() else None
