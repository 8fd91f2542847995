/**
 * actwidget Stop button (anywidget ES module; no build step, no dependencies).
 *
 * Message protocol (the one place it is written down; Python side:
 * actwidget/widget/_stop.py `StopButton`). A fit is named by its fit id, here as in Python.
 *
 * @typedef {Object} StopState  synced traits, kernel -> front end
 * @property {number} fit_id  the current (or last) fit's id; every fit has a new one
 * @property {boolean} running  that fit runs and a stop can act on it
 * @property {string} kernel_id  Jupyter server kernel id ("" when unknown)
 * @property {number} ack_timeout_ms  how long to wait for the ack before interrupting: 400
 *   when the kernel answers only when idle, longer while it reads messages at batch
 *   boundaries during a blocking fit (about two batches and a second)
 * @property {boolean} interrupt_on_busy  false: never interrupt (the fit runs in a worker
 *   thread, so a SIGINT would hit another cell); just wait for the ack
 *
 * @typedef {{type: "stop", fit_id: number}} StopRequest  custom message, front end -> kernel
 * @typedef {{type: "stop_ack", fit_id: number, accepted: boolean}} StopAck  kernel -> front end
 *
 * On click the view sends a StopRequest and waits ack_timeout_ms for the StopAck. A kernel
 * busy in a blocking fit reads widget messages at batch boundaries, so it acks at the next
 * one. A front end that does not deliver widget messages while a cell runs (VS Code), or a
 * kernel that cannot read them, never acks in time: if the same fit still runs, the view
 * asks the Jupyter server to interrupt the kernel:
 *   POST {baseUrl}api/kernels/{kernel_id}/interrupt
 *   (baseUrl/token from <script id="jupyter-config-data">, `_xsrf` cookie as
 *   X-XSRFToken). The Python side turns that first SIGINT into a graceful stop
 *   at the next batch boundary. At most one interrupt is sent per fit.
 * Without server config or kernel id (VS Code, Colab, Voila, ...) or when the POST
 * fails, the view shows HINT: which front-end action interrupts the kernel.
 */

export const HINT =
  "No answer from the busy kernel: interrupt it to stop at the next batch " +
  "(VS Code: Interrupt on the notebook toolbar; Jupyter: ■ or Kernel → Interrupt; " +
  "Colab: Runtime → Interrupt execution).";
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
  // pending: null, or {fitId, phase} with phase "waiting" (for ack), "interrupting"
  // (POST in flight) or "requested" (ack accepted / interrupt sent; wait for the end).
  let pending = null;
  let timer = null;
  let disposed = false;

  const isCurrent = (fitId) => model.get("running") && model.get("fit_id") === fitId;
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
    const fitId = model.get("fit_id");
    pending = { fitId, phase: "waiting" };
    /** @type {StopRequest} */
    const request = { type: "stop", fit_id: fitId };
    model.send(request);
    show("stopping…");
    update();
    const ms = Number(model.get("ack_timeout_ms"));
    timer = setTimeout(() => onTimeout(fitId), Number.isFinite(ms) && ms >= 0 ? ms : 400);
  }

  function onTimeout(fitId) {
    timer = null;
    if (disposed || pending?.fitId !== fitId || pending.phase !== "waiting") return;
    if (!isCurrent(fitId)) return finish("");
    if (model.get("interrupt_on_busy") === false) return show(QUEUED); // keep waiting for the ack
    const config = readPageConfig(document);
    const url = interruptUrl(config, model.get("kernel_id"));
    if (!url) return finish(HINT);
    pending.phase = "interrupting";
    show("Kernel busy: interrupting…");
    const stale = () => disposed || pending?.fitId !== fitId || pending.phase !== "interrupting";
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

  /** @param {StopAck} msg */
  function onMessage(msg) {
    if (disposed || msg?.type !== "stop_ack" || pending?.fitId !== msg.fit_id) return;
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

  function onFitId() {
    if (pending && pending.fitId !== model.get("fit_id")) finish("");
    update();
  }

  model.on("change:running", onRunning);
  model.on("change:fit_id", onFitId);
  model.on("msg:custom", onMessage);
  button.addEventListener("click", stop);
  update();

  function dispose() {
    disposed = true;
    cancelTimer();
    model.off("change:running", onRunning);
    model.off("change:fit_id", onFitId);
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
  status.style.margin = "0 0.5em";
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
