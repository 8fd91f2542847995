"""Stop and the picker reach a kernel busy in a blocking fit with no server to interrupt it.

A `jupyter_client` kernel client stands in for the front end (what VS Code, Colab or any
program driving a kernel does): it displays the widget, starts the blocking reference fit
(the CNN on Fashion-MNIST), queues the next cell behind it, and sends the picker's and the
Stop button's own messages on their comms. The kernel reads them at a batch boundary
(actwidget/widget/_kernel.py): the selection is applied and Stop acked during the fit, the
fit ends within one batch plus 0.5 s of the click, and the queued cell then runs once, in
order, with every output in its own cell.

`ACTWIDGET_KERNEL_PYTHON=/path/to/python` runs the kernel with another interpreter (e.g. one
with ipykernel 6.29, to check that version).
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from actwidget.widget import _kernel
from actwidget.widget._runner import Runner
from actwidget.widget._stop import ack_timeout

KERNEL_PYTHON = os.environ.get("ACTWIDGET_KERNEL_PYTHON") or sys.executable
SLACK_S = 0.5  # the fit ends within one batch + this of the Stop message

SETUP = """\
import time, torch, ipykernel
from actwidget import *

torch.set_num_threads(1)  # 2 shared cores

class BatchClock(Callback):
    "Wall-clock time at the end of each batch."
    def before_fit(self, learn): self.times = [time.perf_counter()]
    def after_batch(self, learn): self.times.append(time.perf_counter())
    def longest_recent(self, n=10):
        t = self.times[-n - 1:]
        return max(b - a for a, b in zip(t, t[1:]))

set_seed(42)
model = CNN()
cb = StoreModuleStatsCB(mods=model.layers, alerts=False)  # its alerts would pick layers too
clock = BatchClock()
dls = fashion_mnist(bs=256)
w = ActivationWidget(cb)
display(w)
print("ipykernel", ipykernel.__version__)
"""

FIT = """\
learn = TrainLearner(model, dls, F.cross_entropy, lr=0.6, cbs=[cb, clock])
learn.fit(3)
print("fit returned", cb.status.state.value)
print(f"longest recent batch {clock.longest_recent():.3f} s")
"""

NEXT = 'print("next cell ran", cb.status.state.value, w.visible_layers)'


@dataclass
class Msg:
    """An IOPub message and when it arrived (time.monotonic())."""

    at: float
    type: str
    parent: str
    content: dict


@dataclass
class Kernel:
    """A kernel and a client; `iopub` keeps every IOPub message received so far."""

    km: Any
    kc: Any
    iopub: list[Msg] = field(default_factory=list)

    def execute(self, code: str) -> str:
        return self.kc.execute(code)

    def drain(self, until, timeout: float) -> None:
        """Read IOPub until `until()` holds; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out; last messages: {[m.type for m in self.iopub[-20:]]}")
            try:
                m = self.kc.get_iopub_msg(timeout=min(left, 0.05))
            except queue.Empty:
                continue
            parent = m["parent_header"].get("msg_id", "")
            self.iopub.append(Msg(time.monotonic(), m["msg_type"], parent, m["content"]))

    def idle(self, msg_id: str) -> Msg | None:
        return next((m for m in self.iopub if m.type == "status" and m.parent == msg_id
                     and m.content["execution_state"] == "idle"), None)  # fmt: skip

    def text(self, msg_id: str) -> str:
        out = [m.content.get("text", "") for m in self.iopub if m.parent == msg_id]
        errors = [m.content for m in self.iopub if m.parent == msg_id and m.type == "error"]
        assert not errors, errors
        return "".join(out)

    def comm(self, key: str) -> str:
        """The id of the comm opened for the widget whose state has `key`."""
        for m in self.iopub:
            if m.type == "comm_open" and key in m.content["data"].get("state", {}):
                return m.content["comm_id"]
        raise AssertionError(f"no widget with {key!r} was displayed")

    def comm_msgs(self, comm_id: str) -> list[Msg]:
        return [m for m in self.iopub if m.type == "comm_msg" and m.content["comm_id"] == comm_id]

    def send_comm(self, comm_id: str, data: dict, subshell: str | None = None) -> str:
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        if subshell is not None:  # as JupyterLab sends widget messages ("comms over subshells")
            msg["header"]["subshell_id"] = subshell
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def subshell(self) -> str | None:
        """A new subshell's id, or None when the kernel has none (ipykernel 6)."""
        self.kc.kernel_info()
        info = self.kc.get_shell_msg(timeout=10)["content"]
        if "kernel subshells" not in info.get("supported_features", []):
            return None
        self.kc.control_channel.send(self.kc.session.msg("create_subshell_request", {}))
        reply = self.kc.get_control_msg(timeout=10)["content"]
        return reply.get("subshell_id") if reply.get("status") == "ok" else None


# --- the poller on its own, with a stand-in kernel ------------------------------------------


class FakeSession:
    """Frames are [ident, msg_type, content]; a lone frame is one of ipykernel's markers."""

    def feed_identities(self, frames: list, copy: bool) -> tuple[list, list]:
        return frames[:1], frames[1:]

    def deserialize(self, rest: list, content: bool, copy: bool) -> dict:
        return {"header": {"msg_type": rest[0]}, "content": rest[1] if content else b"packed"}


class FakeStream:
    """A ZMQStream's receive side: `flush` hands each waiting message to the callback."""

    def __init__(self, waiting: list[list], fail: bool = False) -> None:
        self.waiting, self.fail = waiting, fail
        self._recv_callback = None

    def on_recv(self, callback, copy: bool = True) -> None:
        self._recv_callback = callback

    def flush(self, flag: int) -> None:
        if self.fail:
            raise OSError("socket closed")
        while self.waiting:
            self._recv_callback(self.waiting.pop(0))


class FakeKernel:
    def __init__(self) -> None:
        self.session = FakeSession()
        self.parent, self._parent_ident = {"cell": 1}, {"shell": b"cell"}
        self.handled: list[tuple[Any, Any]] = []  # (content, parent while handled)
        self.status: list[tuple[str, Any]] = []  # (busy or idle, its parent)
        self.shell_handlers = {"comm_msg": self._comm, "execute_request": None}

    def _comm(self, stream, idents, msg) -> None:
        if msg["content"] == "boom":
            raise RuntimeError("a widget's handler failed")
        self.handled.append((msg["content"], self.parent))

    def get_parent(self, channel: str) -> dict:
        return self.parent

    def _publish_status(self, status: str, channel: str, parent: Any) -> None:
        self.status.append((status, parent))

    def set_parent(self, ident, parent, channel: str) -> None:
        self.parent, self._parent_ident[channel] = parent, ident


def fake_poller(waiting: list[list], fail: bool = False) -> tuple[_kernel.Poller, list]:
    kernel, queued = FakeKernel(), []
    stream = FakeStream(waiting, fail)
    stream.on_recv(queued.append)  # the kernel's own queueing
    return _kernel.Poller(kernel, stream, threading.get_ident()), queued


def test_poll_runs_comm_messages_now_and_queues_the_rest_in_order() -> None:
    p, queued = fake_poller([
        ["a", "execute_request", "cell 2"], ["b", "comm_msg", "stop"], ["stop aborting"],
        ["c", "comm_msg", "boom"], ["d", "comm_msg", "toggle"], ["e", "execute_request", "3"],
    ])  # fmt: skip
    original = p.stream._recv_callback
    assert p.poll() == 3
    assert queued == [["a", "execute_request", "cell 2"], ["stop aborting"],
                      ["e", "execute_request", "3"]]  # fmt: skip
    # Each ran with its own message as parent; the cell's parent is back afterwards.
    assert [c for c, _ in p.kernel.handled] == ["stop", "toggle"]
    assert all(parent["content"] == c for c, parent in p.kernel.handled)
    assert p.kernel.parent == {"cell": 1} and p.kernel._parent_ident["shell"] == b"cell"
    # busy/idle for each (ipywidgets waits for the idle), then the cell is busy again.
    status = [(st, parent.get("content", parent)) for st, parent in p.kernel.status]
    assert status == [("busy", "stop"), ("idle", "stop"), ("busy", "boom"), ("idle", "boom"),
                      ("busy", "toggle"), ("idle", "toggle"), ("busy", {"cell": 1})]  # fmt: skip
    assert p.stream._recv_callback is original
    assert not p.broken


def test_poll_is_throttled_and_only_on_its_thread() -> None:
    p, _ = fake_poller([["a", "comm_msg", "x"]])
    assert p.poll() == 1
    p.stream.waiting.append(["b", "comm_msg", "y"])
    assert p.poll() == 0 and p.stream.waiting  # within the interval: nothing read
    box: list[int] = []
    t = threading.Thread(target=lambda: box.append(p.poll(force=True)))
    t.start()
    t.join()
    assert box == [0] and p.stream.waiting  # another thread: never
    assert p.poll(force=True) == 1


def test_a_failing_poll_turns_polling_off_and_restores_the_stream() -> None:
    p, _ = fake_poller([], fail=True)
    original = p.stream._recv_callback
    assert p.poll() == 0
    assert p.broken and p.stream._recv_callback is original
    p.stream.fail = False
    assert p.poll(force=True) == 0  # off for good


def test_no_poller_outside_a_kernel() -> None:
    assert _kernel.poller() is None


def test_ack_timeout_covers_two_batches_and_a_second() -> None:
    assert ack_timeout(None, 0.05) == 1500
    assert ack_timeout(0.04, 0.05) == 1500
    assert ack_timeout(0.9, 0.05) == 3000
    assert ack_timeout(10.0, 0.05) % 500 == 0 and ack_timeout(10.0, 0.05) > 20_000


def test_wait_reads_messages_while_it_joins() -> None:
    import ipywidgets

    polls: list[float] = []
    done = threading.Event()

    class Counting:
        interval = 0.01

        def poll(self) -> int:
            polls.append(time.monotonic())
            if len(polls) == 5:
                done.set()
            return 0

    runner = Runner(ipywidgets.Output(), lambda e: None)
    runner.start(done.wait, 10)
    runner.wait(10, lambda: None, Counting())
    assert len(polls) >= 5 and not runner.running


def test_a_blocking_fit_polls_at_each_batch_and_a_background_fit_never(monkeypatch) -> None:
    from conftest import Every, fit, tiny_cnn

    from actwidget import ActivationWidget, StoreModuleStatsCB
    from actwidget.source import Event

    class Counting:
        interval, polls = 0.05, []

        def poll(self) -> int:
            self.polls.append(threading.get_ident())
            return 0

    counting = Counting()
    monkeypatch.setattr(_kernel, "poller", lambda: counting)
    model = tiny_cnn()
    cb = StoreModuleStatsCB(mods=list(model)[:2])
    w = ActivationWidget(cb, interval=0)
    timeouts: list[int] = []
    batches: list[Event] = []
    cb.recorder.subscribe(lambda e, src: batches.append(e) if e is Event.BATCH else None)
    learn = fit(model, [cb, Every(lambda lrn: timeouts.append(w.stop_button.ack_timeout_ms))])
    assert len(counting.polls) == len(batches) > 0  # one (throttled) poll per batch
    assert set(counting.polls) == {threading.get_ident()}
    assert set(timeouts) == {1500} and w.stop_button.ack_timeout_ms == 400  # fit over
    assert learn.stopped_at is None
    # w.start(): the fit's thread never polls; wait() does, on the waiting thread.
    counting.polls.clear()
    monkeypatch.setattr(_kernel, "poller", lambda: counting if threading.current_thread()
                        is threading.main_thread() else None)  # fmt: skip
    w.start(fit, model, [cb])
    w.wait(30)
    assert set(counting.polls) <= {threading.get_ident()}
    w.close()


# --- a real kernel, driven by a kernel client ---------------------------------------------


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> Any:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.kernel_spec.argv[0] = KERNEL_PYTHON
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("kernel")), env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield Kernel(km, kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_stop_and_the_picker_reach_a_kernel_busy_in_a_blocking_fit(kernel: Kernel) -> None:
    subshell = kernel.subshell()
    setup = kernel.execute(SETUP)
    kernel.drain(lambda: kernel.idle(setup), timeout=120)
    print("\n" + kernel.text(setup).strip())
    stop, picker = kernel.comm("ack_timeout_ms"), kernel.comm("alerted")

    def state(comm_id: str, key: str) -> list[Any]:
        return [m.content["data"]["state"][key] for m in kernel.comm_msgs(comm_id)
                if key in m.content["data"].get("state", {})]  # fmt: skip

    fit = kernel.execute(FIT)
    nxt = kernel.execute(NEXT)  # queued behind the blocking fit
    kernel.drain(lambda: True in state(stop, "running"), timeout=60)
    fit_id = state(stop, "fit_id")[-1]
    # A few seconds of training (the header's updates show batches going by).
    t_running = time.monotonic()
    kernel.drain(lambda: time.monotonic() - t_running > 3, timeout=10)
    assert kernel.idle(fit) is None, "the fit ended before the test could stop it"

    # The picker first: the kernel applies each new selection during the fit (and echoes
    # it), also when the messages come on a subshell, as JupyterLab and Notebook 7 send them.
    names = next(m.content["data"]["state"]["names"] for m in kernel.iopub
                 if m.type == "comm_open" and m.content["comm_id"] == picker)  # fmt: skip
    for chosen in (names[:2], names[:1], names[:2]):
        n = len(state(picker, "selected"))
        update = {"method": "update", "state": {"selected": chosen}, "buffer_paths": []}
        sent = kernel.send_comm(picker, update, subshell)
        kernel.drain(lambda: len(state(picker, "selected")) > n, timeout=10)  # noqa: B023
        assert state(picker, "selected")[-1] == chosen
        # ipywidgets' front end sends a widget's next update only after this idle.
        kernel.drain(lambda: kernel.idle(sent), timeout=10)  # noqa: B023
    assert kernel.idle(fit) is None

    # Stop: the button's own message, on its comm, with no interrupt.
    t_stop = time.monotonic()
    stop_msg = kernel.send_comm(
        stop, {"method": "custom", "content": {"type": "stop", "fit_id": fit_id}}, subshell
    )
    kernel.drain(lambda: kernel.idle(fit) and kernel.idle(nxt), timeout=60)
    acks = [m for m in kernel.comm_msgs(stop) if m.content["data"].get("method") == "custom"]
    assert [a.content["data"]["content"] for a in acks] == [
        {"type": "stop_ack", "fit_id": fit_id, "accepted": True}
    ]
    fit_text = kernel.text(fit)
    batch = float(re.search(r"longest recent batch ([\d.]+) s", fit_text)[1])
    ended = kernel.idle(fit).at - t_stop
    print(f"ack after {acks[0].at - t_stop:.3f} s, cell ended {ended:.3f} s after Stop "
          f"(longest recent batch {batch:.3f} s)")  # fmt: skip
    assert acks[0].at < kernel.idle(fit).at
    assert ended < batch + SLACK_S, f"cell ended {ended:.3f} s after Stop (batch {batch:.3f} s)"
    assert "fit returned stopped\n" in fit_text

    # The queued cell ran after the fit, once, with its output in its own cell.
    inputs = [m for m in kernel.iopub if m.type == "execute_input" and m.parent == nxt]
    assert len(inputs) == 1 and inputs[0].at >= kernel.idle(fit).at
    assert kernel.text(nxt) == f"next cell ran stopped {names[:2]}\n"
    replies = []
    while True:
        try:
            replies.append(kernel.kc.get_shell_msg(timeout=1))
        except queue.Empty:
            break
    by_parent = [r["parent_header"]["msg_id"] for r in replies]
    assert by_parent.count(fit) == by_parent.count(nxt) == 1, by_parent
    counts = {r["parent_header"]["msg_id"]: r["content"]["execution_count"] for r in replies}
    assert [r["content"]["status"] for r in replies if r["parent_header"]["msg_id"] in
            (fit, nxt)] == ["ok", "ok"]  # fmt: skip
    assert counts[nxt] == counts[fit] + 1
    # One idle for the fit cell, at its end; nothing it printed went to a handled message.
    assert [m.content for m in kernel.iopub if m.type == "status" and m.parent == fit].count(
        {"execution_state": "idle"}
    ) == 1
    assert not [m for m in kernel.iopub if m.type == "stream" and m.parent == stop_msg]
