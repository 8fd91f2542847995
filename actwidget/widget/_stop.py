"""Stop button widget: asks a running fit to stop, interrupting a busy kernel if needed."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets
from traitlets import Bool, Int, Unicode, default

__all__ = [
    "ACK_IDLE_MS",
    "ESM_PATH",
    "StopButton",
    "ack_timeout",
    "current_kernel_id",
    "kernel_id_from_connection_file",
]

_log = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent
_KERNEL_FILE = re.compile(r"kernel-([\w-]+)\.json")
ACK_IDLE_MS = 400  # an idle kernel (or a background fit's) acks well within this


def ack_timeout(batch_s: float | None, poll_s: float) -> int:
    """How long (ms) the front end waits for an ack while the kernel reads messages at batch
    boundaries: a batch and a poll interval twice over, and a second, rounded up to 0.5 s."""
    ms = 1000 + 2000 * ((batch_s or 0.0) + poll_s)
    return int(-(-ms // 500) * 500)


def _esm_path() -> Path:
    """The packaged `_static/stop.js` (wheel) if present, else the repo's `js/stop.js`."""
    packaged = _HERE.parent / "_static" / "stop.js"
    return packaged if packaged.is_file() else _HERE.parents[1] / "js" / "stop.js"


ESM_PATH = _esm_path()


def kernel_id_from_connection_file(path: str | Path) -> str:
    """Kernel id from a connection file named `kernel-<id>.json`, else ""."""
    match = _KERNEL_FILE.fullmatch(Path(path).name)
    return match.group(1) if match else ""


def current_kernel_id() -> str:
    """Id of the kernel we run in (from its connection file), or "" outside a kernel."""
    if "ipykernel" not in sys.modules:  # not in a kernel; don't pay for the import
        return ""
    try:
        from ipykernel import get_connection_file

        return kernel_id_from_connection_file(get_connection_file())
    except Exception:  # not in a running kernel, or an unusual front end
        return ""


class StopButton(anywidget.AnyWidget):
    """Stop button; the front end (js/stop.js) sends stop requests, this side acks them.

    The message protocol is written down once, as types, in js/stop.js (`StopState`,
    `StopRequest`, `StopAck`): synced traits `fit_id`, `running`, `kernel_id`,
    `ack_timeout_ms`, `interrupt_on_busy`; custom messages `{"type": "stop", "fit_id"}`
    (front end -> kernel) and `{"type": "stop_ack", "fit_id", "accepted"}` (kernel -> front
    end). A kernel busy in a blocking fit reads the request at the next batch boundary
    (`widget._kernel`); if no ack comes within `ack_timeout_ms` the front end interrupts the
    kernel through the Jupyter server, or shows which front-end action interrupts it.
    """

    _esm = ESM_PATH

    fit_id = Int(0).tag(sync=True)
    running = Bool(False).tag(sync=True)
    kernel_id = Unicode("").tag(sync=True)
    #: An idle kernel acks within ~50 ms; one busy in a blocking fit acks at the next batch
    #: boundary when it reads messages there (`ack_timeout`), else never: then interrupt.
    ack_timeout_ms = Int(ACK_IDLE_MS).tag(sync=True)
    #: False when the fit runs in a worker thread: a SIGINT would hit another cell, not the fit.
    interrupt_on_busy = Bool(True).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stop_handlers = ipywidgets.CallbackDispatcher()
        self.on_msg(self._handle_stop_msg)

    @default("kernel_id")
    def _default_kernel_id(self) -> str:
        return current_kernel_id()

    def on_stop(self, callback: Callable[[int], bool | None], remove: bool = False) -> None:
        """(Un)register `callback(fit_id) -> bool`; return True to accept the stop request.

        The fit id may be stale (a queued click for a fit that already ended): compare it.
        """
        self._stop_handlers.register_callback(callback, remove=remove)

    def _handle_stop_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """Dispatch a front-end `stop` message to the callbacks and ack it."""
        if not isinstance(content, dict) or content.get("type") != "stop":
            _log.debug("StopButton: ignoring message %r", content)
            return
        fit_id = content.get("fit_id")
        if isinstance(fit_id, bool) or not isinstance(fit_id, int):
            accepted = False
        else:
            accepted = bool(self._stop_handlers(fit_id))
        self.send({"type": "stop_ack", "fit_id": fit_id, "accepted": accepted})
