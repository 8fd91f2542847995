"""ActivationWidget in a real JupyterLab: it renders live, layer toggles work, Stop stops.

The test notebooks use only the public API on small synthetic data; a callback sleeps a
little after every batch so that a run lasts ~30 s unless stopped (it always is).
Timings are measured in the browser (click event -> text in the DOM) and printed (-s).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from ._lab import (
    cell_output_locator,
    cell_output_text,
    collapse_left_area,
    make_notebook,
    measure_click_to_output,
    open_notebook,
    run_cell,
    screenshot,
    wait_kernel_idle,
)

pytestmark = pytest.mark.e2e

N_LAYERS = 5  # CNN().layers
N_CHARTS = 3  # mean, std, near-zero
TOGGLED = "layers.1 (Conv2dWithReLU)"
SLEEP_S = 0.05  # per batch: ~15 batches/s, 4 epochs of 110 batches ~ 30 s
SLACK_S = 1.0  # "within one batch time + 1 s" of the click
STOPPED = re.compile(r"stopped at epoch (\d+), batch (\d+)")
TALL_VIEWPORT = {"width": 1400, "height": 1300}  # the whole widget in one screenshot

SETUP = """\
import time
import torch
from torch.utils.data import DataLoader, TensorDataset
from actwidget import *

torch.set_num_threads(1)  # 2 shared cores: leave one to the browser and the server

class SlowDown(Callback):
    "Sleeps after each batch, so that a run lasts long enough to click Stop."
    def __init__(self, secs): self.secs = secs
    def after_batch(self, learn): time.sleep(self.secs)

class BatchClock(Callback):
    "Wall-clock time at the end of each batch."
    def before_fit(self, learn): self.times = [time.perf_counter()]
    def after_batch(self, learn): self.times.append(time.perf_counter())
    def longest_recent(self, n=10):
        t = self.times[-n - 1:]
        return max(b - a for a, b in zip(t, t[1:])) if len(t) > 1 else float("nan")

def synthetic(n, bs=64, shuffle=False):
    ds = TensorDataset(torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)))
    return DataLoader(ds, batch_size=bs, shuffle=shuffle)

set_seed(0)
dls = DataLoaders(synthetic(64 * 100, shuffle=True), synthetic(64 * 10))
model = CNN()
cb = StoreModuleStatsCB(mods=model.layers)
clock = BatchClock()
print("setup done")
"""

BLOCKING_CELLS = [
    SETUP,
    # 1
    "w = ActivationWidget(cb)\nw",
    # 2: blocks the kernel until the fit ends
    f"""\
learn = TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=[cb, SlowDown({SLEEP_S}), clock])
learn.fit(4)
print("fit returned")
print(f"longest recent batch {{clock.longest_recent():.3f}} s")
""",
    # 3
    'print("next cell ran", cb.learn.stopped_at)',
]

BACKGROUND_CELLS = [
    SETUP,
    # 1
    "w2 = ActivationWidget(cb)\nw2",
    # 2: returns at once, the fit runs in a worker thread
    f"""\
learn2 = TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=[cb, SlowDown({SLEEP_S}), clock])
w2.start(learn2.fit, 4)
print("start returned")
""",
    # 3
    """\
w2.wait()
print("waited", learn2.stopped_at)
print(f"longest recent batch {clock.longest_recent():.3f} s")
""",
]


# --- DOM probes -------------------------------------------------------------------------

# Installed as window.__aw.  lines(root, k): per line chart (the figures without a heatmap),
# how many line marks it has, how many are drawn (a path with >= k segments) and how many
# drawn ones are visible (bqplot hides a mark by `display: none` on its <g>).
# heatmaps(root): per heatmap figure its title, whether it is displayed, and its image
# decoded (bqplot 0.13 draws a HeatMap as a PNG data URL on <image class="heatmap">).
PROBES_JS = """() => {
  if (window.__aw) return;
  const shown = (el, root) => {
    for (let e = el; e && e !== root; e = e.parentElement) {
      const cs = getComputedStyle(e);
      if (cs.display === 'none' || cs.visibility === 'hidden') return false;
    }
    return true;
  };
  const figures = (root, heat) => [...root.querySelectorAll('.bqplot.figure')]
    .filter((f) => !!f.querySelector('image.heatmap') === heat);
  const lines = (root, k) => figures(root, false).map((f) => {
    const ls = [...f.querySelectorAll('svg path.line')].filter((p) => !p.closest('.legend'));
    const drawn = (p) => {
      const d = p.getAttribute('d') || '';
      return /^M\\s*[-\\d.]/.test(d) && (d.match(/L/g) || []).length >= k;
    };
    return { lines: ls.length, drawn: ls.filter(drawn).length,
             visible: ls.filter((p) => drawn(p) && shown(p, root)).length };
  });
  const visible = (root, k) => lines(root, k).reduce((n, c) => n + c.visible, 0);
  const heatmaps = async (root) => {
    const out = [];
    for (const f of figures(root, true)) {
      const el = f.querySelector('image.heatmap');
      const title = (f.querySelector('.mainheading') || {}).textContent || '';
      const href = el.getAttribute('href')
        || el.getAttributeNS('http://www.w3.org/1999/xlink', 'href') || '';
      const r = { title, shown: shown(f, root) && f.getBoundingClientRect().width > 0,
                  image_shown: shown(el, root),
                  png: href.startsWith('data:image/png'), colors: 0, w: 0, h: 0 };
      if (r.png) {
        const img = new Image();
        img.src = href;
        await img.decode();
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        const colors = new Set();
        for (let i = 0; i < d.length; i += 4)
          if (d[i + 3] > 0) colors.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        Object.assign(r, { colors: colors.size, w: c.width, h: c.height });
      }
      out.push(r);
    }
    return out;
  };
  window.__aw = { lines, visible, heatmaps };
}"""


class WidgetView:
    """Locators into one rendered ActivationWidget (in cell `index`'s output)."""

    def __init__(self, page: Page, index: int) -> None:
        self.page, self.index = page, index
        self.out = cell_output_locator(page, index)
        self.root = self.out.locator(".actwidget").first
        self.header = self.root.locator(".widget-html").first
        self.stop = self.root.get_by_role("button", name="■ Stop")
        self.stop_status = self.root.locator(".actwidget-stop-status")

    def toggle(self, name: str) -> Locator:
        return self.root.locator(".widget-toggle-button", has_text=name)

    def _handle(self):
        self.page.evaluate(PROBES_JS)
        return self.root.element_handle()

    def lines(self, min_segments: int = 1) -> list[dict]:
        js = "([r, k]) => window.__aw.lines(r, k)"
        return self.page.evaluate(js, [self._handle(), min_segments])

    def heatmaps(self) -> list[dict]:
        return self.page.evaluate("(r) => window.__aw.heatmaps(r)", self._handle())

    def wait_visible_lines(self, n: int, min_segments: int = 1, timeout: float = 30_000) -> None:
        self.page.wait_for_function(
            "([r, n, k]) => window.__aw.visible(r, k) === n",
            arg=[self._handle(), n, min_segments], timeout=timeout, polling=100,
        )  # fmt: skip

    def wait_heatmaps(self, predicate_js: str, timeout: float = 30_000) -> list[dict]:
        """Wait until `predicate_js` (a JS expression over `hs`, the heatmaps) holds."""
        self.page.wait_for_function(
            f"async (r) => {{ const hs = await window.__aw.heatmaps(r); return {predicate_js}; }}",
            arg=self._handle(), timeout=timeout, polling=200,
        )  # fmt: skip
        return self.heatmaps()

    def wait_rendered(self, min_segments: int = 5) -> list[dict]:
        """Every layer has a drawn line in every chart and a coloured heatmap."""
        self.bring_into_view()
        self.wait_visible_lines(N_LAYERS * N_CHARTS, min_segments)
        charts = self.lines(min_segments)
        assert [c["lines"] for c in charts] == [N_LAYERS] * N_CHARTS, charts
        return self.wait_heatmaps(
            f"hs.length === {N_LAYERS} && hs.every((h) => h.shown && h.png && h.colors >= 5)"
        )

    def check_toggle_off_and_on(self, shot: str) -> None:
        """Toggle TOGGLED off: its lines and heatmap go; back on: they return."""
        n = N_LAYERS * N_CHARTS
        button = self.toggle(TOGGLED)
        expect(button).to_have_count(1)
        expect(button).to_have_class(re.compile(r"\bmod-active\b"))
        self.wait_visible_lines(n, timeout=1000)
        button.click()
        expect(button).not_to_have_class(re.compile(r"\bmod-active\b"))
        self.wait_visible_lines(n - N_CHARTS)  # one line per chart gone
        hs = self.wait_heatmaps(f"hs.filter((h) => h.shown).length === {N_LAYERS - 1}")
        assert TOGGLED not in [h["title"] for h in hs if h["shown"]], hs
        self.screenshot(shot)
        button.click()
        expect(button).to_have_class(re.compile(r"\bmod-active\b"))
        self.wait_visible_lines(n)
        self.wait_heatmaps(f"hs.filter((h) => h.shown && h.colors >= 5).length === {N_LAYERS}")

    def bring_into_view(self) -> None:
        """Scroll the widget to the top of the notebook: bqplot lays a figure out (and
        draws it) only while it intersects the viewport."""
        self.root.evaluate("(e) => e.scrollIntoView({block: 'start'})")

    def screenshot(self, name: str) -> None:
        self.bring_into_view()
        self.wait_heatmaps("hs.every((h) => h.shown)")  # those in the box are laid out
        screenshot(self.page, name, locator=self.root)


def stopped_at(text: str) -> tuple[int, int]:
    m = STOPPED.search(text)
    assert m, text
    return int(m[1]), int(m[2])


def longest_batch(text: str) -> float:
    m = re.search(r"longest recent batch ([\d.]+) s", text)
    assert m, text
    return float(m[1])


def assert_clean(text: str) -> None:
    for bad in ("Traceback", "KeyboardInterrupt", "Error"):
        assert bad not in text, text


def open_waiting_widget(lab, page: Page, cells: list[str], name: str) -> WidgetView:
    """Write and open a test notebook, run its set-up and widget cells: the widget waits."""
    page.set_viewport_size(TALL_VIEWPORT)
    open_notebook(page, lab, lab.write_notebook(make_notebook(*cells), name))
    collapse_left_area(page)
    run_cell(page, 0, wait=True)
    run_cell(page, 1, wait=True)
    w = WidgetView(page, 1)
    expect(w.header).to_contain_text("waiting")
    return w


# --- tests ------------------------------------------------------------------------------


def test_blocking_fit_renders_live_and_stop_ends_the_cell(lab, page):
    w = open_waiting_widget(lab, page, BLOCKING_CELLS, "widget_blocking.ipynb")
    expect(w.stop).to_be_disabled()

    fit = run_cell(page, 2)  # blocks the kernel ...
    nxt = run_cell(page, 3)  # ... this one is queued behind it
    expect(w.header).to_contain_text("running", timeout=30_000)
    expect(w.stop).to_be_enabled()
    hs = w.wait_rendered()
    print(f"\nheatmaps: {[(h['title'], h['colors']) for h in hs]}")
    expect(w.header).to_contain_text("running")  # still training: Stop has work to do
    w.screenshot("widget-blocking-rendered")

    # Toggles act during the blocking fit too (linked in the browser, not via the kernel).
    button, n = w.toggle(TOGGLED), N_LAYERS * N_CHARTS
    button.click()
    w.wait_visible_lines(n - N_CHARTS)
    w.wait_heatmaps(f"hs.some((h) => h.title === {TOGGLED!r} && !h.image_shown)")
    button.click()
    w.wait_visible_lines(n)
    w.wait_heatmaps("hs.every((h) => h.image_shown)")
    expect(w.header).to_contain_text("running")  # all that happened while training ran

    dt = measure_click_to_output(page, w.stop, 2, "fit returned", timeout=30_000)
    fit.wait(timeout=10_000)
    fit_text = cell_output_text(page, 2)
    batch = longest_batch(fit_text)
    print(f"blocking: click Stop -> 'fit returned' in the DOM {dt:.3f} s "
          f"(longest recent batch {batch:.3f} s)")  # fmt: skip
    assert_clean(fit_text)
    assert fit_text.startswith("fit returned\n"), fit_text
    assert dt < batch + SLACK_S, f"fit cell ended {dt:.3f} s after the click (batch {batch:.3f} s)"

    expect(w.header).to_contain_text(STOPPED)
    e, b = stopped_at(w.header.inner_text())
    expect(w.stop).to_be_disabled()
    nxt.wait(timeout=10_000)
    expect(cell_output_locator(page, 3)).to_contain_text("next cell ran")
    assert cell_output_text(page, 3).strip() == f"next cell ran ({e - 1}, {b - 1})"
    wait_kernel_idle(page)
    w.screenshot("widget-blocking-stopped")

    # The kernel is free again: the toggles act on the stopped run's charts.
    w.check_toggle_off_and_on("widget-blocking-toggled-off")


def test_background_fit_toggles_live_and_stop(lab, page):
    w = open_waiting_widget(lab, page, BACKGROUND_CELLS, "widget_background.ipynb")

    # start() returns at once: the cell ends while the fit goes on.
    start = run_cell(page, 2)
    start.wait(timeout=10_000)
    st = start.state()
    start_s = (st["tDone"] - st["tStart"]) / 1000
    print(f"\nbackground: start cell ran {start_s:.3f} s")
    assert cell_output_text(page, 2).strip() == "start returned"
    assert start_s < 3, start_s
    expect(w.header).to_contain_text("running", timeout=30_000)
    wait_kernel_idle(page)  # the kernel is free while the fit runs

    w.wait_rendered()
    w.screenshot("widget-background-rendered")
    w.check_toggle_off_and_on("widget-background-toggled-off")
    expect(w.header).to_contain_text("running")  # the toggles did not take the whole run

    # Stop: the kernel is idle, so the message is acked at once; no interrupt needed.
    dt = measure_click_to_output(page, w.stop, 1, "stopped at epoch", timeout=30_000)
    print(f"background: click Stop -> widget says stopped {dt:.3f} s")
    e, b = stopped_at(w.header.inner_text())
    expect(w.stop_status).to_have_text("Stopped.")
    done = run_cell(page, 3)
    done.wait(timeout=10_000)
    text = cell_output_text(page, 3)
    assert_clean(text)
    assert text.startswith(f"waited ({e - 1}, {b - 1})\n"), text
    batch = longest_batch(text)
    print(f"background: longest recent batch {batch:.3f} s")
    assert dt < batch + SLACK_S, f"stopped {dt:.3f} s after the click (batch {batch:.3f} s)"
    w.screenshot("widget-background-stopped")

    # "Run all" style: start, then wait() blocks the kernel while the fit runs.  Stop must
    # still end the run (and so the waiting cell) at the next batch.
    restart = run_cell(page, 2)
    restart.wait(timeout=10_000)
    expect(w.header).to_contain_text("running", timeout=30_000)
    waiting = run_cell(page, 3)
    dt = measure_click_to_output(page, w.stop, 3, "waited", timeout=30_000)
    waiting.wait(timeout=10_000)
    text = cell_output_text(page, 3)
    assert_clean(text)
    batch = longest_batch(text)
    print(f"background + wait(): click Stop -> 'waited' in the DOM {dt:.3f} s "
          f"(longest recent batch {batch:.3f} s)")  # fmt: skip
    assert dt < batch + SLACK_S, f"wait() ended {dt:.3f} s after the click (batch {batch:.3f} s)"
    e, b = stopped_at(w.header.inner_text())
    assert text.startswith(f"waited ({e - 1}, {b - 1})\n"), text
