"""Fixtures for the end-to-end tests (real JupyterLab + Chromium via Playwright).

- ``lab``     (session): an isolated JupyterLab server on 127.0.0.1, see ``_lab.start_lab``.
- ``browser`` (session): headless Debian Chromium (``/usr/bin/chromium``).
- ``page``    (function): a fresh browser context + page (1400x1000); on teardown all
  kernels of the session's server are shut down so tests do not leak kernels, and the
  test fails if the browser console logged any error (``CONSOLE_ALLOWED`` lists the few
  harmless ones that are not ours, each with its reason).

On a failing test a screenshot (and the browser console log) is written to
``test-artifacts/e2e/FAILED-<test>.png`` / ``...-console.log``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from . import _lab

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError as e:  # pragma: no cover - the test extra is required
    raise ImportError("tests/e2e needs playwright: pip install -e '.[test]'") from e


@pytest.fixture(scope="session")
def artifacts_dir():
    _lab.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return _lab.ARTIFACTS_DIR


@pytest.fixture(scope="session")
def lab(tmp_path_factory, artifacts_dir) -> Iterator[_lab.LabServer]:
    base = tmp_path_factory.mktemp("jupyterlab")
    try:
        server = _lab.start_lab(base, artifacts_dir / "jupyter-server.log")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield server
    problems = server.stop()
    if problems:
        pytest.fail(
            "JupyterLab did not shut down cleanly: "
            + "; ".join(problems)
            + f"\nserver log: {server.log_path}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def notebook7(tmp_path_factory, artifacts_dir) -> Iterator[_lab.LabServer]:
    """A Notebook 7 server (the `notebook` package), set up as `lab` is."""
    base = tmp_path_factory.mktemp("notebook7")
    log = artifacts_dir / "notebook7-server.log"
    try:
        server = _lab.start_lab(base, log, app="notebook")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield server
    problems = server.stop()
    if problems:
        pytest.fail(
            "Notebook 7 did not shut down cleanly: " + "; ".join(problems) + f"\nlog: {log}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not os.access(_lab.CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium not found at {_lab.CHROMIUM}: the e2e tests need Debian's chromium "
            "package (apt-get install chromium); Playwright's bundled browser is not used.",
            pytrace=False,
        )
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=_lab.CHROMIUM, headless=True, args=_lab.CHROMIUM_ARGS
        )
        try:
            yield b
        finally:
            b.close()


# Browser console errors that are harmless and not ours: (regex, why). Keep this narrow:
# every other "[error]" console message or uncaught page error fails the test.
CONSOLE_ALLOWED: list[tuple[str, str]] = []


def console_errors(console: list[str]) -> list[str]:
    """The console lines that are errors (console.error or an uncaught page error) and not
    allowed by CONSOLE_ALLOWED."""
    errors = [m for m in console if m.startswith(("[error]", "[pageerror]"))]
    return [m for m in errors if not any(re.search(p, m) for p, _ in CONSOLE_ALLOWED)]


@pytest.fixture
def page(browser, lab) -> Iterator[Page]:
    """A fresh page; the test fails if the browser console logged an error (bqplot's
    `translate(..., undefined)` / `d="null"`, a widget's exception, ...)."""
    context = browser.new_context(viewport=_lab.VIEWPORT)
    context.set_default_timeout(_lab.DEFAULT_TIMEOUT_MS)
    pg = context.new_page()
    console: list[str] = []
    pg.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
    pg.e2e_console = console  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()
        lab.shutdown_all_kernels()
    errors = console_errors(console)
    if errors:
        shown = "\n".join(errors[:20]) + (
            f"\n... {len(errors) - 20} more" if len(errors) > 20 else ""
        )
        pytest.fail(f"{len(errors)} browser console error(s):\n{shown}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when not in ("setup", "call") or not rep.failed:
        return
    pg = item.funcargs.get("page") if hasattr(item, "funcargs") else None
    if pg is None or pg.is_closed():
        return
    name = f"FAILED-{item.path.stem}-{item.name}"
    try:
        path = _lab.screenshot(pg, name)
        rep.sections.append(("e2e artifacts", f"screenshot: {path}"))
    except Exception as e:  # never mask the real failure
        rep.sections.append(("e2e artifacts", f"screenshot failed: {e!r}"))
    console = getattr(pg, "e2e_console", None)
    if console:
        log = _lab.artifact_path(name + "-console.log")
        log.write_text("\n".join(console) + "\n")
        rep.sections.append(("e2e artifacts", f"browser console: {log}"))
