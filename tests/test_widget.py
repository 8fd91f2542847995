"""ActivationWidget without a browser: what it draws after real fits, what it sends, Stop,
background runs, selection, alerts, fits, a reference run, and failures that must not stop
training. The parts are tested in test_widget_parts.py; this file tests the whole."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Every, click_stop, fit, tiny_dls
from conftest import tiny_cnn as tiny_model
from ipywidgets.widgets.widget import _remove_buffers
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actwidget import ActivationWidget, StoreModuleStatsCB, TrainLearner
from actwidget.data import DataLoaders
from actwidget.recorder import StatsHooks
from actwidget.stats import HIST, Alert, Field, RunStats, StatsConfig
from actwidget.widget._colors import BLUE_RED, NO_DATA, VIRIDIS
from actwidget.widget._layers import layer_colors
from actwidget.widget._marks import ALERT
from actwidget.widget._names import display_name
from actwidget.widget._overview import METRICS


# --- helpers ------------------------------------------------------------------------------
def settled(w: ActivationWidget, timeout: float = 10.0) -> ActivationWidget:
    """`w` once no redraw is asked for or in flight: a fit's final redraw may run in a
    thread of its own (a slow machine), and a request made meanwhile is drawn after it."""
    deadline = time.monotonic() + timeout
    while w._request is not None or w._owner is not None:
        assert time.monotonic() < deadline, "a redraw never ended"
        time.sleep(0.005)  # polling a condition, bounded by the deadline
    return w


def curves(w: ActivationWidget, key: str) -> dict[str, np.ndarray]:
    """Layer name -> y values drawn in line chart `key` (once the redraws settled)."""
    lines = settled(w).charts.charts[key].lines
    y = np.atleast_2d(lines.y) if len(lines.labels) else np.zeros((0, 0))  # bqplot squeezes 1
    return dict(zip(lines.labels, y, strict=True))


def synthetic(layers: int = 3, batches: int = 60, names: list[str] | None = None) -> RunStats:
    """Stats of `layers` layers over `batches` one-batch columns, mean ramps, std 1."""
    s = RunStats()
    names = names or [f"blocks.{i // 4}.m{i % 4} (Linear)" for i in range(layers)]
    for i, name in enumerate(names):
        rows = np.zeros((batches, s.config.width))
        rows[:, Field.BATCHES] = 1
        steps = np.arange(batches)
        rows[:, Field.BATCH_SUM] = rows[:, Field.BATCH_FIRST] = rows[:, Field.BATCH_LAST] = steps
        rows[:, Field.NUMEL] = rows[:, Field.COUNT] = 100
        rows[:, Field.MEAN] = np.linspace(-1, 1, batches) * (i + 1)
        rows[:, Field.M2] = 99.0
        rows[:, Field.G_COUNT] = 100
        rows[:, Field.G_M2] = 0.99
        rows[:, HIST + 20] = 100
        s.append(name, rows)
    return s


class CountingComm:
    """Stands in for a kernel comm: counts the bytes of every message (JSON + buffers)."""

    kernel = object()
    sent = 0

    def __init__(self, **kwargs):
        self.comm_id = uuid.uuid4().hex

    def send(self, data=None, metadata=None, buffers=None):
        size = len(json.dumps(data, default=str))
        CountingComm.sent += size + sum(memoryview(b).nbytes for b in buffers or [])

    def on_msg(self, callback):
        pass

    def close(self, *args, **kwargs):
        pass


@pytest.fixture
def comm(monkeypatch):
    """Widgets created in the test send to a CountingComm."""
    import ipywidgets.widgets.widget as widget_module

    monkeypatch.setattr(widget_module.comm, "create_comm", lambda **kw: CountingComm(**kw))
    CountingComm.sent = 0
    return CountingComm


def sent_floats(w: ActivationWidget) -> list[tuple[str, np.ndarray]]:
    """Every float array and float trait of every figure mark, scale and axis."""
    out = []
    figures = [
        *w.charts.figures.values(),
        w.overview.figure,
        *[m.figure for m in w.heatmaps.maps.values()],
    ]
    for fig in figures:
        items = [*fig.marks, *fig.axes, *(a.scale for a in fig.axes)]
        items += [s for m in fig.marks for s in m.scales.values()]
        for obj in items:
            for name in obj.keys:
                v = getattr(obj, name)
                if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                    out.append((f"{type(obj).__name__}.{name}", v))
                elif isinstance(v, float):
                    out.append((f"{type(obj).__name__}.{name}", np.array([v])))
    return out


# --- a live fit ---------------------------------------------------------------------------
def test_widget_follows_a_fit_and_ends_finished():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1], model[3]], config=StatsConfig(grads=True))
    w = ActivationWidget(cb, interval=0)
    assert w.state == "waiting" and "waiting" in w.header.value
    seen = []
    fit(model, [cb, Every(lambda learn: seen.append((w.state, w.stop_button.running)))])
    assert set(seen) == {("running", True)}
    assert w.state == "finished" and not w.stop_button.running
    assert w.stop_button.fit_id == cb.status.fit_id
    assert w.layers.names == ["1 (ReLU)", "3 (ReLU)"] == w.visible_layers
    stats = cb.stats
    for key in ("mean", "std", "near_zero", "grad_std"):
        drawn = curves(w, key)
        assert list(drawn) == ["1 (ReLU)", "3 (ReLU)"]
        np.testing.assert_allclose(
            drawn["1 (ReLU)"], getattr(stats["1 (ReLU)"], key).astype(np.float32), rtol=1e-6
        )
    lines = w.charts.charts["mean"].lines
    assert lines.y.dtype == np.float32 and lines.x.dtype == np.float32
    assert w.heatmaps.shown == ["1 (ReLU)", "3 (ReLU)"]
    assert w.heatmaps.maps["1 (ReLU)"].heat.color.shape == (34, 8)  # bins x batches
    assert w.overview.heat.color.shape == (2, 8)  # layers x batches
    assert "epoch 1/1" in w.header.value and "finished" in w.header.value
    assert w.charts.figures["grad_std"].title == "Gradient std"


def test_every_redraw_shows_the_same_batches_in_every_figure(monkeypatch):
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1], model[3]])
    w = ActivationWidget(cb, interval=0)
    seen, draw = [], w.painter.draw

    def spy(stats):
        draw(stats)
        ov, mean = w.overview, w.charts.charts["mean"].lines
        last_x = float(np.max(mean.x)) if len(mean.labels) else -1.0
        overview_cols = np.flatnonzero((ov.heat.color >= ov.color.min).any(axis=0))
        heat = w.heatmaps.maps["1 (ReLU)"].heat
        heat_cols = np.flatnonzero((heat.color >= heat.scales["color"].min).any(axis=0))
        seen.append(
            (stats.batches, last_x, overview_cols.max(initial=-1), heat_cols.max(initial=-1))
        )

    monkeypatch.setattr(w.painter, "draw", spy)
    fit(model, [cb])
    assert len(seen) >= 3
    for batches, *last in seen:  # one column per batch in this short run
        assert last == [batches - 1] * 3, seen


def test_the_gradient_chart_says_when_gradients_are_not_recorded():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])  # the default: no gradient stats
    w = ActivationWidget(cb, interval=0)
    fit(model, [cb])
    grad = w.charts.figures["grad_std"]
    assert grad not in w.charts.grid.children  # a note instead of a chart
    assert w.charts.figures["mean"] in w.charts.grid.children
    assert "Gradient std: not recorded (StatsConfig(grads=True)" in w.charts.off_note.value
    assert w.charts.off_note.layout.display is None
    assert w.charts.figures["mean"].title == "Mean"
    cb = StoreModuleStatsCB(mods=[model[1]], config=StatsConfig(grads=True))
    w = ActivationWidget(cb, interval=0)
    fit(model, [cb])
    assert w.charts.figures["grad_std"] in w.charts.grid.children and not w.charts.off_note.value


def test_arrays_cross_as_binary_buffers_not_lists():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)
    fit(model, [cb])
    line = w.charts.charts["mean"].lines
    state, buffer_paths, buffers = _remove_buffers(line.get_state())
    assert ["y", "value"] in buffer_paths and ["x", "value"] in buffer_paths
    assert not isinstance(state.get("y"), list)
    assert sum(memoryview(b).nbytes for b in buffers) == 2 * 8 * 4  # x and y: 8 float32 each
    heat = w.overview.heat
    _, paths, _ = _remove_buffers(heat.get_state())
    assert ["color", "value"] in paths


def test_redraws_are_throttled_by_elapsed_time():
    model = tiny_model()
    slow, fast = StoreModuleStatsCB(mods=[model[1]]), StoreModuleStatsCB(mods=[model[3]])
    never = ActivationWidget(slow, interval=3600)
    always = ActivationWidget(fast, interval=0)
    fit(model, [slow, fast])  # 8 train + 8 valid batches
    assert never.redraws <= 2  # the layers' first appearance and the end of the fit
    assert always.redraws >= 8  # every batch that added data


def test_a_new_widget_on_the_same_source_replaces_the_old_one():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    widgets = [ActivationWidget(cb, interval=0) for _ in range(5)]  # a cell run five times
    fit(model, [cb])
    assert [w.redraws for w in widgets[:-1]] == [0] * 4 and widgets[-1].redraws > 1
    assert len(cb.recorder._sinks.listeners) == 1
    widgets[-1].close()
    assert len(cb.recorder._sinks.listeners) == 0
    before = widgets[-1].redraws
    fit(model, [cb])  # a closed widget draws nothing more
    assert widgets[-1].redraws == before


def test_close_waits_for_a_draw_in_flight(monkeypatch, caplog):
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    fit(model, [cb])
    w = ActivationWidget(cb, interval=0)
    order, started, release = [], threading.Event(), threading.Event()
    draw = w.painter.draw

    def slow_draw(*args):  # e.g. the final redraw, on its own thread, as close() is called
        started.set()
        assert release.wait(10)
        out = draw(*args)
        order.append("draw ended")
        return out

    monkeypatch.setattr(w.painter, "draw", slow_draw)
    close_parts = w._close_parts
    monkeypatch.setattr(w, "_close_parts", lambda: (order.append("parts closed"), close_parts()))
    t = threading.Thread(target=w._final_redraw)
    t.start()
    assert started.wait(10)
    threading.Timer(0.1, release.set).start()
    w.close()  # waits for the draw, then closes what it drew into
    t.join(10)
    assert order == ["draw ended", "parts closed"]
    assert not any("failed to draw" in r.getMessage() for r in caplog.records)
    w._final_redraw()  # a closed widget draws nothing
    assert order == ["draw ended", "parts closed"]


def test_a_drawing_error_never_stops_training(monkeypatch, caplog):
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)

    def broken(*args):
        raise ValueError("bqplot exploded")

    monkeypatch.setattr(w.charts, "draw", broken)
    learn = fit(model, [cb], epochs=2)
    assert learn.error is None and cb.batches == 16
    assert w.state == "finished" and "bqplot exploded" in w.header.value
    assert any("failed to draw" in r.getMessage() for r in caplog.records)


def test_a_failing_selection_redraw_is_shown_not_raised(monkeypatch, caplog):
    w = ActivationWidget(synthetic(3))

    def broken(*args):
        raise RuntimeError("heatmap broke")

    monkeypatch.setattr(w.heatmaps, "show", broken)
    w.show_layers(["blocks.0.m0 (Linear)"])  # the browser's click: must not raise
    assert "heatmap broke" in w.header.value


# --- bounds, extremes ---------------------------------------------------------------------
def test_columns_sent_are_bounded_and_merged_exactly():
    stats = RunStats(StatsConfig(capacity=4096))
    rows = np.zeros((3000, stats.config.width))
    rows[:, Field.BATCHES] = 1  # one batch each
    rows[:, Field.BATCH_SUM] = rows[:, Field.BATCH_FIRST] = rows[:, Field.BATCH_LAST] = np.arange(
        3000
    )
    rows[:, Field.NUMEL] = rows[:, Field.COUNT] = 100
    rows[:, Field.MEAN] = np.linspace(-1, 1, 3000)
    rows[:, HIST] = 100
    stats.append("a", rows)
    w = ActivationWidget(stats, max_columns=256)
    y = curves(w, "mean")["a"]
    assert len(y) <= 256
    per_bin = -(-3000 // len(y))
    assert per_bin == 16  # a power of two: bins merge whole columns
    expected = [rows[i : i + 16, Field.MEAN].mean() for i in range(0, 3000, 16)]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert w.heatmaps.maps["a"].heat.color.shape[1] <= 256
    assert w.overview.heat.color.shape[1] <= 256


def test_nan_inf_and_huge_values_reach_the_browser_finite_and_marked():
    s = synthetic(3, 80)
    for name in s:
        c = s[name].columns
        c[40:50, Field.NONFINITE] = 7  # NaN/inf seen
        c[40:45, Field.MEAN] = 1e38
        c[45:50, Field.MEAN] = np.inf
        c[50:60, Field.M2] = 1e300  # std ~ 1e149: far beyond float32
        c[60:, Field.COUNT] = 0  # nothing finite: no mean, no std
    w = ActivationWidget(s)
    for what, values in sent_floats(w):
        if what in ("Lines.y", "Lines.x"):  # NaN: a gap; never inf, never beyond 1e30
            assert not np.isinf(values).any(), what
            assert np.nanmax(np.abs(values), initial=0) <= 1e30, what
        else:
            assert np.isfinite(values).all(), what
    for c in w.charts.charts.values():  # curves end on a finite point (bqplot labels it)
        for y in curves(w, c.series.key).values():
            assert np.isfinite(y[-1])
    # The non-finite batches are covered by a red band on every chart and heatmap.
    shown = [c for c in w.charts.charts.values() if c.figure in w.charts.grid.children]
    for overlay in [c.overlay for c in shown] + [m.overlay for m in w.heatmaps.maps.values()]:
        xs = overlay.bands.x
        assert len(xs) >= 1 and xs.min() <= 39.5 and xs.max() >= 49.5
    assert len(w.overview.overlay.bands.x) == 3  # one band per layer row
    # The batches with NaN/inf are banded, not drawn: their means (1e38, inf) neither
    # flatten the mean chart nor mark it off scale.
    mean = w.charts.charts["mean"]
    assert mean.y.max < 10 and "off scale" not in mean.figure.title
    assert np.isnan(curves(w, "mean")[next(iter(s))][40:50]).all()
    # A finite spike (std ~1e149 in batches 50-59) does not flatten the std chart either.
    std = w.charts.charts["std"]
    assert std.y.max < 1e3 and "off scale" in std.figure.title and len(std.above.x) >= 1


def test_std_is_on_a_log_axis_by_default_and_linear_on_request():
    import bqplot as bq

    assert isinstance(ActivationWidget(synthetic()).charts.charts["std"].y, bq.LogScale)
    linear = ActivationWidget(synthetic(), std_scale="linear")
    assert isinstance(linear.charts.charts["std"].y, bq.LinearScale)
    assert isinstance(linear.charts.charts["grad_std"].y, bq.LinearScale)
    with pytest.raises(ValueError, match="std_scale"):
        ActivationWidget(synthetic(), std_scale="symlog")


# --- selection ----------------------------------------------------------------------------
def test_selection_limits_lines_and_heatmaps_and_the_y_range():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1], model[3]])
    w = ActivationWidget(cb, interval=0)
    fit(model, [cb])
    w.show_layers(["3 (ReLU)"])
    assert w.visible_layers == ["3 (ReLU)"]
    assert list(curves(w, "mean")) == ["3 (ReLU)"]
    assert w.heatmaps.shown == ["3 (ReLU)"]
    assert [f.title for f in w.heatmaps.box.children] == ["3 (ReLU)"]  # no empty frame
    scale = w.charts.charts["mean"].y
    mean_b = cb.stats["3 (ReLU)"].mean
    assert scale.min <= mean_b.min() and scale.max >= mean_b.max()
    w.show_layers([])
    assert w.visible_layers == [] and list(curves(w, "mean")) == []
    assert w.heatmaps.box.children == ()
    w.show_layers(None)
    assert len(w.visible_layers) == 2 and len(w.heatmaps.box.children) == 2
    w.show_layers("1 (")  # a filter pattern: substring ...
    assert w.visible_layers == ["1 (ReLU)"]
    w.show_layers("*(relu)")  # ... or glob
    assert len(w.visible_layers) == 2
    with pytest.raises(KeyError, match="unknown layers"):
        w.show_layers(["nope"])


def test_the_browser_selection_drives_the_redraw():
    w = ActivationWidget(synthetic(3))
    name = "blocks.0.m1 (Linear)"
    # What the picker's front end does on a click: set `selected`, synced to the kernel.
    w.layers.picker.set_state({"selected": [name]})
    assert w.visible_layers == [name] and list(curves(w, "std")) == [name]
    # The marks and figures the picker hides in the browser are bound to it.
    assert set(w.layers.picker.marks) == set(w.charts.line_marks)
    assert list(w.layers.picker.figures) == [w.heatmaps.maps[name].figure]


def test_100_layers_overview_default_selection_and_filter():
    s = synthetic(100, 40)
    names = list(s)
    w = ActivationWidget(s)
    assert w.overview.heat.color.shape == (100, 40)
    assert w.overview.rows == 100
    labels = w.overview.y_axis.tick_labels
    assert labels["0"] == "blocks.0.m0 (Linear)" and 5 <= len(labels) <= 40  # display name
    assert w.visible_layers == [names[i] for i in (0, 25, 50, 74, 99)]  # spread over depth
    assert len(w.heatmaps.shown) == 5
    w.show_layers("blocks.*.m1")
    assert w.visible_layers == [n for n in names if ".m1 " in n] and len(w.visible_layers) == 25
    assert len(curves(w, "mean")) == 25
    assert len(w.heatmaps.shown) == 8  # max_heatmaps, with a note saying so
    assert "8 of 25" in w.heatmaps.note.value and w.heatmaps.note.layout.display == ""


def test_bytes_per_redraw_follow_the_selection_and_the_overview_is_bounded(comm):
    sizes, cells = {}, 0
    for n_layers in (5, 100):
        s = synthetic(n_layers, 2000)
        w = ActivationWidget(s)
        w.show_layers([list(s)[i] for i in range(5)])
        src = w.source._stats
        CountingComm.sent = 0
        for step in range(3):  # three more batches, three redraws of every figure
            for name in list(src):
                row = src[name].columns[-1:].copy()
                row[:, Field.BATCH_SUM] = row[:, Field.BATCH_FIRST] = row[:, Field.BATCH_LAST] = (
                    2000 + step
                )
                src.append(name, row)
            w._redraw()
        sizes[n_layers] = CountingComm.sent / 3
        cells = w.overview.cells
        w.close()
    # Lines and heatmaps: the 5 selected layers either way; the overview: every layer, but
    # at most `cells` float32 cells.
    assert sizes[100] < sizes[5] + 4 * cells + 8 * 1024, sizes
    # 4 charts x (5 layers + x) x <= 512 float32, 5 heatmaps x 34 bins x 128, the overview
    assert sizes[5] < (4 * 6 * 512 + 5 * 34 * 128 + 5 * 512) * 4 + 8 * 1024, sizes


# --- alerts, fits, reference --------------------------------------------------------------
class Blowup(nn.Module):
    """Multiplies by a factor that grows every call: 1e38 after a few batches, then inf/NaN."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * (1e30 ** (self.calls // 4)) if self.calls >= 4 else x


def test_an_alert_warns_in_the_header_lists_marks_and_selects_the_layer():
    torch.manual_seed(0)
    layers = [nn.Linear(6, 6) for _ in range(6)]
    blow = Blowup()
    model = nn.Sequential(layers[0], blow, *layers[1:])
    hooks = StatsHooks(model=model, mod_filter=lambda m: isinstance(m, (nn.Linear, Blowup)))
    w = ActivationWidget(hooks, interval=0, initial_layers=2)
    bad = "1 (Blowup)"
    assert bad not in w.visible_layers  # 2 of 7, spread over the depth
    with hooks:
        for _ in range(12):
            with torch.no_grad():
                model(torch.randn(4, 6))
            hooks.end_batch()
    alerts = hooks.alerts
    kinds = [a.kind for a in alerts]
    assert kinds[0] == "exploding" and "nonfinite" in kinds  # 1e30x, then inf
    origin = next(a for a in alerts if a.origin)
    assert origin.layer == bad
    assert "⚠" in w.header.value and "alert" in w.header.value
    html = w.head.alerts.value
    bar = html.split("</summary>")[0]  # the cause: where NaN/inf began, not the latest alert
    assert "nonfinite" in bar and bad in bar and f"batch {origin.batch}" in bar
    assert bad in w.visible_layers and bad in w.layers.picker.alerted
    assert bad in w.heatmaps.shown
    rules = w.charts.charts["mean"].overlay.alerts.x
    assert origin.batch in set(np.atleast_2d(rules)[:, 0].tolist())
    row = w.layers.names.index(alerts[0].layer)
    assert row in set(w.overview.alerts.y.tolist())


def test_alerts_of_saved_stats_are_shown():
    s = synthetic(3)
    s.add_alert(Alert("exploding", "blocks.0.m2 (Linear)", 30, 0, 40.0, "std jumped 40x", 1))
    w = ActivationWidget(s)
    assert "1 alert" in w.header.value and "std jumped 40x" in w.head.alerts.value
    assert w.stop_button.layout.display == "none"  # a saved run: Stop could never act
    assert w.overview.alerts.x.tolist() == [30.0] and w.overview.alerts.y.tolist() == [2.0]
    assert w.layers.picker.alerted == ["blocks.0.m2 (Linear)"]  # its chip says ⚠, as live
    assert "blocks.0.m2 (Linear)" in w.visible_layers


def test_a_second_fit_continues_the_x_axis_and_is_marked():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)
    fit(model, [cb])
    headers = []
    fit(model, [cb, Every(lambda learn: headers.append(w.header.value))])
    assert "fit 2 running" in headers[-1]
    assert cb.stats["1 (ReLU)"].batch.tolist() == list(range(16))  # 16 batches, one x axis
    overlay = w.charts.charts["mean"].overlay
    assert np.atleast_2d(overlay.fits.x)[:, 0].tolist() == [7.5]  # a rule before batch 8
    assert list(overlay.labels.text) == ["fit 2"]
    assert np.atleast_2d(w.overview.overlay.fits.x)[:, 0].tolist() == [7.5]


def test_reference_run_is_drawn_faded_behind(tmp_path):
    before = synthetic(2, 100)
    path = before.save(tmp_path / "before.npz")
    live = synthetic(2, 30)
    for ref in (before, path):
        w = ActivationWidget(live, reference=ref)
        c = w.charts.charts["mean"]
        assert list(c.ref.labels) == list(live)
        assert c.ref.opacities == [0.3] and c.ref.line_style == "dashed"
        assert c.ref.x.shape[-1] == 100 and c.lines.x.shape[-1] == 30  # on one x axis
        assert w.charts.x_scale.max >= 99
    # The 70 batches the live run has not reached are no data, not the lowest colour.
    ov = w.overview
    no_data = ov.heat.color[:, 30:]
    assert no_data.shape == (2, 70) and (no_data < ov.color.min).all()  # unpainted
    assert (ov.heat.color[:, :30] >= ov.color.min).all()
    hm = w.heatmaps.maps[next(iter(live))]
    assert (hm.heat.color[:, -1] < hm.heat.scales["color"].min).all()
    legend = w.painter.legend
    assert "no batch recorded" in legend.value and "reference run" in legend.value
    assert legend.layout.display == ""


def test_before_the_first_batch_the_overview_says_so_and_shows_no_data():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1], model[3]])
    w = ActivationWidget(cb, interval=0)
    ov = w.overview
    assert ov.figure.title == "All layers: waiting for the first batch"
    assert not ov.colour_bar.shown  # no range to show yet
    assert (ov.heat.color < ov.color.min).all()  # every cell unpainted: the hatch shows
    assert w.painter.legend.layout.display == "none"
    fit(model, [cb])
    settled(w)
    assert ov.figure.title == "All layers: std (log scale)"
    assert ov.colour_bar.shown
    assert (ov.heat.color >= ov.color.min).all()


def test_one_display_name_per_layer_everywhere():
    s = synthetic(3)
    s.add_alert(Alert("exploding", "blocks.0.m1 (Linear)", 30, 0, 40.0, "std jumped 40x", 1))
    w = ActivationWidget(s)
    name = "blocks.0.m1 (Linear)"
    shown = display_name(name)
    picker = w.layers.picker
    assert picker.labels[picker.names.index(name)] == shown  # the chip
    assert w.overview.y_axis.tick_labels["1"] == shown  # the overview row
    assert w.heatmaps.maps[name].figure.title == shown  # the heatmap
    assert shown in list(w.charts.charts["mean"].lines.labels)  # the curves
    assert f"<td>{shown}</td>" in w.head.alerts.value  # the alert list


def test_alert_marks_are_black_a_colour_no_layer_has_and_the_legend_says_so():
    assert all(ALERT.lower() not in layer_colors(n) for n in range(1, 300))
    s = synthetic(3)
    s.add_alert(Alert("exploding", "blocks.0.m1 (Linear)", 30, 0, 40.0, "std jumped 40x", 1))
    w = ActivationWidget(s)
    assert w.charts.charts["std"].overlay.alerts.colors == [ALERT]
    assert w.overview.alerts.colors == [ALERT]
    assert "alert" in w.painter.legend.value and w.painter.legend.layout.display == ""
    assert "reference run" not in w.painter.legend.value


def test_log_axes_label_ticks_in_powers_of_ten():
    s = synthetic(2)
    for name in s:
        s[name].columns[:, Field.M2] = 99.0 * 1e-12  # std 1e-6
    w = ActivationWidget(s)
    labels = w.charts.charts["std"].y_axis.tick_labels
    assert "10⁻⁶" in labels.values() and not any("0.0000" in v for v in labels.values())


# --- Stop, background runs, threads -------------------------------------------------------
def test_stop_message_from_another_thread_ends_fit_at_next_batch():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)
    sent = []
    w.stop_button.send = lambda content, buffers=None: sent.append(content)
    stopped = threading.Event()

    def click_once(learn):
        if learn.iter == 2 and not stopped.is_set():
            stopped.set()
            click_stop(w)

    learn = fit(model, [cb, Every(click_once)], epochs=2)
    assert sent == [{"type": "stop_ack", "fit_id": cb.status.fit_id, "accepted": True}]
    assert learn.stopped_at == (0, 2)
    assert w.state == "stopped" and "stopped" in w.header.value
    assert "at epoch 1, batch 3" in w.header.value
    assert cb.stats["1 (ReLU)"].batches.sum() == 3  # stats up to the stop are kept
    assert not model[1]._forward_hooks


def test_stale_stop_is_refused_and_does_not_stop_the_next_fit():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)
    sent = []
    w.stop_button.send = lambda content, buffers=None: sent.append(content)
    first = fit(model, [cb])
    old_fit = cb.status.fit_id
    assert first.stopped_at is None
    # A click queued during the first fit, handled after it ended (blocking-cell case).
    w.stop_button._handle_stop_msg(w.stop_button, {"type": "stop", "fit_id": old_fit}, [])
    assert sent[-1]["accepted"] is False
    learn = TrainLearner(model, tiny_dls(), F.cross_entropy, lr=0.1, cbs=[cb])
    stale = Every(
        lambda lrn: w.stop_button._handle_stop_msg(
            w.stop_button, {"type": "stop", "fit_id": old_fit}, []
        )
    )
    learn.fit(1, cbs=[stale])
    assert learn.stopped_at is None and w.state == "finished"
    assert all(m["accepted"] is False for m in sent)


def test_sigint_during_fit_stops_gracefully_and_restores_handler():
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("must run in the main thread")
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)
    before = signal.getsignal(signal.SIGINT)
    sent = Every(lambda learn: learn.iter == 1 and signal.raise_signal(signal.SIGINT))
    learn = fit(model, [cb, sent], epochs=3)
    assert learn.stopped_at == (0, 1) and learn.error is None
    assert w.state == "stopped"
    assert signal.getsignal(signal.SIGINT) is before


def test_background_run_keeps_the_kernel_free_and_wait_reraises():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)
    gate = threading.Event()
    release = Every(lambda learn: gate.wait(10))
    w.start(fit, model, [cb, release])
    assert w.stop_button.interrupt_on_busy is False  # never interrupt another cell
    gate.set()
    w.wait(30)
    assert w.state == "finished" and w.stop_button.interrupt_on_busy is True

    def boom(learn):
        raise RuntimeError("exploded at batch 2")

    w.start(fit, model, [cb, Every(lambda learn: learn.iter == 2 and boom(learn))])
    with pytest.raises(RuntimeError, match="exploded"):
        w.wait(30)
    assert w.state == "failed" and "exploded at batch 2" in w.header.value
    assert not model[1]._forward_hooks


def test_background_stop_via_message():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)
    w.stop_button.send = lambda content, buffers=None: None
    at_batch_2 = threading.Event()
    go_on = threading.Event()

    def pace(learn):
        if learn.iter == 2:
            at_batch_2.set()
            go_on.wait(10)

    w.start(fit, model, [cb, Every(pace)], 5)
    assert at_batch_2.wait(10)
    msg = {"type": "stop", "fit_id": w.stop_button.fit_id}
    w.stop_button._handle_stop_msg(w.stop_button, msg, [])
    go_on.set()
    w.wait(30)
    assert w.state == "stopped" and cb.learn.stopped_at == (0, 2)


def test_selection_changes_while_a_fit_starts_in_another_thread_never_raise():
    """Issue 10: show_layers or a toggle at fit start raised 'dictionary changed size'; and
    neither may deadlock with the training thread's redraws (a bounded join says so)."""
    for _ in range(5):
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(40)])
        cb = StoreModuleStatsCB(mods=list(model))
        w = ActivationWidget(cb, interval=0)
        data = DataLoader(TensorDataset(torch.randn(32, 8), torch.zeros(32, dtype=torch.long)), 8)
        learn = TrainLearner(model, DataLoaders(data, data), F.cross_entropy, lr=0.01, cbs=[cb])
        errors: list[BaseException] = []

        def hammer(w=w, cb=cb, errors=errors):
            try:
                while w.runner.running or not cb.batches:
                    names = w.layers.names
                    w.show_layers(names[::3])
                    w.layers.picker.set_state({"selected": names[1::2]})  # a browser toggle
                    _ = w.visible_layers
                    # A breath between changes, as a person's clicks leave: a loop that
                    # never waits holds the GIL so much that every torch op of the
                    # training thread (each releases it) waits; that is no deadlock.
                    time.sleep(0.002)
            except BaseException as e:
                errors.append(e)

        w.start(learn.fit, 1)
        t = threading.Thread(target=hammer, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "show_layers deadlocked with the training thread"
        w.wait(30)
        assert errors == [] and w.error == "" and w.state == "finished"


def test_constant_series_gets_a_drawable_range():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # a dead layer: every output is exactly 0
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)
    ds = TensorDataset(torch.randn(16, 4), torch.zeros(16, dtype=torch.long))
    dls = DataLoaders(DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))
    TrainLearner(model, dls, lambda p, y: p.sum() * 0, lr=0.1, cbs=[cb]).fit(1, valid=False)
    for chart in w.charts.charts.values():
        assert chart.y.min < chart.y.max


def test_shows_a_finished_callback_and_a_saved_file(tmp_path):
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1], model[3]])
    fit(model, [cb])
    late = ActivationWidget(cb)  # created after training
    assert late.state == "finished" and len(late.layers.names) == 2
    assert late.stop_button.layout.display is None  # a live source: Stop is there
    path = cb.save(tmp_path / "run.npz")
    replay = ActivationWidget(path)
    assert replay.state == "finished" and replay.stop_button.running is False
    assert replay.stop_button.layout.display == "none"
    np.testing.assert_allclose(
        curves(replay, "std")["3 (ReLU)"], cb.stats["3 (ReLU)"].std.astype(np.float32)
    )
    with pytest.raises(TypeError, match="StoreModuleStatsCB"):  # names what it takes
        ActivationWidget(42)


def test_a_slow_final_redraw_does_not_hold_up_the_cell(monkeypatch):
    import actwidget.widget as widget_module

    monkeypatch.setattr(widget_module, "_SLOW_FINAL", -1.0)  # every final redraw is "slow"
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=3600)
    ran_in, done = [], threading.Event()
    final = w._final_redraw

    def spy():
        ran_in.append(threading.current_thread())
        final()
        done.set()

    w._final_redraw = spy
    fit(model, [cb])
    assert done.wait(10) and ran_in[0] is not threading.main_thread()
    np.testing.assert_allclose(
        curves(w, "mean")["1 (ReLU)"], cb.stats["1 (ReLU)"].mean.astype(np.float32)
    )


def test_overview_colour_choices_and_heatmap_axis_labels():
    s = synthetic(3, 50)
    w = ActivationWidget(s)
    ov = w.overview
    assert (
        ov.color.colors == [NO_DATA, *VIRIDIS] and ov.figure.title == "All layers: std (log scale)"
    )
    assert list(METRICS) == ["std (log scale)", "mean", "near-zero fraction", "dead-unit fraction"]
    ov.metric.value = "mean"  # the menu in the browser
    assert "mean" in ov.figure.title and ov.color.colors == [NO_DATA, *BLUE_RED]
    step = ov.color.max / 4  # the palette spans [-max, max], centred on zero
    assert ov.color.min == pytest.approx(-ov.color.max - step)  # a transparent stop below
    np.testing.assert_allclose(ov.heat.color[2], np.linspace(-3, 3, 50), rtol=1e-5)
    bar = ov.colour_bar
    assert bar.shown and bar.heat.scales["color"] is ov.color
    assert bar.y.min == -ov.color.max and bar.y.max == ov.color.max  # high values at the top
    assert set(bar.axis.tick_labels.values()) >= {"0"}
    ov.metric.value = "near-zero fraction"
    assert (bar.y.min, bar.y.max) == (0.0, 1.0) and ov.color.max == 1.0
    labels = w.heatmaps.maps["blocks.0.m0 (Linear)"].figure.axes[1].tick_labels
    assert "2⁰" in labels.values() and "0" in labels.values()
    linear = RunStats(StatsConfig(hist="linear"))
    rows = np.zeros((4, linear.config.width))
    rows[:, Field.BATCHES] = 1
    rows[:, Field.BATCH_SUM] = rows[:, Field.BATCH_FIRST] = rows[:, Field.BATCH_LAST] = range(4)
    linear.append("a", rows)
    labels = ActivationWidget(linear).heatmaps.maps["a"].figure.axes[1].tick_labels
    assert list(labels.values()) == ["0", "2", "4", "6", "8", "10"]  # |a| values kept


def test_alerts_at_depth_read_as_one_line_and_select_a_few_layers():
    s = synthetic(98, 40)
    names = list(s)
    for i, n in enumerate(names[5:95]):
        s.add_alert(Alert("dead", n, 19 + i % 3, 0, 0.5 + i / 200, f"{n}: dead units", 1))
    w = ActivationWidget(s, initial_layers=5)
    bar = w.head.alerts.value.split("</summary>")[0]
    assert "<b>⚠ dead</b> units in 90 of 98 layers" in bar and "from batch 19" in bar
    assert w.head.alerts.value.count("<tr>") == 2  # the header row and one line
    assert set(names[5:95]) <= set(w.layers.picker.alerted)  # every alerted layer is marked
    added = [n for n in w.visible_layers if n in names[5:95]]
    assert 1 <= len(added) <= 5 and names[94] in added  # the worst joins, not all 90
