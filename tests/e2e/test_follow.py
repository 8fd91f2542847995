"""ActivationWidget(PATH) in a real JupyterLab follows a run that a script in another
process writes, live, and its Stop ends that script.

The script is `tests/_run_writer.py loop RUN_DIR 0.05`: a plain training loop under
`with StatsHooks(..., run_dir=RUN_DIR)`, ~20 batches/s, that runs until it is stopped.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from ._lab import (
    cell_output_locator,
    collapse_left_area,
    make_notebook,
    open_notebook,
    run_cell,
    screenshot,
)

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[1] / "_run_writer.py"
LAYERS = 3  # Linear, ReLU, Linear
RUNNING = re.compile(r"running · ")  # the status line: "running · batch 12 · ..."
STOPPED = re.compile(r"stopped at batch \d+")

# How many bqplot lines under the widget are drawn with at least k segments.
DRAWN_LINES_JS = """([root, k]) => [...root.querySelectorAll('.bqplot.figure svg path.line')]
  .filter((p) => !p.closest('.legend'))
  .filter((p) => ((p.getAttribute('d') || '').match(/L/g) || []).length >= k).length"""


def test_widget_follows_a_script_live_and_stop_ends_it(lab, page, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cells = [
        f"from actwidget import *\nRUN = {str(run)!r}\nprint('setup done')",
        "w = ActivationWidget(RUN)\nw",
    ]
    open_notebook(page, lab, lab.write_notebook(make_notebook(*cells), "follow.ipynb"))
    collapse_left_area(page)
    run_cell(page, 0, wait=True)
    run_cell(page, 1, wait=True)
    root = cell_output_locator(page, 1).locator(".actwidget").first
    stop = root.get_by_role("button", name="■ Stop")
    expect(root).to_contain_text("waiting")  # nothing written there yet

    script = subprocess.Popen(
        [sys.executable, str(SCRIPT), "loop", str(run), "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        expect(root).to_contain_text(RUNNING, timeout=60_000)
        expect(stop).to_be_enabled()
        root.evaluate("(e) => e.scrollIntoView({block: 'start'})")  # bqplot draws when seen
        page.wait_for_function(
            f"(args) => ({DRAWN_LINES_JS})(args) >= {LAYERS}",
            arg=[root.element_handle(), 5],
            timeout=60_000,
            polling=200,
        )
        expect(root).to_contain_text(RUNNING)  # still going: Stop has work
        screenshot(page, "follow-running", locator=root)

        clicked = time.monotonic()
        stop.click()
        out, _ = script.communicate(timeout=60)
        took = time.monotonic() - clicked
        print(f"\nfollow: click Stop -> script exited {took:.2f} s later: {out.strip()!r}")
        assert script.returncode == 0, out
        assert re.search(r"stopped at batch \d+", out), out
        expect(root).to_contain_text(STOPPED, timeout=30_000)
        expect(stop).to_be_disabled()
        screenshot(page, "follow-stopped", locator=root)
    finally:
        if script.poll() is None:
            script.kill()
            script.communicate()
