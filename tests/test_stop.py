"""StopButton: message handling, acks, traits and the ES module path (no browser, no kernel)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from actwidget.widget._stop import (
    ESM_PATH,
    StopButton,
    current_kernel_id,
    kernel_id_from_connection_file,
)


@pytest.fixture
def button(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StopButton, list[dict[str, Any]]]]:
    """A StopButton whose outgoing custom messages are captured in a list."""
    w = StopButton(fit_id=5, running=True)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(w, "send", lambda content, buffers=None: sent.append(content))
    yield w, sent
    w.close()


def _from_front_end(w: StopButton, content: Any) -> None:
    """Deliver a custom message the way the comm does (ipywidgets' `_handle_msg`)."""
    w._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def test_accepted_stop_is_acked(button: tuple[StopButton, list]) -> None:
    w, sent = button
    calls: list[int] = []
    w.on_stop(lambda fit_id: calls.append(fit_id) or fit_id == w.fit_id)
    _from_front_end(w, {"type": "stop", "fit_id": 5})
    assert calls == [5]
    assert sent == [{"type": "stop_ack", "fit_id": 5, "accepted": True}]


def test_refused_stop_is_acked(button: tuple[StopButton, list]) -> None:
    w, sent = button
    w.on_stop(lambda fit_id: fit_id == w.fit_id)
    w._handle_custom_msg({"type": "stop", "fit_id": 4}, [])
    assert sent == [{"type": "stop_ack", "fit_id": 4, "accepted": False}]


def test_no_callback_or_failing_callback_refuses(button: tuple[StopButton, list]) -> None:
    w, sent = button
    _from_front_end(w, {"type": "stop", "fit_id": 5})

    def boom(fit_id: int) -> bool:
        raise RuntimeError("callback bug")

    w.on_stop(boom)
    _from_front_end(w, {"type": "stop", "fit_id": 5})
    _from_front_end(w, {"type": "stop", "fit_id": "5"})
    assert [m["accepted"] for m in sent] == [False, False, False]


def test_on_stop_remove(button: tuple[StopButton, list]) -> None:
    w, sent = button
    cb = lambda fit_id: True  # noqa: E731
    w.on_stop(cb)
    w.on_stop(cb, remove=True)
    _from_front_end(w, {"type": "stop", "fit_id": 5})
    assert sent == [{"type": "stop_ack", "fit_id": 5, "accepted": False}]


def test_unknown_messages_are_ignored(button: tuple[StopButton, list]) -> None:
    w, sent = button
    calls: list[int] = []
    w.on_stop(calls.append)
    for content in ({"type": "nope", "fit_id": 5}, {"fit_id": 5}, ["stop"], "stop"):
        _from_front_end(w, content)
    assert calls == []
    assert sent == []


def test_esm_is_the_stop_module() -> None:
    assert ESM_PATH.is_file()
    assert ESM_PATH.name == "stop.js"
    w = StopButton()
    try:
        assert w._esm == ESM_PATH.read_text()
        assert "export default" in w._esm
        assert "createStopController" in w._esm
    finally:
        w.close()


def test_state_contains_synced_traits() -> None:
    w = StopButton(fit_id=2, running=True, ack_timeout_ms=300)
    try:
        state = w.get_state()
    finally:
        w.close()
    assert state["fit_id"] == 2
    assert state["running"] is True
    assert state["ack_timeout_ms"] == 300
    assert state["kernel_id"] == ""  # no kernel in the test process
    assert state["interrupt_on_busy"] is True
    assert state["_esm"].startswith("/**")


def test_defaults() -> None:
    w = StopButton()
    try:
        assert (w.fit_id, w.running, w.kernel_id, w.ack_timeout_ms) == (0, False, "", 400)
        assert w.interrupt_on_busy is True
    finally:
        w.close()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/run/jupyter/runtime/kernel-0f3c2a9e-1b2d-4c5e-9f00-123456789abc.json",
            "0f3c2a9e-1b2d-4c5e-9f00-123456789abc",
        ),
        ("kernel-abc.json", "abc"),
        ("/tmp/kernel-v2-1234.json", "v2-1234"),
        ("/tmp/kernel-.json", ""),
        ("/tmp/my-kernel.json", ""),
        ("/tmp/kernel-a b.json", ""),
        ("/tmp/kernel-abc.json.bak", ""),
        ("", ""),
    ],
)
def test_kernel_id_from_connection_file(path: str, expected: str) -> None:
    assert kernel_id_from_connection_file(path) == expected


def test_kernel_id_filled_inside_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    ipykernel = pytest.importorskip("ipykernel")
    assert current_kernel_id() == ""  # imported, but no kernel app running
    monkeypatch.setattr(ipykernel, "get_connection_file", lambda: "/rt/kernel-k-42.json")
    assert current_kernel_id() == "k-42"
    w = StopButton()
    try:
        assert w.kernel_id == "k-42"
        assert w.get_state()["kernel_id"] == "k-42"
    finally:
        w.close()
