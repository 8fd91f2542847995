"""ActivationWidget in a real JupyterLab: it renders live, the layer picker works during a
blocking fit, Stop stops, a background fit's output lands in the widget, a run that
diverges to NaN is flagged, and 100 layers stay readable and cheap.

The test notebooks use only the public API on small synthetic data; a callback sleeps a
little after every batch so that a run lasts ~30 s unless stopped (it always is).
Timings are measured in the browser (click event -> text in the DOM) and printed (-s).
Every test also fails on any browser console error (see conftest.py).
"""

from __future__ import annotations

import re
import time

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
N_CHARTS = 4  # mean, std, near-zero, gradient std
DATA_CHARTS = 3  # those with a curve for every layer whatever the run (not the gradient)
TOGGLED = "layers.1 (Conv2dWithReLU)"
SLEEP_S = 0.05  # per batch: ~15 batches/s, 4 epochs of 100 batches ~ 30 s
SLACK_S = 1.0  # "within one batch time + 1 s" of the click
STOPPED = re.compile(r"stopped at epoch (\d+), batch (\d+)")
TALL_VIEWPORT = {"width": 1400, "height": 1300}  # the whole widget in one screenshot
RED = "rgb(214, 39, 40)"  # the non-finite bands

SETUP = """\
import time
import torch
from torch import nn
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

def synthetic(n, bs=64, shuffle=False, shape=(1, 28, 28)):
    ds = TensorDataset(torch.randn(n, *shape), torch.randint(0, 10, (n,)))
    return DataLoader(ds, batch_size=bs, shuffle=shuffle)

set_seed(0)
dls = DataLoaders(synthetic(64 * 100, shuffle=True), synthetic(64 * 10))
model = CNN()
# No alert rules here (this CNN at lr 0.1 soon raises a "vanishing" alert, whose layer then
# joins the picker's selection while the test clicks it); test_diverging_run has alerts.
cb = StoreModuleStatsCB(mods=model.layers, alerts=False, config=StatsConfig(grads=True))
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
    # 2: returns at once, the fit runs in a worker thread; its progress bar and epoch table
    # go to the widget's output area
    f"""\
learn2 = TrainLearner(model, dls, F.cross_entropy, lr=0.1,
                      cbs=[cb, SlowDown({SLEEP_S}), clock, ProgressCB(), MetricsCB()])
w2.start(learn2.fit, 4)
print("start returned")
""",
    # 3
    """\
w2.wait()
print("waited", learn2.stopped_at)
print(f"longest recent batch {clock.longest_recent():.3f} s")
""",
    # 4: an unrelated cell run while the background fit prints
    'print("unrelated cell")',
]

# A run that diverges: a layer multiplies by a factor that grows every batch, so the
# activations pass 1e38 and then become inf and NaN; the loss chart (ProgressCB) too.
DIVERGE_CELLS = [
    SETUP
    + """
class Blowup(nn.Module):
    "x times a factor that grows every training batch: 1e38 by batch ~12, then inf/NaN."
    def __init__(self): super().__init__(); self.calls = 0
    def forward(self, x):
        if self.training: self.calls += 1
        return x * 10.0 ** (3.4 * max(self.calls - 1, 0))

set_seed(0)
net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), Blowup(),
                    nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
cbd = StoreModuleStatsCB(mod_filter=lambda m: not list(m.children()))
dls_small = DataLoaders(synthetic(64 * 30), synthetic(64 * 2))
""",
    # 1
    "wd = ActivationWidget(cbd)\nwd",
    # 2: two fits: the second starts at batch 30 ("fit 2"), NaN from its first batch
    f"""\
for _ in range(2):
    TrainLearner(net, dls_small, F.cross_entropy, lr=0.01,
                 cbs=[cbd, SlowDown({SLEEP_S}), ProgressCB(plot=True)]).fit(1)
print("alert kinds:", sorted({{a.kind for a in cbd.alerts}}))
""",
]

DEEP_CELLS = [
    SETUP
    + """
class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc1, self.act = nn.Linear(d, d), nn.ReLU()
        self.fc2, self.norm = nn.Linear(d, d), nn.LayerNorm(d)
    def forward(self, x): return self.norm(x + self.fc2(self.act(self.fc1(x))))

class Deep(nn.Module):
    def __init__(self, n=25, d=16):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, 10)
    def forward(self, x):
        for b in self.blocks: x = b(x)
        return self.head(x)

set_seed(0)
deep = Deep()
cb100 = StoreModuleStatsCB(mods=[m for b in deep.blocks for m in (b.fc1, b.act, b.fc2, b.norm)])
dls_deep = DataLoaders(synthetic(32 * 400, bs=32, shape=(16,)), synthetic(64, shape=(16,)))
""",
    # 1
    "w100 = ActivationWidget(cb100)\nw100",
    # 2
    f"""\
learn100 = TrainLearner(deep, dls_deep, F.cross_entropy, lr=0.05,
                        cbs=[cb100, SlowDown({SLEEP_S}), clock])
learn100.fit(10)
print("fit returned")
print(f"longest recent batch {{clock.longest_recent():.3f}} s")
""",
]


# --- DOM probes -------------------------------------------------------------------------

# Installed as window.__aw.  A figure is a line chart (no heatmap image), a heatmap (one
# layer's |a|) or the overview (title "All layers...").  curves(root, k): per line chart, its
# title and each layer curve (a bqplot curve whose label is a layer name, solid: not the
# dashed reference) with whether it is drawn (a path with >= k segments) and shown (no
# `display: none` up the tree: the picker hides curves with bqplot's curves_subset).
# heatmaps(root): per heatmap its title, whether it is displayed, its image decoded
# (bqplot 0.13 draws a HeatMap as a PNG data URL on <image class="heatmap">); the overview's
# colour bar (a heatmap without a title) is neither.
PROBES_JS = (
    """() => {
  if (window.__aw) return;
  const shown = (el, root) => {
    for (let e = el; e && e !== root; e = e.parentElement) {
      const cs = getComputedStyle(e);
      if (cs.display === 'none' || cs.visibility === 'hidden') return false;
    }
    return true;
  };
  const title = (f) => (f.querySelector('.mainheading') || {}).textContent || '';
  const figures = (root) => [...root.querySelectorAll('.bqplot.figure')];
  const isHeat = (f) => !!f.querySelector('image.heatmap');
  const isOverview = (f) => title(f).startsWith('All layers');
  const segments = (p) => {
    const d = (p && p.getAttribute('d')) || '';
    return /^M\\s*[-\\d.]/.test(d) ? (d.match(/L/g) || []).length : -1;
  };
  const curves = (root, k) => figures(root).filter((f) => !isHeat(f)).map((f) => {
    const cs = [...f.querySelectorAll('g.curve')].map((g) => {
      const p = g.querySelector('path.line');
      const label = (g.querySelector('.curve_label') || {}).textContent || '';
      const style = p ? getComputedStyle(p) : null;
      return { label, drawn: segments(p) >= k, shown: shown(g, root),
               dashed: !!style && style.strokeDasharray !== 'none',
               red: !!style && style.fill === '"""
    + RED
    + """' };
    });
    const layer = cs.filter((c) => c.label && !/^C\\d+$/.test(c.label) && !c.dashed);
    return { title: title(f), lines: layer.length, drawn: layer.filter((c) => c.drawn).length,
             visible: layer.filter((c) => c.drawn && c.shown).length,
             shownLabels: layer.filter((c) => c.drawn && c.shown).map((c) => c.label),
             bands: cs.filter((c) => c.red && c.shown).length };
  });
  const lines = (root, k) => curves(root, k);
  const visible = (root, k) => curves(root, k).reduce((n, c) => n + c.visible, 0);
  const decode = async (f, root) => {
    const el = f.querySelector('image.heatmap');
    const href = el.getAttribute('href')
      || el.getAttributeNS('http://www.w3.org/1999/xlink', 'href') || '';
    const r = { title: title(f), shown: shown(f, root) && f.getBoundingClientRect().width > 0,
                image_shown: shown(el, root), png: href.startsWith('data:image/png'),
                colors: 0, w: 0, h: 0, dots: f.querySelectorAll('path.dot').length,
                bands: [...f.querySelectorAll('g.curve path.line')]
                  .filter((p) => getComputedStyle(p).fill === '"""
    + RED
    + """').length };
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
    return r;
  };
  const heatmaps = async (root) => {
    const out = [];
    for (const f of figures(root).filter((f) => isHeat(f) && !isOverview(f) && title(f)))
      out.push(await decode(f, root));
    return out;
  };
  const overview = async (root) => {
    const f = figures(root).find(isOverview);
    return f ? decode(f, root) : null;
  };
  window.__aw = { lines, curves, visible, heatmaps, overview };
}"""
)


class WidgetView:
    """Locators into one rendered ActivationWidget (in cell `index`'s output)."""

    def __init__(self, page: Page, index: int) -> None:
        self.page, self.index = page, index
        self.out = cell_output_locator(page, index)
        self.root = self.out.locator(".actwidget").first
        self.header = self.root.locator(".widget-html").first
        self.alerts = self.root.locator(".actwidget-alerts")
        self.stop = self.root.get_by_role("button", name="■ Stop")
        self.stop_status = self.root.locator(".actwidget-stop-status")
        self.filter = self.root.locator("input.aw-filter")
        self.all = self.root.locator(".aw-bar .aw-all")
        self.none = self.root.locator(".aw-bar .aw-none")
        self.output = self.root.locator(".widget-output").last  # start()'s output area

    def selected_count(self) -> int:
        """How many layers the picker says are shown ("N of M layers shown")."""
        m = re.match(r"(\d+) of", self.root.locator(".aw-count").inner_text())
        assert m, self.root.locator(".aw-count").inner_text()
        return int(m[1])

    def toggle(self, name: str) -> Locator:
        """The picker's chip of layer `name` (class aw-on when selected)."""
        return self.root.locator(f'.aw-layer[data-layer="{name}"]')

    def _handle(self):
        self.page.evaluate(PROBES_JS)
        return self.root.element_handle()

    def lines(self, min_segments: int = 1) -> list[dict]:
        """Per line chart: layer curves, drawn, visible (and their labels, red bands)."""
        js = "([r, k]) => window.__aw.lines(r, k)"
        return self.page.evaluate(js, [self._handle(), min_segments])

    def heatmaps(self) -> list[dict]:
        return self.page.evaluate("(r) => window.__aw.heatmaps(r)", self._handle())

    def overview(self) -> dict | None:
        return self.page.evaluate("(r) => window.__aw.overview(r)", self._handle())

    def wait_lines(self, predicate_js: str, min_segments: int = 1, timeout: float = 30_000):
        """Wait until `predicate_js` (a JS expression over `cs`, the line charts) holds."""
        try:
            self.page.wait_for_function(
                f"([r, k]) => {{ const cs = window.__aw.lines(r, k); return {predicate_js}; }}",
                arg=[self._handle(), min_segments], timeout=timeout, polling=100,
            )  # fmt: skip
        except Exception as e:
            raise AssertionError(f"{predicate_js} never held: {self.lines(min_segments)}") from e
        return self.lines(min_segments)

    def wait_visible_lines(self, n: int, min_segments: int = 1, timeout: float = 30_000) -> None:
        """Wait until the first DATA_CHARTS charts (mean, std, near-zero fraction) show `n`
        layer curves in all."""
        self.wait_lines(
            f"cs.slice(0, {DATA_CHARTS}).reduce((s, c) => s + c.visible, 0) === {n}",
            min_segments, timeout,
        )  # fmt: skip

    def _poll(self, probe_js: str, predicate_js: str, timeout: float) -> object:
        """Evaluate the async `probe_js` (its value is `v`) until `predicate_js` holds.

        Polled from here: `page.wait_for_function` does not await an async predicate (its
        promise counts as true at once), and decoding a heatmap's image is async."""
        js = f"async (r) => {{ const v = await ({probe_js}); return [v, !!({predicate_js})]; }}"
        deadline = time.monotonic() + timeout / 1000
        while True:
            value, ok = self.page.evaluate(js, self._handle())
            if ok:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{predicate_js} never held within {timeout} ms: {value}")
            self.page.wait_for_timeout(200)  # the polling interval, bounded by the deadline

    def wait_heatmaps(self, predicate_js: str, timeout: float = 30_000) -> list[dict]:
        """Wait until `predicate_js` (a JS expression over `hs`, the heatmaps) holds."""
        pred = f"((hs) => {predicate_js})(v)"
        return self._poll("window.__aw.heatmaps(r)", pred, timeout)  # type: ignore[return-value]

    def wait_overview(self, predicate_js: str, timeout: float = 30_000) -> dict:
        """Wait until `predicate_js` (over `o`, the overview) holds."""
        pred = f"((o) => !!o && ({predicate_js}))(v)"
        return self._poll("window.__aw.overview(r)", pred, timeout)  # type: ignore[return-value]

    def wait_rendered(self, n_layers: int = N_LAYERS, min_segments: int = 5) -> list[dict]:
        """Every layer has a drawn curve in the mean, std and near-zero charts and a
        coloured heatmap; the overview has a row per layer."""
        self.bring_into_view()
        self.wait_visible_lines(n_layers * DATA_CHARTS, min_segments)
        charts = self.lines(min_segments)
        assert [c["lines"] for c in charts[:DATA_CHARTS]] == [n_layers] * DATA_CHARTS, charts
        self.wait_overview("o.shown && o.png && o.colors >= 2")
        return self.wait_heatmaps(
            f"hs.length === {n_layers} && hs.every((h) => h.shown && h.png && h.colors >= 5)"
        )

    def check_toggle_off_and_on(self, shot: str) -> None:
        """Toggle TOGGLED off: its curves and heatmap go; back on: they return."""
        n = N_LAYERS * DATA_CHARTS
        button = self.toggle(TOGGLED)
        expect(button).to_have_count(1)
        expect(button).to_have_class(re.compile(r"\baw-on\b"))
        self.wait_visible_lines(n, timeout=1000)
        button.click()
        expect(button).not_to_have_class(re.compile(r"\baw-on\b"))
        self.wait_visible_lines(n - DATA_CHARTS)  # one curve per chart gone
        hs = self.wait_heatmaps(f"hs.filter((h) => h.shown).length === {N_LAYERS - 1}")
        assert TOGGLED not in [h["title"] for h in hs if h["shown"]], hs
        self.screenshot(shot)
        button.click()
        expect(button).to_have_class(re.compile(r"\baw-on\b"))
        self.wait_visible_lines(n)
        self.wait_heatmaps(f"hs.filter((h) => h.shown && h.colors >= 5).length === {N_LAYERS}")

    def bring_into_view(self) -> None:
        """Scroll the widget to the top of the notebook: bqplot lays a figure out (and
        draws it) only while it intersects the viewport."""
        self.root.evaluate("(e) => e.scrollIntoView({block: 'start'})")

    def screenshot(self, name: str) -> None:
        self.page.mouse.move(0, 0)  # no hover highlight left from the last click
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


def heap_mb(page: Page) -> float:
    """The page's live JS heap after a garbage collection, in MB (Chromium's CDP)."""
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("HeapProfiler.collectGarbage")
        return cdp.send("Runtime.getHeapUsage")["usedSize"] / 1e6
    finally:
        cdp.detach()


# --- tests ------------------------------------------------------------------------------


def test_blocking_fit_renders_live_and_stop_ends_the_cell(lab, page):
    # The server's kernel-interrupt endpoint is blocked: the kernel reads Stop (and the
    # picker) at a batch boundary by itself, as in a front end with no server to ask.
    interrupts: list[str] = []

    def refuse(route) -> None:
        interrupts.append(route.request.url)
        route.abort()

    page.route("**/api/kernels/*/interrupt", refuse)
    w = open_waiting_widget(lab, page, BLOCKING_CELLS, "widget_blocking.ipynb")
    expect(w.stop).to_be_disabled()
    expect(w.stop).to_have_attribute("title", re.compile("Nothing to stop"))
    x0 = w.stop.bounding_box()["x"]

    fit = run_cell(page, 2)  # blocks the kernel ...
    nxt = run_cell(page, 3)  # ... this one is queued behind it
    expect(w.header).to_contain_text("running", timeout=30_000)
    expect(w.stop).to_be_enabled()
    expect(w.stop).to_have_attribute("title", re.compile("Stop training"))
    hs = w.wait_rendered()
    print(f"\nheatmaps: {[(h['title'], h['colors']) for h in hs]}")
    w.wait_lines(f"cs[3].title.startsWith('Gradient') && cs[3].visible === {N_LAYERS}")
    expect(w.header).to_contain_text("running")  # still training: Stop has work to do
    w.screenshot("widget-blocking-rendered")

    # The picker acts during the blocking fit too (in the browser, not via the kernel):
    # a single chip, then "none" and "all".
    button, n = w.toggle(TOGGLED), N_LAYERS * DATA_CHARTS
    button.click()
    w.wait_visible_lines(n - DATA_CHARTS)
    w.wait_heatmaps(f"!hs.some((h) => h.title === {TOGGLED!r} && h.shown)")
    button.click()
    w.wait_visible_lines(n)
    w.wait_heatmaps("hs.every((h) => h.shown)")
    w.none.click()
    w.wait_visible_lines(0)
    w.wait_heatmaps("hs.every((h) => !h.shown)")
    w.all.click()
    w.wait_visible_lines(n)
    w.wait_heatmaps(f"hs.filter((h) => h.shown).length === {N_LAYERS}")
    expect(w.header).to_contain_text("running")  # all that happened while training ran
    assert abs(w.stop.bounding_box()["x"] - x0) < 1  # Stop never moves

    dt = measure_click_to_output(page, w.stop, 2, "fit returned", timeout=30_000)
    fit.wait(timeout=10_000)
    fit_text = cell_output_text(page, 2)
    batch = longest_batch(fit_text)
    print(f"blocking: click Stop -> 'fit returned' in the DOM {dt:.3f} s "
          f"(longest recent batch {batch:.3f} s)")  # fmt: skip
    assert_clean(fit_text)
    assert "fit returned\n" in fit_text, fit_text  # after any alert the recorder logged
    assert dt < batch + SLACK_S, f"fit cell ended {dt:.3f} s after the click (batch {batch:.3f} s)"

    expect(w.header).to_contain_text(STOPPED)
    expect(w.stop_status).to_have_text("Stopped.")  # acked: no interrupt, no hint
    assert interrupts == [], interrupts
    e, b = stopped_at(w.header.inner_text())
    expect(w.stop).to_be_disabled()
    expect(w.stop).to_have_attribute("title", re.compile("Nothing to stop"))
    nxt.wait(timeout=10_000)
    expect(cell_output_locator(page, 3)).to_contain_text("next cell ran")
    assert cell_output_text(page, 3).strip() == f"next cell ran ({e - 1}, {b - 1})"
    wait_kernel_idle(page)
    # The queued picker clicks reached the kernel: all layers still shown, nothing blanked.
    w.wait_visible_lines(n)
    w.wait_heatmaps(f"hs.filter((h) => h.shown && h.colors >= 5).length === {N_LAYERS}")
    assert abs(w.stop.bounding_box()["x"] - x0) < 1
    w.screenshot("widget-blocking-stopped")

    # The kernel is free again: the picker acts on the stopped run's charts.
    w.check_toggle_off_and_on("widget-blocking-toggled-off")


def test_background_fit_output_in_the_widget_toggles_live_and_stop(lab, page):
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

    # The fit's progress bar goes to the widget's output area, not to the last cell run.
    other = run_cell(page, 4)
    other.wait(timeout=10_000)
    expect(w.output).to_contain_text(re.compile(r"epoch \d/4 train · batch"), timeout=30_000)
    assert cell_output_text(page, 4).strip() == "unrelated cell"

    w.wait_rendered()
    w.screenshot("widget-background-rendered")
    w.check_toggle_off_and_on("widget-background-toggled-off")
    expect(w.header).to_contain_text("running")  # the toggles did not take the whole run

    # Stop (after the first epoch's table row): the kernel is idle, so the message is
    # acked at once; no interrupt needed.
    expect(w.header).to_contain_text("epoch 2/4", timeout=60_000)
    expect(w.output.locator("table.dataframe")).to_have_count(1)
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
    # The epoch table (MetricsCB, updated in place) is in the widget; no other cell got any.
    expect(w.output.locator("table.dataframe")).to_have_count(1)
    assert cell_output_text(page, 4).strip() == "unrelated cell"
    assert "epoch" not in cell_output_locator(page, 4).inner_text()
    assert "epoch" not in cell_output_locator(page, 3).inner_text()
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


def test_a_run_diverging_to_nan_is_flagged_everywhere(lab, page):
    w = open_waiting_widget(lab, page, DIVERGE_CELLS, "widget_diverge.ipynb")
    assert w.stop.is_visible()  # a live source: Stop is there (disabled until a fit)
    fit = run_cell(page, 2)
    expect(w.header).to_contain_text("alert", timeout=60_000)
    fit.wait(timeout=120_000)
    text = cell_output_text(page, 2)
    assert "'nonfinite'" in text, text
    wait_kernel_idle(page)
    w.bring_into_view()
    # The header warns and the alert list names the layer, the batch and the fix.
    expect(w.header).to_contain_text("⚠")
    expect(w.alerts).to_contain_text("nonfinite")
    expect(w.alerts).to_contain_text("lower the learning rate")
    w.alerts.locator("summary").click()
    expect(w.alerts.locator("table.actwidget-alert-list")).to_be_visible()
    expect(w.header).to_contain_text("fit 2")
    # Red bands over the non-finite batches on every line chart, heatmap and the overview;
    # a diamond at each alert on the overview; dashed "fit 2" rules.
    charts = w.wait_lines("cs.every((c) => c.bands >= 1)")
    assert all(c["bands"] >= 1 for c in charts), charts
    hs = w.wait_heatmaps("hs.length >= 1 && hs.some((h) => h.bands >= 1)")
    print(f"\nheatmaps: {[(h['title'], h['bands']) for h in hs]}")
    o = w.wait_overview("o.bands >= 1 && o.dots >= 1")
    print(f"overview: {o}")
    expect(w.root.locator("text.label", has_text="fit 2").first).to_be_attached()
    # The loss chart of ProgressCB: not flattened, its NaN losses in red.
    loss = cell_output_locator(page, 2).locator(".bqplot.figure").last
    red = loss.locator("g.curve path.line").evaluate_all(
        f"(ps) => ps.filter((p) => getComputedStyle(p).fill === '{RED}').length"
    )
    assert red >= 1
    w.screenshot("widget-diverged")
    screenshot(page, "widget-diverged-loss", locator=loss)


def test_100_layers_overview_filter_stop_and_a_flat_heap(lab, page):
    w = open_waiting_widget(lab, page, DEEP_CELLS, "widget_deep.ipynb")
    heap = [heap_mb(page)]
    fit = run_cell(page, 2)
    expect(w.header).to_contain_text("running", timeout=60_000)
    w.bring_into_view()
    o = w.wait_overview("o.shown && o.png && o.colors >= 10", timeout=60_000)
    print(f"\noverview: {o}")
    # Five layers spread over the depth (and any with an alert) are drawn by default; the
    # picker lists all 100.
    shown = w.selected_count()
    assert 5 <= shown < 20, shown
    w.wait_lines("cs.slice(0, 3).every((c) => c.visible >= 5)", min_segments=3)
    # A glob filter, then "all": the matches join the selection (in the browser at once).
    w.filter.fill("blocks.*.fc1")
    expect(w.root.locator(".aw-count")).to_contain_text("25 match")
    expect(w.toggle("blocks.3.act (ReLU)")).to_be_hidden()
    w.all.click()
    expect(w.root.locator(".aw-count")).to_contain_text(re.compile(r"(29|[3-4]\d) of 100"))
    w.screenshot("widget-100-layers-filtered")
    for _ in range(8):  # the JS heap over ~40 s of live updates, after a GC each time
        page.wait_for_timeout(5000)
        heap.append(heap_mb(page))
    print(f"JS heap MB over the run: {[round(h, 1) for h in heap]}")
    expect(w.header).to_contain_text("running")
    dt = measure_click_to_output(page, w.stop, 2, "fit returned", timeout=30_000)
    fit.wait(timeout=30_000)
    fit_text = cell_output_text(page, 2)
    batch = longest_batch(fit_text)
    print(f"100 layers: click Stop -> 'fit returned' {dt:.3f} s (longest batch {batch:.3f} s)")
    assert dt < batch + SLACK_S, f"fit cell ended {dt:.3f} s after the click (batch {batch:.3f} s)"
    # The kernel got the selection: the line charts draw every selected layer (the 25
    # matches, the first five, any with an alert), the fc1 layers among them.
    wait_kernel_idle(page)
    n = w.selected_count()
    charts = w.wait_lines(f"cs.slice(0, 3).every((c) => c.visible === {n})", min_segments=3)
    fc1 = [x for x in charts[0]["shownLabels"] if ".fc1 " in x]
    assert len(fc1) == 25 and n >= 29, charts[0]["shownLabels"]
    w.screenshot("widget-100-layers-stopped")
    # Flat: the retained heap (the lowest of a few samples: a sample may catch a redraw's
    # garbage in flight) does not grow from the first samples to the last.
    assert min(heap[-3:]) < min(heap[1:4]) * 1.2 + 5, heap
