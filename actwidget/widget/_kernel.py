"""Read the front end's widget messages while a blocking cell trains (ipykernel 6.29 and 7.x).

While a cell runs, the kernel's main thread is busy in it: the messages a front end sends
(Stop, layer toggles, the filter box, menus) wait in the shell queue until the cell ends.
`poller()` gives the kernel's main thread a `Poller` whose `poll()`, called at batch
boundaries, hands the comm messages waiting there to their comms at once; every other
request (the next cell's `execute_request`, completions, ...) goes back to the kernel's own
queue untouched, in order, and runs after the cell, exactly once.

How: the kernel reads shell requests for its main thread from one `ZMQStream` (ipykernel 7:
the in-process socket from its shell-channel thread; 6.29: the shell socket) whose receive
callback queues each request for the kernel's dispatcher. `poll()` swaps that callback for
one that keeps comm messages aside and passes everything else to the original callback,
lets the stream read what is waiting (`ZMQStream.flush`), puts the callback back, then runs
the comm handlers as the kernel would: busy, the handler with the comm message as parent
(its output goes where the kernel would send it), idle; then the cell's parent is restored
(the fit's output stays in its cell) and its busy status sent again.

This module is the only one that knows ipykernel's internals; anything it does not
recognise gives no poller (the front end then falls back to interrupting the kernel).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["POLL_INTERVAL", "Poller", "poller"]

_log = logging.getLogger("actwidget")
POLL_INTERVAL = 0.05  # s: at most this often (at a batch boundary) the kernel reads messages
_COMM = frozenset({"comm_open", "comm_msg", "comm_close"})
_POLLERS: dict[int, Poller] = {}  # id(kernel) -> its poller


class Poller:
    """Hands the comm messages waiting for a busy kernel's main thread to their comms."""

    def __init__(self, kernel: Any, stream: Any, thread: int) -> None:
        self.kernel, self.stream, self.thread = kernel, stream, thread
        self.interval = POLL_INTERVAL
        self.handled = 0  # comm messages handled so far
        self.broken = False  # a poll failed: polling is off for good
        self._last = 0.0
        self._busy = False

    def poll(self, force: bool = False) -> int:
        """Handle the comm messages waiting now; returns how many. Does nothing (returns 0)
        off the kernel's main thread, inside a poll, after a failure, or within `interval`
        of the last poll unless `force`."""
        if self.broken or self._busy or threading.get_ident() != self.thread:
            return 0
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return 0
        self._last = now
        self._busy = True
        try:
            comms = self._read()
            if comms:
                self._dispatch(comms)
            return len(comms)
        except Exception:
            self.broken = True
            _log.exception("actwidget: reading widget messages during the cell failed; off")
            return 0
        finally:
            self._busy = False

    def _read(self) -> list[list[Any]]:
        """Read what waits on the stream: comm messages returned, the rest queued as usual."""
        import zmq

        original: Callable[[list[Any]], Any] | None = getattr(self.stream, "_recv_callback", None)
        if original is None:
            raise RuntimeError("the kernel's shell stream has no receive callback")
        comms: list[list[Any]] = []
        session = self.kernel.session

        def receive(frames: list[Any]) -> Any:
            if _msg_type(session, frames) in _COMM:
                comms.append(frames)
                return None
            return original(frames)  # the kernel's own queueing (a task or a queue entry)

        self.stream.on_recv(receive, copy=False)
        try:
            self.stream.flush(zmq.POLLIN)
        finally:
            self.stream.on_recv(original, copy=False)
        return comms

    def _dispatch(self, comms: list[list[Any]]) -> None:
        """Run each comm message's handler as the kernel does: busy, the handler with the
        message as parent, idle (front ends count on it: ipywidgets sends a widget's next
        update only once the last one's idle came); then the cell's parent and busy again."""
        kernel, session = self.kernel, self.kernel.session
        ident, parent = kernel._parent_ident["shell"], kernel.get_parent("shell")
        _flush_stdio()  # what the fit printed so far goes to its cell
        try:
            for frames in comms:
                idents, rest = session.feed_identities(frames, copy=False)
                msg = session.deserialize(rest, content=True, copy=False)
                kernel.set_parent(idents, msg, channel="shell")
                kernel._publish_status("busy", "shell", parent=msg)
                handler = kernel.shell_handlers.get(msg["header"]["msg_type"])
                try:
                    if handler is not None:
                        handler(getattr(kernel, "shell_stream", None), idents, msg)
                except Exception:
                    _log.exception("actwidget: a widget message handler failed")
                finally:
                    _flush_stdio()
                    kernel._publish_status("idle", "shell", parent=msg)
                self.handled += 1
        finally:
            kernel.set_parent(ident, parent, channel="shell")
            kernel._publish_status("busy", "shell", parent=parent)  # the cell still runs


def _msg_type(session: Any, frames: list[Any]) -> str | None:
    """The message type from the header alone (no signature recorded: the kernel still
    deserialises the message itself), or None for anything else (ipykernel's own markers)."""
    try:
        _, rest = session.feed_identities(frames, copy=False)
        return session.deserialize(rest, content=False, copy=False)["header"]["msg_type"]
    except Exception:
        return None


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def poller() -> Poller | None:
    """The poller of the kernel this thread is the main shell thread of, or None: not in an
    IPython kernel, another thread (a background fit, a subshell), or an unknown kernel."""
    if "ipykernel" not in sys.modules:  # not in a kernel: don't pay for the imports
        return None
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        if kernel is None:
            return None
        found = _POLLERS.get(id(kernel))
        if found is None or found.kernel is not kernel:
            stream = _main_stream(kernel)
            if stream is None:
                return None
            found = _POLLERS[id(kernel)] = Poller(kernel, stream, threading.get_ident())
        if found.thread != threading.get_ident() or found.broken:
            return None
        return found
    except Exception:  # an unusual kernel: no polling, the interrupt fallback stays
        _log.debug("actwidget: no widget polling in this kernel", exc_info=True)
        return None


def _main_stream(kernel: Any) -> Any:
    """The stream the kernel's main shell reads requests from, if this is its thread."""
    channel = getattr(kernel, "shell_channel_thread", None)
    if channel is not None:  # ipykernel 7: shell-channel thread -> inproc pair -> main thread
        if getattr(channel, "parent_thread", None) is not threading.current_thread():
            return None
        pair = getattr(channel.manager, "_shell_channel_to_main", None)
        stream = getattr(pair, "to_stream", None)
    else:  # ipykernel 6: the main thread reads the shell socket itself
        if threading.current_thread() is not threading.main_thread():
            return None
        if not hasattr(kernel, "msg_queue"):  # ipykernel < 6
            return None
        stream = getattr(kernel, "shell_stream", None)
    needed = ("flush", "on_recv", "_recv_callback")
    if stream is None or not all(hasattr(stream, a) for a in needed):
        return None
    return stream
