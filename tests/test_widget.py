"""ActivationWidget without a browser: state after updates, throttling, bounds, toggles, Stop."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Every, fit, tiny_dls
from conftest import tiny_cnn as tiny_model
from ipywidgets.widgets.widget import _remove_buffers
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actwidget import ActivationWidget, StoreModuleStatsCB, TrainLearner
from actwidget.data import DataLoaders
from actwidget.stats import HIST, Field, RunStats, StatsConfig


def test_widget_follows_a_fit_and_ends_finished():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1], model[3]])
    w = ActivationWidget(cb, interval=0)
    assert w.state == "waiting" and "waiting" in w.header.value
    seen = []
    fit(model, [cb, Every(lambda learn: seen.append((w.state, w.stop_button.running)))])
    assert set(seen) == {("running", True)}
    assert w.state == "finished" and not w.stop_button.running
    assert w.stop_button.run_id == cb.status.fit_id
    assert w.layers.names == ["1 (ReLU)", "3 (ReLU)"]
    line = w.charts.lines["1 (ReLU)"]["mean"]
    np.testing.assert_allclose(line.y, cb.stats["1 (ReLU)"].mean.astype(np.float32))
    assert line.y.dtype == np.float32 and line.x.dtype == np.float32
    assert w.charts.heat["1 (ReLU)"].color.shape == (34, 8)  # bins x batches
    assert w.charts.heat_figures["1 (ReLU)"].layout.display == "flex"
    assert "epoch 1/1" in w.header.value and "finished" in w.header.value


def test_arrays_cross_as_binary_buffers_not_lists():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)
    fit(model, [cb])
    line = w.charts.lines["1 (ReLU)"]["mean"]
    state, buffer_paths, buffers = _remove_buffers(line.get_state())
    assert ["y", "value"] in buffer_paths and ["x", "value"] in buffer_paths
    assert not isinstance(state.get("y"), list)
    assert sum(memoryview(b).nbytes for b in buffers) == 2 * 8 * 4  # x and y: 8 float32 each


def test_redraws_are_throttled_by_elapsed_time():
    model = tiny_model()
    slow, fast = StoreModuleStatsCB(mods=[model[1]]), StoreModuleStatsCB(mods=[model[3]])
    never = ActivationWidget(slow, interval=3600)
    always = ActivationWidget(fast, interval=0)
    fit(model, [slow, fast])  # 8 train + 8 valid batches
    assert never.redraws == 1  # only the final redraw at the end of the fit
    assert always.redraws >= 8  # every batch that added data


def test_a_new_widget_on_the_same_source_replaces_the_old_one():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    widgets = [ActivationWidget(cb, interval=0) for _ in range(5)]  # a cell run five times
    fit(model, [cb])
    assert [w.redraws for w in widgets[:-1]] == [0] * 4 and widgets[-1].redraws > 1
    assert len(cb.recorder._listeners) == 1
    widgets[-1].close()
    assert len(cb.recorder._listeners) == 0


def test_a_drawing_error_never_stops_training(monkeypatch, caplog):
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1]])
    w = ActivationWidget(cb, interval=0)

    def broken(*args):
        raise ValueError("bqplot exploded")

    monkeypatch.setattr(w.charts, "draw_lines", broken)
    learn = fit(model, [cb], epochs=2)
    assert learn.error is None and cb.batches == 16
    assert w.state == "finished" and "bqplot exploded" in w.header.value
    assert any("failed to draw" in r.getMessage() for r in caplog.records)


def test_columns_sent_are_bounded_and_merged_exactly():
    stats = RunStats(StatsConfig(capacity=4096))
    rows = np.zeros((3000, stats.config.width))
    rows[:, Field.BATCHES] = 1  # one batch each
    rows[:, Field.STEP_SUM] = rows[:, Field.STEP_FIRST] = rows[:, Field.STEP_LAST] = np.arange(3000)
    rows[:, Field.NUMEL] = rows[:, Field.COUNT] = 100
    rows[:, Field.MEAN] = np.linspace(-1, 1, 3000)
    rows[:, HIST] = 100
    stats.append("a", rows)
    w = ActivationWidget(stats, max_columns=256)
    line = w.charts.lines["a"]["mean"]
    assert len(line.x) <= 256
    assert w.charts.heat["a"].color.shape[1] <= 256
    batches = w._series["a"].batches
    assert batches.sum() == 3000
    np.testing.assert_allclose(w._series["a"].hist.sum(), 3000 * 100)


def test_toggles_show_and_hide_lines_and_heatmaps():
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1], model[3]])
    w = ActivationWidget(cb, interval=0)
    fit(model, [cb])
    w.layers.toggles["1 (ReLU)"].value = False
    assert w.visible_layers == ["3 (ReLU)"]
    a, b = w.charts.lines["1 (ReLU)"], w.charts.lines["3 (ReLU)"]
    assert all(not line.visible for line in a.values())
    assert all(line.visible for line in b.values())
    figs = w.charts.heat_figures
    assert figs["1 (ReLU)"].layout.display == "none" and figs["3 (ReLU)"].layout.display == "flex"
    # The y range follows the visible layers only.
    scale = w.charts.figures["mean"].axes[1].scale
    mean_b = cb.stats["3 (ReLU)"].mean
    assert scale.min <= mean_b.min() and scale.max >= mean_b.max()
    w.show_layers([])
    assert w.visible_layers == []
    w.show_layers(None)
    assert len(w.visible_layers) == 2 and figs["1 (ReLU)"].layout.display == "flex"
    with pytest.raises(KeyError, match="unknown layers"):
        w.show_layers(["nope"])


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
    for fig in w.charts.figures.values():
        scale = fig.axes[1].scale
        assert scale.min < scale.max


def test_shows_a_finished_callback_and_a_saved_file(tmp_path):
    model = tiny_model()
    cb = StoreModuleStatsCB(mods=[model[1], model[3]])
    fit(model, [cb])
    late = ActivationWidget(cb)  # created after training
    assert late.state == "finished" and len(late.layers.names) == 2
    path = cb.save(tmp_path / "run.npz")
    replay = ActivationWidget(path)
    assert replay.state == "finished" and replay.stop_button.running is False
    np.testing.assert_allclose(
        replay.charts.lines["3 (ReLU)"]["std"].y, cb.stats["3 (ReLU)"].std.astype(np.float32)
    )
    with pytest.raises(TypeError, match="StoreModuleStatsCB"):  # names what it takes
        ActivationWidget(42)


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
            t = threading.Thread(
                target=w.stop_button._handle_stop_msg,
                args=(w.stop_button, {"type": "stop", "run": w.stop_button.run_id}, []),
            )
            t.start()
            t.join()

    learn = fit(model, [cb, Every(click_once)], epochs=2)
    assert sent == [{"type": "stop_ack", "run": cb.status.fit_id, "accepted": True}]
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
    old_run = cb.status.fit_id
    assert first.stopped_at is None
    # A click queued during the first fit, handled after it ended (blocking-cell case).
    w.stop_button._handle_stop_msg(w.stop_button, {"type": "stop", "run": old_run}, [])
    assert sent[-1]["accepted"] is False
    learn = TrainLearner(model, tiny_dls(), F.cross_entropy, lr=0.1, cbs=[cb])
    stale = Every(
        lambda lrn: w.stop_button._handle_stop_msg(
            w.stop_button, {"type": "stop", "run": old_run}, []
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
    w.stop_button._handle_stop_msg(w.stop_button, {"type": "stop", "run": w.stop_button.run_id}, [])
    go_on.set()
    w.wait(30)
    assert w.state == "stopped" and cb.learn.stopped_at == (0, 2)
