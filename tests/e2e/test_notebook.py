"""The demo notebook runs top to bottom in a real JupyterLab, on the real Fashion-MNIST, and
says what it promises: the lr 0.6 run raises alerts, the kaiming fix runs clean beside it."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import expect

from ._lab import (
    cell_output_locator,
    cell_output_text,
    collapse_left_area,
    open_notebook,
    run_all,
    screenshot,
)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "activations.ipynb"

pytestmark = pytest.mark.e2e


def widget_cells(cells) -> list[int]:
    """Indices of the code cells that show a widget (an `ActivationWidget(...)` or `w`
    as their last line)."""
    out = []
    for i, c in enumerate(cells):
        last = c.source.strip().splitlines()[-1] if c.source.strip() else ""
        if c.cell_type == "code" and (last.startswith("ActivationWidget(") or last == "w"):
            out.append(i)
    return out


def test_demo_notebook_runs_top_to_bottom(lab, page):
    name = lab.copy_notebook(NOTEBOOK)
    open_notebook(page, lab, name)
    collapse_left_area(page)
    runs = run_all(page)
    for run in runs:
        run.wait(timeout=240_000)  # raises if a cell raised or was skipped
    texts = {r.index: cell_output_text(page, r.index) for r in runs}
    assert not [t for t in texts.values() if "Traceback" in t], texts
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    baseline, fixed, background, saved = widget_cells(cells)
    # The lr 0.6 run: finished, with alerts in its header, listed by the next cells.
    w = cell_output_locator(page, baseline).locator(".actwidget")
    expect(w).to_contain_text("finished")
    expect(w).to_contain_text("alert")
    listed = next(t for i, t in texts.items() if "batch" in t and "exploding" in t)
    assert "lower the learning rate" in listed
    w.scroll_into_view_if_needed()
    screenshot(page, "notebook-baseline", locator=w)
    # The kaiming fix, drawn over the first run: no alert.
    w = cell_output_locator(page, fixed).locator(".actwidget")
    expect(w).to_contain_text("finished")
    expect(w).not_to_contain_text("alert")
    assert any("no alerts" in t for t in texts.values())
    w.scroll_into_view_if_needed()
    screenshot(page, "notebook-fixed-with-reference", locator=w)
    for i in (background, saved):
        expect(cell_output_locator(page, i).locator(".actwidget")).to_contain_text("finished")
    screenshot(page, "notebook-end")
