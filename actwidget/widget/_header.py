"""The header: Stop (first, so it never moves), the run's state and progress, and alerts.

Alerts put the header in a warning state: a red bar with the latest alert and, folded
under it, the list of all of them (kind, layer, batch, message).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import ipywidgets as widgets

from ..source import RunState, RunStatus
from ..stats import Alert
from ._names import display_name

__all__ = ["Header", "alerts_html", "status_html"]

STATE_COLORS = {"running": "#2ca02c", "stopped": "#ff7f0e", "failed": "#d62728"}
_WARN = "#d62728"


def status_html(st: RunStatus, alerts: int = 0, error: str = "") -> str:
    """One line: state, fit, epoch and batch, speed, time; alert count; a drawing error."""
    state = "failed" if error and st.state is RunState.WAITING else st.state.value
    color = STATE_COLORS.get(state, "#555")
    parts = [f"<b style='color:{color}'>{state}</b> {html.escape(st.message)}".strip()]
    if st.state is not RunState.WAITING:
        if st.fit > 1:
            parts.append(f"fit {st.fit}" + (" running" if st.state is RunState.RUNNING else ""))
        running = st.state is RunState.RUNNING
        if st.epoch is not None:
            parts.append(f"epoch {st.epoch + 1}/{st.epochs or '?'}")
        if st.epoch is not None and running:
            shown = min(st.epoch_step + 1, st.epoch_steps or 10**9)
            parts.append(f"{st.phase} batch {shown}/{st.epoch_steps or '?'}")
        else:  # ended (the last phase may be one that records nothing): the total
            parts.append(f"{st.batch} batches" if st.epoch is not None else f"batch {st.batch}")
        if st.elapsed > 0:
            parts.append(f"{st.fit_batches / st.elapsed:.1f} batches/s")
            parts.append(f"{st.elapsed:.1f} s")
    if alerts:
        parts.append(f"<b style='color:{_WARN}'>⚠ {alerts} alert{'s' * (alerts > 1)}</b>")
    if error:
        parts.append(f"<span style='color:{_WARN}'>{html.escape(error)}</span>")
    return " · ".join(p for p in parts if p)


def alerts_html(alerts: Sequence[Alert], limit: int = 200) -> str:
    """The warning bar (latest alert) with the list of alerts folded under it; "" if none."""
    if not alerts:
        return ""
    last = alerts[-1]
    more = f" (+{len(alerts) - 1} more)" if len(alerts) > 1 else ""
    rows = "".join(
        f"<tr><td>{html.escape(a.kind)}</td><td>{html.escape(display_name(a.layer))}</td>"
        f"<td style='text-align:right'>{a.batch}</td>"
        f"<td>{'' if a.epoch is None else a.epoch + 1}</td>"
        f"<td>{html.escape(a.message)}</td></tr>"
        for a in reversed(alerts[-limit:])
    )
    cut = (
        f"<div>… {len(alerts) - limit} earlier alerts not listed</div>"
        if len(alerts) > limit
        else ""
    )
    return (
        f"<details class='actwidget-alerts' style='border-left:4px solid {_WARN};"
        "background:#fdecea;padding:3px 8px;margin:2px 0'>"
        f"<summary style='cursor:pointer;color:#8b1a1a'><b>⚠ {html.escape(last.kind)}</b> "
        f"{html.escape(last.message)}{more}</summary>"
        "<div style='max-height:150px;overflow:auto'>"
        "<style>.actwidget-alert-list td,.actwidget-alert-list th{padding:1px 8px 1px 0;"
        "vertical-align:top}</style>"
        "<table class='actwidget-alert-list' style='font-size:12px;border-collapse:collapse'>"
        "<tr><th align=left>kind</th><th align=left>layer</th><th>batch</th><th>epoch</th>"
        f"<th align=left>message</th></tr>{rows}</table>{cut}</div></details>"
    )


class Header:
    """Stop and the status line in one row, the alerts bar under it; `box` lays them out."""

    def __init__(self, stop: widgets.Widget, can_stop: bool) -> None:
        self.stop = stop
        self.status = widgets.HTML(layout=widgets.Layout(flex="1 1 auto", min_width="0"))
        self.alerts = widgets.HTML(layout=widgets.Layout(width="100%"))
        stop.layout = widgets.Layout(flex="0 0 auto", display=None if can_stop else "none")
        self.row = widgets.HBox(
            [stop, self.status], layout=widgets.Layout(align_items="center", width="100%")
        )
        self.box = widgets.VBox([self.row, self.alerts], layout=widgets.Layout(width="100%"))
        self._n_alerts = -1

    def render(self, st: RunStatus, alerts: Sequence[Alert], error: str = "") -> None:
        value = status_html(st, len(alerts), error)
        if self.status.value != value:
            self.status.value = value
        if len(alerts) != self._n_alerts:
            self._n_alerts = len(alerts)
            self.alerts.value = alerts_html(alerts)
