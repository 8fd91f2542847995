"""A Lightning fit in the notebook cell's main thread (blocking), the widget live, Stop ends it.

Stop finds the kernel busy, so the front end interrupts it: the adapter turns that first
SIGINT into a stop request, Lightning stops at the next batch boundary through
`trainer.should_stop` and the cell returns normally, without a traceback.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from ._lab import (
    cell_output_locator,
    cell_output_text,
    measure_click_to_output,
    run_cell,
    wait_kernel_idle,
)
from .test_widget import (
    SLACK_S,
    STOPPED,
    WidgetView,
    assert_clean,
    longest_batch,
    open_waiting_widget,
    stopped_at,
)

pytestmark = pytest.mark.e2e

N_LAYERS = 5  # CNN().layers
SLEEP_S = 0.05  # per batch: a run of 4 epochs of 100 batches lasts ~30 s unless stopped

SETUP = """\
import logging, time, warnings
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
import lightning.pytorch as pl
from actwidget import CNN, ActivationWidget, StatsConfig
from actwidget.integrations.lightning import StatsCallback

torch.set_num_threads(1)  # 2 shared cores: leave one to the browser and the server
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no tips or device info
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*", FutureWarning)  # lightning 2.6 on torch 2.14

class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = CNN()
    def training_step(self, batch, i):
        x, y = batch
        return F.cross_entropy(self.model(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

class SlowDown(pl.Callback):
    "Sleeps after each batch, so that a run lasts long enough to click Stop."
    def __init__(self, secs): self.secs = secs
    def on_train_batch_end(self, *args): time.sleep(self.secs)

class BatchClock(pl.Callback):
    "Wall-clock time at the end of each batch."
    def on_train_start(self, *args): self.times = [time.perf_counter()]
    def on_train_batch_end(self, *args): self.times.append(time.perf_counter())
    def longest_recent(self, n=10):
        t = self.times[-n - 1:]
        return max(b - a for a, b in zip(t, t[1:])) if len(t) > 1 else float("nan")

torch.manual_seed(0)
ds = TensorDataset(torch.randn(64 * 100, 1, 28, 28), torch.randint(0, 10, (64 * 100,)))
dl = DataLoader(ds, batch_size=64, shuffle=True)
module = Classifier()
# output: only the cell's prints; gradients too, so that every chart has a line per layer
cb = StatsCallback(mods=module.model.layers, alerts=False, config=StatsConfig(grads=True))
clock = BatchClock()
print("setup done")
"""

CELLS = [
    SETUP,
    # 1
    "w = ActivationWidget(cb)\nw",
    # 2: blocks the kernel until the fit ends
    f"""\
trainer = pl.Trainer(
    max_epochs=4, callbacks=[cb, SlowDown({SLEEP_S}), clock], accelerator="cpu", devices=1,
    logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False, default_root_dir="lightning_e2e",
)
trainer.fit(module, dl)
print("fit returned")
print(f"longest recent batch {{clock.longest_recent():.3f}} s")
""",
    # 3
    'print("next cell ran", trainer.global_step, cb.status.message)',
]


def wait_live(w: WidgetView, min_segments: int = 5) -> None:
    """Every line chart draws every layer with `min_segments` segments or more, and every
    layer has a heatmap image: the charts follow the fit while the cell blocks."""
    w.bring_into_view()
    w._handle()  # installs the DOM probes
    w.page.wait_for_function(
        """([r, n, k]) => { const cs = window.__aw.lines(r, k);
             return cs.length >= 3 && cs.every((c) => c.visible === n); }""",
        arg=[w.root.element_handle(), N_LAYERS, min_segments], timeout=30_000, polling=100,
    )  # fmt: skip
    w.wait_heatmaps(f"hs.length === {N_LAYERS} && hs.every((h) => h.shown && h.png)")


def test_blocking_lightning_fit_is_live_and_stop_ends_the_cell(lab, page):
    w = open_waiting_widget(lab, page, CELLS, "lightning_blocking.ipynb")
    expect(w.stop).to_be_disabled()

    fit = run_cell(page, 2)  # blocks the kernel ...
    nxt = run_cell(page, 3)  # ... this one is queued behind it
    expect(w.header).to_contain_text("running", timeout=30_000)
    expect(w.stop).to_be_enabled()
    wait_live(w)
    expect(w.header).to_contain_text("running")
    w.screenshot("lightning-blocking-rendered")

    dt = measure_click_to_output(page, w.stop, 2, "fit returned", timeout=30_000)
    fit.wait(timeout=10_000)
    text = cell_output_text(page, 2)
    batch = longest_batch(text)
    print(f"\nlightning: click Stop -> 'fit returned' in the DOM {dt:.3f} s "
          f"(longest recent batch {batch:.3f} s)")  # fmt: skip
    assert_clean(text)
    assert text.startswith("fit returned\n"), text  # nothing from Lightning before it
    assert dt < batch + SLACK_S, f"fit cell ended {dt:.3f} s after the click (batch {batch:.3f} s)"

    expect(w.header).to_contain_text(STOPPED)
    e, b = stopped_at(w.header.inner_text())
    expect(w.stop).to_be_disabled()
    nxt.wait(timeout=10_000)
    expect(cell_output_locator(page, 3)).to_contain_text("next cell ran")
    steps = (e - 1) * 100 + b  # 100 batches per epoch
    expected = f"next cell ran {steps} at epoch {e}, batch {b}"
    assert cell_output_text(page, 3).strip() == expected
    wait_kernel_idle(page)
    w.screenshot("lightning-blocking-stopped")
