"""The demo notebook in a real JupyterLab, on the real Fashion-MNIST, run the way it asks to
be run (one cell at a time, from the top): each training cell shows its widget at the top
of its own output and the fit runs long enough to be watched there; the notebook's words
are the widget's; the lr 0.6 run raises alerts, the kaiming fix runs clean beside it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import expect

from ._lab import (
    cell_output_locator,
    cell_output_text,
    collapse_left_area,
    open_notebook,
    run_cell,
    screenshot,
)
from .test_first_look import FirstLook

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "activations.ipynb"
BATCH = re.compile(r"train batch (\d+)/")

pytestmark = pytest.mark.e2e


def in_step(w: FirstLook, timeout: float = 30.0) -> None:
    """Scroll the widget into view and wait until its figures end at the same batch (bqplot
    lays a figure out again only once it is back in view, 0.3 s later)."""
    w.bring_into_view()
    deadline = time.monotonic() + timeout
    while True:
        ends = [f["lastLine"] or f["lastCell"] for f in w.figures()]
        ends = [e for e in ends if e is not None]
        if len(ends) >= 6 and max(ends) - min(ends) <= 1.2:  # heatmap bins: 2 batches
            return
        assert time.monotonic() < deadline, f"the figures never agreed: {ends}"
        w.page.wait_for_timeout(250)  # the polling interval, bounded by the deadline


def widget_cells(cells) -> list[int]:
    """Indices of the code cells that show a widget."""
    return [
        i for i, c in enumerate(cells) if c.cell_type == "code" and "ActivationWidget(" in c.source
    ]


def test_demo_notebook_is_watchable_cell_by_cell_and_says_what_the_widget_says(lab, page):
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    words = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "one cell at a time" in words and "Shift+Enter" in words
    assert "Practical Deep Learning" in words
    baseline, fixed, background, saved = widget_cells(cells)
    # The training cells show their widget first, then train: it sits on the running cell.
    for i in (baseline, fixed):
        src = cells[i].source
        assert src.index("display(ActivationWidget(") < src.index("train("), src

    name = lab.copy_notebook(NOTEBOOK)
    open_notebook(page, lab, name)
    collapse_left_area(page)
    texts, seen = {}, set()
    for i, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        run = run_cell(page, i)
        if i == baseline:  # watch the header while the fit runs, as a reader would
            w = cell_output_locator(page, i).locator(".actwidget")
            expect(w).to_contain_text("running", timeout=120_000)
            deadline = time.monotonic() + 300
            while not run.state()["done"] and time.monotonic() < deadline:
                m = BATCH.search(w.locator(".widget-html").first.inner_text())
                if m:
                    seen.add(int(m[1]))
                page.wait_for_timeout(250)  # the polling interval, while the cell runs
        run.wait(timeout=300_000)  # raises if a cell raised
        texts[i] = cell_output_text(page, i)
    print(f"\nbatches seen in the header while the baseline trained: {sorted(seen)}")
    assert len(seen) >= 5, seen  # it moved on screen: long enough to watch
    assert not [t for t in texts.values() if "Traceback" in t], texts

    # The lr 0.6 run: finished, with alerts in its header, listed by the next cells.
    w = cell_output_locator(page, baseline).locator(".actwidget")
    expect(w).to_contain_text("finished")
    expect(w).to_contain_text("alert")
    listed = next(t for t in texts.values() if "batch" in t and "exploding" in t)
    assert "lower the learning rate" in listed
    # The notebook's words are the widget's: chart titles, the colour menu's entries.
    titles = w.locator(".bqplot.figure .mainheading").all_text_contents()
    charts = [
        re.sub(r" \(.*\)$", "", t) for t in titles if t and not t.startswith(("All", "layers."))
    ]
    menu = [t.replace("\xa0", " ") for t in w.locator("select option").all_text_contents()]
    assert charts == ["Mean", "Std", "Near-zero fraction", "Gradient std"], titles
    assert menu == ["std (log scale)", "mean", "near-zero fraction", "dead-unit fraction"], menu
    for word in [*charts, *menu, "All layers", "|a| (log₂ bins)"]:
        assert word.lower() in words.lower(), word
    assert "dying" not in words.lower()
    page.set_viewport_size({"width": 1400, "height": 1400})  # the whole widget in view
    in_step(FirstLook(page, baseline))
    screenshot(page, "notebook-baseline", locator=w)  # the README's picture (docs/widget.png)
    # The kaiming fix, drawn over the first run: no alert.
    w = cell_output_locator(page, fixed).locator(".actwidget")
    expect(w).to_contain_text("finished")
    expect(w).not_to_contain_text("alert")
    assert any("no alerts" in t for t in texts.values())
    in_step(FirstLook(page, fixed))
    screenshot(page, "notebook-fixed-with-reference", locator=w)
    for i in (background, saved):
        expect(cell_output_locator(page, i).locator(".actwidget")).to_contain_text("finished")
    # The saved run marks the layers that raised an alert, as the live widget does.
    marked = cell_output_locator(page, saved).locator(".aw-layer.aw-alert")
    expect(marked.first).to_be_visible()
    screenshot(page, "notebook-end")
