"""The recorder's API on a loop's callback: `StoreModuleStatsCB` and the loop adapters'
`StatsCallback`s hold a `StatsHooks` as `self.recorder` and offer its API through this mixin,
so that `cb.stats`, `cb.request_stop()` and `ActivationWidget(cb)` work as on the recorder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .recorder import StatsHooks
from .source import Listener, RunStatus
from .stats import Alert, RunStats

__all__ = ["Recording"]


class Recording:
    """Mixin: the recorder's reading, stop and persistence API, delegated to `self.recorder`."""

    recorder: StatsHooks

    @property
    def stats(self) -> RunStats:
        """The recorded stats, up to the last batch (a consistent snapshot)."""
        return self.recorder.stats

    @property
    def alerts(self) -> list[Alert]:
        """Every alert so far, in order."""
        return self.recorder.alerts

    @property
    def status(self) -> RunStatus:
        """Where the run is (a `RunStatus`)."""
        return self.recorder.status

    @property
    def batches(self) -> int:
        """Recorded batches so far, across fits: the x axis."""
        return self.recorder.batches

    @property
    def should_stop(self) -> bool:
        """True once a stop was requested for the running fit."""
        return self.recorder.should_stop

    def request_stop(self, fit_id: int | None = None) -> bool:
        """Ask the running fit to stop at the next batch boundary (what the widget's Stop
        calls); False when no fit runs or `fit_id` names another fit."""
        return self.recorder.request_stop(fit_id)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Listen to the recorder's events (see `actwidget.source.Source`)."""
        return self.recorder.subscribe(listener)

    def flush(self) -> None:
        """Move pending stats of every hooked layer to the host, in one transfer."""
        self.recorder.flush()

    def save(self, path: str | Path) -> Path:
        """Save the recorded stats (layer names, settings, fits, alerts) to an `.npz` file."""
        return self.recorder.save(path)

    def reset(self) -> None:
        """Forget everything recorded (the next fit starts at batch 0)."""
        self.recorder.reset()
