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
  began (in a model's first fit: at the end of the warm-up). In a model's first `warmup`
  (10) batches, when every layer grows fast from its init, an activation jump must reach
  `jump`**2 (100x), and gradient jumps are not judged. Levels below 1e-3
  times the first hooked layer's (activations) or 1e-2 times the last hooked layer's
  (gradients) count as that floor, so that a dead layer's flicker is no jump.
- "vanishing": a layer's smoothed activation std (about the last ten batches) stays below
  `vanishing_ratio` (0.1) times the first hooked layer's, and below `vanishing_std` (0.05),
  for `patience` (20) batches in a row: the signal shrinks toward nothing with depth, or
  over time. The last hooked layer is not judged when there are three or more: it is
  usually the output, whose logits start small by design (PyTorch's default init, zero-init
  or scaled-down heads) and grow as the model learns. (A default-init LSTM's outputs, about
  0.1 of an N(0, 1) embedding's, are small but no vanishing signal; hence `vanishing_std`.)
- "dead": units (channels, or features) that gave (almost) nothing over a whole batch: no
  value above 1e-4 of the mean unit's response (`StatsConfig`'s dead units, judged only in
  batches whose values are all >= 0: ReLU-like outputs; a uniformly small layer is no dead
  layer, that is "vanishing"'s business). Alerted when the smoothed fraction of dead units
  stays at `dead_fraction` (0.3) or more for `patience` batches, or climbs by `dead_rise`
  (0.3) above its lowest level in the fit. Small batches give more dead units per batch (a
  unit has fewer chances to fire); a softmax layer's small outputs are no dead units.

Where several layers go wrong together, `summarize` reads them as one line per kind ("dead
units in 90 of 98 layers (5-97), from batch 19"), and for NaN/inf it names the origin: the
first layer, in forward order, whose output went non-finite at the first bad batch (its
alert has `origin=True`: "NaN/inf first appeared here; N downstream layers followed").

Each (kind, layer) alerts once per fit. Levels carry over from one fit to the next: a fit
usually trains the same model on (a fit's first batch is never a jump, though: nothing
trained between the fits). For a new model, start over with a new recorder or `reset()`
(batch indices that go back to 0 start the rules over too). The rules judge every batch
they are given: record training batches only (the default, `on_valid=False`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .stats import Alert, Field, merge_groups

__all__ = ["KINDS", "AlertConfig", "Diagnoser", "Summary", "headline", "summarize"]

KINDS = ("nonfinite", "exploding", "vanishing", "dead")

_RECENT = 0.3  # weight of the newest batch in a layer's recent level (~ the last 3 batches)
_SMOOTH = 0.1  # weight of the newest batch in the smoothed series (~ the last 10 batches)
_ACT_FLOOR = math.log(1e-3)  # activation levels floored at 1e-3 x the first layer's
_GRAD_FLOOR = math.log(1e-2)  # gradient levels floored at 1e-2 x the last layer's
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
    - `warmup` (>= 0): batches at a model's start where an activation jump must be `jump`**2
      and gradient jumps are not judged.
    - `vanishing_ratio` (0 to 1): vanishing below this fraction of the first layer's std...
    - `vanishing_std` (> 0): ...and below this std.
    - `patience` (>= 1): batches in a row that the vanishing and dead conditions must hold.
    - `dead_fraction` (0 to 1): dead when this fraction of units stays dead.
    - `dead_rise` (0 to 1): dead when the dead fraction climbs this much within a fit.
    """

    kinds: tuple[str, ...] = KINDS
    jump: float = 10.0
    growth: float = 1000.0
    warmup: int = 10
    vanishing_ratio: float = 0.1
    vanishing_std: float = 0.05
    patience: int = 10
    dead_fraction: float = 0.3
    dead_rise: float = 0.3

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
        for name in ("dead_fraction", "dead_rise"):
            _check(name, getattr(self, name), 0, 1, open_lo=True, integer=False)


class _Layer:
    """What the rules remember of one layer: a fixed handful of numbers."""

    __slots__ = (
        "batch",
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
        "ref",
        "smooth",
        "vanish_run",
    )

    def __init__(self) -> None:
        self.batch = -1  # the last batch index seen
        self.fresh = self.gfresh = True  # the next activation / gradient is its fit's first
        self.n = 0  # activation batches since the warm-up (re)started
        self.level = math.nan  # recent level: EMA (_RECENT) of log std
        self.smooth = math.nan  # smoothed level: EMA (_SMOOTH) of log std
        self.ref = math.nan  # log std when the fit began, for "growth"
        self.grad_n = 0
        self.grad = math.nan  # recent level of log(gradient std x batch-size ratio)
        self.grad_numel = 0.0  # the gradient's first size: the batch-size reference
        self.dead = math.nan  # smoothed dead-unit fraction (batches whose units were judged)
        self.dead_low = math.inf  # its lowest value in this fit
        self.dead_run = self.vanish_run = 0
        self.gbad_at = -1  # the first batch of a run of non-finite gradients, unconfirmed
        self.gbad_run = 0  # its length so far


class Diagnoser:
    """Turns new columns into alerts; each (kind, layer) alerts once per fit.

    `layers`: the hooked layers' names in hooked order (the first is the vanishing rule's
    reference). `set_order` gives their forward order, when known (the recorder learns it
    from the first batch): the origin of NaN/inf is the first layer in forward order.
    """

    def __init__(self, config: AlertConfig, layers: Iterable[str]) -> None:
        self.config = config
        self.layers = list(layers)
        self._state = {name: _Layer() for name in self.layers}
        self._seen: set[tuple[str, str]] = set()
        self._kinds = frozenset(config.kinds)
        self._log_jump = math.log(config.jump)
        self._log_growth = math.log(config.growth)
        self._log_vanishing_ratio = math.log(config.vanishing_ratio)
        self._log_vanishing_std = math.log(config.vanishing_std)
        self._forward: dict[str, int] = {n: i for i, n in enumerate(self.layers)}
        self._origin: str | None = None  # this fit's NaN/inf origin, once seen

    def set_order(self, forward: Iterable[str]) -> None:
        """The layers in the order the forward pass calls them (others keep hooked order,
        after them)."""
        order = [n for n in forward if n in self._state]
        rest = [n for n in self.layers if n not in set(order)]
        self._forward = {n: i for i, n in enumerate(order + rest)}

    def begin_fit(self) -> None:
        """A new fit: every alert may fire again; its first batch is no jump."""
        self._origin = None
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
        act_nan: list[Alert] = []  # raised for NaN/inf in an activation
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
            i, step, act, grad, bad, gbad, std, dead, judged, gcount, gstd = row
            s, name, b = states[i], order[i], int(step)
            if b < s.batch:  # batch indices went back: the recorder was reset, start over
                s.__init__()
            s.batch = b
            if bad > 0:
                before = len(raised)
                self._nonfinite(fire, b, bad)
                if len(raised) > before and raised[before].layer == name:
                    act_nan.append(raised[before])
            if grad:
                self._nonfinite_grad(fire, s, b, gbad > 0)
            if act and bad == 0 and math.isfinite(std):  # a batch's activation, then gradient
                lv = max(math.log(std), _LOG_ZERO) if std > 0 else _LOG_ZERO
                self._exploding(fire, s, first, b, std, lv)
                if s is not first and s is not output:
                    self._vanishing(fire, s, first.smooth, b)
                if judged:
                    self._dead(fire, s, b, dead)
                else:
                    s.dead_run = 0
            if grad and gcount > 1 and gbad == 0 and gstd == gstd:
                self._grad(fire, s, last, b, gstd, gcount)
        if len(raised) > 1:  # confirmed gradient alerts may name an earlier batch
            where = self._forward
            raised.sort(key=lambda a: (a.batch, where.get(a.layer, len(where))))
        return self._origins(raised, act_nan)

    def _origins(self, raised: list[Alert], act_nan: list[Alert]) -> list[Alert]:
        """Name the origin of this fit's NaN/inf: of the layers whose activations went
        non-finite at its first bad batch, the first in forward order; the others followed."""
        if not act_nan:
            return raised
        new: dict[int, Alert] = {}
        if self._origin is None:
            first = min(a.batch for a in act_nan)
            at_first = [a for a in act_nan if a.batch == first]
            origin = min(at_first, key=lambda a: self._forward.get(a.layer, len(self._forward)))
            self._origin = origin.layer
            n = len(at_first) - 1
            where = f"; it first appeared here ({n} downstream layer{'s' * (n != 1)} followed);"
            msg = origin.message.replace(f"; {_FIX_LR}", f"{where} {_FIX_LR}")
            new[id(origin)] = origin._replace(origin=True, message=msg)
        for a in act_nan:
            if id(a) not in new:
                msg = a.message.replace(f"; {_FIX_LR}", f"; downstream of {self._origin}")
                new[id(a)] = a._replace(message=msg)
        return [new.get(id(a), a) for a in raised]

    def _derived(self, r: np.ndarray) -> list[list[Any]]:
        """The per-batch series the rules read, as plain lists (fast to loop over)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            std = _std(r[:, Field.M2], r[:, Field.COUNT])
            dead = r[:, Field.DEAD] / r[:, Field.UNITS]
            gstd = _std(r[:, Field.G_M2], r[:, Field.G_COUNT])
        series = [
            r[:, Field.BATCH_FIRST],
            r[:, Field.NUMEL] > 0,
            (r[:, Field.G_COUNT] > 0) | (r[:, Field.G_NONFINITE] > 0),
            r[:, Field.NONFINITE],
            r[:, Field.G_NONFINITE],
            std,
            dead,
            r[:, Field.UNITS] > 0,  # units judged: values all >= 0 in that batch
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
            if up >= (self._log_jump if warm else 2 * self._log_jump):  # warm-up: jump**2
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

    def _dead(self, fire: _Fire, s: _Layer, b: int, dead: float) -> None:
        """Dead units (in a batch whose units were judged): many, or ever more."""
        cfg = self.config
        if dead != dead:
            return
        s.dead = dead if s.dead != s.dead else s.dead + _SMOOTH * (dead - s.dead)
        if s.dead < s.dead_low:
            s.dead_low = s.dead
        s.dead_run = s.dead_run + 1 if s.dead >= cfg.dead_fraction else 0
        if s.dead_run >= cfg.patience:
            fire(
                "dead",
                b,
                s.dead,
                f"{s.dead:.0%} of units gave nothing over whole batches for {s.dead_run} "
                f"batches, at batch {b} (dead units); {_FIX_DEAD}",
            )
        elif s.dead - s.dead_low >= cfg.dead_rise:
            fire(
                "dead",
                b,
                s.dead,
                f"units that gave nothing over whole batches climbed from {s.dead_low:.0%} "
                f"to {s.dead:.0%} at batch {b}; {_FIX_DEAD}",
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
    step = rows[:, Field.BATCH_FIRST]
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


# --- reading many alerts: one line per kind, the cause first ----------------------------------
_PHRASE = {
    "nonfinite": "NaN/inf",
    "exploding": "exploding activations",
    "vanishing": "vanishing activations",
    "dead": "dead units",
}
_FIX = {"nonfinite": _FIX_LR, "exploding": _FIX_LR, "vanishing": _FIX_INIT, "dead": _FIX_DEAD}
GROUP = 4  # alerts of one kind in this many layers or more read as one line


class Summary(NamedTuple):
    """One line about alerts of one kind in one fit: a single alert, or a group of them.

    `layers` in forward order; `origin`: where NaN/inf began (nonfinite only); `worst`: the
    layer whose alert value is most extreme (the largest jump, the most dead units, the
    smallest std)."""

    kind: str
    fit: int
    batch: int  # the first alert's batch
    layers: tuple[str, ...]
    origin: str | None
    worst: str
    text: str
    alerts: tuple[Alert, ...]


def summarize(
    alerts: Sequence[Alert], layers: Sequence[str] = (), group: int = GROUP
) -> list[Summary]:
    """`alerts` as lines: per fit and kind, one line for `group` or more layers ("dead units
    in 90 of 98 layers (5-97), from batch 19"; NaN/inf names its origin), else a line per
    alert (its message). `layers`: every recorded layer, in forward order (for the counts
    and the positions). In order of first batch."""
    where = {n: i for i, n in enumerate(layers)}
    by: dict[tuple[int, str], list[Alert]] = {}
    for a in alerts:
        by.setdefault((a.fit, a.kind), []).append(a)
    out: list[Summary] = []
    for (fit, kind), mine in by.items():
        mine = sorted(mine, key=lambda a: (a.batch, where.get(a.layer, len(where))))
        origin = next((a.layer for a in mine if a.origin), None)
        worst = (min if kind == "vanishing" else max)(mine, key=lambda a: a.value).layer
        if len(mine) < group:
            out += [Summary(kind, fit, a.batch, (a.layer,), origin if a.origin else None,
                            a.layer, a.message, (a,)) for a in mine]  # fmt: skip
            continue
        names = tuple(sorted({a.layer for a in mine}, key=lambda n: where.get(n, len(where))))
        total = len(layers) or len(names)
        span = _ranges([where[n] for n in names if n in where])
        span = f" ({span})" if span else ""
        if kind == "nonfinite" and origin is not None:
            text = (f"NaN/inf first appeared in {origin} at batch {mine[0].batch}; "
                    f"{len(names) - 1} of {total} layers followed{span}")  # fmt: skip
        else:
            text = (f"{_PHRASE[kind]} in {len(names)} of {total} layers{span}, from batch "
                    f"{mine[0].batch} (worst: {worst})")  # fmt: skip
        text += f"; {_FIX[kind]}"
        out.append(Summary(kind, fit, mine[0].batch, names, origin, worst, text, tuple(mine)))
    return sorted(out, key=lambda x: (x.fit, x.batch, x.kind != "nonfinite"))


def headline(alerts: Sequence[Alert], layers: Sequence[str] = (), seen: int = 0) -> Summary | None:
    """The line a header shows: in the latest fit, among alerts after the first `seen`
    (those acknowledged), where NaN/inf began if it did, else the earliest alert."""
    fresh = list(alerts[seen:])
    if not fresh:
        return None
    fit = max(a.fit for a in fresh)
    lines = summarize([a for a in fresh if a.fit == fit], layers)
    return next((x for x in lines if x.kind == "nonfinite"), lines[0])


def _ranges(positions: Iterable[int]) -> str:
    """Sorted positions as ranges: "2, 5-9, 12"."""
    out: list[str] = []
    for p in sorted(set(positions)):
        if out and out[-1][1] == p - 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)
