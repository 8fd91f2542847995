"""Alerts: rules over the recorded columns that say when a layer goes wrong, as it happens.

Headless and incremental: `Diagnoser.update` sees only the new one-batch columns of each
flush and keeps a fixed handful of numbers per layer, so its cost does not grow with the run.

The rules (thresholds are `AlertConfig` fields, their defaults in brackets):

- "nonfinite": a NaN or inf in a layer's activation, or in the gradient flowing back into
  it, at the first batch where one appears (the recorder detects them exactly). A NaN/inf
  in a gradient alone is reported, at its batch, once it is confirmed: when an activation
  (of any layer) turns non-finite in that batch or a later one while the gradient stays
  non-finite, or when it stays so for `patience` batches. An isolated one is not: fp16
  mixed precision's loss scaler makes some on purpose, and skips those optimizer steps.
- "exploding": a layer's activation std jumps to `jump` (10) times its recent level (an
  average over about the last three batches, in log scale), or so does the std of the
  gradient flowing back into it (scaled by the batch's size, so that a short last batch is
  no jump); or the activation std grows to `growth` (1000) times its level when the fit
  began (in a model's first fit: at the end of the warm-up). The jump rules skip a model's
  first `warmup` (10) batches, when every layer grows fast from its init. Levels below 1e-3
  times the first hooked layer's (activations) or 1e-2 times the last hooked layer's
  (gradients) count as that floor, so that a dead layer's flicker is no jump.
- "vanishing": a layer's smoothed activation std (about the last ten batches) stays below
  `vanishing_ratio` (0.1) times the first hooked layer's, and below `vanishing_std` (0.05),
  for `patience` (20) batches in a row: the signal shrinks toward nothing with depth, or
  over time. The last hooked layer is not judged when there are three or more: it is
  usually the output, whose logits start small by design (PyTorch's default init, zero-init
  or scaled-down heads) and grow as the model learns. (A default-init LSTM's outputs, about
  0.1 of an N(0, 1) embedding's, are small but no vanishing signal; hence `vanishing_std`.)
- "dead", only for layers whose outputs are non-negative (ReLU-family): the smoothed
  fraction of units (channels, or features) whose largest value over the whole batch was
  <= near_zero stays at `dead_fraction` (0.6) or more for `patience` batches, or climbs by
  `dead_rise` (0.4) above its lowest level in the fit; or the smoothed fraction of all values
  near zero stays at `near_zero_fraction` (0.99) or more for `patience` batches. A batch
  counts as non-negative when its mean is at least 0.75 times the mean |a| that its |a|
  histogram's lower bin edges give (exactly 1x or more for non-negative values, about 0 for
  signed ones). Signed layers (Linear, Conv, logits, Tanh...) are not judged: there "never
  above near_zero" only means a unit's values stayed at or below it, and their smallness is
  the vanishing rule's business. Small batches give more dead units per batch (a unit has
  fewer chances to fire); a softmax layer's outputs look dead (do not hook one, or drop
  "dead" from `kinds`).

Each (kind, layer) alerts once per fit. Levels carry over from one fit to the next: a fit
usually trains the same model on (a fit's first batch is never a jump, though: nothing
trained between the fits). For a new model, start over with a new recorder or `reset()`
(batch indices that go back to 0 start the rules over too). The rules judge every batch
they are given: record training batches only (the default, `on_valid=False`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import HIST, Alert, Field, StatsConfig, merge_groups

__all__ = ["KINDS", "AlertConfig", "Diagnoser"]

KINDS = ("nonfinite", "exploding", "vanishing", "dead")

_RECENT = 0.3  # weight of the newest batch in a layer's recent level (~ the last 3 batches)
_SMOOTH = 0.1  # weight of the newest batch in the smoothed series (~ the last 10 batches)
_ACT_FLOOR = math.log(1e-3)  # activation levels floored at 1e-3 x the first layer's
_GRAD_FLOOR = math.log(1e-2)  # gradient levels floored at 1e-2 x the last layer's
_NONNEG = 0.75  # mean >= this x (mean |a| from the lower bin edges): non-negative outputs
_LOG_ZERO = -700.0  # the log level of a zero std
_MAX_LOG = 700.0  # ratios are capped at exp(700) (no float overflow)
_FIX_LR = "lower the learning rate, clip gradients (clip_grad_norm_) or add normalisation"
_FIX_INIT = "use kaiming init (nn.init.kaiming_normal_) or add normalisation (BatchNorm)"
_FIX_DEAD = "lower the learning rate, use kaiming init, LeakyReLU or normalisation"

_Fire = Callable[..., None]  # fire(kind, batch, value, message, layer="this one")


def _check(name: str, value: Any, lo: float, hi: float, *, open_lo: bool, integer: bool) -> None:
    """Raise TypeError / ValueError, saying the allowed range, unless lo <(=) value <= hi."""
    where = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
    what = "an int" if integer else "a number"
    types = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, types):
        raise TypeError(f"{name} must be {what} in {where}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v > hi or (v <= lo if open_lo else v < lo):
        raise ValueError(f"{name} must be {what} in {where}, got {value!r}")


@dataclass(frozen=True)
class AlertConfig:
    """Which alert rules run, and their thresholds (the module docstring and the README's
    "Alerts" section say what each rule looks at).

    - `kinds`: the rules that run: any of "nonfinite", "exploding", "vanishing", "dead".
    - `jump` (> 1): exploding when a std reaches this many times its recent level.
    - `growth` (> 1): exploding when an activation std reaches this many times its level
      when the fit began.
    - `warmup` (>= 0): batches at a model's start that the jump rules skip.
    - `vanishing_ratio` (0 to 1): vanishing below this fraction of the first layer's std...
    - `vanishing_std` (> 0): ...and below this std.
    - `patience` (>= 1): batches in a row that the vanishing and dead conditions must hold.
    - `dead_fraction` (0 to 1): dead when this fraction of units stays dead.
    - `dead_rise` (0 to 1): dead when the dead fraction climbs this much within a fit.
    - `near_zero_fraction` (0 to 1): dead when this fraction of all values stays near zero.
    """

    kinds: tuple[str, ...] = KINDS
    jump: float = 10.0
    growth: float = 1000.0
    warmup: int = 10
    vanishing_ratio: float = 0.1
    vanishing_std: float = 0.05
    patience: int = 20
    dead_fraction: float = 0.6
    dead_rise: float = 0.4
    near_zero_fraction: float = 0.99

    def __post_init__(self) -> None:
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown alert kinds {sorted(unknown)}; known: {list(KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        _check("jump", self.jump, 1, 1e30, open_lo=True, integer=False)
        _check("growth", self.growth, 1, 1e30, open_lo=True, integer=False)
        _check("warmup", self.warmup, 0, 1e9, open_lo=False, integer=True)
        _check("vanishing_ratio", self.vanishing_ratio, 0, 1, open_lo=True, integer=False)
        _check("vanishing_std", self.vanishing_std, 0, 1e30, open_lo=True, integer=False)
        _check("patience", self.patience, 1, 1e9, open_lo=False, integer=True)
        for name in ("dead_fraction", "dead_rise", "near_zero_fraction"):
            _check(name, getattr(self, name), 0, 1, open_lo=True, integer=False)


class _Layer:
    """What the rules remember of one layer: a fixed handful of numbers."""

    __slots__ = (
        "dead",
        "dead_low",
        "dead_run",
        "fresh",
        "gbad_at",
        "gbad_run",
        "gfresh",
        "grad",
        "grad_n",
        "grad_numel",
        "level",
        "n",
        "near",
        "near_run",
        "ref",
        "smooth",
        "step",
        "vanish_run",
    )

    def __init__(self) -> None:
        self.step = -1  # the last batch index seen
        self.fresh = self.gfresh = True  # the next activation / gradient is its fit's first
        self.n = 0  # activation batches since the warm-up (re)started
        self.level = math.nan  # recent level: EMA (_RECENT) of log std
        self.smooth = math.nan  # smoothed level: EMA (_SMOOTH) of log std
        self.ref = math.nan  # log std when the fit began, for "growth"
        self.grad_n = 0
        self.grad = math.nan  # recent level of log(gradient std x batch-size ratio)
        self.grad_numel = 0.0  # the gradient's first size: the batch-size reference
        self.dead = math.nan  # smoothed dead-unit fraction (non-negative batches only)
        self.dead_low = math.inf  # its lowest value in this fit
        self.near = math.nan  # smoothed near-zero fraction (non-negative batches only)
        self.dead_run = self.near_run = self.vanish_run = 0
        self.gbad_at = -1  # the first batch of a run of non-finite gradients, unconfirmed
        self.gbad_run = 0  # its length so far


class Diagnoser:
    """Turns new columns into alerts; each (kind, layer) alerts once per fit.

    `layers`: the hooked layers' names in hooked order (the first is the vanishing rule's
    reference). `stats_config`: how the |a| histogram is binned, to tell non-negative layers
    from signed ones; None assumes `StatsConfig()`'s bins when the column width matches
    (with other bins and no `stats_config`, only a negative mean marks a layer signed).
    """

    def __init__(
        self,
        config: AlertConfig,
        layers: Iterable[str],
        stats_config: StatsConfig | None = None,
    ) -> None:
        self.config = config
        self.layers = list(layers)
        self._state = {name: _Layer() for name in self.layers}
        self._seen: set[tuple[str, str]] = set()
        self._kinds = frozenset(config.kinds)
        self._log_jump = math.log(config.jump)
        self._log_growth = math.log(config.growth)
        self._log_vanishing_ratio = math.log(config.vanishing_ratio)
        self._log_vanishing_std = math.log(config.vanishing_std)
        self._edges = np.asarray((stats_config or StatsConfig()).edges[:-1], float)

    def begin_fit(self) -> None:
        """A new fit: every alert may fire again; its first batch is no jump."""
        self._seen.clear()
        for s in self._state.values():
            s.fresh = s.gfresh = True
            s.dead_low = math.inf
            s.gbad_at, s.gbad_run = -1, 0

    def update(
        self,
        new: Mapping[str, np.ndarray],
        epoch_of: Callable[[int], int | None],
        fit: int,
    ) -> list[Alert]:
        """Alerts raised by the new one-batch columns of each layer, in batch order.

        A batch's activation and gradient may come in separate rows (and flushes); rows are
        judged batch by batch, layer by layer in hooked order, so that the alerts do not
        depend on how the batches were split into flushes."""
        for name in new:
            if name not in self._state:
                self._state[name] = _Layer()
                self.layers.append(name)
        order = [n for n in self.layers if n in new and len(new[n])]
        if not order:
            return []
        rows, layer_of = _batch_major([np.asarray(new[n], float) for n in order])
        states = [self._state[n] for n in order]
        first, last = self._state[self.layers[0]], self._state[self.layers[-1]]
        output = last if len(self.layers) >= 3 else None  # not judged by "vanishing"
        raised: list[Alert] = []
        seen, kinds = self._seen, self._kinds
        name = ""

        def fire(kind: str, batch: int, value: float, msg: str, layer: str = "") -> None:
            layer = layer or name
            if kind in kinds and (kind, layer) not in seen:
                seen.add((kind, layer))
                raised.append(
                    Alert(kind, layer, batch, epoch_of(batch), value, f"{layer}: {msg}", fit)
                )

        for row in zip(layer_of.tolist(), *self._derived(rows), strict=True):
            i, step, act, grad, bad, gbad, std, near, dead, pos, gcount, gstd = row
            s, name, b = states[i], order[i], int(step)
            if b < s.step:  # batch indices went back: the recorder was reset, start over
                s.__init__()
            s.step = b
            if bad > 0:
                self._nonfinite(fire, b, bad)
            if grad:
                self._nonfinite_grad(fire, s, b, gbad > 0)
            if act and bad == 0 and math.isfinite(std):  # a batch's activation, then gradient
                lv = max(math.log(std), _LOG_ZERO) if std > 0 else _LOG_ZERO
                self._exploding(fire, s, first, b, std, lv)
                if s is not first and s is not output:
                    self._vanishing(fire, s, first.smooth, b)
                if pos:
                    self._dead(fire, s, b, dead, near)
                else:
                    s.dead_run = s.near_run = 0
            if grad and gcount > 1 and gbad == 0 and gstd == gstd:
                self._grad(fire, s, last, b, gstd, gcount)
        if len(raised) > 1:  # confirmed gradient alerts may name an earlier batch
            where = {n: i for i, n in enumerate(self.layers)}
            raised.sort(key=lambda a: (a.batch, where[a.layer]))
        return raised

    def _derived(self, r: np.ndarray) -> list[list[Any]]:
        """The per-batch series the rules read, as plain lists (fast to loop over)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            std = _std(r[:, Field.M2], r[:, Field.COUNT])
            near = r[:, Field.NEAR_ZERO] / r[:, Field.NUMEL]
            dead = r[:, Field.DEAD] / r[:, Field.UNITS]
            gstd = _std(r[:, Field.G_M2], r[:, Field.G_COUNT])
            if len(self._edges) == r.shape[1] - HIST:
                mean_abs = (r[:, HIST:] @ self._edges) / np.maximum(r[:, Field.COUNT], 1.0)
            else:  # bins unknown: only a negative mean says "signed"
                mean_abs = np.zeros(len(r))
            nonneg = r[:, Field.MEAN] >= _NONNEG * mean_abs
        series = [
            r[:, Field.STEP_FIRST],
            r[:, Field.NUMEL] > 0,
            (r[:, Field.G_COUNT] > 0) | (r[:, Field.G_NONFINITE] > 0),
            r[:, Field.NONFINITE],
            r[:, Field.G_NONFINITE],
            std,
            near,
            dead,
            nonneg,
            r[:, Field.G_COUNT],
            gstd,
        ]
        return [x.tolist() for x in series]

    # --- the rules: one batch of one layer each; fire(kind, batch, value, message) --------
    def _nonfinite(self, fire: _Fire, b: int, bad: float) -> None:
        """NaN/inf in this activation; it also confirms every layer's pending gradient one."""
        msg = f"NaN/inf in the activation at batch {b} ({bad:.0f} values); {_FIX_LR}"
        fire("nonfinite", b, bad, msg)
        for layer, s in self._state.items():
            if s.gbad_at >= 0:
                at, s.gbad_at, s.gbad_run = s.gbad_at, -1, 0
                msg = f"NaN/inf in the gradient at batch {at}, then in activations; {_FIX_LR}"
                fire("nonfinite", at, 1.0, msg, layer)

    def _nonfinite_grad(self, fire: _Fire, s: _Layer, b: int, bad: bool) -> None:
        """NaN/inf in this gradient: pending until confirmed (see the module docstring)."""
        if not bad:
            s.gbad_at, s.gbad_run = -1, 0  # an isolated overflow, e.g. a loss scaler's
            return
        if s.gbad_at < 0:
            s.gbad_at = b
        s.gbad_run += 1
        if s.gbad_run >= self.config.patience:
            msg = (
                f"NaN/inf in the gradient in every batch since batch {s.gbad_at} "
                f"({s.gbad_run} batches); {_FIX_LR}"
            )
            fire("nonfinite", s.gbad_at, 1.0, msg)

    def _grad(self, fire: _Fire, s: _Layer, last: _Layer, b: int, gstd: float, n: float) -> None:
        """Exploding gradients: the std times this batch's size over the first batch's (a
        mean-reduced loss gives a short batch larger gradients) against its recent level."""
        if not s.grad_numel:
            s.grad_numel = n
        g = math.log(gstd * n / s.grad_numel) if gstd > 0 else _LOG_ZERO
        g = g if g > _LOG_ZERO else _LOG_ZERO
        if s.gfresh or s.grad != s.grad:
            s.grad = g
            s.gfresh = False
        else:
            floor = last.grad + _GRAD_FLOOR if last.grad == last.grad else _LOG_ZERO
            up = g - (s.grad if s.grad > floor else floor)
            if up >= self._log_jump and s.grad_n >= self.config.warmup:
                ratio = math.exp(min(up, _MAX_LOG))
                fire(
                    "exploding",
                    b,
                    ratio,
                    f"gradient std jumped to {gstd:.3g} at batch {b}, {ratio:.0f}x its recent "
                    f"level; {_FIX_LR}",
                )
            s.grad += _RECENT * (g - s.grad)
        s.grad_n += 1

    def _exploding(
        self, fire: _Fire, s: _Layer, first: _Layer, b: int, std: float, lv: float
    ) -> None:
        """A jump far above the recent level, or growth far above the fit's start."""
        warm = s.n >= self.config.warmup
        if s.fresh or s.level != s.level:  # a fit's first batch: no jump, a new start level
            s.level = lv
            s.ref = lv if warm else math.nan
        else:
            floor = first.smooth + _ACT_FLOOR if first.smooth == first.smooth else _LOG_ZERO
            up = lv - (s.level if s.level > floor else floor)
            if up >= self._log_jump and warm:
                ratio = math.exp(min(up, _MAX_LOG))
                fire(
                    "exploding",
                    b,
                    ratio,
                    f"activation std jumped to {std:.3g} at batch {b}, {ratio:.0f}x its recent "
                    f"level; {_FIX_LR}",
                )
            grown = lv - (s.ref if s.ref > floor else floor) if s.ref == s.ref else 0.0
            if grown >= self._log_growth:  # (s.ref is NaN until the warm-up ends)
                ratio = math.exp(min(grown, _MAX_LOG))
                fire(
                    "exploding",
                    b,
                    ratio,
                    f"activation std grew to {std:.3g} at batch {b}, {ratio:.0f}x its level "
                    f"when the fit began; {_FIX_LR}",
                )
            s.level += _RECENT * (lv - s.level)
        s.fresh = False
        s.n += 1
        if s.ref != s.ref and s.n >= self.config.warmup:
            s.ref = s.level  # in a model's first fit, growth counts from the warm-up's end
        s.smooth = lv if s.smooth != s.smooth else s.smooth + _SMOOTH * (lv - s.smooth)

    def _vanishing(self, fire: _Fire, s: _Layer, first_level: float, b: int) -> None:
        """Far below the first hooked layer (both smoothed), batch after batch."""
        below = s.smooth - first_level  # NaN (no first level): not below
        if below < self._log_vanishing_ratio and s.smooth < self._log_vanishing_std:
            s.vanish_run += 1
        else:
            s.vanish_run = 0
        if s.vanish_run >= self.config.patience:
            rel = math.exp(below)
            fire(
                "vanishing",
                b,
                rel,
                f"activation std {math.exp(s.smooth):.2g} is {1 / rel:.0f}x below the first "
                f"layer's ({math.exp(first_level):.2g}) for {s.vanish_run} batches, at batch "
                f"{b}; {_FIX_INIT}",
            )

    def _dead(self, fire: _Fire, s: _Layer, b: int, dead: float, near: float) -> None:
        """Dead units in a non-negative layer: many, or ever more; or all values near zero."""
        cfg = self.config
        if dead == dead:
            s.dead = dead if s.dead != s.dead else s.dead + _SMOOTH * (dead - s.dead)
            if s.dead < s.dead_low:
                s.dead_low = s.dead
            s.dead_run = s.dead_run + 1 if s.dead >= cfg.dead_fraction else 0
            if s.dead_run >= cfg.patience:
                fire(
                    "dead",
                    b,
                    s.dead,
                    f"{s.dead:.0%} of units stayed <= near_zero over whole batches for "
                    f"{s.dead_run} batches, at batch {b} (dead units); {_FIX_DEAD}",
                )
            elif s.dead - s.dead_low >= cfg.dead_rise:
                fire(
                    "dead",
                    b,
                    s.dead,
                    f"units dead over whole batches climbed from {s.dead_low:.0%} to "
                    f"{s.dead:.0%} at batch {b}; {_FIX_DEAD}",
                )
        if near == near:
            s.near = near if s.near != s.near else s.near + _SMOOTH * (near - s.near)
            s.near_run = s.near_run + 1 if s.near >= cfg.near_zero_fraction else 0
            if s.near_run >= cfg.patience:
                fire(
                    "dead",
                    b,
                    s.near,
                    f"{s.near:.1%} of all values near zero for {s.near_run} batches, at batch "
                    f"{b}: the layer is all but dead; {_FIX_DEAD}",
                )


def _std(m2: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.where(n > 1, m2 / np.maximum(n - 1, 1), np.nan))


def _batch_major(blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All layers' rows in (batch, layer) order, and each row's index in `blocks`.

    Repeated calls of a layer within one batch (several activation rows, or several
    gradient rows, of one batch) are merged exactly first, as the store does."""
    rows = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    layer_of = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
    step = rows[:, Field.STEP_FIRST]
    by_layer = np.lexsort((step, layer_of))
    if (by_layer[1:] < by_layer[:-1]).any():
        rows, layer_of, step = rows[by_layer], layer_of[by_layer], step[by_layer]
    same = (step[1:] == step[:-1]) & (layer_of[1:] == layer_of[:-1])
    if same.any() and (_repeats(same, rows[:, Field.NUMEL] > 0) or _repeats(same, _has_grad(rows))):
        starts = np.flatnonzero(np.r_[True, ~same])
        rows, layer_of, step = merge_groups(rows, starts), layer_of[starts], step[starts]
    by_batch = np.lexsort((layer_of, step))  # stable: a batch's activation before its gradient
    return rows[by_batch], layer_of[by_batch]


def _has_grad(rows: np.ndarray) -> np.ndarray:
    return (rows[:, Field.G_COUNT] > 0) | (rows[:, Field.G_NONFINITE] > 0)


def _repeats(same: np.ndarray, kind: np.ndarray) -> bool:
    """Whether two rows of one kind share a (layer, batch) group; `same[i]`: rows i and i+1
    share one. Rows of other kinds may sit between them."""
    group = np.cumsum(np.r_[True, ~same])
    g = group[kind]
    return bool((g[1:] == g[:-1]).any())
