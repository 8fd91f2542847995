"""The alert rules of `actwidget.diagnose` on synthetic series: each rule fires where it
should, once per fit, and stays quiet where it should; the cost per batch stays flat."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from actwidget.diagnose import KINDS, AlertConfig, Diagnoser, headline, summarize
from actwidget.recorder import StatsHooks
from actwidget.stats import HIST, Alert, Field, StatsConfig

CFG = StatsConfig()


def column(
    step: int,
    values: np.ndarray,
    grad_std: float | None = None,
    grad_bad: bool = False,
    config: StatsConfig = CFG,
):
    """One batch's column (activation and gradient fields) for activation `values`
    (batch, units), computed plainly; the gradient has std `grad_std` over as many values."""
    row = np.zeros(config.width)
    row[[Field.BATCHES, Field.BATCH_SUM, Field.BATCH_FIRST, Field.BATCH_LAST]] = [
        1,
        step,
        step,
        step,
    ]
    v = np.asarray(values, float)
    ok = np.isfinite(v)
    fin = v[ok]
    row[Field.NUMEL], row[Field.COUNT] = v.size, fin.size
    row[Field.MEAN] = fin.mean() if fin.size else np.nan
    row[Field.M2] = ((fin - fin.mean()) ** 2).sum() if fin.size else 0.0
    row[Field.NEAR_ZERO] = (np.abs(v) <= CFG.near_zero).sum()
    row[Field.NONFINITE] = (~ok).sum()
    if ok.all() and (v >= 0).all():  # units are judged in non-negative batches only
        per_unit = v.sum(0)
        row[Field.UNITS] = v.shape[1]
        row[Field.DEAD] = (per_unit <= 1e-4 * per_unit.mean()).sum()
    bins = np.searchsorted(config.edges[1:-1], np.abs(fin), side="right")
    row[HIST:] = np.bincount(np.minimum(bins, config.bins - 1), minlength=config.bins)
    if grad_bad:
        row[Field.G_NONFINITE] = 1
        row[Field.G_MEAN] = np.nan
    elif grad_std is not None:
        row[Field.G_COUNT], row[Field.G_MEAN] = v.size, 0.0
        row[Field.G_M2] = grad_std**2 * (v.size - 1)
        row[Field.G_ABS] = grad_std * 0.8 * v.size
    else:
        row[Field.G_MEAN] = np.nan
    return row


def acts(
    std: float, relu: bool = False, dead: float = 0.0, bs: int = 64, units: int = 32, rng=None
):
    """A (bs, units) activation of scale `std`; ReLU'd with a `dead` fraction of dead units."""
    rng = rng or np.random.default_rng(0)
    x = rng.normal(0.0, std, (bs, units))
    if relu:
        x[:, : round(dead * units)] = -1.0
        x = np.maximum(x, 0.0)
    return x


def series(stds, start: int = 0, seed: int = 0, grads=None, **kw) -> np.ndarray:
    """Columns of consecutive batches with activation scales `stds` (and gradient stds)."""
    rng = np.random.default_rng(seed)
    grads = [None] * len(stds) if grads is None else grads
    return np.stack(
        [
            column(start + i, acts(s, rng=rng, **kw), g)
            for i, (s, g) in enumerate(zip(stds, grads, strict=True))
        ]
    )


def epoch_of(batch: int) -> int:
    return batch // 100


def feed(diag: Diagnoser, cols: dict[str, np.ndarray], chunk: int = 16, fit: int = 1):
    """Feed each layer's columns in flushes of `chunk` batches; all alerts raised."""
    n = max(len(c) for c in cols.values())
    out = []
    for k in range(0, n, chunk):
        out += diag.update({name: c[k : k + chunk] for name, c in cols.items()}, epoch_of, fit)
    return out


def kinds_of(alerts) -> list[tuple[str, str]]:
    return [(a.kind, a.layer) for a in alerts]


# --- AlertConfig ------------------------------------------------------------------------
def test_config_defaults_and_kinds():
    c = AlertConfig()
    assert c.kinds == KINDS == ("nonfinite", "exploding", "vanishing", "dead")
    assert (c.jump, c.growth, c.warmup, c.patience) == (10.0, 1000.0, 10, 10)
    assert AlertConfig(kinds="dead").kinds == ("dead",)
    assert AlertConfig(kinds=["nonfinite", "dead"]).kinds == ("nonfinite", "dead")
    with pytest.raises(ValueError, match="unknown alert kinds \\['nan'\\]"):
        AlertConfig(kinds=("nan",))


@pytest.mark.parametrize(
    ("field", "value", "error", "says"),
    [
        ("jump", 1.0, ValueError, "jump must be a number in (1, 1e+30]"),
        ("jump", math.inf, ValueError, "(1, 1e+30]"),
        ("jump", "10", TypeError, "(1, 1e+30]"),
        ("growth", 0.5, ValueError, "growth must be a number in (1, 1e+30]"),
        ("warmup", -1, ValueError, "warmup must be an int in [0, 1e+09]"),
        ("warmup", 2.0, TypeError, "warmup must be an int"),
        ("vanishing_ratio", 0.0, ValueError, "vanishing_ratio must be a number in (0, 1]"),
        ("vanishing_ratio", 1.5, ValueError, "(0, 1]"),
        ("vanishing_std", -1, ValueError, "vanishing_std must be a number in (0, 1e+30]"),
        ("patience", 0, ValueError, "patience must be an int in [1, 1e+09]"),
        ("patience", True, TypeError, "patience must be an int"),
        ("dead_fraction", math.nan, ValueError, "dead_fraction must be a number in (0, 1]"),
        ("dead_rise", 2, ValueError, "dead_rise must be a number in (0, 1]"),
    ],
)
def test_config_rejects_out_of_range(field, value, error, says):
    with pytest.raises(error) as e:
        AlertConfig(**{field: value})
    assert says in str(e.value)


# --- nonfinite ----------------------------------------------------------------------------
def test_nonfinite_at_the_first_bad_batch():
    cols = series([1.0] * 12)
    bad = acts(1.0)
    bad[0, :3] = np.nan
    cols[6] = column(6, bad)
    cols[8] = column(8, bad)
    d = Diagnoser(AlertConfig(), ["a"])
    (alert,) = feed(d, {"a": cols}, chunk=5)
    assert (alert.kind, alert.layer, alert.batch, alert.epoch, alert.fit) == (
        "nonfinite",
        "a",
        6,
        0,
        1,
    )
    assert alert.value == 3
    assert "NaN/inf in the activation at batch 6" in alert.message
    assert "lower the learning rate" in alert.message


def test_nonfinite_gradient_once_confirmed():
    """A NaN/inf gradient alone is reported at its batch once activations follow, or once it
    persists; an isolated one (fp16 loss scaling skips such steps) is not."""
    bad_act = acts(1.0)
    bad_act[0, 0] = np.nan

    def run(rows_a, rows_b):
        d = Diagnoser(AlertConfig(patience=5), ["a", "b"])
        return [(x.layer, x.batch) for x in feed(d, {"a": rows_a, "b": rows_b}, chunk=3)]

    ok = series([1.0] * 12, grads=[1e-3] * 12)
    overflow = ok.copy()
    overflow[4] = column(4, acts(1.0), grad_bad=True)
    assert run(overflow, ok) == []  # isolated: quiet
    diverging = ok.copy()  # NaN gradients from batch 4 on, and at batch 6 b's activation
    for i in range(4, 12):
        diverging[i] = column(i, acts(1.0), grad_bad=True)
    nan_act = ok.copy()
    nan_act[6:] = [column(i, bad_act) for i in range(6, 12)]
    alerts = feed(Diagnoser(AlertConfig(patience=5), ["a", "b"]), {"a": diverging, "b": nan_act})
    assert [(x.layer, x.batch) for x in alerts] == [("a", 4), ("b", 6)]
    assert "NaN/inf in the gradient at batch 4, then in activations" in alerts[0].message
    persistent = ok.copy()
    for i in range(3, 12):
        persistent[i] = column(i, acts(1.0), grad_bad=True)
    (alert,) = feed(Diagnoser(AlertConfig(patience=5), ["a"]), {"a": persistent})
    assert (alert.batch, alert.kind) == (3, "nonfinite")  # raised at batch 7, names batch 3
    assert "in every batch since batch 3 (5 batches)" in alert.message


def test_each_alert_once_per_fit_and_again_next_fit():
    bad = acts(1.0)
    bad[0, 0] = np.inf
    cols = np.stack([column(i, bad) for i in range(30)])
    d = Diagnoser(AlertConfig(), ["a", "b"])
    first = feed(d, {"a": cols[:10], "b": cols[:10]}, chunk=3)
    assert kinds_of(first) == [("nonfinite", "a"), ("nonfinite", "b")]
    assert [a.batch for a in first] == [0, 0]
    assert feed(d, {"a": cols[10:20], "b": cols[10:20]}) == []  # same fit: not again
    d.begin_fit()
    again = feed(d, {"a": cols[20:], "b": cols[20:]}, fit=2)
    assert kinds_of(again) == [("nonfinite", "a"), ("nonfinite", "b")]
    assert [(a.batch, a.fit) for a in again] == [(20, 2), (20, 2)]


def test_kinds_switch_rules_off():
    bad = acts(1.0)
    bad[0, 0] = np.nan
    d = Diagnoser(AlertConfig(kinds=("dead",)), ["a"])
    assert feed(d, {"a": np.stack([column(i, bad) for i in range(5)])}) == []


# --- exploding ----------------------------------------------------------------------------
def steady(n: int, level: float = 1.0, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(level * np.exp(rng.normal(0, 0.05, n)))


def test_exploding_jump_far_above_the_recent_level():
    stds = [*steady(30), 20.0, 1.0, 1.0]
    d = Diagnoser(AlertConfig(), ["a", "b"])
    alerts = feed(d, {"a": series(stds), "b": series([1.0] * 33)})
    (alert,) = alerts
    assert (alert.kind, alert.layer, alert.batch) == ("exploding", "a", 30)
    assert 15 < alert.value < 25
    assert "activation std jumped to" in alert.message and "its recent level" in alert.message


def test_a_smaller_jump_or_a_warmup_jump_is_quiet():
    d = Diagnoser(AlertConfig(), ["a"])
    assert feed(d, {"a": series([*steady(30), 6.0, 1.0])}) == []  # 6x < jump
    d = Diagnoser(AlertConfig(), ["a"])
    assert feed(d, {"a": series([1.0, 1.0, 1.0, 20.0, *steady(20, 20.0)])}) == []  # warm-up
    d = Diagnoser(AlertConfig(warmup=0), ["a"])
    assert kinds_of(feed(d, {"a": series([1.0, 1.0, 1.0, 20.0])})) == [("exploding", "a")]
    d = Diagnoser(AlertConfig(), ["a"])  # in the warm-up, a jump of jump**2 (100x) or more
    (alert,) = feed(d, {"a": series([1.0, 1.0, 300.0, *steady(20, 300.0)])})
    assert (alert.kind, alert.batch) == ("exploding", 2)


def test_exploding_gradient_scaled_by_batch_size():
    n, grads = 30, [1e-3] * 30
    cols = series([1.0] * n, grads=grads)
    # A short last batch (a quarter of the values): a mean-reduced loss gives it 4x larger
    # gradients, which is no jump.
    short = column(n, acts(1.0, bs=16), 4e-3)
    d = Diagnoser(AlertConfig(), ["a"])
    assert feed(d, {"a": np.vstack([cols, short[None]])}) == []
    later = series([1.0] * 5, start=n + 1, grads=[1e-3, 1e-3, 5e-2, 1e-3, 1e-3])
    (alert,) = feed(d, {"a": later})
    assert (alert.kind, alert.batch) == ("exploding", n + 3)
    assert "gradient std jumped to 0.05" in alert.message
    assert 30 < alert.value < 70


def test_growth_without_bound():
    stds = [1.2**i for i in range(60)]  # too steady for a jump, without bound all the same
    d = Diagnoser(AlertConfig(), ["a"])
    (alert,) = feed(d, {"a": series(stds)})
    assert alert.kind == "exploding" and "grew to" in alert.message
    assert alert.value >= 1000
    level_at_warmup_end = 1.2**9
    assert stds[alert.batch] >= 1000 * level_at_warmup_end * 0.5


def test_a_dead_layers_flicker_is_no_jump():
    stds = [0.0 if i % 7 else 1e-5 for i in range(60)]
    d = Diagnoser(AlertConfig(kinds=("exploding",)), ["first", "dead", "out"])
    cols = {"first": series([1.0] * 60), "dead": series(stds), "out": series([1.0] * 60)}
    assert feed(d, cols) == []


def test_a_fits_first_batch_is_no_jump_and_later_fits_need_no_warmup():
    d = Diagnoser(AlertConfig(kinds=("exploding",)), ["a"])
    assert feed(d, {"a": series(steady(30))}) == []
    d.begin_fit()  # e.g. the user rescaled the data between the fits: no jump
    assert feed(d, {"a": series([20.0, 20.0, 20.0], start=30)}, fit=2) == []
    d.begin_fit()  # the same model trained on: no warm-up, a jump at its 4th batch counts
    (alert,) = feed(d, {"a": series([20.0, 20.0, 20.0, 400.0], start=33)}, fit=3)
    assert (alert.batch, alert.fit) == (36, 3)


def test_reset_recorder_starts_over():
    d = Diagnoser(AlertConfig(kinds=("exploding",)), ["a"])
    feed(d, {"a": series(steady(30))})
    d.begin_fit()  # e.g. StatsHooks.reset(): batch indices start at 0 again
    assert feed(d, {"a": series([0.01, 0.01, 0.01, 0.2])}) == []  # warm-up again


# --- vanishing ----------------------------------------------------------------------------
def test_vanishing_far_below_the_first_layer():
    names = ["l0", "l1", "l2", "out"]
    cols = {
        "l0": series([1.0] * 40),
        "l1": series([0.3] * 40),  # 0.3x: a healthy shrink
        "l2": series([0.03] * 40),  # 0.03x, and small: vanishing
        "out": series([0.01] * 40),  # the output layer is not judged
    }
    d = Diagnoser(AlertConfig(), names)
    (alert,) = feed(d, cols)
    assert (alert.kind, alert.layer, alert.batch) == ("vanishing", "l2", 9)  # 10th batch
    assert alert.value == pytest.approx(0.03, rel=0.1)
    assert "33x below the first layer's" in alert.message and "kaiming" in alert.message


def test_vanishing_needs_a_small_std_and_patience():
    d = Diagnoser(AlertConfig(), ["l0", "l1", "out"])
    cols = {"l0": series([10.0] * 40), "l1": series([0.5] * 40), "out": series([1.0] * 40)}
    assert feed(d, cols) == []  # 1/20 of the first layer, but std 0.5: no vanishing signal
    d = Diagnoser(AlertConfig(kinds=("vanishing",)), ["l0", "l1", "out"])
    recovering = [0.01] * 3 + [0.5] * 37  # the smoothed std is back above 0.05 by batch 8
    cols = {"l0": series([1.0] * 40), "l1": series(recovering), "out": series([1.0] * 40)}
    assert feed(d, cols) == []
    d = Diagnoser(AlertConfig(kinds=("vanishing",), patience=3), ["l0", "l1", "out"])
    assert [a.batch for a in feed(d, cols)] == [2]  # patience 3


def test_with_two_layers_the_last_is_judged():
    d = Diagnoser(AlertConfig(), ["l0", "l1"])
    alerts = feed(d, {"l0": series([1.0] * 25), "l1": series([0.01] * 25)})
    assert kinds_of(alerts) == [("vanishing", "l1")]


# --- dead ---------------------------------------------------------------------------------
def test_dead_units_stay_many():
    d = Diagnoser(AlertConfig(), ["a"])
    (alert,) = feed(d, {"a": series([1.0] * 40, relu=True, dead=0.75)})
    assert (alert.kind, alert.batch) == ("dead", 9)
    assert alert.value == pytest.approx(0.75, abs=0.01)
    assert "75% of units gave nothing" in alert.message


def test_half_the_units_dead_is_flagged():
    d = Diagnoser(AlertConfig(), ["a"])
    (alert,) = feed(d, {"a": series([1.0] * 30, relu=True, dead=0.5)})
    assert alert.kind == "dead" and alert.value == pytest.approx(0.5, abs=0.01)


def test_dead_units_climb_fast():
    cols = np.vstack(
        [series([1.0] * 20, relu=True), series([1.0] * 20, start=20, relu=True, dead=0.5)]
    )
    d = Diagnoser(AlertConfig(dead_fraction=0.9), ["a"])  # the rise rule alone
    (alert,) = feed(d, {"a": cols})
    assert alert.kind == "dead" and 20 < alert.batch < 30  # the smoothed fraction rises 0.3
    assert "climbed from 0% to 3" in alert.message


def test_small_and_signed_layers_are_not_dead():
    d = Diagnoser(AlertConfig(), ["relu", "small", "signed"])
    cols = {
        "relu": series([1.0] * 40, relu=True),  # half the values zero, no unit dead
        "small": series([0.002] * 40, relu=True),  # every unit fires, at ~0.002: alive
        "signed": series([0.02] * 40),  # values of both signs: units are not judged
    }
    alerts = feed(d, cols)
    assert "dead" not in {a.kind for a in alerts}
    assert np.isnan(cols["signed"][:, Field.DEAD] / cols["signed"][:, Field.UNITS]).all()


# --- plumbing -----------------------------------------------------------------------------
def test_split_activation_and_gradient_rows_read_as_one_batch():
    """The recorder hands a batch's activation and gradient rows separately."""
    stds = [*steady(30), 20.0, 1.0]
    grads = [1e-3] * 30 + [1.0, 1e-3]
    combined = series(stds, grads=grads)
    split = []
    for row in combined:
        act, grad = row.copy(), np.zeros_like(row)
        act[[Field.G_COUNT, Field.G_M2, Field.G_ABS]] = 0
        act[Field.G_MEAN] = np.nan
        grad[[Field.BATCHES, Field.BATCH_SUM, Field.BATCH_FIRST, Field.BATCH_LAST]] = row[:4]
        grad[[Field.G_COUNT, Field.G_MEAN, Field.G_M2, Field.G_ABS]] = row[
            [Field.G_COUNT, Field.G_MEAN, Field.G_M2, Field.G_ABS]
        ]
        grad[Field.MEAN] = np.nan
        split += [act, grad]
    a = feed(Diagnoser(AlertConfig(), ["a"]), {"a": combined}, chunk=8)
    b = feed(Diagnoser(AlertConfig(), ["a"]), {"a": np.stack(split)}, chunk=16)
    assert a == b and kinds_of(a) == [("exploding", "a")]


def test_alerts_do_not_depend_on_how_batches_are_flushed():
    rng = np.random.default_rng(1)
    n = 120
    walk = np.exp(np.cumsum(rng.normal(0, 0.3, n)))  # a wandering scale...
    walk[80:83] *= 30  # ...with a spike
    cols = {
        "a": series(list(walk), grads=list(1e-3 * walk[::-1])),
        "b": series(list(0.05 * walk**2), relu=True, grads=[1e-4] * n),
        "c": np.vstack(
            [series([1.0] * 60, relu=True), series([1.0] * 60, start=60, relu=True, dead=0.8)]
        ),
    }
    runs = [feed(Diagnoser(AlertConfig(), list(cols)), cols, chunk=k) for k in (1, 7, 64)]
    assert runs[0] and runs[0] == runs[1] == runs[2]
    assert {a.kind for a in runs[0]} >= {"exploding", "dead"}


def test_alerts_come_in_batch_order():
    bad = acts(1.0)
    bad[0, 0] = np.nan
    a = series([1.0] * 10)
    b = series([1.0] * 10)
    a[7], b[3] = column(7, bad), column(3, bad)
    d = Diagnoser(AlertConfig(), ["a", "b"])
    assert [(x.layer, x.batch) for x in feed(d, {"a": a, "b": b}, chunk=10)] == [
        ("b", 3),
        ("a", 7),
    ]


def test_an_unknown_layer_is_taken_in():
    d = Diagnoser(AlertConfig(), ["a"])
    bad = acts(1.0)
    bad[0, 0] = np.nan
    alerts = d.update({"a": series([1.0] * 3), "new": column(0, bad)[None]}, epoch_of, 1)
    assert kinds_of(alerts) == [("nonfinite", "new")]
    assert d.layers == ["a", "new"]


def test_cost_per_batch_stays_flat():
    """1e5 batches of 2 layers in flushes of 64: the last flushes cost what the first did."""
    base = {n: series(steady(64, seed=i), relu=True) for i, n in enumerate(("a", "b"))}
    d = Diagnoser(AlertConfig(), list(base))
    flushes = 100_000 // 64
    times = []
    for k in range(flushes):
        new = {}
        for n, c in base.items():
            c = c.copy()
            c[:, [Field.BATCH_SUM, Field.BATCH_FIRST, Field.BATCH_LAST]] += k * 64
            new[n] = c
        t0 = time.perf_counter()
        assert d.update(new, epoch_of, 1) == []
        times.append(time.perf_counter() - t0)
    early, late = np.median(times[10:200]), np.median(times[-190:])
    assert late < 3 * early, (early, late)
    per_layer_batch = np.median(times) / (64 * 2)
    assert per_layer_batch < 200e-6  # generous: about 3-5 us here
    assert len(d._seen) == 0 and list(d._state) == ["a", "b"]


# --- in the recorder ----------------------------------------------------------------------
class Poison(nn.Module):
    """Passes its input through, except at call `at`, where it puts a NaN in it."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        return x.index_fill(1, torch.tensor([0]), math.nan) if self.calls == self.at + 1 else x


def test_recorder_alerts_logs_and_stops_on_nonfinite(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), Poison(at=5), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    caplog.set_level(logging.WARNING, logger="actwidget")
    with StatsHooks(model=model, stop_on={"nonfinite"}, flush_every=1) as hooks:
        for _ in range(20):
            model(torch.randn(8, 6)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            if hooks.should_stop:
                break
    alerts = hooks.alerts
    assert alerts and alerts[0].kind == "nonfinite" and alerts[0].batch == 5
    assert {a.layer for a in alerts} >= {"2 (Poison)", "3 (Linear)"}
    assert hooks.batches == 6  # stopped at the boundary after the NaN batch
    assert any("NaN/inf" in r.getMessage() for r in caplog.records)


# --- the origin of NaN/inf, and reading many alerts -------------------------------------------
def test_the_origin_of_nan_is_the_first_layer_in_forward_order_at_the_first_bad_batch():
    names = ["a", "b", "c", "d"]  # hooked order
    bad = acts(1.0)
    bad[:, :4] = np.nan
    cols = {n: series([1.0] * 12) for n in names}
    for n in ("b", "c", "d"):  # b, c, d go bad at batch 6; a (upstream) only at batch 7
        cols[n][6] = column(6, bad)
    cols["a"][7] = column(7, bad)
    d = Diagnoser(AlertConfig(kinds=("nonfinite",)), names)
    d.set_order(["a", "c", "b", "d"])  # the forward pass calls c before b
    alerts = feed(d, cols, chunk=4)
    assert [(a.layer, a.batch, a.origin) for a in alerts] == [
        ("c", 6, True), ("b", 6, False), ("d", 6, False), ("a", 7, False),
    ]  # fmt: skip
    assert "first appeared here (2 downstream layers followed)" in alerts[0].message
    assert "downstream of c" in alerts[1].message
    (line,) = summarize(alerts, ["a", "c", "b", "d"])
    assert line.origin == "c" and line.text.startswith("NaN/inf first appeared in c at batch 6")
    assert "3 of 4 layers followed" in line.text and line.text.endswith("or add normalisation")
    assert headline(alerts, names).origin == "c"


def test_many_layers_of_one_kind_read_as_one_line():
    names = [f"blocks.{i}" for i in range(98)]
    alerts = [Alert("dead", n, 19 + i % 3, 0, 0.5 + i / 200, f"{n}: dead", 1) for i, n in
              enumerate(names[5:95])]  # fmt: skip
    alerts.append(Alert("exploding", "blocks.3", 40, 0, 12.0, "blocks.3: jumped", 1))
    lines = summarize(alerts, names)
    assert [x.kind for x in lines] == ["dead", "exploding"]
    dead = lines[0]
    assert dead.text == ("dead units in 90 of 98 layers (5-94), from batch 19 (worst: "
                         "blocks.94); lower the learning rate, use kaiming init, LeakyReLU "
                         "or normalisation")  # fmt: skip
    assert len(dead.alerts) == 90 and dead.worst == "blocks.94"
    assert lines[1].text == "blocks.3: jumped"  # one alert: its own message
    # The header: the earliest unacknowledged alert of the latest fit.
    assert headline(alerts, names).kind == "dead"
    assert headline(alerts, names, seen=90).kind == "exploding"
    assert headline(alerts, names, seen=91) is None


def test_stop_on_ends_a_fast_loop_within_one_batch():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    hooks = StatsHooks(model=model, stop_on={"nonfinite"}, flush_every=64, flush_interval=1e9)
    ran = []
    with hooks:
        for i in range(200):
            x = torch.randn(16, 4)
            if i >= 37:
                x[0, 0] = math.nan
            model(x).sum().backward()
            ran.append(i)
            hooks.end_batch()
            if hooks.should_stop:
                break
    assert ran[-1] == 37  # stopped at the boundary of the batch that named it
    assert hooks.status.state.value == "stopped"
    assert [a.batch for a in hooks.alerts if a.origin] == [37]
