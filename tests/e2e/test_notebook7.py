"""ActivationWidget in Notebook 7 (the `notebook` package): it renders live during a blocking
fit, the picker acts, and Stop ends the cell within one batch + 1 s; the queued cell runs.

The same notebook as test_widget.py's blocking test; Notebook 7 is a different front end
(its own shell and pages) over the same widget protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from ._lab import (
    cell_output_locator,
    cell_output_text,
    make_notebook,
    measure_click_to_output,
    open_notebook,
    run_cell,
    wait_kernel_idle,
)
from .test_widget import (
    BLOCKING_CELLS,
    DATA_CHARTS,
    N_LAYERS,
    SLACK_S,
    STOPPED,
    TALL_VIEWPORT,
    TOGGLED,
    WidgetView,
    assert_clean,
    longest_batch,
    stopped_at,
)

pytestmark = pytest.mark.e2e


# Notebook 7.6.5's own page error on every load (also of a notebook holding only `1+1`): its
# keyboard-shortcuts plugin reads `plugins[id].schema` of a plugin it has no schema for.
# Not ours; allowed on these pages only.
NB7_OWN_ERROR = "[pageerror] Cannot read properties of undefined (reading 'schema')"


@pytest.fixture
def nb_page(page: Page, notebook7) -> Iterator[Page]:
    """`page`, with the Notebook 7 server's kernels shut down after the test."""
    yield page
    page.context.close()
    notebook7.shutdown_all_kernels()
    console = page.e2e_console  # type: ignore[attr-defined]
    console[:] = [m for m in console if m != NB7_OWN_ERROR]


def test_notebook7_blocking_fit_renders_toggles_and_stops(notebook7, nb_page: Page) -> None:
    page = nb_page
    page.set_viewport_size(TALL_VIEWPORT)
    name = notebook7.write_notebook(make_notebook(*BLOCKING_CELLS), "nb7_blocking.ipynb")
    open_notebook(page, notebook7, name)
    run_cell(page, 0, wait=True)
    run_cell(page, 1, wait=True)
    w = WidgetView(page, 1)
    expect(w.header).to_contain_text("waiting")

    fit = run_cell(page, 2)  # blocks the kernel ...
    nxt = run_cell(page, 3)  # ... this one is queued behind it
    expect(w.header).to_contain_text("running", timeout=30_000)
    w.wait_rendered()
    w.screenshot("notebook7-blocking-rendered")

    # A layer chip acts during the fit (in the browser, and in the kernel at a batch).
    button, n = w.toggle(TOGGLED), N_LAYERS * DATA_CHARTS
    button.click()
    w.wait_visible_lines(n - DATA_CHARTS)
    w.wait_heatmaps(f"!hs.some((h) => h.title === {TOGGLED!r} && h.shown)")
    button.click()
    w.wait_visible_lines(n)
    expect(w.header).to_contain_text("running")

    dt = measure_click_to_output(page, w.stop, 2, "fit returned", timeout=30_000)
    fit.wait(timeout=10_000)
    text = cell_output_text(page, 2)
    batch = longest_batch(text)
    print(f"\nNotebook 7: click Stop -> 'fit returned' {dt:.3f} s (longest batch {batch:.3f} s)")
    assert_clean(text)
    assert dt < batch + SLACK_S, f"fit cell ended {dt:.3f} s after the click (batch {batch:.3f} s)"
    expect(w.header).to_contain_text(STOPPED)
    expect(w.stop_status).to_have_text("Stopped.")
    e, b = stopped_at(w.header.inner_text())
    nxt.wait(timeout=10_000)
    expect(cell_output_locator(page, 3)).to_contain_text("next cell ran")
    assert cell_output_text(page, 3).strip() == f"next cell ran ({e - 1}, {b - 1})"
    wait_kernel_idle(page)
    w.screenshot("notebook7-blocking-stopped")
    assert re.search(r"stopped", w.header.inner_text())
