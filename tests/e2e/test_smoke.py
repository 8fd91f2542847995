"""Smoke test of the e2e harness: ipywidgets + bqplot render in a real JupyterLab."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from ._lab import (
    INPUT_PROMPT,
    cell_execution_count,
    cell_is_running,
    cell_locator,
    cell_output_locator,
    cell_output_text,
    make_notebook,
    measure_click_to_output,
    open_notebook,
    run_all,
    run_cell,
    screenshot,
    scroll_to_cell,
    wait_for_output,
    wait_kernel_idle,
)

pytestmark = pytest.mark.e2e

WIDGETS_CELL = """\
import numpy as np
import ipywidgets as widgets
import bqplot as bq
from IPython.display import display

slider = widgets.IntSlider(value=7, min=0, max=10, description="smoke")

x = np.linspace(0, 10, 200, dtype=np.float32)
y = np.sin(x).astype(np.float32)
xs, ys = bq.LinearScale(), bq.LinearScale()
line = bq.Lines(x=x, y=y, scales={"x": xs, "y": ys})
fig_line = bq.Figure(
    marks=[line],
    axes=[bq.Axis(scale=xs), bq.Axis(scale=ys, orientation="vertical")],
    title="line", layout=widgets.Layout(height="280px"),
)

rng = np.random.default_rng(0)
hscales = {"x": bq.LinearScale(), "y": bq.LinearScale(), "color": bq.ColorScale()}
heat = bq.HeatMap(
    x=np.arange(30), y=np.arange(10),
    color=rng.random((10, 30)).astype(np.float32), scales=hscales,
)
fig_heat = bq.Figure(marks=[heat], title="heatmap", layout=widgets.Layout(height="280px"))

display(slider, fig_line, fig_heat)
"""

NON_EMPTY_PATH = re.compile(r"^M\s*[-\d.]")  # an SVG path that starts drawing

NEXT_CELL = 'print("next cell ran")'

# bqplot 0.13 draws a HeatMap into an off-DOM <canvas>, then sets it as a PNG data URL
# on an <image class="heatmap"> inside the figure's <svg>.  Decode that image and count
# distinct colours: a blank/transparent image would give 0-1, our random data ~hundreds.
HEATMAP_PIXELS_JS = """async (el) => {
  const href = el.getAttribute('href') || el.getAttributeNS('http://www.w3.org/1999/xlink', 'href');
  if (!href || !href.startsWith('data:image/png')) return {href: String(href).slice(0, 40)};
  const img = new Image();
  img.src = href;
  await img.decode();
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const colors = new Set(); let opaque = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0) { opaque++; colors.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]); }
  }
  const box = el.getBoundingClientRect();
  return {w: img.naturalWidth, h: img.naturalHeight, opaque, colors: colors.size,
          boxW: box.width, boxH: box.height};
}"""

HEATMAP_DRAWN_JS = """(t0) => {
  const el = document.querySelector('.jp-Cell-outputArea svg image.heatmap');
  const href = el && (el.getAttribute('href')
                      || el.getAttributeNS('http://www.w3.org/1999/xlink', 'href'));
  if (href && href.startsWith('data:image/png')) return performance.now() - t0;
  return false;
}"""


def test_widgets_and_bqplot_render(lab, page):
    name = lab.write_notebook(make_notebook(WIDGETS_CELL, NEXT_CELL), "smoke.ipynb")
    t_open = time.perf_counter()
    open_notebook(page, lab, name)
    print(f"\nnotebook open + kernel idle: {time.perf_counter() - t_open:.2f}s")

    t0_browser = page.evaluate("() => performance.now()")
    t0 = time.perf_counter()
    runs = run_all(page)
    assert [r.index for r in runs] == [0, 1]

    # HeatMap appearance, timed in the browser (polled every animation frame).
    heat_ms = page.wait_for_function(
        HEATMAP_DRAWN_JS, arg=t0_browser, polling="raf", timeout=60_000
    ).json_value()
    print(
        f"run-all -> HeatMap image drawn: {heat_ms / 1000:.2f}s (browser clock), "
        f"{time.perf_counter() - t0:.2f}s (test clock)"
    )

    count0 = runs[0].wait()
    count1 = runs[1].wait()
    assert count1 > count0 >= 1
    assert cell_execution_count(page, 1) == count1
    st = runs[0].state()
    kernel_s = (st["tDone"] - st["tStart"]) / 1000
    print(f"cell 0 kernel time (start -> execute_reply): {kernel_s:.2f}s")
    wait_kernel_idle(page)

    out0 = cell_output_locator(page, 0)

    # IntSlider (ipywidgets 8: .widget-slider with a noUiSlider handle and a readout)
    slider = out0.locator(".widget-slider")
    expect(slider).to_be_visible()
    expect(slider.locator(".widget-readout")).to_have_text("7")
    expect(slider.locator(".noUi-handle")).to_be_visible()

    # bqplot Lines: <g class="curve"><path class="line" d="M...L..."/>
    figures = out0.locator(".bqplot.figure")
    expect(figures).to_have_count(2)
    line_path = figures.nth(0).locator("svg path.line")
    expect(line_path).to_have_count(1)
    expect(line_path).to_have_attribute("d", NON_EMPTY_PATH)
    d = line_path.get_attribute("d")
    assert d and d.startswith("M") and d.count("L") >= 100, d[:80] if d else d

    # bqplot HeatMap: <image class="heatmap" href="data:image/png;base64,..."> in the svg
    heat_img = figures.nth(1).locator("svg image.heatmap")
    expect(heat_img).to_have_count(1)
    px = heat_img.evaluate(HEATMAP_PIXELS_JS)
    print(f"heatmap image: {px}")
    assert px.get("w", 0) > 0 and px.get("h", 0) > 0, px
    assert px["opaque"] > 0.9 * px["w"] * px["h"], px
    assert px["colors"] >= 50, px  # 300 random cells through a colour scale
    assert px["boxW"] > 100 and px["boxH"] > 50, px

    # second cell
    wait_for_output(page, 1, "next cell ran", timeout=30_000)

    expect(cell_locator(page, 1).locator(INPUT_PROMPT)).to_have_text(f"[{count1}]:")
    scroll_to_cell(page, 1)
    screenshot(page, "smoke-notebook")
    screenshot(page, "smoke-cell0-output", locator=out0)


HELPERS_CELLS = (
    # 0: a button whose click handler (run by the kernel) prints into an Output widget
    """\
import ipywidgets as widgets
out = widgets.Output()
clicks = []
button = widgets.Button(description="Ping")
def on_click(_):
    clicks.append(1)
    with out:
        print(f"clicked {len(clicks)}")
button.on_click(on_click)
widgets.VBox([button, out])
""",
    # 1: a plain cell, run on its own
    'print("ran", len(clicks))',
    # 2: a failing cell
    "1 / 0",
)


def test_harness_helpers(lab, page):
    """run_cell / wait / click-in-output / timing helpers the widget tests rely on."""
    name = lab.write_notebook(make_notebook(*HELPERS_CELLS), "helpers.ipynb")
    open_notebook(page, lab, name)

    c0 = run_cell(page, 0, wait=True)
    out0 = cell_output_locator(page, 0)
    button = out0.get_by_role("button", name="Ping")
    expect(button).to_be_visible()
    assert not cell_is_running(page, 0)

    dt = measure_click_to_output(page, button, 0, "clicked 1", timeout=30_000)
    print(f"\nclick -> kernel handler output in the DOM: {dt * 1000:.0f} ms")
    assert 0 < dt < 30

    run = run_cell(page, 1)
    count = run.wait()
    assert count > c0.wait()
    wait_for_output(page, 1, "ran 1")
    assert cell_output_text(page, 1).strip() == "ran 1"
    prompt = cell_locator(page, 1).locator(INPUT_PROMPT)
    expect(prompt).to_have_text(f"[{count}]:")

    bad = run_cell(page, 2)
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        bad.wait()
    assert bad.wait(allow_error=True) > count
    wait_for_output(page, 2, "ZeroDivisionError")
    wait_kernel_idle(page)
    scroll_to_cell(page, 2)
    screenshot(page, "helpers-notebook")
