"""Helpers for the end-to-end tests: a real JupyterLab server driven by Chromium.

Everything here waits on *conditions* (HTTP status, DOM state, JupyterLab's own
models) with a deadline; nothing sleeps for a fixed time.

How cells are run: the server is started with ``--LabApp.expose_app_in_browser=True``,
which makes JupyterLab publish its application object as ``window.jupyterapp``
(the same hook JupyterLab's own Galata test framework uses).  ``run_cell`` /
``run_all`` call JupyterLab's real commands (``notebook:run-cell``,
``notebook:run-all-cells``) through ``jupyterapp.commands`` - the exact code path
of Shift+Enter / "Run All", without depending on keyboard focus, the command
palette's fuzzy search or menu layout.  Completion is tracked by listening to the
cell models' ``stateChanged`` signal (executionState ``running`` -> execution
count set), so a finished cell cannot be missed or confused with an earlier run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import psutil
from playwright.sync_api import Locator, Page, expect

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "e2e"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}

# --- DOM selectors (JupyterLab 4.6) ------------------------------------------------
# The visible notebook panel (hidden dock tabs get .lm-mod-hidden).
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"
CELL = ".jp-Cell"  # every cell widget (code + markdown), in notebook order
# The cell's own output area.  NOT ".jp-OutputArea": ipywidgets' Output widget nests
# further .jp-OutputArea elements inside a cell's output.
CELL_OUTPUT = ".jp-Cell-outputArea"
OUTPUT_ITEM = ".jp-OutputArea-output"
INPUT_PROMPT = ".jp-InputPrompt"  # text "[3]:" when done, "[*]:" while running/queued
# Toolbar kernel indicator; data-status is idle|busy|starting|restarting|...
KERNEL_STATUS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator"
KERNEL_IDLE = KERNEL_STATUS + '[data-status="idle"]'
DIALOG = ".jp-Dialog"

DEFAULT_TIMEOUT_MS = 60_000


# --------------------------------------------------------------------------------
# JupyterLab server
# --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_notebook(*sources: str, kernel: str = "python3") -> nbformat.NotebookNode:
    """A v4 notebook with one code cell per source and a kernelspec (so JupyterLab
    never shows its "Select Kernel" dialog)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    return nb


# Lab user settings written into the private settings dir: no news / update-check
# toasts covering the page, and every cell attached to the DOM (windowingMode "none")
# so cells/outputs below the fold are always present for locators.
_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


@dataclass
class LabServer:
    """A JupyterLab (`app="lab"`) or Notebook 7 (`app="notebook"`) server."""

    url: str  # "http://127.0.0.1:<port>/"  (trailing slash)
    token: str
    root_dir: Path
    log_path: Path
    proc: subprocess.Popen
    home: Path
    app: str = "lab"
    _log_file: Any = field(default=None, repr=False)

    # -- notebooks --------------------------------------------------------------
    def copy_notebook(self, src: str | os.PathLike, name: str | None = None) -> str:
        """Copy a notebook file into root_dir; returns its name relative to root_dir."""
        src = Path(src)
        name = name or src.name
        dest = self.root_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return name

    def write_notebook(self, nb: nbformat.NotebookNode, name: str) -> str:
        """Write an nbformat notebook into root_dir; returns its relative name."""
        dest = self.root_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.validate(nb)
        nbformat.write(nb, str(dest))
        return name

    def notebook_url(self, name: str) -> str:
        q = urllib.parse.urlencode({"token": self.token})
        if self.app == "notebook":  # Notebook 7: one notebook per page
            return f"{self.url}notebooks/{urllib.parse.quote(name)}?{q}"
        return f"{self.url}lab/tree/{urllib.parse.quote(name)}?reset&{q}"

    # -- REST -------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """Call the Jupyter Server REST API, e.g. ``lab.api("GET", "api/kernels")``."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path.lstrip("/"),
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def kernels(self) -> list[dict]:
        return self.api("GET", "api/kernels")

    def shutdown_all_kernels(self) -> None:
        """Delete every session and kernel (used between tests)."""
        for s in self.api("GET", "api/sessions"):
            try:
                self.api("DELETE", f"api/sessions/{s['id']}", timeout=30)
            except urllib.error.HTTPError as e:  # already gone
                if e.code != 404:
                    raise
        for k in self.kernels():
            try:
                self.api("DELETE", f"api/kernels/{k['id']}", timeout=30)
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no server log>"

    # -- shutdown ---------------------------------------------------------------
    def stop(self, timeout: float = 30) -> list[str]:
        """Stop the server and its kernels.  Returns a list of problems (empty = clean)."""
        problems: list[str] = []
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if self.proc.poll() is None:
            try:  # graceful: shuts kernels down, then the server exits
                self.api("POST", "api/shutdown", timeout=10)
            except Exception as e:
                problems.append(f"POST /api/shutdown failed: {e!r}")
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"server pid {self.proc.pid} still alive {timeout}s after shutdown")
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        else:
            problems.append(f"server had already exited with code {self.proc.returncode}")
        _gone, alive = psutil.wait_procs(children, timeout=15)
        if alive:
            problems.append(
                "kernel/child processes survived the server: "
                + ", ".join(f"{p.pid}" for p in alive)
            )
            for p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(alive, timeout=5)
        if self._log_file is not None:
            self._log_file.close()
        return problems


class _PortTaken(RuntimeError):
    pass


def start_lab(
    base_dir: Path, log_path: Path, startup_timeout: float = 120, app: str = "lab"
) -> LabServer:
    """Start an isolated JupyterLab (or Notebook 7, ``app="notebook"``) on 127.0.0.1 and
    wait for ``GET /api/status``.

    Config, data, runtime, settings and workspaces dirs live under ``base_dir``; the
    venv's ``share/jupyter`` stays on the data path (it is ``sys.prefix``'s), so the
    prebuilt labextensions (ipywidgets, bqplot, anywidget) and the python3 kernelspec
    are found.
    """
    base_dir = Path(base_dir)
    root_dir = base_dir / "root"
    home = base_dir / "jupyter"
    dirs = {
        "JUPYTER_CONFIG_DIR": home / "config",
        "JUPYTER_DATA_DIR": home / "data",
        "JUPYTER_RUNTIME_DIR": home / "runtime",
        "JUPYTERLAB_WORKSPACES_DIR": home / "workspaces",
        "JUPYTERLAB_SETTINGS_DIR": home / "config" / "lab" / "user-settings",
        "IPYTHONDIR": home / "ipython",
    }
    for d in [root_dir, *dirs.values()]:
        d.mkdir(parents=True, exist_ok=True)
    for rel, content in _USER_SETTINGS.items():
        p = dirs["JUPYTERLAB_SETTINGS_DIR"] / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(content))

    env = os.environ.copy()
    env.update({k: str(v) for k, v in dirs.items()})
    env.pop("JUPYTER_TOKEN", None)

    for attempt in range(3):  # free_port() can race with another process grabbing it
        try:
            return _start_lab_once(root_dir, home, env, log_path, startup_timeout, app)
        except _PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_lab_once(
    root_dir: Path, home: Path, env: dict, log_path: Path, startup_timeout: float, app: str
) -> LabServer:
    port = free_port()
    token = secrets.token_hex(24)
    cmd = [
        sys.executable, "-m", "jupyter", app,
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.terminals_enabled=False",
    ]  # fmt: skip
    if app == "lab":
        cmd += ["--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly"]
    else:  # Notebook 7 publishes the same application object
        cmd += ["--JupyterNotebookApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")

    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "w")  # noqa: SIM115 - closed in LabServer.stop
    log_file.write("$ " + " ".join(cmd) + "\n")
    log_file.flush()
    proc = subprocess.Popen(
        cmd,
        cwd=root_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C in the terminal goes to pytest, which stops it
    )
    lab = LabServer(
        url=f"http://127.0.0.1:{port}/",
        token=token,
        root_dir=root_dir,
        log_path=log_path,
        proc=proc,
        home=home,
        app=app,
        _log_file=log_file,
    )
    deadline = time.monotonic() + startup_timeout
    last_err: Exception | None = None
    while True:
        if proc.poll() is not None:
            lab.stop()
            exc = _PortTaken if f"port {port} is not available" in lab.log_tail() else RuntimeError
            raise exc(
                f"JupyterLab exited with code {proc.returncode} during startup; "
                f"log {log_path}:\n{lab.log_tail()}"
            )
        try:
            lab.api("GET", "api/status", timeout=2)
            return lab
        except (urllib.error.URLError, OSError, ValueError) as e:
            last_err = e
        if time.monotonic() > deadline:
            problems = lab.stop()
            raise RuntimeError(
                f"JupyterLab not answering /api/status after {startup_timeout}s "
                f"(last error {last_err!r}; stop problems {problems}); log:\n{lab.log_tail()}"
            )
        time.sleep(0.2)  # poll interval, bounded by the deadline above


# --------------------------------------------------------------------------------
# Browser-side helper object (window.__e2e)
# --------------------------------------------------------------------------------

_E2E_JS = r"""
() => {
  if (window.__e2e) return true;
  const E = (window.__e2e = { runs: {}, calls: {}, errors: [], measure: null });
  E.app = () => {
    const a = window.jupyterapp;
    if (!a) throw new Error('window.jupyterapp missing: start JupyterLab with '
                            + '--LabApp.expose_app_in_browser=True');
    return a;
  };
  const isNb = (w) => w && w.content && w.sessionContext && Array.isArray(w.content.widgets);
  E.panel = () => {
    const app = window.jupyterapp;
    if (!app || !app.shell) return null;
    if (isNb(app.shell.currentWidget)) return app.shell.currentWidget;
    for (const w of app.shell.widgets('main')) if (isNb(w)) return w;
    return null;
  };
  E.cell = (i) => {
    const p = E.panel();
    if (!p) throw new Error('no notebook panel open');
    const c = p.content.widgets[i];
    if (!c) throw new Error(`no cell ${i}: notebook has ${p.content.widgets.length} cells`);
    return c;
  };
  E.kernelStatus = () => {
    const p = E.panel();
    const k = p && p.sessionContext.session && p.sessionContext.session.kernel;
    return k ? k.status : null;
  };
  E.ready = () => {
    const p = E.panel();
    if (document.querySelector('.jp-Dialog')) return 'dialog';
    if (!p || !p.context.isReady || !p.sessionContext.isReady) return false;
    if (E.kernelStatus() !== 'idle') return false;
    return p.content.widgets.length > 0;
  };
  E.outputText = (model) => {
    const parts = [];
    for (let j = 0; j < model.outputs.length; j++) {
      const o = model.outputs.get(j).toJSON();
      if (o.text) parts.push(Array.isArray(o.text) ? o.text.join('') : o.text);
      if (o.output_type === 'error')
        parts.push(`${o.ename}: ${o.evalue}\n` + (o.traceback || []).join('\n'));
    }
    return parts.join('').replace(/\x1b\[[0-9;]*m/g, '');
  };
  // Track one execution of cell i; returns the run id.
  E.track = (i) => {
    const cell = E.cell(i);
    const model = cell.model;
    if (model.type !== 'code') return null;
    const id = `${model.sharedModel.getId()}#${Math.random().toString(36).slice(2)}`;
    const r = (E.runs[id] = { index: i, started: false, done: false, aborted: false, error: false,
      count: null, tRequest: performance.now(), tStart: null, tDone: null });
    const onState = (m, ch) => {
      if (ch.name === 'executionState' && ch.newValue === 'running' && !r.started) {
        r.started = true; r.tStart = performance.now();
      } else if (ch.name === 'executionCount' && ch.newValue !== null && r.started) {
        r.done = true; r.count = ch.newValue; r.tDone = performance.now();
      } else if (ch.name === 'executionState' && ch.newValue === 'idle' && r.started && !r.done
                 && m.executionCount === null) {
        r.aborted = true; r.tDone = performance.now();   // skipped after an earlier error
      }
      if (r.done || r.aborted) {
        for (let j = 0; j < m.outputs.length; j++)
          if (m.outputs.get(j).type === 'error') r.error = true;
        r.text = E.outputText(m);
        m.stateChanged.disconnect(onState);
      }
    };
    model.stateChanged.connect(onState);
    return id;
  };
  E.run = (indices, command) => {
    const p = E.panel();
    if (!p) throw new Error('no notebook panel open');
    const ids = indices.map((i) => E.track(i));
    if (command === 'notebook:run-cell') {
      p.content.activeCellIndex = indices[0];
      p.content.deselectAll();
    }
    const call = (E.calls[ids.join(',')] = { settled: false, value: null });
    E.app().commands.execute(command)
      .then((v) => { call.value = v; })
      .catch((e) => E.errors.push(String(e)))
      .finally(() => { call.settled = true; });
    return ids;
  };
  return true;
}
"""


def _ensure_js(page: Page) -> None:
    page.evaluate(_E2E_JS)


# --------------------------------------------------------------------------------
# Notebook helpers
# --------------------------------------------------------------------------------


def notebook_locator(page: Page) -> Locator:
    return page.locator(NOTEBOOK)


def cell_locator(page: Page, index: int) -> Locator:
    """The ``.jp-Cell`` element of cell ``index`` (0-based, markdown cells count)."""
    return page.locator(NOTEBOOK).locator(CELL).nth(index)


def cell_output_locator(page: Page, index: int) -> Locator:
    """The cell's own output area (``.jp-Cell-outputArea``); widgets render inside it."""
    return cell_locator(page, index).locator(CELL_OUTPUT)


def scroll_to_cell(page: Page, index: int) -> Locator:
    """Scroll the notebook so that cell ``index`` is in view (e.g. before a screenshot)."""
    cell = cell_locator(page, index)
    cell.scroll_into_view_if_needed()
    return cell


def open_notebook(
    page: Page, lab: LabServer, name: str, timeout: float = DEFAULT_TIMEOUT_MS
) -> None:
    """Open ``lab/tree/<name>?reset`` and wait until the notebook is rendered and its
    kernel is connected and idle.  ``timeout`` in ms, as everywhere in Playwright."""
    page.goto(lab.notebook_url(name), wait_until="domcontentloaded", timeout=timeout)
    page.locator(NOTEBOOK).wait_for(state="visible", timeout=timeout)
    _ensure_js(page)
    state = page.wait_for_function(
        "() => window.__e2e.ready()", timeout=timeout, polling=100
    ).json_value()
    if state == "dialog":
        raise AssertionError(
            f"unexpected dialog while opening {name}: {page.locator(DIALOG).inner_text()}"
        )
    if lab.app == "lab":  # Notebook 7 has no such indicator: the kernel model said idle
        expect(page.locator(KERNEL_IDLE)).to_be_visible(timeout=timeout)


def collapse_left_area(page: Page) -> None:
    """Close JupyterLab's left sidebar (the file browser), giving the notebook the width."""
    _ensure_js(page)
    page.evaluate(
        """async () => {
          const app = window.__e2e.app();
          if (!app.shell.leftCollapsed) await app.commands.execute('application:toggle-left-area');
        }"""
    )
    page.wait_for_function("() => window.jupyterapp.shell.leftCollapsed", timeout=10_000)


def wait_kernel_idle(page: Page, timeout: float = DEFAULT_TIMEOUT_MS) -> None:
    """Wait until the notebook's kernel reports idle (model + toolbar indicator).
    Note: during "Run all" the kernel can be idle for a moment between cells; to know
    that a cell finished, use ``wait_cell_executed``."""
    _ensure_js(page)
    page.wait_for_function("() => window.__e2e.kernelStatus() === 'idle'", timeout=timeout)
    expect(page.locator(KERNEL_IDLE)).to_be_visible(timeout=timeout)


@dataclass
class CellRun:
    """Handle of one requested execution of one cell."""

    page: Page
    index: int
    run_id: str

    def state(self) -> dict:
        return self.page.evaluate("(id) => window.__e2e.runs[id]", self.run_id)

    def wait(self, timeout: float = DEFAULT_TIMEOUT_MS, allow_error: bool = False) -> int:
        return _wait_run(self.page, self.run_id, self.index, timeout, allow_error)


def _wait_run(page: Page, run_id: str, index: int, timeout: float, allow_error: bool) -> int:
    try:
        page.wait_for_function(
            "(id) => { const r = window.__e2e.runs[id]; return r && (r.done || r.aborted); }",
            arg=run_id,
            timeout=timeout,
            polling=50,
        )
    except Exception as e:
        r = page.evaluate("(id) => window.__e2e.runs[id]", run_id)
        raise AssertionError(f"cell {index} did not finish within {timeout} ms: {r}") from e
    r = page.evaluate("(id) => window.__e2e.runs[id]", run_id)
    if r["aborted"]:
        raise AssertionError(f"cell {index} was not executed (an earlier cell failed?)")
    if r["error"] and not allow_error:
        raise AssertionError(f"cell {index} raised:\n{r.get('text', '')}")
    return int(r["count"])


def _dispatch(page: Page, indices: list[int], command: str) -> list[CellRun]:
    _ensure_js(page)
    ids = page.evaluate("([ix, cmd]) => window.__e2e.run(ix, cmd)", [indices, command])
    runs = [CellRun(page, i, rid) for i, rid in zip(indices, ids, strict=True) if rid]
    # Return only once JupyterLab has actually sent the requests (cells show [*]).
    page.wait_for_function(
        """(ids) => { const E = window.__e2e;
             return ids.every((id) => !id || E.runs[id].started || E.runs[id].aborted)
                    || E.calls[ids.join(',')].settled || E.errors.length > 0; }""",
        arg=ids,
        timeout=30_000,
        polling=50,
    )
    errors = page.evaluate("() => window.__e2e.errors.splice(0)")
    if errors:
        raise AssertionError(f"JupyterLab command {command} failed: {errors}")
    states = [r.state() for r in runs]
    not_started = [r.index for r, st in zip(runs, states, strict=True) if not st["started"]]
    if not_started and not any(st["aborted"] for st in states):
        raise AssertionError(
            f"{command}: JupyterLab did not execute cells {not_started} "
            "(kernel not ready? see the notification toasts in the failure screenshot)"
        )
    return runs


def run_cell(
    page: Page, index: int, *, wait: bool = False, timeout: float = DEFAULT_TIMEOUT_MS
) -> CellRun:
    """Run cell ``index`` (``notebook:run-cell``, i.e. Shift+Enter without advancing).

    Returns as soon as the execution request is sent (long cells keep running), with a
    ``CellRun`` handle; ``.wait()`` blocks until it finished and returns its execution
    count.  ``wait=True`` does that immediately."""
    runs = _dispatch(page, [index], "notebook:run-cell")
    if not runs:
        raise ValueError(f"cell {index} is not a code cell")
    (run,) = runs
    if wait:
        run.wait(timeout)
    return run


def run_all(
    page: Page, *, wait: bool = False, timeout: float = DEFAULT_TIMEOUT_MS
) -> list[CellRun]:
    """Run all cells (``notebook:run-all-cells``); returns one ``CellRun`` per code cell."""
    _ensure_js(page)
    n = page.evaluate("() => window.__e2e.panel().content.widgets.length")
    runs = _dispatch(page, list(range(n)), "notebook:run-all-cells")
    if wait:
        for r in runs:
            r.wait(timeout)
    return runs


def wait_cell_executed(
    page: Page, index: int, timeout: float = DEFAULT_TIMEOUT_MS, allow_error: bool = False
) -> int:
    """Wait until cell ``index`` is not running/queued and has an execution count; returns
    the count.  Prefer ``CellRun.wait()`` when you started the run: it cannot mistake an
    earlier execution for the current one."""
    _ensure_js(page)
    page.wait_for_function(
        """(i) => { const m = window.__e2e.cell(i).model;
                    return m.executionState !== 'running' && m.executionCount !== null; }""",
        arg=index,
        timeout=timeout,
        polling=50,
    )
    return cell_execution_count(page, index)  # type: ignore[return-value]


def cell_execution_count(page: Page, index: int) -> int | None:
    _ensure_js(page)
    return page.evaluate("(i) => window.__e2e.cell(i).model.executionCount", index)


def cell_is_running(page: Page, index: int) -> bool:
    """True while the cell is executing or queued (prompt shows [*])."""
    _ensure_js(page)
    return page.evaluate("(i) => window.__e2e.cell(i).model.executionState === 'running'", index)


def cell_output_text(page: Page, index: int) -> str:
    """Text of the cell's stream/text outputs from JupyterLab's output model."""
    _ensure_js(page)
    return page.evaluate("(i) => window.__e2e.outputText(window.__e2e.cell(i).model)", index)


def wait_for_output(
    page: Page, cell_index: int, text: str | re.Pattern, timeout: float = DEFAULT_TIMEOUT_MS
) -> Locator:
    """Wait until the cell's output area (as rendered in the DOM) contains ``text``."""
    out = cell_output_locator(page, cell_index)
    expect(out).to_contain_text(text, timeout=timeout)
    return out


def measure_click_to_output(
    page: Page,
    target: Locator,
    cell_index: int,
    text: str,
    timeout: float = DEFAULT_TIMEOUT_MS,
) -> float:
    """Click ``target`` and return the seconds (browser clock) from the click event to
    the moment ``text`` is inserted into cell ``cell_index``'s output area DOM.

    Measured in the page: a capturing ``click`` listener stamps the click, a
    MutationObserver on the cell stamps the output; Playwright's polling latency is
    not included.  The text must not be in that output before the click."""
    _ensure_js(page)
    page.evaluate(
        """([i, text]) => {
          const E = window.__e2e;
          const node = E.cell(i).node;
          const area = () => node.querySelector('.jp-Cell-outputArea');
          const has = () => { const a = area(); return !!a && a.textContent.includes(text); };
          if (has()) throw new Error(`cell ${i} output already contains ${JSON.stringify(text)}`);
          if (E.measure && E.measure.obs) E.measure.obs.disconnect();
          const m = (E.measure = { tClick: null, tOutput: null, obs: null });
          const onClick = () => { if (m.tClick === null) m.tClick = performance.now(); };
          window.addEventListener('click', onClick, { capture: true, once: true });
          m.obs = new MutationObserver(() => {
            if (m.tOutput === null && has()) { m.tOutput = performance.now(); m.obs.disconnect(); }
          });
          m.obs.observe(node, { childList: true, subtree: true, characterData: true });
        }""",
        [cell_index, text],
    )
    target.click()
    page.wait_for_function(
        "() => window.__e2e.measure.tOutput !== null", timeout=timeout, polling=50
    )
    m = page.evaluate(
        "() => ({tClick: window.__e2e.measure.tClick, tOutput: window.__e2e.measure.tOutput})"
    )
    if m["tClick"] is None:
        raise AssertionError("the click never reached the page")
    return (m["tOutput"] - m["tClick"]) / 1000.0


# --------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------


def artifact_path(name: str) -> Path:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "artifact"
    return ARTIFACTS_DIR / safe


def screenshot(page: Page, name: str, locator: Locator | None = None) -> Path:
    """Save a PNG of the viewport (or of ``locator``) to test-artifacts/e2e/<name>.png."""
    path = artifact_path(name if name.endswith(".png") else name + ".png")
    if locator is not None:
        locator.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path))
    return path
