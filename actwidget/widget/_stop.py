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

__all__ = ["ESM_PATH", "StopButton", "current_kernel_id", "kernel_id_from_connection_file"]

_log = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent
_KERNEL_FILE = re.compile(r"kernel-([\w-]+)\.json")


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
    The protocol's types: `StopState`, `StopRequest`, `StopAck` in js/stop.js.

    Protocol. Synced traits: `run_id` (int, current fit), `running` (bool), `kernel_id`
    (str, "" if unknown), `ack_timeout_ms` (int), `interrupt_on_busy` (bool; False: never
    interrupt, only wait for the ack). Custom messages: JS -> Python
    `{"type": "stop", "run": int}`; Python -> JS `{"type": "stop_ack", "run": int,
    "accepted": bool}`. If no ack arrives within `ack_timeout_ms` (the kernel is busy in a
    blocking cell) while the same run is still running, the front end POSTs
    `{baseUrl}api/kernels/{kernel_id}/interrupt` once, i.e. sends the kernel one SIGINT;
    without server config or kernel id, or if that fails, it shows a hint to interrupt by hand.
    """

    _esm = ESM_PATH

    run_id = Int(0).tag(sync=True)
    running = Bool(False).tag(sync=True)
    kernel_id = Unicode("").tag(sync=True)
    #: An idle kernel acks within ~50 ms; a busy one (blocking fit) never does: then interrupt.
    ack_timeout_ms = Int(400).tag(sync=True)
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
        """(Un)register `callback(run_id) -> bool`; return True to accept the stop request.

        The run id may be stale (a queued click for a fit that already ended): compare it.
        """
        self._stop_handlers.register_callback(callback, remove=remove)

    def _handle_stop_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """Dispatch a front-end `stop` message to the callbacks and ack it."""
        if not isinstance(content, dict) or content.get("type") != "stop":
            _log.debug("StopButton: ignoring message %r", content)
            return
        run = content.get("run")
        if isinstance(run, bool) or not isinstance(run, int):
            accepted = False
        else:
            accepted = bool(self._stop_handlers(run))
        self.send({"type": "stop_ack", "run": run, "accepted": accepted})
