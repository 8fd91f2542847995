"""Graceful Ctrl-C: the first SIGINT asks to stop, a second one interrupts at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["graceful_sigint"]


@contextmanager
def graceful_sigint(on_first: Callable[[], object]) -> Iterator[None]:
    """While inside, the first SIGINT calls `on_first()` and a second raises `KeyboardInterrupt`.

    Only the main thread can install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # installed outside Python: it could not be restored exactly
        yield
        return
    count = 0

    def handler(signum: int, frame: object) -> None:
        nonlocal count
        count += 1
        if count > 1:
            raise KeyboardInterrupt
        on_first()

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # main thread of a sub-interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
