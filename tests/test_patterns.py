"""Training patterns that real code uses, each checked against a plain reference: what the
recorder records is exactly the hooked model's own batches, whatever happens around them
(copies of the model, other models and optimizers, functorch, evaluation, files)."""

from __future__ import annotations

import copy
import io
import os
import pickle
import signal
import threading
import warnings

import numpy as np
import pytest
import torch
from conftest import EXACT, Capture, assert_exact, no_hooks
from torch import nn
from torch.optim.swa_utils import AveragedModel

from actwidget.recorder import StatsHooks
from actwidget.recorder._calls import _Hook, _Inert
from actwidget.stats import RunStats, StatsConfig


def none_of_ours(model: nn.Module) -> bool:
    """No hook of ours (live or inert) on any module of `model`."""
    return not any(
        isinstance(h, (_Hook, _Inert)) for m in model.modules() for h in m._forward_hooks.values()
    )


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)
    ]


def train(model, steps, extra=None, opt=None, seed=0):
    """A plain loop; `extra(i, xb)` runs after each optimizer step (the pattern under test)."""
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.05)
    for i, (xb, yb) in enumerate(batches(steps, seed)):
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()
        if extra is not None:
            extra(i, xb)


def recorded_exactly(model, run, steps: int) -> None:
    """`run(hooks)` trains `steps` batches with extra work around; the recorded columns are
    exactly the model's own outputs, one per batch."""
    cap = Capture(model)
    with StatsHooks(model, model=model, config=EXACT) as hooks:
        run(hooks)
    cap.remove()
    assert no_hooks(model)
    stats = hooks.stats
    own = {m: [o for o, t in zip(cap.outs[m], cap.modes[m], strict=True) if t] for m in model}
    for m, name in zip(model, hooks.names, strict=True):
        assert_exact(stats[name], own[m][:steps], EXACT)


# --- copies of the hooked model --------------------------------------------------------------
def test_an_ema_copy_records_nothing_and_keeps_no_hooks():
    model = mlp()

    def run(hooks):
        ema = copy.deepcopy(model)  # made while hooked: an EMA / teacher copy

        def update(i, xb):
            with torch.no_grad():
                for p, q in zip(ema.parameters(), model.parameters(), strict=True):
                    p.mul_(0.9).add_(q, alpha=0.1)
                ema.train()(xb * 50)  # a forward of the copy, in train mode, far larger values

        assert not none_of_ours(ema)  # inert copies of our hooks...
        train(model, 6, update)
        assert none_of_ours(ema)  # ...that removed themselves on their first call

    # The course's capture would see the copy's calls too: compare with model-only outputs.
    recorded_exactly_own(model, run, 6)


def recorded_exactly_own(model, run, steps):
    """As `recorded_exactly`, capturing only calls of the model's own modules."""
    own = {m: [] for m in model}

    def keep(m, inp, out):  # copies of the model carry this hook too: keep only ours
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor(out)
        if m in own and m.training and not wrapped:
            own[m].append(out.detach().clone())

    handles = [m.register_forward_hook(keep) for m in model]
    with StatsHooks(model, model=model, config=EXACT) as hooks:
        run(hooks)
    for h in handles:
        h.remove()
    assert no_hooks(model)
    for m, name in zip(model, hooks.names, strict=True):
        assert_exact(hooks.stats[name], own[m][:steps], EXACT)


def test_swa_averaged_model_and_a_teacher_are_not_recorded():
    model = mlp()

    def run(hooks):
        swa = AveragedModel(model)
        teacher = copy.deepcopy(model).eval()

        def extra(i, xb):
            swa.update_parameters(model)
            swa(xb)
            with torch.no_grad():
                teacher(xb)

        train(model, 5, extra)
        assert none_of_ours(swa) and none_of_ours(teacher)

    recorded_exactly_own(model, run, 5)


def test_a_copy_made_after_removal_has_no_hooks_and_a_shallow_copy_does_not_double():
    model = mlp()
    with StatsHooks(model, model=model) as hooks:
        train(model, 2)
        shallow = copy.copy(model[0])  # shares the hooks dict: must not record twice
        shallow(torch.randn(8, 6))
    assert len(hooks.stats[hooks.names[0]]) == 2
    assert no_hooks(copy.deepcopy(model)) and no_hooks(model)


def test_torch_save_and_pickle_of_a_hooked_model():
    model = mlp()
    with StatsHooks(model, model=model) as hooks:
        train(model, 2)
        buf = io.BytesIO()
        torch.save(model, buf)  # a whole hooked model: must not fail
        clone = pickle.loads(pickle.dumps(model))
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for m in (loaded, clone):
            m(torch.randn(4, 6))
            assert no_hooks(m)  # its inert hooks did nothing and went away
        train(model, 1, seed=1)
    assert len(hooks.stats[hooks.names[0]]) == 3


def test_stats_pickle_and_deepcopy_and_the_recorder_says_what_to_save():
    model = mlp()
    with StatsHooks(model, model=model) as hooks:
        train(model, 3)
    stats = hooks.stats
    for back in (pickle.loads(pickle.dumps(stats)), copy.deepcopy(stats)):
        assert list(back) == list(stats)
        np.testing.assert_array_equal(back[hooks.names[0]].columns, stats[hooks.names[0]].columns)
        back.mark_fit(9)  # a copy has a lock of its own
    with pytest.raises(TypeError, match=r"hooks\.save"):
        pickle.dumps(hooks)
    with pytest.raises(TypeError, match=r"hooks\.stats"):
        copy.deepcopy(hooks)


# --- optimizers, threads --------------------------------------------------------------------------
def test_two_optimizers_stepping_in_one_iteration_end_one_batch():
    model = mlp()

    def run(hooks):
        opt_a = torch.optim.SGD(model[0].parameters(), lr=0.05)
        opt_b = torch.optim.Adam(model[2].parameters(), lr=1e-3)
        for xb, yb in batches(5):
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt_a.step()
            opt_b.step()
            opt_a.zero_grad()
            opt_b.zero_grad()

    recorded_exactly(model, run, 5)


def test_another_model_training_in_a_thread_never_ends_our_batches():
    model = mlp()
    other = mlp()
    go = threading.Event()

    def other_loop():
        opt = torch.optim.SGD(other.parameters(), lr=0.01)
        while not go.is_set():
            other(torch.randn(4, 6)).sum().backward()
            opt.step()
            opt.zero_grad()

    def run(hooks):
        t = threading.Thread(target=other_loop)
        t.start()
        try:
            train(model, 8)
        finally:
            go.set()
            t.join()

    recorded_exactly(model, run, 8)


# --- one bad call ---------------------------------------------------------------------------------
def test_a_functorch_call_costs_only_itself():
    from torch.func import functional_call, grad, vmap

    model = mlp()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def per_sample_grad_norms(xb):
        def loss(p, x):
            return functional_call(model, p, (x[None],)).pow(2).sum()

        return vmap(grad(loss), in_dims=(None, 0))(params, xb)

    def run(hooks):
        with pytest.warns(UserWarning, match="torch.func"):
            train(model, 20, lambda i, xb: per_sample_grad_norms(xb) if i == 3 else None)

    recorded_exactly_own(model, run, 20)


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
@pytest.mark.parametrize("config", [EXACT, StatsConfig()])
def test_evaluation_inside_the_loop_at_any_batch_size(mode, config):
    model = mlp()
    hooks = StatsHooks(model, model=model, config=config, on_valid=True)

    def evaluate(i, xb):
        model.eval()
        with mode():
            model(torch.randn(1000 if i % 2 else 3, 6))
        model.train()
        hooks.end_batch()  # the evaluation batch is a batch of its own

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with hooks:
            model.eval()
            with mode():
                model(torch.randn(2000, 6))  # before any training: made under inference
            hooks.end_batch()
            model.train()
            train(model, 10, evaluate)
    s = hooks.stats[hooks.names[0]]
    assert len(s) == 21 and (s.numel > 0).all()  # 1 + 10 training + 10 evaluation batches
    assert np.isfinite(s.std).all()


# --- lifecycle ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["file", "under_file", "garbage", "read_only"])
def test_a_failing_constructor_leaves_the_model_as_it_was(tmp_path, bad, monkeypatch):
    model = mlp()
    path = tmp_path / "run"
    if bad == "file":
        path.write_text("x")
    elif bad == "under_file":
        (tmp_path / "f").write_text("x")
        path = tmp_path / "f" / "run"
    elif bad == "garbage":
        path.mkdir()
        (path / "run.sqlite").write_bytes(b"garbage" * 1000)
    else:
        path.mkdir()
        path.chmod(0o500)
        real = os.access  # root may write anyway: answer as the file system would for others
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and p != path)
    with pytest.raises((ValueError, PermissionError)) as e:
        StatsHooks(model, model=model, run_dir=path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert no_hooks(model)


def test_a_new_recorder_on_the_same_modules_replaces_the_old_one():
    model = mlp()
    first = StatsHooks(model, model=model).attach()
    train(model, 2)
    with pytest.warns(UserWarning, match="takes over"):
        second = StatsHooks(model, model=model).attach()  # the notebook cell run again
    assert not first.attached and second.attached
    assert all(len(m._forward_hooks) == 1 for m in model)
    train(model, 3)
    second.remove()
    assert len(first.stats[first.names[0]]) == 2 and len(second.stats[second.names[0]]) == 3
    assert no_hooks(model)


def test_attach_without_with_ends_batches_at_optimizer_steps():
    model = mlp()
    hooks = StatsHooks(model, model=model).attach()
    train(model, 4)
    hooks.remove()
    assert len(hooks.stats[hooks.names[0]]) == 4
    assert StatsHooks(model, model=model).attached is False  # building attaches nothing
    assert no_hooks(model)


def test_nested_with_is_refused_and_ctrl_c_is_restored():
    model = mlp()
    before = signal.getsignal(signal.SIGINT)
    hooks = StatsHooks(model, model=model)
    with hooks:
        with pytest.raises(RuntimeError, match="already open"), hooks:
            pass
        train(model, 2)
        assert hooks.attached
    assert signal.getsignal(signal.SIGINT) is before
    assert no_hooks(model) and len(hooks.stats[hooks.names[0]]) == 2


# --- inputs ------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_a_module_means_the_same_as_an_object_or_by_name():
    net = Net()
    by_object = StatsHooks([net.encoder], model=net)
    by_name = StatsHooks(["encoder"], model=net)
    assert by_object.names == by_name.names == ["encoder (Sequential)"]
    alone = StatsHooks(net.encoder, model=net)  # a container alone: its children
    assert alone.names == StatsHooks("encoder", model=net).names == [
        "encoder.0 (Linear)", "encoder.1 (ReLU)",
    ]  # fmt: skip
    gen = StatsHooks(net.children(), model=net)  # any iterable, a generator included
    assert gen.names == ["encoder (Sequential)", "head (Linear)"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mods": "twice"}, ValueError, "twice"),
        ({"flush_interval": "0.5"}, TypeError, "flush_interval"),
        ({"flush_every": 0}, ValueError, "flush_every"),
        ({"alerts": "yes"}, TypeError, "alerts"),
        ({"stop_on": ["exploding", "boom"]}, ValueError, "boom"),
        ({"stop_on": {"dead"}, "alerts": False}, ValueError, "alert rules"),
        ({"periodicity": 1.5}, TypeError, "periodicity"),
        ({"config": {"sample_size": 4}}, TypeError, "StatsConfig"),
        ({"run_dir": 3}, TypeError, "run_dir"),
        ({"model": "net"}, TypeError, "model"),
    ],
)
def test_bad_settings_fail_when_built_in_one_line(kwargs, error, match):
    net = Net()
    kwargs = dict(kwargs)
    mods = [net.head, net.head] if kwargs.pop("mods", None) == "twice" else [net.head]
    kwargs.setdefault("model", net)
    with pytest.raises(error, match=match) as e:
        StatsHooks(mods, **kwargs)
    assert "\n" not in str(e.value)
    assert no_hooks(net)


def test_two_recorders_on_one_run_dir_in_one_process_are_refused(tmp_path):
    a, b = mlp(), mlp()
    refused = pytest.raises(RuntimeError, match="another recorder in this process")
    with StatsHooks(a, model=a, run_dir=tmp_path), refused:
        StatsHooks(b, model=b, run_dir=tmp_path)
    assert no_hooks(b)
    with StatsHooks(b, model=b, run_dir=tmp_path):  # free again once the first is done
        train(b, 1)


def test_a_stats_file_with_non_finite_summaries_is_rejected(tmp_path):
    from actwidget.stats import Field, StatsFileError

    model = mlp()
    with StatsHooks(model, model=model) as hooks:
        train(model, 2)
    stats = hooks.stats
    cols = stats[hooks.names[0]].columns.copy()
    cols[0, Field.MEAN] = np.inf
    with pytest.raises(StatsFileError, match="MEAN"):
        RunStats.from_parts(stats.config, {hooks.names[0]: cols}, source="x")
    cols[0, Field.MEAN] = 0.0
    cols[1, Field.M2] = np.nan
    with pytest.raises(StatsFileError, match="M2"):
        RunStats.from_parts(stats.config, {hooks.names[0]: cols}, source="x")


def test_a_wrong_layer_name_says_which_names_there_are():
    model = mlp()
    with StatsHooks(model, model=model) as hooks:
        train(model, 1)
    with pytest.raises(KeyError, match=r"no layer 'layers.0'.*'0 \(Linear\)'"):
        hooks.stats["layers.0"]
