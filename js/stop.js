/**
 * actwidget Stop button (anywidget ES module; no build step, no dependencies).
 *
 * Message protocol
 * ----------------
 * Synced traits (Python -> JS):
 *   run_id          int   id of the current fit; changes for every new fit
 *   running         bool  true while that fit runs
 *   kernel_id       str   Jupyter server kernel id ("" when unknown)
 *   ack_timeout_ms  int   how long to wait for the ack before interrupting (400)
 *   interrupt_on_busy bool false: never interrupt (fit runs in a worker thread, so
 *                         a SIGINT would hit another cell); just wait for the ack
 *
 * Custom messages:
 *   JS -> Python  {type: "stop", run: <run_id>}
 *   Python -> JS  {type: "stop_ack", run: <run_id>, accepted: <bool>}
 *
 * On click the view sends "stop" and waits ack_timeout_ms. With ipykernel 7 a
 * kernel busy running a blocking cell only sees the message after the cell
 * ends, so if no ack came and the same run is still running, the view asks the
 * Jupyter server to interrupt the kernel:
 *   POST {baseUrl}api/kernels/{kernel_id}/interrupt
 *   (baseUrl/token from <script id="jupyter-config-data">, `_xsrf` cookie as
 *   X-XSRFToken). The Python side turns that first SIGINT into a graceful stop
 *   at the next batch boundary. At most one interrupt is sent per run.
 * Without server config or kernel id (VS Code, Voila, ...) or when the POST
 * fails, the view shows HINT instead.
 *
 * Python side: actwidget/widget/_stop.py `StopButton`.
 * @typedef {Object} StopState  synced traits (Python -> JS)
 * @property {number} run_id
 * @property {boolean} running
 * @property {string} kernel_id
 * @property {number} ack_timeout_ms
 * @property {boolean} interrupt_on_busy
 * @typedef {{type: "stop", run: number}} StopRequest  JS -> Python
 * @typedef {{type: "stop_ack", run: number, accepted: boolean}} StopAck  Python -> JS
 */

export const HINT =
  "Kernel busy: interrupt the kernel (■ / Kernel → Interrupt) to stop at the next batch.";
export const QUEUED = "Kernel busy: the stop is handled when the running cell ends.";
export const TIP_RUNNING = "Stop training at the next batch";
export const TIP_PENDING = "A stop was requested: training ends at the next batch";
export const TIP_IDLE = "Nothing to stop: no fit is running";
/** Styles: an enabled Stop is red; a disabled one is plainly grey and flat. */
export const STYLE = `
.actwidget-stop { min-width: 6.5em; font-weight: 600; }
.actwidget-stop:enabled { background: #d62728; color: #fff; border: 1px solid #a51d1e; }
.actwidget-stop:enabled:hover { background: #b71f20; }
.actwidget-stop:disabled { background: #f0f0f0; color: #9a9a9a; border: 1px dashed #c8c8c8;
  box-shadow: none; cursor: not-allowed; opacity: 1; }
`;

/** Parse the page's `jupyter-config-data` JSON, or return null. */
export function readPageConfig(document) {
  const node = document?.getElementById?.("jupyter-config-data");
  if (!node) return null;
  try {
    const config = JSON.parse(node.textContent);
    return config && typeof config === "object" ? config : null;
  } catch {
    return null;
  }
}

/** Value of the `_xsrf` cookie in a `document.cookie` string ("" if absent). */
export function readXsrf(cookie) {
  for (const part of String(cookie ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === "_xsrf") return part.slice(eq + 1).trim();
  }
  return "";
}

/** Interrupt endpoint for `kernelId`, or null without server config or kernel id. */
export function interruptUrl(config, kernelId) {
  if (!config || !kernelId) return null;
  let base = typeof config.baseUrl === "string" && config.baseUrl ? config.baseUrl : "/";
  if (!base.endsWith("/")) base += "/";
  return `${base}api/kernels/${encodeURIComponent(kernelId)}/interrupt`;
}

/** fetch() options for the interrupt POST. */
export function interruptInit(config, cookie) {
  const headers = {};
  if (config?.token) headers.Authorization = `token ${config.token}`;
  const xsrf = readXsrf(cookie);
  if (xsrf) headers["X-XSRFToken"] = xsrf;
  return { method: "POST", credentials: "same-origin", headers };
}

/**
 * Wire a button and a status element to the model. Returns {stop, dispose}.
 * `button` needs disabled/addEventListener/removeEventListener, `status` textContent.
 */
export function createStopController({
  model,
  button,
  status,
  fetch,
  document,
  setTimeout,
  clearTimeout,
}) {
  // pending: null, or {run, phase} with phase "waiting" (for ack), "interrupting"
  // (POST in flight) or "requested" (ack accepted / interrupt sent; wait for the end).
  let pending = null;
  let timer = null;
  let disposed = false;

  const isCurrent = (run) => model.get("running") && model.get("run_id") === run;
  const show = (text) => {
    status.textContent = text;
  };
  const update = () => {
    const running = Boolean(model.get("running"));
    button.disabled = !running || pending !== null;
    button.title = !running
      ? TIP_IDLE
      : pending !== null
        ? TIP_PENDING
        : TIP_RUNNING;
  };
  const cancelTimer = () => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  };
  const finish = (text) => {
    cancelTimer();
    pending = null;
    show(text);
    update();
  };

  function stop() {
    if (disposed || pending || !model.get("running")) return;
    const run = model.get("run_id");
    pending = { run, phase: "waiting" };
    model.send({ type: "stop", run });
    show("stopping…");
    update();
    const ms = Number(model.get("ack_timeout_ms"));
    timer = setTimeout(() => onTimeout(run), Number.isFinite(ms) && ms >= 0 ? ms : 400);
  }

  function onTimeout(run) {
    timer = null;
    if (disposed || pending?.run !== run || pending.phase !== "waiting") return;
    if (!isCurrent(run)) return finish("");
    if (model.get("interrupt_on_busy") === false) return show(QUEUED); // keep waiting for the ack
    const config = readPageConfig(document);
    const url = interruptUrl(config, model.get("kernel_id"));
    if (!url) return finish(HINT);
    pending.phase = "interrupting";
    show("Kernel busy: interrupting…");
    const stale = () => disposed || pending?.run !== run || pending.phase !== "interrupting";
    Promise.resolve()
      .then(() => fetch(url, interruptInit(config, document?.cookie)))
      .then(
        (response) => {
          if (stale()) return;
          if (response?.ok) {
            pending.phase = "requested";
            show("Interrupt sent: stopping at the next batch…");
          } else {
            finish(`Interrupt failed (HTTP ${response?.status ?? "?"}). ${HINT}`);
          }
        },
        (error) => {
          if (!stale()) finish(`Interrupt failed (${error?.message ?? error}). ${HINT}`);
        },
      );
  }

  function onMessage(msg) {
    if (disposed || msg?.type !== "stop_ack" || pending?.run !== msg.run) return;
    if (pending.phase !== "waiting") return; // late ack after an interrupt: ignore
    cancelTimer();
    if (msg.accepted) {
      pending.phase = "requested";
      show("Stopping at the next batch…");
    } else {
      finish("Stop not accepted: nothing is running.");
    }
  }

  function onRunning() {
    if (model.get("running")) {
      if (!pending) show("");
      update();
    } else {
      finish(pending ? "Stopped." : "");
    }
  }

  function onRunId() {
    if (pending && pending.run !== model.get("run_id")) finish("");
    update();
  }

  model.on("change:running", onRunning);
  model.on("change:run_id", onRunId);
  model.on("msg:custom", onMessage);
  button.addEventListener("click", stop);
  update();

  function dispose() {
    disposed = true;
    cancelTimer();
    model.off("change:running", onRunning);
    model.off("change:run_id", onRunId);
    model.off("msg:custom", onMessage);
    button.removeEventListener("click", stop);
  }

  return { stop, dispose };
}

function render({ model, el }) {
  const button = document.createElement("button");
  button.className = "jupyter-button widget-button actwidget-stop";
  button.textContent = "■ Stop";
  button.title = TIP_IDLE;
  const style = document.createElement("style");
  style.textContent = STYLE;
  const status = document.createElement("span");
  status.className = "actwidget-stop-status";
  status.style.marginLeft = "0.5em";
  el.replaceChildren(style, button, status);

  const controller = createStopController({
    model,
    button,
    status,
    fetch: (...args) => globalThis.fetch(...args),
    document,
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (id) => globalThis.clearTimeout(id),
  });
  return () => {
    controller.dispose();
    el.replaceChildren();
  };
}

export default { render };
