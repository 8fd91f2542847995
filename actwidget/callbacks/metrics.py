"""`MetricsCB`: torcheval metrics and the mean loss, logged per epoch and phase."""

from __future__ import annotations

import html
import warnings
from typing import Any

import torch
from IPython.display import HTML, display

with warnings.catch_warnings():  # torcheval uses torch.jit.script, deprecated in torch 2.10+
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from torcheval.metrics import Mean, Metric, MulticlassAccuracy  # noqa: F401 (re-exported)

from actwidget._util import in_notebook
from actwidget.learner import Callback

__all__ = ["MetricsCB"]


class MetricsCB(Callback):
    """Computes metrics on each batch's device and logs one row per epoch and phase.

    Rows (floats, plus `epoch` and `train` = 'train' or 'eval') of the latest fit are in `log`.
    """

    def __init__(self, *metrics: Metric, **named_metrics: Metric) -> None:
        for m in metrics:
            named_metrics[type(m).__name__] = m
        self.metrics = named_metrics
        self.loss = Mean()
        self.all_metrics: dict[str, Metric] = {**named_metrics, "loss": self.loss}
        self.log: list[dict[str, Any]] = []
        self._n = 0
        self._handle: Any = None

    def before_fit(self, learn: Any) -> None:
        learn.metrics = self
        self.log, self._handle = [], None

    def before_epoch(self, learn: Any) -> None:
        for m in self.all_metrics.values():
            m.reset()
        self._n = 0

    def after_batch(self, learn: Any) -> None:
        y = learn.batch[1]
        if self.loss.device != y.device:  # moves once, not per batch
            for m in self.all_metrics.values():
                m.to(y.device)
        preds = learn.preds.detach()
        for m in self.metrics.values():
            m.update(preds, y)
        self.loss.update(learn.loss.detach(), weight=len(y))
        self._n += 1

    def after_epoch(self, learn: Any) -> None:
        if self._n == 0:
            return
        row: dict[str, Any] = {k: _value(m.compute()) for k, m in self.all_metrics.items()}
        row["epoch"] = learn.epoch
        row["train"] = "train" if learn.training else "eval"
        self.log.append(row)
        self._show()

    def _show(self) -> None:
        cols = list(self.log[0])
        if in_notebook():
            table = HTML(_html_table(cols, self.log))
            if self._handle is None:
                self._handle = display(table, display_id=True)
            else:
                self._handle.update(table)
            return
        widths = [max(len(c), 8) for c in cols]
        if len(self.log) == 1:
            print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
        cells = [_fmt(self.log[-1][c]) for c in cols]
        print("  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)).rstrip())


def _value(t: torch.Tensor) -> float | list[float]:
    return t.item() if t.numel() == 1 else t.tolist()


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _html_table(cols: list[str], rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f'<table class="dataframe"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
