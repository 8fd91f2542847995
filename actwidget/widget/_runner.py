"""Background fits: run a training function in a worker thread, its output in the widget.

While a fit runs in a worker thread, what that thread prints or displays (the progress bar,
the epoch table) goes to the widget's own output area, not to whichever cell ran last.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from .._interrupt import graceful_sigint

__all__ = ["Runner"]


class _Stream:
    """Stands in for sys.stdout / sys.stderr: routed threads write to their Output."""

    def __init__(self, router: _Router, name: str, original: Any) -> None:
        self._router, self._name, self._original = router, name, original

    def write(self, text: str) -> int:
        out = self._router.target()
        if out is None:
            return self._original.write(text)
        self._router.append(out, {"output_type": "stream", "name": self._name, "text": text})
        return len(text)

    def flush(self) -> None:
        if self._router.target() is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class _Router:
    """Routes the output of registered threads into their `Output` widgets (one at a time
    installed process-wide, removed when the last thread ends)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._targets: dict[int, widgets.Output] = {}
        self._ids: dict[tuple[int, str], int] = {}  # (output, display id) -> index
        self._saved: tuple[Any, ...] | None = None

    def target(self) -> widgets.Output | None:
        return self._targets.get(threading.get_ident())

    def register(self, out: widgets.Output) -> None:
        with self._lock:
            if not self._targets:
                self._install()
            self._targets[threading.get_ident()] = out

    def unregister(self) -> None:
        with self._lock:
            self._targets.pop(threading.get_ident(), None)
            if not self._targets:
                self._uninstall()

    def append(self, out: widgets.Output, item: dict) -> None:
        with self._lock:
            outputs = list(out.outputs)
            last = outputs[-1] if outputs else None
            if (
                item["output_type"] == "stream"
                and last is not None
                and last.get("output_type") == "stream"
                and last.get("name") == item["name"]
            ):
                outputs[-1] = {**last, "text": last["text"] + item["text"]}
            else:
                outputs.append(item)
            out.outputs = tuple(outputs)

    def _publish(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def publish(data: dict, metadata: dict | None = None, *args: Any, **kw: Any) -> Any:
            out = self.target()
            if out is None:
                return original(data, metadata, *args, **kw)
            display_id = (kw.get("transient") or {}).get("display_id")
            item = {"output_type": "display_data", "data": data, "metadata": metadata or {}}
            with self._lock:
                key = (id(out), display_id)
                if kw.get("update") and key in self._ids:
                    outputs = list(out.outputs)
                    outputs[self._ids[key]] = item
                    out.outputs = tuple(outputs)
                    return None
                self.append(out, item)
                if display_id:
                    self._ids[key] = len(out.outputs) - 1
            return None

        return publish

    def _install(self) -> None:
        pub = _display_pub()
        self._saved = (sys.stdout, sys.stderr, pub, getattr(pub, "publish", None))
        sys.stdout = _Stream(self, "stdout", sys.stdout)
        sys.stderr = _Stream(self, "stderr", sys.stderr)
        if pub is not None:
            pub.publish = self._publish(pub.publish)

    def _uninstall(self) -> None:
        if self._saved is None:
            return
        stdout, stderr, pub, publish = self._saved
        if isinstance(sys.stdout, _Stream):
            sys.stdout = stdout
        if isinstance(sys.stderr, _Stream):
            sys.stderr = stderr
        if pub is not None:
            pub.publish = publish
        self._saved = None
        self._ids.clear()


def _display_pub() -> Any:
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    return getattr(shell, "display_pub", None)


_ROUTER = _Router()


class Runner:
    """Runs one function at a time in a worker thread; `wait()` joins and re-raises."""

    def __init__(self, output: widgets.Output, on_error: Callable[[BaseException], None]) -> None:
        self.output = output
        self._on_error = on_error
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
        if self.running:
            raise RuntimeError("a background run is already going; wait() for it first")
        self.error = None
        self.output.outputs = ()

        def work() -> None:
            _ROUTER.register(self.output)
            try:
                fn(*args, **kwargs)
            except BaseException as e:
                self.error = e
                self._on_error(e)
            finally:
                _ROUTER.unregister()

        self.thread = threading.Thread(target=work, name="actwidget-train", daemon=True)
        self.thread.start()
        return self.thread

    def wait(
        self, timeout: float | None, on_interrupt: Callable[[], object], poller: Any = None
    ) -> None:
        """Join the worker; the first Ctrl-C calls `on_interrupt` (a second stops waiting).

        With a `poller` (`_kernel.Poller`), the kernel reads widget messages while it waits."""
        if self.thread is None:
            return
        with graceful_sigint(on_interrupt):
            if poller is None:
                self.thread.join(timeout)
            else:
                deadline = None if timeout is None else time.monotonic() + timeout
                while self.thread.is_alive():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    step = poller.interval if left is None else min(left, poller.interval)
                    self.thread.join(step)
                    poller.poll()
        if self.thread.is_alive():
            raise TimeoutError(f"the background run is still going after {timeout} s")
        if self.error is not None:
            err, self.error = self.error, None
            raise err
