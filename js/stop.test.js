// Tests for stop.js with Node's built-in runner: `node --test js/`.
import assert from "node:assert/strict";
import { test } from "node:test";

import widget, {
  HINT,
  QUEUED,
  TIP_IDLE,
  TIP_PENDING,
  TIP_RUNNING,
  createStopController,
  interruptInit,
  interruptUrl,
  readPageConfig,
  readXsrf,
} from "./stop.js";

function fakeModel(attrs) {
  const state = { fit_id: 1, running: true, kernel_id: "k-123", ack_timeout_ms: 800, ...attrs };
  const handlers = new Map();
  const sent = [];
  return {
    sent,
    get: (name) => state[name],
    send: (content) => sent.push(content),
    on(event, fn) {
      if (!handlers.has(event)) handlers.set(event, new Set());
      handlers.get(event).add(fn);
    },
    off(event, fn) {
      handlers.get(event)?.delete(fn);
    },
    listenerCount: () => [...handlers.values()].reduce((n, set) => n + set.size, 0),
    set(name, value) {
      state[name] = value;
      for (const fn of handlers.get(`change:${name}`) ?? []) fn();
    },
    emit(content) {
      for (const fn of handlers.get("msg:custom") ?? []) fn(content, []);
    },
  };
}

function fakeTimers() {
  let now = 0;
  let nextId = 1;
  const timers = new Map();
  return {
    setTimeout(fn, ms) {
      timers.set(nextId, { fn, at: now + ms });
      return nextId++;
    },
    clearTimeout: (id) => timers.delete(id),
    pending: () => timers.size,
    advance(ms) {
      now += ms;
      for (const [id, t] of [...timers].sort((a, b) => a[1].at - b[1].at)) {
        if (t.at <= now) {
          timers.delete(id);
          t.fn();
        }
      }
    },
  };
}

function fakeElement() {
  const listeners = new Map();
  return {
    disabled: false,
    textContent: "",
    addEventListener: (type, fn) => listeners.set(type, fn),
    removeEventListener(type, fn) {
      if (listeners.get(type) === fn) listeners.delete(type);
    },
    click() {
      if (!this.disabled) listeners.get("click")?.();
    },
    hasListener: (type) => listeners.has(type),
  };
}

function fakeDocument(config, cookie = "") {
  const node = config == null ? null : { textContent: JSON.stringify(config) };
  return { cookie, getElementById: (id) => (id === "jupyter-config-data" ? node : null) };
}

function fakeFetch(response = { ok: true, status: 204 }) {
  const calls = [];
  const fetch = (url, init) => {
    calls.push({ url, init });
    return response instanceof Error ? Promise.reject(response) : Promise.resolve(response);
  };
  return { fetch, calls };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

function setup({ attrs, config = { baseUrl: "/lab-base/", token: "tok" }, cookie, response } = {}) {
  const model = fakeModel(attrs);
  const timers = fakeTimers();
  const { fetch, calls } = fakeFetch(response);
  const button = fakeElement();
  const status = fakeElement();
  const controller = createStopController({
    model,
    button,
    status,
    fetch,
    document: fakeDocument(config, cookie ?? "a=1; _xsrf=2|ab|cd|99; b=2"),
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
  });
  return { model, timers, calls, button, status, controller };
}

test("click sends a stop message for the current fit", () => {
  const { model, button, status } = setup({ attrs: { fit_id: 7 } });
  button.click();
  assert.deepEqual(model.sent, [{ type: "stop", fit_id: 7 }]);
  assert.equal(status.textContent, "stopping…");
  assert.equal(button.disabled, true);
});

test("no ack within the timeout: POST interrupt with url and headers", async () => {
  const { timers, calls, button, status } = setup({ attrs: { kernel_id: "abc-1" } });
  button.click();
  timers.advance(799);
  assert.equal(calls.length, 0);
  timers.advance(1);
  await flush();
  assert.equal(calls.length, 1);
  assert.equal(calls[0].url, "/lab-base/api/kernels/abc-1/interrupt");
  assert.deepEqual(calls[0].init, {
    method: "POST",
    credentials: "same-origin",
    headers: { Authorization: "token tok", "X-XSRFToken": "2|ab|cd|99" },
  });
  assert.match(status.textContent, /Interrupt sent/);
  assert.equal(button.disabled, true);
});

test("uses ack_timeout_ms from the model", async () => {
  const { timers, calls, button } = setup({ attrs: { ack_timeout_ms: 50 } });
  button.click();
  timers.advance(50);
  await flush();
  assert.equal(calls.length, 1);
});

test("ack in time: no POST", async () => {
  const { model, timers, calls, button, status } = setup({ attrs: { fit_id: 3 } });
  button.click();
  model.emit({ type: "stop_ack", fit_id: 3, accepted: true });
  assert.equal(timers.pending(), 0);
  timers.advance(5000);
  await flush();
  assert.equal(calls.length, 0);
  assert.match(status.textContent, /next batch/);
  model.set("running", false);
  assert.equal(status.textContent, "Stopped.");
  assert.equal(button.disabled, true);
});

test("refused ack: no POST, button usable again", async () => {
  const { model, timers, calls, button, status } = setup({ attrs: { fit_id: 3 } });
  button.click();
  model.emit({ type: "stop_ack", fit_id: 3, accepted: false });
  timers.advance(5000);
  await flush();
  assert.equal(calls.length, 0);
  assert.match(status.textContent, /not accepted/);
  assert.equal(button.disabled, false);
});

test("ack for another fit or another message type does not cancel the timer", async () => {
  const { model, timers, calls, button } = setup({ attrs: { fit_id: 3 } });
  button.click();
  model.emit({ type: "stop_ack", fit_id: 2, accepted: true });
  model.emit({ type: "other", fit_id: 3 });
  timers.advance(800);
  await flush();
  assert.equal(calls.length, 1);
});

test("fit finished before the timeout: no POST", async () => {
  const { model, timers, calls, button, status } = setup();
  button.click();
  model.set("running", false);
  timers.advance(5000);
  await flush();
  assert.equal(calls.length, 0);
  assert.equal(status.textContent, "Stopped.");
});

test("fit id changed before the timeout: no POST", async () => {
  const { model, timers, calls, button } = setup({ attrs: { fit_id: 1 } });
  button.click();
  model.set("fit_id", 2);
  timers.advance(5000);
  await flush();
  assert.equal(calls.length, 0);
});

test("fit id changed without a change event reaching us: still no POST", async () => {
  const { model, timers, calls, button, status } = setup({ attrs: { fit_id: 1 } });
  button.click();
  model.get = ((get) => (name) => (name === "fit_id" ? 2 : get(name)))(model.get);
  timers.advance(800);
  await flush();
  assert.equal(calls.length, 0);
  assert.equal(status.textContent, "");
});

test("interrupt_on_busy false: no POST, keep waiting for the ack", async () => {
  const { model, timers, calls, button, status } = setup({
    attrs: { fit_id: 6, interrupt_on_busy: false },
  });
  button.click();
  timers.advance(800);
  await flush();
  assert.equal(calls.length, 0);
  assert.equal(status.textContent, QUEUED);
  assert.equal(button.disabled, true);
  model.emit({ type: "stop_ack", fit_id: 6, accepted: true });
  assert.match(status.textContent, /Stopping at the next batch/);
});

test("no server config: hint, no POST", async () => {
  const { timers, calls, button, status } = setup({ config: null });
  button.click();
  timers.advance(800);
  await flush();
  assert.equal(calls.length, 0);
  assert.equal(status.textContent, HINT);
  assert.equal(button.disabled, false);
});

test("no kernel id: hint, no POST", async () => {
  const { timers, calls, button, status } = setup({ attrs: { kernel_id: "" } });
  button.click();
  timers.advance(800);
  await flush();
  assert.equal(calls.length, 0);
  assert.equal(status.textContent, HINT);
});

test("POST answered with an error status: hint", async () => {
  const { timers, calls, button, status } = setup({ response: { ok: false, status: 403 } });
  button.click();
  timers.advance(800);
  await flush();
  assert.equal(calls.length, 1);
  assert.ok(status.textContent.includes("HTTP 403"));
  assert.ok(status.textContent.endsWith(HINT));
  assert.equal(button.disabled, false);
});

test("POST rejected (network error): hint", async () => {
  const { timers, button, status } = setup({ response: new Error("offline") });
  button.click();
  timers.advance(800);
  await flush();
  assert.ok(status.textContent.includes("offline"));
  assert.ok(status.textContent.endsWith(HINT));
});

test("at most one interrupt per fit, and late acks are ignored", async () => {
  const { model, timers, calls, button, status } = setup({ attrs: { fit_id: 4 } });
  button.click();
  timers.advance(800);
  await flush();
  button.click();
  model.emit({ type: "stop_ack", fit_id: 4, accepted: false });
  timers.advance(5000);
  await flush();
  assert.equal(calls.length, 1);
  assert.equal(model.sent.length, 1);
  assert.match(status.textContent, /Interrupt sent/);
});

test("button disabled when not running, enabled when a fit starts", () => {
  const { model, button, status } = setup({ attrs: { running: false } });
  assert.equal(button.disabled, true);
  button.click();
  assert.equal(model.sent.length, 0);
  model.set("fit_id", 2);
  model.set("running", true);
  assert.equal(button.disabled, false);
  model.set("running", false);
  assert.equal(button.disabled, true);
  assert.equal(status.textContent, "");
});

test("dispose clears the timer and removes listeners", async () => {
  const { model, timers, calls, button, controller } = setup();
  button.click();
  assert.equal(timers.pending(), 1);
  controller.dispose();
  assert.equal(timers.pending(), 0);
  assert.equal(model.listenerCount(), 0);
  assert.equal(button.hasListener("click"), false);
  timers.advance(5000);
  await flush();
  assert.equal(calls.length, 0);
});

test("dispose while the POST is in flight leaves the status alone", async () => {
  const { timers, button, status, controller } = setup({ response: { ok: false, status: 500 } });
  button.click();
  timers.advance(800);
  const before = status.textContent;
  controller.dispose();
  await flush();
  assert.equal(status.textContent, before);
});

test("helpers: readXsrf, interruptUrl, interruptInit, readPageConfig", () => {
  assert.equal(readXsrf("a=1; _xsrf=2|x|y|3; _xsrf2=no"), "2|x|y|3");
  assert.equal(readXsrf("my_xsrf=1"), "");
  assert.equal(readXsrf(undefined), "");
  assert.equal(interruptUrl({ baseUrl: "/user/me" }, "k/1"), "/user/me/api/kernels/k%2F1/interrupt");
  assert.equal(interruptUrl({}, "k"), "/api/kernels/k/interrupt");
  assert.equal(interruptUrl(null, "k"), null);
  assert.equal(interruptUrl({ baseUrl: "/" }, ""), null);
  assert.deepEqual(interruptInit({ token: "" }, ""), {
    method: "POST",
    credentials: "same-origin",
    headers: {},
  });
  assert.deepEqual(readPageConfig(fakeDocument({ baseUrl: "/" })), { baseUrl: "/" });
  assert.equal(readPageConfig(fakeDocument(null)), null);
  assert.equal(readPageConfig({ getElementById: () => ({ textContent: "{not json" }) }), null);
  assert.equal(readPageConfig(undefined), null);
});

test("default export is an anywidget module with render", () => {
  assert.equal(typeof widget.render, "function");
});

test("render builds a button and status, and its cleanup empties el", () => {
  const created = [];
  const fakeDoc = {
    cookie: "",
    getElementById: () => null,
    createElement(tag) {
      const node = { tag, style: {}, ...fakeElement() };
      created.push(node);
      return node;
    },
  };
  const el = {
    children: [],
    replaceChildren(...nodes) {
      this.children = nodes;
    },
  };
  const saved = globalThis.document;
  globalThis.document = fakeDoc;
  try {
    const model = fakeModel({ running: false });
    const cleanup = widget.render({ model, el });
    const [style, button, status] = el.children;
    assert.equal(style.tag, "style");
    assert.match(style.textContent, /actwidget-stop:disabled/);
    assert.equal(button.tag, "button");
    assert.equal(status.tag, "span");
    assert.equal(button.disabled, true);
    model.set("running", true);
    assert.equal(button.disabled, false);
    cleanup();
    assert.deepEqual(el.children, []);
    assert.equal(model.listenerCount(), 0);
  } finally {
    globalThis.document = saved;
  }
});

test("the tooltip says what a click does: nothing, stop, or already stopping", () => {
  const { model, button } = setup({ attrs: { running: false } });
  assert.equal(button.title, TIP_IDLE);
  model.set("running", true);
  assert.equal(button.title, TIP_RUNNING);
  button.click();
  assert.equal(button.title, TIP_PENDING);
  model.set("running", false);
  assert.equal(button.title, TIP_IDLE);
});
