"""The header: Stop (first, so it never moves), the run's state and progress, and alerts.

Alerts put the header in a warning state: a red bar with the cause (where NaN/inf began, or
the fit's earliest alert: `diagnose.headline`) and, folded under it, the alerts read as one
line per kind and fit where many layers share one (`diagnose.summarize`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import ipywidgets as widgets

from ..diagnose import Summary, headline, summarize
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
            shown = min(st.epoch_batch + 1, st.epoch_batches or 10**9)
            parts.append(f"{st.phase} batch {shown}/{st.epoch_batches or '?'}")
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


def _line(x: Summary) -> str:
    """A summary's text with its layer names as displayed."""
    text = x.text
    for name in dict.fromkeys([*x.layers, x.worst, x.origin or ""]):
        if name:
            text = text.replace(name, display_name(name))
    return html.escape(text)


def _tagged(x: Summary) -> str:
    """A summary's line after its kind in bold, unless the line begins with it ("dead units
    in 5 of 100 layers", not "dead dead units ...")."""
    line = _line(x)
    if line.startswith(x.kind):
        return f"<b>⚠ {line[: len(x.kind)]}</b>{line[len(x.kind) :]}"
    return f"<b>⚠ {html.escape(x.kind)}</b> {line}"


def alerts_html(alerts: Sequence[Alert], layers: Sequence[str] = (), limit: int = 200) -> str:
    """The warning bar (the cause) with the alerts, one line per kind at depth, folded
    under it; "" if none."""
    if not alerts:
        return ""
    top = headline(alerts, layers)
    lines = summarize(alerts, layers)
    more = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""

    def where(x: Summary) -> str:
        return display_name(x.layers[0]) if len(x.layers) == 1 else f"{len(x.layers)} layers"

    rows = "".join(
        f"<tr><td>{html.escape(x.kind)}</td><td>{html.escape(where(x))}</td>"
        f"<td style='text-align:right'>{x.batch}</td>"
        f"<td>{'' if x.alerts[0].epoch is None else x.alerts[0].epoch + 1}</td>"
        f"<td>{_line(x)}</td></tr>"
        for x in reversed(lines[-limit:])
    )
    cut = (
        f"<div>… {len(lines) - limit} earlier lines not listed</div>" if len(lines) > limit else ""
    )
    return (
        f"<details class='actwidget-alerts' style='border-left:4px solid {_WARN};"
        "background:#fdecea;padding:3px 8px;margin:2px 0'>"
        f"<summary style='cursor:pointer;color:#8b1a1a'>{_tagged(top)}{more}</summary>"
        "<div style='max-height:150px;overflow:auto'>"
        "<style>.actwidget-alert-list td,.actwidget-alert-list th{padding:1px 8px 1px 0;"
        "vertical-align:top}</style>"
        "<table class='actwidget-alert-list' style='font-size:12px;border-collapse:collapse'>"
        "<tr><th align=left>kind</th><th align=left>layer</th><th>batch</th><th>epoch</th>"
        f"<th align=left>what</th></tr>{rows}</table>{cut}</div></details>"
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

    def render(
        self, st: RunStatus, alerts: Sequence[Alert], error: str = "", layers: Sequence[str] = ()
    ) -> None:
        value = status_html(st, len(alerts), error)
        if self.status.value != value:
            self.status.value = value
        if len(alerts) != self._n_alerts:
            self._n_alerts = len(alerts)
            self.alerts.value = alerts_html(alerts, layers)
