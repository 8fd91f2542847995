"""What a newcomer sees first, in a real JupyterLab at the default width (the file browser
open): the widget before any batch, with data, against a reference run, and after a NaN.

Each test checks one item of the widget and saves a screenshot (`first-look-*.png`) to be
looked at: the overview's colour bar (drawn, high values at the top, labels inside the
widget), cells with no data left unpainted over a hatch, every figure showing the same
batches, one display name per layer, tick labels as decimals or powers of ten, alert marks in
a colour no layer has with a legend line, and a saved run's alerted layers marked.
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from ._lab import (
    cell_output_text,
    make_notebook,
    open_notebook,
    run_cell,
    screenshot,
    wait_for_output,
)
from .test_widget import SETUP, SLEEP_S, WidgetView

pytestmark = pytest.mark.e2e

WIDE = {"width": 1400, "height": 1500}  # the default width; tall enough for the whole widget
N_LAYERS = 5
PAUSE_AT = 40  # the in-step test holds its fit here (one column per batch up to 128)
ALERT_RGB = "rgb(17, 17, 17)"

# A fit that waits at batch PAUSE_AT until the file "release" exists in the notebook's folder
# (or 60 s pass): while it waits nothing new is recorded, so whatever the widget drew last
# must agree in every figure.
PAUSE_CELLS = [
    SETUP
    + """
import os
class PauseAt(Callback):
    "Holds the fit after batch `at` until the file `flag` exists (at most 60 s)."
    def __init__(self, at, flag): self.at, self.flag = at, flag
    def after_batch(self, learn):
        if learn.training and learn.iter == self.at:
            print(f"paused at batch {self.at}", flush=True)
            t0 = time.time()
            while not os.path.exists(self.flag) and time.time() - t0 < 60:
                time.sleep(0.05)
""",
    "w = ActivationWidget(cb)\nw",
    f"""\
learn = TrainLearner(model, dls, F.cross_entropy, lr=0.1,
                     cbs=[cb, SlowDown({SLEEP_S}), PauseAt({PAUSE_AT}, "release")])
learn.fit(1, valid=False)
print("fit returned")
""",
]

REFERENCE_CELLS = [
    SETUP
    + """
before = StoreModuleStatsCB(mods=model.layers, alerts=False)
TrainLearner(model, DataLoaders(synthetic(64 * 60), synthetic(64)), F.cross_entropy, lr=0.1,
             cbs=[before]).fit(1, valid=False)
set_seed(1)
model2 = CNN()
after = StoreModuleStatsCB(mods=model2.layers, alerts=False)
""",
    "wr = ActivationWidget(after, reference=before.stats)\nwr",
    """\
TrainLearner(model2, DataLoaders(synthetic(64 * 20), synthetic(64)), F.cross_entropy, lr=0.1,
             cbs=[after, SlowDown(0.02)]).fit(1, valid=False)
print("fit returned")
""",
]

NAN_CELLS = [
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
""",
    "wd = ActivationWidget(cbd)\nwd",
    """\
TrainLearner(net, DataLoaders(synthetic(64 * 30), synthetic(64)), F.cross_entropy, lr=0.01,
             cbs=[cbd, SlowDown(0.02)]).fit(1)
print("alerts:", sorted({a.layer for a in cbd.alerts}))
cbd.save("diverged.npz")
""",
    "ActivationWidget('diverged.npz')",
]

# window.__first: per figure of a widget, what it shows, in data units read off its own
# x axis (two ticks map pixels to batches):
# - lastLine: the rightmost point of the layer curves (line charts);
# - lastCell: the centre of the rightmost painted heatmap column (overview, heatmaps);
# - opaque / hatch: painted pixels of the heatmap image, hatch lines under it.
FIRST_JS = """() => {
  if (window.__first) return;
  const title = (f) => (f.querySelector('.mainheading') || {}).textContent || '';
  const xTicks = (f) => [...f.querySelectorAll('g.tick')].map((t) => {
    const m = /translate\\(([-\\d.e]+),\\s*([-\\d.e]+)\\)/.exec(t.getAttribute('transform') || '');
    return m && +m[2] === 0 ? { px: +m[1], v: Number(t.textContent) } : null;
  }).filter((t) => t && Number.isFinite(t.v));
  const toData = (f) => {
    const t = xTicks(f);
    if (t.length < 2) return null;
    const [a, b] = [t[0], t[t.length - 1]];
    return (px) => a.v + ((px - a.px) * (b.v - a.v)) / (b.px - a.px);
  };
  const decode = async (img) => {
    const href = img.getAttribute('href')
      || img.getAttributeNS('http://www.w3.org/1999/xlink', 'href') || '';
    if (!href.startsWith('data:image/png')) return null;
    const im = new Image();
    im.src = href;
    await im.decode();
    const c = document.createElement('canvas');
    c.width = im.naturalWidth; c.height = im.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(im, 0, 0);
    return { w: c.width, h: c.height, d: ctx.getImageData(0, 0, c.width, c.height).data };
  };
  const figure = async (f) => {
    const out = { title: title(f), lastLine: null, lastCell: null, opaque: 0, pixels: 0,
                  colors: 0, hatch: 0, imageShown: false };
    const map = toData(f);
    const img = f.querySelector('image.heatmap');
    if (img) {
      out.imageShown = img.getBoundingClientRect().width > 0;
      for (let e = img; e && e !== f; e = e.parentElement)
        if (getComputedStyle(e).display === 'none') out.imageShown = false;
      const p = await decode(img);
      if (p) {
        let right = -1;
        const colors = new Set();
        for (let y = 0; y < p.h; y++) for (let x = 0; x < p.w; x++) {
          const i = 4 * (y * p.w + x);
          if (p.d[i + 3] > 200) {
            out.opaque++; right = Math.max(right, x);
            colors.add((p.d[i] << 16) | (p.d[i + 1] << 8) | p.d[i + 2]);
          }
        }
        out.pixels = p.w * p.h; out.colors = colors.size;
        const x0 = +img.getAttribute('x'), w = +img.getAttribute('width');
        if (map && right >= 0) out.lastCell = map(x0 + ((right + 1) * w) / p.w) - 0.5;
      }
      out.hatch = [...f.querySelectorAll('g.curve path.line')]
        .filter((p) => getComputedStyle(p).stroke === 'rgb(200, 200, 200)').length;
    } else {
      let right = -Infinity;
      for (const g of f.querySelectorAll('g.curve')) {
        const label = (g.querySelector('.curve_label') || {}).textContent || '';
        const p = g.querySelector('path.line');
        if (!p || !label || /^C\\d+$/.test(label)) continue;
        for (const m of (p.getAttribute('d') || '').matchAll(/[ML]\\s*([-\\d.e]+)[ ,]/g))
          right = Math.max(right, +m[1]);
      }
      if (map && right > -Infinity) out.lastLine = map(right);
    }
    return out;
  };
  const figures = async (root) => {
    const out = [];
    for (const f of root.querySelectorAll('.bqplot.figure')) out.push(await figure(f));
    return out;
  };
  const texts = (root, sel) => [...root.querySelectorAll(sel)].map((e) => e.textContent.trim());
  window.__first = { figures, texts };
}"""


class FirstLook(WidgetView):
    """A `WidgetView` with the probes of this module."""

    def figures(self) -> list[dict]:
        self.page.evaluate(FIRST_JS)
        return self.page.evaluate("(r) => window.__first.figures(r)", self.root.element_handle())

    def texts(self, selector: str) -> list[str]:
        self.page.evaluate(FIRST_JS)
        js = "([r, s]) => window.__first.texts(r, s)"
        return self.page.evaluate(js, [self.root.element_handle(), selector])

    def overview(self) -> dict:  # type: ignore[override]
        return next(f for f in self.figures() if f["title"].startswith("All layers"))

    def colour_bar(self) -> dict:
        figs = self.figures()
        i = next(i for i, f in enumerate(figs) if f["title"].startswith("All layers"))
        return figs[i + 1]  # the narrow figure beside it

    def colour_bar_labels(self) -> list[tuple[float, str]]:
        """(y on screen, text) of the colour bar's tick labels, top first."""
        js = """(r) => {
          const figs = [...r.querySelectorAll('.bqplot.figure')];
          const i = figs.findIndex((f) => ((f.querySelector('.mainheading') || {}).textContent
                                            || '').startsWith('All layers'));
          return [...figs[i + 1].querySelectorAll('g.tick text')]
            .filter((t) => t.getBoundingClientRect().height > 0)
            .map((t) => { const b = t.getBoundingClientRect();
                          return [b.y, t.textContent, b.right]; })
            .sort((a, b) => a[0] - b[0]);
        }"""
        return self.page.evaluate(js, self.root.element_handle())

    def steady_figures(self, polls: int = 3, timeout: float = 30.0) -> list[dict]:
        """The figures once what they show stayed the same for `polls` polls in a row."""
        deadline = time.monotonic() + timeout
        last, same = None, 0
        while same < polls:
            figs = self.figures()
            key = [(f["lastLine"], f["lastCell"]) for f in figs]
            same = same + 1 if key == last else 0
            last = key
            assert time.monotonic() < deadline, f"the figures never settled: {figs}"
            self.page.wait_for_timeout(500)  # the polling interval, bounded by the deadline
        return figs

    def shot(self, name: str) -> None:
        self.page.mouse.move(0, 0)
        self.bring_into_view()
        screenshot(self.page, name, locator=self.root)


def value_of(label: str) -> float:
    """A tick label as a number: "0.05", "10⁻³", "2 times 10⁻⁵", "-10⁴"."""
    sup = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")
    m = re.fullmatch(r"(-?[\d.]+)?(?:\u00d7)?(-?)10([⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)", label)
    if not m:
        return float(label)
    mant = float(m[1]) if m[1] else (-1.0 if m[2] else 1.0)
    return mant * 10.0 ** int(m[3].translate(sup))


def open_default_width(lab, page: Page, cells: list[str], name: str) -> FirstLook:
    """Open a test notebook at the default width (file browser open), run its set-up and
    widget cells."""
    page.set_viewport_size(WIDE)
    open_notebook(page, lab, lab.write_notebook(make_notebook(*cells), name))
    run_cell(page, 0, wait=True)
    run_cell(page, 1, wait=True)
    return FirstLook(page, 1)


def assert_tick_labels_read_well(w: FirstLook) -> None:
    """No tick label reads "0.000001" or "1e-06": decimals from 0.001, powers of ten below."""
    labels = [t for t in w.texts("g.tick text") if t]
    assert labels
    bad = [t for t in labels if re.fullmatch(r"-?0\.000\d*|.*\de[-+]?\d+", t)]
    assert not bad, bad


def test_before_the_first_batch_the_widget_says_so(lab, page):
    w = open_default_width(lab, page, PAUSE_CELLS[:2], "first_before.ipynb")
    expect(w.header).to_contain_text("waiting")
    w.bring_into_view()
    expect(w.root.locator(".mainheading", has_text="All layers")).to_have_text(
        "All layers: waiting for the first batch"
    )
    o = w.overview()
    assert o["pixels"] > 0 and o["opaque"] == 0, o  # no cell painted: no data, no colour
    assert o["hatch"] > 50, o  # the hatch that stands for "no data"
    bar = w.colour_bar()
    assert not bar["imageShown"] and not w.colour_bar_labels(), bar  # no range to show yet
    expect(w.root.locator(".actwidget-legend")).to_have_count(0)
    w.shot("first-look-1-before-data")


def test_with_data_every_figure_shows_the_same_batches_with_one_name_per_layer(lab, page):
    w = open_default_width(lab, page, PAUSE_CELLS, "first_with_data.ipynb")
    fit = run_cell(page, 2)
    expect(w.header).to_contain_text("running", timeout=60_000)
    w.bring_into_view()
    wait_for_output(page, 2, f"paused at batch {PAUSE_AT}", timeout=60_000)
    # Held: the widget's last redraw is the last one until the release. Every figure must
    # show the batches it drew (the old overview and heatmaps lagged the lines by up to
    # seconds).
    figs = w.steady_figures()
    lines = [f["lastLine"] for f in figs if f["lastLine"] is not None]
    cells = [f["lastCell"] for f in figs if f["lastCell"] is not None]
    print(f"\nlast batch drawn: lines {lines}, overview and heatmaps {cells}")
    assert len(lines) == 4 and len(cells) == 1 + N_LAYERS, figs
    assert min(lines) >= PAUSE_AT / 2, lines  # the fit got far: redraws kept up
    assert max(lines + cells) - min(lines + cells) <= 0.6, figs  # the same batches everywhere

    # The colour bar: drawn (a gradient, not width 0), labels inside the widget, high on top.
    bar = w.colour_bar()
    assert bar["imageShown"] and bar["opaque"] > 0.9 * bar["pixels"] and bar["colors"] >= 20, bar
    labels = w.colour_bar_labels()
    assert len(labels) >= 2, labels
    root = w.root.bounding_box()
    assert all(right <= root["x"] + root["width"] for _, _, right in labels), (labels, root)
    values = [value_of(text) for _, text, _ in labels]
    assert values == sorted(values, reverse=True), labels  # top to bottom: high to low
    o = w.overview()
    assert o["opaque"] > 0 and o["colors"] >= 5, o

    # One display name per layer: chip, overview row, heatmap title.
    names = [f"layers.{i} (Conv2dWithReLU)" for i in range(4)] + ["layers.4 (Conv2d)"]
    chips = w.texts(".aw-layer .aw-label")
    rows = [t for t in w.texts("g.tick text") if t.startswith("layers.")]
    titles = [f["title"] for f in figs if f["title"].startswith("layers.")]
    assert chips == names and rows == names and titles == names, (chips, rows, titles)
    assert_tick_labels_read_well(w)
    expect(w.header).to_contain_text("running")  # all of it seen while the fit was held
    w.shot("first-look-2-with-data")

    (lab.root_dir / "release").touch()
    fit.wait(timeout=90_000)
    assert "fit returned" in cell_output_text(page, 2)
    expect(w.header).to_contain_text("finished")


def test_with_a_reference_run_the_batches_not_recorded_yet_are_no_data(lab, page):
    w = open_default_width(lab, page, REFERENCE_CELLS, "first_reference.ipynb")
    run_cell(page, 2, wait=True, timeout=120_000)
    expect(w.header).to_contain_text("finished")
    w.bring_into_view()
    # 20 batches recorded, 60 in the reference: the right two thirds of the overview and of
    # every heatmap are unpainted (the hatch shows), the left third painted.
    o = w.wait_overview("o.png && o.colors >= 5")
    assert o["colors"] >= 5
    figs = [f for f in w.figures() if f["lastCell"] is not None]
    assert len(figs) == 1 + N_LAYERS, figs
    for f in figs:
        assert 18.5 <= f["lastCell"] <= 20.5, f  # painted up to batch 19, then no data
        assert 0.2 < f["opaque"] / f["pixels"] < 0.45, f  # about 20 of 60 columns
        assert f["hatch"] > 50, f
    legend = w.root.locator(".actwidget-legend")
    expect(legend).to_contain_text("no batch recorded")
    expect(legend).to_contain_text("reference run")
    assert_tick_labels_read_well(w)
    w.shot("first-look-3-reference")


def test_after_a_nan_alerts_are_marked_in_their_own_colour_live_and_saved(lab, page):
    w = open_default_width(lab, page, NAN_CELLS, "first_nan.ipynb")
    run_cell(page, 2, wait=True, timeout=120_000)
    expect(w.header).to_contain_text("alert")
    w.bring_into_view()
    # Alert rules: one colour, black, that no layer's curve has.
    colours = page.evaluate(
        """([r, alert]) => {
          const rules = [], curves = [];
          for (const p of r.querySelectorAll('g.curve path.line')) {
            const s = getComputedStyle(p).stroke;
            (s === alert ? rules : curves).push(s);
          }
          return { rules: rules.length, curves: [...new Set(curves)] };
        }""",
        [w.root.element_handle(), ALERT_RGB],
    )
    assert colours["rules"] >= 1 and ALERT_RGB not in colours["curves"], colours
    legend = w.root.locator(".actwidget-legend")
    expect(legend).to_contain_text("alert")
    expect(legend).to_contain_text("NaN/inf")
    alerted = w.root.locator(".aw-layer.aw-alert")
    expect(alerted.first).to_be_visible()
    live = sorted(alerted.evaluate_all("(cs) => cs.map((c) => c.dataset.layer)"))
    text = cell_output_text(page, 2)
    assert all(name in text for name in live), (live, text)
    assert_tick_labels_read_well(w)
    w.shot("first-look-4-after-nan")

    # The same run, saved and shown again: its alerted layers are marked as live.
    run_cell(page, 3, wait=True)
    saved = FirstLook(page, 3)
    expect(saved.header).to_contain_text("finished")
    saved.bring_into_view()
    marked = saved.root.locator(".aw-layer.aw-alert")
    expect(marked).to_have_count(len(live))
    assert sorted(marked.evaluate_all("(cs) => cs.map((c) => c.dataset.layer)")) == live
    expect(saved.stop).to_be_hidden()
    saved.shot("first-look-5-saved-run")
