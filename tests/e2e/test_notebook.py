"""The demo notebook runs top to bottom in a real JupyterLab, on the real Fashion-MNIST."""

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


def test_demo_notebook_runs_top_to_bottom(lab, page):
    name = lab.copy_notebook(NOTEBOOK)
    open_notebook(page, lab, name)
    collapse_left_area(page)
    runs = run_all(page)
    for run in runs:
        run.wait(timeout=240_000)  # raises if a cell raised or was skipped
    texts = [cell_output_text(page, r.index) for r in runs]
    assert not [t for t in texts if "Traceback" in t], texts
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    first = next(  # the first cell that shows a widget as its last line
        i
        for i, c in enumerate(cells)
        if c.cell_type == "code"
        and c.source.strip().splitlines()[-1].startswith("ActivationWidget(")
    )
    widget = cell_output_locator(page, first).locator(".actwidget")
    expect(widget).to_contain_text("finished")
    screenshot(page, "notebook-end")
