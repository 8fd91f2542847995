"""Alerts: rules over the recorded columns that say when a layer goes wrong, as it happens.

Headless and incremental: `Diagnoser.update` sees only the new one-batch columns of each
flush and keeps a few numbers per layer, so its cost does not grow with the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .stats import Alert, Field

__all__ = ["KINDS", "AlertConfig", "Diagnoser"]

_log = logging.getLogger("actwidget")

KINDS = ("nonfinite", "exploding", "vanishing", "dead")


@dataclass(frozen=True)
class AlertConfig:
    """Alert rules and their thresholds (see the README's "Alerts" section)."""

    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown alert kinds {sorted(unknown)}; known: {list(KINDS)}")


class Diagnoser:
    """Turns new columns into alerts; each (kind, layer) alerts once per fit."""

    def __init__(self, config: AlertConfig, layers: Iterable[str]) -> None:
        self.config = config
        self.layers = list(layers)
        self._seen: set[tuple[str, str]] = set()

    def begin_fit(self) -> None:
        """A new fit: alerts may fire again."""
        self._seen.clear()

    def update(
        self,
        new: Mapping[str, np.ndarray],
        epoch_of: Callable[[int], int | None],
        fit: int,
    ) -> list[Alert]:
        """Alerts raised by the new one-batch columns of each layer (in batch order)."""
        out: list[Alert] = []
        if "nonfinite" not in self.config.kinds:
            return out
        for name, cols in new.items():
            bad = np.flatnonzero((cols[:, Field.NONFINITE] > 0) | (cols[:, Field.G_NONFINITE] > 0))
            if not len(bad) or ("nonfinite", name) in self._seen:
                continue
            self._seen.add(("nonfinite", name))
            row = cols[bad[0]]
            batch = int(row[Field.STEP_FIRST])
            grad = row[Field.NONFINITE] == 0
            what = "gradient" if grad else "activation"
            value = float(row[Field.G_NONFINITE] if grad else row[Field.NONFINITE])
            msg = (
                f"{name}: NaN/inf in the {what} at batch {batch}; lower the learning rate, "
                "clip gradients or add normalisation"
            )
            out.append(Alert("nonfinite", name, batch, epoch_of(batch), value, msg, fit))
        return out
