"""The widget's parts, one module at a time: ranges and ticks, the time grid, layer
selection, the header, heatmap and overview axes, and the packaged front ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomllib

from actwidget.ranges import (
    Range,
    clip,
    int_ticks,
    line_arrays,
    log_ticks,
    robust_range,
    tick_key,
    tick_label,
    tick_labels,
    to_float32,
)
from actwidget.source import RunState, RunStatus
from actwidget.stats import HIST, Alert, Field, LayerStats, StatsConfig, merge_groups
from actwidget.widget._grid import Grid, binned, binned_many, make_grid, runs_to_bands, values
from actwidget.widget._header import alerts_html, status_html
from actwidget.widget._heatmaps import bin_ticks, shares, superscript
from actwidget.widget._layers import (
    COLORS,
    LayerPicker,
    LayerState,
    default_selection,
    layer_colors,
    matches,
)
from actwidget.widget._marks import ALERT, Legend, legend_html
from actwidget.widget._overview import row_labels

ROOT = Path(__file__).resolve().parents[1]


# --- ranges and ticks ---------------------------------------------------------------------
def test_one_spike_does_not_set_the_range():
    healthy = 0.3 + 0.01 * np.sin(np.arange(200))
    spiked = np.r_[healthy, 7e12]
    r = robust_range([spiked])
    assert r.lo > 0.2 and r.hi < 0.4  # the healthy values fill the chart
    c = clip(spiked, r)
    assert c.above.tolist() == [False] * 200 + [True]
    assert c.y[-1] == np.float32(r.hi)  # drawn on the edge, flagged off scale


def test_a_trend_keeps_its_whole_range_and_layers_of_other_scales_keep_theirs():
    trend = np.linspace(0, 1, 100)
    logits = np.linspace(5, 8, 100)
    r = robust_range([trend, logits])
    assert r.lo <= 0 and r.hi >= 8
    assert not clip(trend, r).above.any() and not clip(logits, r).above.any()


def test_log_range_ignores_non_positive_and_non_finite_values():
    r = robust_range([np.array([0.0, -1.0, np.nan, np.inf, 0.01, 0.1, 1.0])], log=True)
    assert r.log and 0 < r.lo <= 0.01 and r.hi >= 1.0
    c = clip(np.array([0.0, 0.1, np.nan]), r)
    assert c.below.tolist() == [True, False, False] and np.isnan(c.y[2])


@pytest.mark.parametrize("values", [[], [np.nan, np.inf], [1e300, -1e300], [3.0] * 5])
def test_ranges_are_finite_and_float32_safe(values):
    for log in (False, True):
        r = robust_range([np.array(values, float)], log=log)
        assert np.isfinite([r.lo, r.hi]).all() and r.lo < r.hi and abs(r.hi) <= 1e30
    assert np.isnan(to_float32(np.array([np.inf, 1e300, np.nan]))).all()


def test_int_ticks_are_round_integers_that_fit():
    assert int_ticks(-0.5, 119.5, 4).tolist() == [0, 50, 100]  # not 0, 78, 156 ...
    assert int_ticks(-0.5, 77.5, 5).tolist() == [0, 20, 40, 60]
    assert int_ticks(-0.5, 1.5, 5).tolist() == [0, 1]  # never 0.5 batches
    assert int_ticks(-0.5, 99_999.5, 5).tolist() == [0, 20_000, 40_000, 60_000, 80_000]
    assert "-0" not in str(int_ticks(-0.5, 3.5).tolist())


def test_log_ticks():
    assert log_ticks(1e-3, 1e13).tolist() == [1e-3, 1, 1e3, 1e6, 1e9, 1e12]
    assert log_ticks(0.015, 0.45).tolist() == [0.02, 0.05, 0.1, 0.2]
    assert log_ticks(0.2, 0.3).tolist() == [0.2, 0.25, 0.3]
    assert log_ticks(7.9e-7, 1.26e-6).tolist() == [8e-7, 1e-6, 1.2e-6]


def test_tick_labels_read_as_decimals_or_powers_of_ten():
    x = "\u00d7"  # the multiplication sign
    assert [tick_label(v) for v in (1e-6, 2e-5, 5e-4, 0.001, 0.05, 250, 1500, 12000)] == [
        "10⁻⁶", f"2{x}10⁻⁵", f"5{x}10⁻⁴", "0.001", "0.05", "250", "1500", f"1.2{x}10⁴",
    ]  # fmt: skip
    assert tick_label(-1e-6) == "-10⁻⁶" and tick_label(0.0) == "0"
    # Keys as JavaScript's String(v) writes them (bqplot looks labels up by it).
    keys = {1e-6: "0.000001", 1e-7: "1e-7", 2.5e-7: "2.5e-7", 1e21: "1e+21",
            1e20: "100000000000000000000", 0.1 + 0.2: "0.30000000000000004", -1.5: "-1.5",
            100.0: "100", 0.0: "0"}  # fmt: skip
    assert {v: tick_key(v) for v in keys} == keys
    # Enough digits to tell ticks apart.
    assert list(tick_labels([10000.0, 10000.5]).values()) == ["10⁴", f"1.0001{x}10⁴"]


def test_line_arrays_end_every_curve_on_a_finite_point():
    x = np.arange(5.0)
    ys = np.array([[1, np.nan, 3, np.nan, np.nan], [np.nan] * 5, [1, 2, 3, 4, 5]])
    xs, y, keep = line_arrays(x, ys)
    assert keep.tolist() == [0, 2]  # an all-NaN curve is not sent
    assert xs.shape == y.shape == (2, 5) and np.isfinite(y[:, -1]).all()
    assert xs[0].tolist() == [0, 1, 2, 2, 2] and np.isnan(y[0, 1])  # interior gap stays
    xs, y, _ = line_arrays(x, np.array([[1, 2, 3, np.nan, np.nan]] * 2))
    assert xs.tolist() == [0, 1, 2] and y.shape == (2, 3)  # shared x when they end together


# --- the grid -----------------------------------------------------------------------------
def _layer(batches: int, offset: float = 0.0, config: StatsConfig | None = None) -> LayerStats:
    config = config or StatsConfig()
    rows = np.zeros((batches, config.width))
    rows[:, Field.BATCHES] = 1
    rows[:, Field.BATCH_SUM] = rows[:, Field.BATCH_FIRST] = rows[:, Field.BATCH_LAST] = np.arange(
        batches
    )
    rng = np.random.default_rng(batches)
    rows[:, Field.NUMEL] = rows[:, Field.COUNT] = 10
    rows[:, Field.MEAN] = rng.normal(size=batches) + offset
    rows[:, Field.M2] = rng.uniform(1, 2, batches) * 9
    rows[:, HIST:] = rng.integers(0, 5, (batches, config.bins))
    s = LayerStats("a", config)
    s.append(rows)
    return s


def test_grid_is_the_finest_power_of_two_that_fits():
    assert make_grid(100, 512) == Grid(1, 100, 100)
    assert make_grid(3000, 256) == Grid(16, 188, 3000)
    assert make_grid(1, 512).count == 2  # a heatmap needs two columns
    assert make_grid(100, 512, min_width=8).width == 8  # columns are never split
    g = make_grid(10, 4)
    assert g.width == 4 and g.domain == (-0.5, 11.5) and g.x.tolist() == [1.5, 5.5, 8.5]


def test_binning_is_exact():
    layer = _layer(1000)
    g = make_grid(1000, 128)
    b = binned(layer, g, hist=True)
    starts = np.arange(0, 1000, g.width)
    direct = merge_groups(layer.columns, starts)
    np.testing.assert_allclose(b.columns[: len(starts)], direct)
    assert b.hist.sum() == layer.hist.sum()
    np.testing.assert_allclose(
        values(b, "std")[: len(starts)], LayerStats("a", layer.config, direct).std
    )


def test_binned_many_stacks_layers_of_different_lengths():
    a, c = _layer(100), _layer(40, offset=5)
    g = make_grid(100, 512)
    both = binned_many([a, c], g)
    assert both.columns.shape == (2 * g.count, HIST)
    np.testing.assert_allclose(both.columns[: g.count], binned(a, g).columns)
    mean = values(both, "mean").reshape(2, g.count)
    assert np.isnan(mean[1, 40:]).all() and np.isfinite(mean[1, :40]).all()


def test_runs_to_bands_merge_but_never_drop():
    g = Grid(2, 10, 20)
    mask = np.zeros(10, bool)
    mask[[1, 2, 5]] = True
    assert runs_to_bands(mask, g).tolist() == [[1.5, 5.5], [9.5, 11.5]]
    many = np.tile([True, False], 50)
    bands = runs_to_bands(many, Grid(1, 100, 100), max_bands=8)
    assert len(bands) <= 8 and bands.min() <= -0.5 and bands.max() >= 98


# --- layers -------------------------------------------------------------------------------
def test_matches_substring_or_glob_like_the_front_end():
    assert matches("FC1", "blocks.0.fc1 (Linear)") and not matches("fc2", "blocks.0.fc1 (Linear)")
    assert matches("blocks.*.fc1", "blocks.0.fc1 (Linear)")
    assert matches("*(linear)", "blocks.0.fc1 (Linear)")
    assert matches("", "anything")
    js = (ROOT / "js" / "layers.js").read_text()
    assert "export function matches" in js and "export function globToRegExp" in js


def test_default_selection_spreads_over_depth():
    names = [f"l{i}" for i in range(100)]
    assert default_selection(names[:4]) == names[:4]
    assert default_selection(names) == ["l0", "l25", "l50", "l74", "l99"]


def test_colours_tab10_then_by_depth():
    assert layer_colors(3) == COLORS[:3]
    many = layer_colors(100)
    assert len(set(many)) == 100 and many[0] == "#3b4cc0" and many[-1] == "#8e3b9e"


class RecordingComm:
    """Stands in for a kernel comm: records the trait names of every update sent."""

    kernel = object()
    keys: list[str] = []

    def __init__(self, **kwargs):
        self.comm_id = str(id(self))

    def send(self, data=None, metadata=None, buffers=None):
        RecordingComm.keys += list((data or {}).get("state", {}))

    def on_msg(self, callback):
        pass

    def close(self, *args, **kwargs):
        pass


def test_layer_state_adds_selects_and_auto_selects_alerted_layers_once(monkeypatch):
    import ipywidgets.widgets.widget as widget_module

    monkeypatch.setattr(widget_module.comm, "create_comm", lambda **kw: RecordingComm(**kw))
    changes = []
    ls = LayerState(lambda: changes.append(1), few=2)
    assert ls.add(["a", "b", "c", "d"]) == ["a", "b", "c", "d"]
    assert ls.selected == ["a", "d"] and changes
    assert ls.add(["a", "e"]) == ["e"] and ls.selected == ["a", "d"]  # new layers: not added
    RecordingComm.keys = []
    assert ls.alert(["c"]) and ls.selected == ["a", "c", "d"]
    # The browser adds it itself (auto_select): `selected` is not sent, so clicks queued
    # behind a blocking fit are not undone.
    assert ls.picker.auto_select == ["c"] and "auto_select" in RecordingComm.keys
    assert "selected" not in RecordingComm.keys
    ls.show(["a"])
    assert not ls.alert(["c"]) and ls.selected == ["a"]  # unselected by hand: stays so
    assert ls.picker.alerted == ["c"]
    ls.show("?")  # a glob matching one-letter names
    assert ls.selected == ["a", "b", "c", "d", "e"]
    with pytest.raises(KeyError):
        ls.show(["zz"])


def test_picker_traits_are_synced_and_its_module_ships_in_the_wheel():
    p = LayerPicker()
    try:
        state = p.get_state()
        for name in ("names", "colors", "selected", "filter", "alerted", "marks", "figures"):
            assert name in state
        assert "export default" in p._esm and "PickerState" in p._esm
    finally:
        p.close()
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    mapping = include["targets"]["wheel"]["force-include"]
    for js in (ROOT / "js").glob("*.js"):
        if not js.name.endswith(".test.js"):
            assert mapping[f"js/{js.name}"] == f"actwidget/_static/{js.name}"


# --- header -------------------------------------------------------------------------------
def test_status_line_says_which_fit_runs_and_counts_alerts():
    st = RunStatus(state=RunState.RUNNING, fit=2, batch=70, fit_batches=10, epoch=0, epochs=3,
                   epoch_batch=4, epoch_batches=59, elapsed=2.0)  # fmt: skip
    line = status_html(st, alerts=2)
    assert "running" in line and "fit 2 running" in line and "epoch 1/3" in line
    assert "train batch 5/59" in line and "5.0 batches/s" in line and "⚠ 2 alerts" in line
    assert "fit" not in status_html(st._replace(fit=1))


def test_alerts_bar_shows_the_latest_and_lists_all_escaped():
    assert alerts_html([]) == ""
    alerts = [
        Alert("vanishing", "a (Linear)", 3, 0, 0.001, "std fell", 1),
        Alert("nonfinite", "b <x>", 9, None, 5.0, "NaN at batch 9", 1),
    ]
    html = alerts_html(alerts)
    assert "nonfinite" in html and "NaN at batch 9" in html and "(+1 more)" in html
    assert "b &lt;x&gt;" in html and "<x>" not in html
    assert html.index("NaN at batch 9") < html.index("std fell")  # newest first
    assert "<b>⚠ nonfinite</b> NaN at batch 9" in html
    dead = [Alert("dead", n, 5, 0, 0.9, "dead units", 1) for n in ("a", "b", "c", "d")]
    bar = alerts_html(dead, ["a", "b", "c", "d"])
    assert "<b>⚠ dead</b> units in 4 of 4 layers" in bar and "dead dead" not in bar


# --- heatmap and overview axes ------------------------------------------------------------
def test_heatmap_y_axis_in_powers_of_two_or_values():
    values_, labels = bin_ticks(StatsConfig())
    assert labels == {"-0.5": "0", "8.5": "2⁻¹⁶", "16.5": "2⁻⁸", "24.5": "2⁰", "32.5": "2⁸"}
    assert values_.tolist() == [-0.5, 8.5, 16.5, 24.5, 32.5]
    _, lin = bin_ticks(StatsConfig(hist="linear"))
    assert list(lin.values()) == ["0", "2", "4", "6", "8", "10"]
    assert superscript("2^-3") == "2⁻³" and superscript("1.5") == "1.5"


def test_heatmap_colours_are_shares_and_finite():
    layer = _layer(10)
    layer.columns[3, HIST:] = 0  # a column with no finite value
    s = shares(layer)
    assert s.shape == (layer.config.bins, 10) and np.isfinite(s).all()
    assert s.max() <= 0 and s.min() >= -4


def test_overview_row_labels_fit_and_name_module_paths():
    names = [
        f"encoder.layers.{i}.self_attn.out_proj (NonDynamicallyQuantizableLinear)"
        for i in range(50)
    ]
    labels = row_labels(names, rows_fit=10, width=24)
    assert 5 <= len(labels) <= 10 and all(len(v) <= 24 for v in labels.values())
    assert labels["0"] == "…rs.0.self_attn.out_proj"  # the path's end tells rows apart
    assert row_labels(["blocks.3.fc1 (Linear)"], 1, width=19) == {"0": "blocks.3.fc1 (Lin…)"}
    assert row_labels(["layers.0 (Conv2dWithReLU)"], 1)["0"] == "layers.0 (Conv2dWithReLU)"
    assert Range(0.0, 1.0).lo == 0.0


def test_legend_names_only_the_marks_drawn():
    assert legend_html(Legend()) == ""
    html = legend_html(Legend(nonfinite=True, alerts=True))
    assert "NaN/inf" in html and "alert" in html and "fit" not in html and ALERT in html
    every = legend_html(Legend(*[True] * len(Legend._fields)))
    for text in ("NaN/inf", "alert", "a new fit starts", "off scale", "reference run", "no batch"):
        assert text in every


def test_nice_ticks_read_well():
    from actwidget.ranges import nice_ticks

    assert nice_ticks(-0.0169, 0.237, 6).tolist() == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert nice_ticks(0.468, 1.0, 6).tolist() == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert nice_ticks(-1.3e4, 2e4, 6).tolist() == [-10000, 0, 10000, 20000]


def test_band_union_is_disjoint_and_bounded():
    from actwidget.widget._draw import band_union as _union

    a = np.array([[0.5, 4.5], [10.5, 12.5]])
    b = np.array([[3.5, 6.5], [20.5, 21.5]])
    assert _union(a, b).tolist() == [[0.5, 6.5], [10.5, 12.5], [20.5, 21.5]]
    many = np.array([[i, i + 0.5] for i in range(100)], float)
    out = _union(many, np.zeros((0, 2)), most=10)
    assert len(out) == 10 and out[0, 0] == 0 and out[-1, 1] == 99.5


def test_line_arrays_never_send_a_one_point_curve():
    import bqplot as bq

    for x, ys in (([1.0], [[2.0]]), ([1.0, 2.0], [[2.0, np.nan]]), ([1.0], [[2.0], [3.0]])):
        xs, y, _ = line_arrays(np.array(x), np.array(ys))
        bq.Lines(x=xs, y=y)  # bqplot squeezes (1, 1) to a scalar and refuses it
        assert y.shape[-1] >= 2
