"""The run (`actwidget.recorder._run`): one recorder's parts driven through attach, fits,
batch boundaries, flushes and resets, without the `StatsHooks` facade."""

from __future__ import annotations

import signal

import pytest
import torch
from conftest import no_hooks
from torch import nn

from actwidget.recorder._run import Run
from actwidget.recorder._settings import check
from actwidget.source import Event, RunState


class Owner:
    """What a facade is to the run: what listeners hear from, what a takeover removes."""

    def __init__(self, **settings) -> None:
        self.run = Run(self, settings_for(**settings))

    def remove(self) -> None:
        self.run.remove()


def settings_for(**kw):
    """The `StatsHooks` defaults, with `kw`."""
    defaults = dict(
        mods=None, model=None, mod_filter=None, on_train=True, on_valid=False, periodicity=1,
        config=None, stats=None, alerts=False, stop_on=(), run_dir=None, root_rank=0,
        flush_every=64, flush_interval=0.5, auto_step=True,
    )  # fmt: skip
    return check(**{**defaults, **kw})


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def forward(model: nn.Module, n: int = 1) -> None:
    with torch.no_grad():
        for _ in range(n):
            model(torch.randn(5, 4))


def test_a_batch_boundary_closes_only_a_batch_that_recorded_something():
    model = mlp()
    run = Owner(mods=[model[0], model[2]], model=model, auto_step=False).run
    run.attach()
    assert not run.close_batch() and run.clock.batch == 0  # nothing recorded yet
    forward(model)
    assert run.close_batch() and run.clock.batch == 1
    assert not run.close_batch() and run.clock.batch == 1
    forward(model, 2)  # two calls in one batch: one column each layer
    run.end_batch()
    run.flush()
    assert run.clock.batch == 2
    assert [len(run.stats[n]) for n in run.taps.names] == [2, 2]
    run.remove()
    assert no_hooks(model)


def test_listeners_hear_the_owner_at_every_step_of_a_fit():
    model = mlp()
    owner = Owner(mods=[model[0]], model=model, auto_step=False)
    run, heard = owner.run, []
    run.sinks.listeners.add(lambda event, source: heard.append((event, source)))
    run.open_fit(None, epochs=1)
    run.begin_epoch(0, steps=2, phase="train")
    for _ in range(2):
        forward(model)
        run.end_batch()
    run.close_fit(None, None)
    events = [e for e, _ in heard]
    assert all(source is owner for _, source in heard)
    assert events[:2] == [Event.FIT_START, Event.EPOCH] and events[-1] == Event.FIT_END
    assert events.count(Event.BATCH) == 2 and Event.FLUSH in events
    assert run.clock.state is RunState.FINISHED and no_hooks(model)


def test_an_optimizer_step_of_the_model_ends_a_batch_and_its_failure_is_not_raised(caplog):
    model = mlp()
    run = Owner(model=model).run
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run.open_fit(None, epochs=None)
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
    assert run.clock.batch == 3

    def broken(index: int) -> bool:
        raise RuntimeError("boom")

    run.collector.boundary = broken
    model(torch.randn(5, 4)).sum().backward()
    opt.step()  # the batch end fails inside the user's step: logged, training goes on
    assert "the batch end failed" in caplog.text
    del run.collector.boundary
    run.close_fit(None, None)
    assert no_hooks(model) and run.clock.batch == 4


def test_open_fit_handles_ctrl_c_and_close_fit_restores_it_however_the_fit_ends():
    model = mlp()
    run = Owner(model=model, auto_step=False).run
    before = signal.getsignal(signal.SIGINT)
    fit_id = run.open_fit(None, epochs=None)
    assert fit_id == run.clock.fit_id and signal.getsignal(signal.SIGINT) is not before
    with pytest.raises(RuntimeError, match="already open"):
        run.open_fit(None, epochs=None)
    assert run.fit_exit is not None and run.taps.attached  # the first fit stays open
    forward(model)
    run.close_fit(ValueError("bad batch"), None)
    assert signal.getsignal(signal.SIGINT) is before and no_hooks(model)
    assert run.clock.state is RunState.FAILED and "bad batch" in run.clock.message
    assert len(run.stats[run.taps.names[0]]) == 1  # what was recorded was published
    run.close_fit(None, None)  # nothing open: nothing happens
    assert run.clock.state is RunState.FAILED


def test_a_stop_request_ends_the_fit_as_stopped_where_it_was():
    model = mlp()
    run = Owner(model=model, auto_step=False).run
    run.open_fit(None, epochs=2)
    run.begin_epoch(1, steps=5, phase="train")
    forward(model)
    assert not run.end_batch()
    run.clock.request_stop(run.clock.fit_id)
    forward(model)
    assert run.end_batch()  # the loop stops at this boundary
    run.close_fit(None, None)
    assert run.clock.state is RunState.STOPPED and run.clock.message == "at epoch 2, batch 2"
    assert not run.should_stop  # the request belonged to that fit


def test_reset_forgets_everything_and_the_next_fit_starts_at_batch_zero():
    model = mlp()
    run = Owner(model=model, auto_step=False).run
    run.open_fit(None, epochs=None)
    forward(model, 3)
    run.end_batch()
    run.close_fit(None, None)
    assert run.clock.batch == 1 and all(tap.shift is not None for tap in run.taps)
    run.reset()
    assert run.clock.batch == 0 and run.clock.fit == 0
    assert list(run.stats) == run.taps.names and all(len(run.stats[n]) == 0 for n in run.stats)
    assert all(tap.shift is None for tap in run.taps)
    run.open_fit(None, epochs=None)
    forward(model)
    run.end_batch()
    run.close_fit(None, None)
    assert run.stats[run.taps.names[0]].batch.tolist() == [0]


def test_a_run_on_watched_modules_takes_them_over_and_a_failed_attach_leaves_none():
    model = mlp()
    first = Owner(model=model, auto_step=False)
    first.run.attach()
    second = Owner(model=model, auto_step=False)
    with pytest.warns(UserWarning, match="takes over"):
        second.run.attach()
    assert not first.run.taps.attached and second.run.taps.attached
    assert all(len(m._forward_hooks) == 1 for m in model)
    second.run.remove()

    third = Owner(model=model, auto_step=False).run

    def broken(*args) -> None:
        raise RuntimeError("no device")

    third.collector.prepare = broken
    with pytest.raises(RuntimeError, match="no device"):
        third.attach()
    assert not third.taps.attached and no_hooks(model)
