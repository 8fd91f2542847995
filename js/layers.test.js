// Tests for layers.js with Node's built-in runner: `node --test js/`.
import assert from "node:assert/strict";
import { test } from "node:test";

import widget, {
  FADED,
  bindMarks,
  buildTree,
  createPicker,
  globToRegExp,
  labelMap,
  leavesOf,
  matches,
  pathOf,
  subsetFor,
  withSelection,
} from "./layers.js";

const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A Backbone-like model: get/set/on/off, change events, save_changes counted. */
function fakeModel(attrs = {}) {
  const state = { ...attrs };
  const handlers = new Map();
  const model = {
    saves: 0,
    get: (k) => state[k],
    nestedSets: 0, // set() called from inside one of this model's own change events
    set(k, v) {
      if (model.inEvent) model.nestedSets += 1;
      state[k] = v;
      model.inEvent = true;
      try {
        for (const fn of [...(handlers.get(`change:${k}`) ?? [])]) fn();
      } finally {
        model.inEvent = false;
      }
    },
    save_changes() {
      model.saves += 1;
    },
    on(ev, fn) {
      if (!handlers.has(ev)) handlers.set(ev, new Set());
      handlers.get(ev).add(fn);
    },
    off(ev, fn) {
      handlers.get(ev)?.delete(fn);
    },
    listeners: () => [...handlers.values()].reduce((n, s) => n + s.size, 0),
  };
  return model;
}

/** Just enough DOM for createPicker. */
function fakeDocument() {
  const make = (tag) => {
    const listeners = new Map();
    const classes = new Set();
    const node = {
      tag,
      children: [],
      dataset: {},
      style: {},
      attributes: {},
      textContent: "",
      value: "",
      open: false,
      get className() {
        return [...classes].join(" ");
      },
      set className(v) {
        classes.clear();
        for (const c of String(v).split(/\s+/).filter(Boolean)) classes.add(c);
      },
      classList: {
        toggle: (c, on) => (on ? classes.add(c) : classes.delete(c)),
        contains: (c) => classes.has(c),
      },
      append(...nodes) {
        node.children.push(...nodes);
      },
      replaceChildren(...nodes) {
        node.children = nodes;
      },
      setAttribute(k, v) {
        node.attributes[k] = v;
      },
      addEventListener: (type, fn) => listeners.set(type, fn),
      fire(type, event = { preventDefault() {} }) {
        listeners.get(type)?.(event);
      },
    };
    return node;
  };
  return { createElement: make, activeElement: null };
}

function all(node, pred, out = []) {
  if (pred(node)) out.push(node);
  for (const c of node.children ?? []) all(c, pred, out);
  return out;
}

const NAMES = [
  "embed (Embedding)",
  "blocks.0.fc1 (Linear)",
  "blocks.0.act (ReLU)",
  "blocks.1.fc1 (Linear)",
  "blocks.1.act (ReLU)",
  "head.out.proj (Linear)",
];

test("matches: substring, or glob with * ? [ ]; case-insensitive; empty matches all", () => {
  assert.ok(matches("", "x"));
  assert.ok(matches("FC1", "blocks.0.fc1 (Linear)"));
  assert.ok(!matches("fc2", "blocks.0.fc1 (Linear)"));
  assert.ok(matches("blocks.*.fc1", "blocks.0.fc1 (Linear)")); // glob on the module path
  assert.ok(matches("*(linear)", "blocks.0.fc1 (Linear)")); // or on the whole name
  assert.ok(!matches("blocks.?.act", "blocks.10.act (ReLU)"));
  assert.ok(matches("blocks.[01].act", "blocks.1.act (ReLU)"));
  assert.ok(!matches("blocks.[!01].act", "blocks.1.act (ReLU)"));
  assert.ok(globToRegExp("a.b").test("a.b") && !globToRegExp("a.b").test("axb"));
});

test("buildTree groups by module path and merges single-child chains", () => {
  const t = buildTree(NAMES);
  assert.deepEqual(
    t.leaves.map((l) => l.label),
    ["embed (Embedding)"],
  );
  assert.deepEqual(
    t.groups.map((g) => [g.key, g.label]),
    [
      ["blocks", "blocks"],
      ["head.out", "head.out"],
    ],
  );
  const blocks = t.groups[0];
  assert.deepEqual(
    blocks.groups.map((g) => g.key),
    ["blocks.0", "blocks.1"],
  );
  assert.deepEqual(
    blocks.groups[0].leaves.map((l) => l.label),
    ["blocks.0.fc1 (Linear)", "blocks.0.act (ReLU)"], // the layer's one name, everywhere
  );
  const shown = buildTree(NAMES, labelMap(NAMES, NAMES.map((n) => `<${n}>`)));
  assert.equal(shown.groups[0].groups[0].leaves[0].label, `<${NAMES[1]}>`);
  assert.deepEqual(leavesOf(blocks), NAMES.slice(1, 5));
  assert.equal(pathOf("a.b (X)"), "a.b");
  assert.equal(pathOf("plain"), "plain");
});

test("subsetFor: all shown, some shown, none shown", () => {
  const labels = ["a", "b", "c"];
  assert.deepEqual(subsetFor(labels, new Set(["a", "b", "c"])), { visible: true, subset: [] });
  assert.deepEqual(subsetFor(labels, new Set(["c", "a"])), { visible: true, subset: [0, 2] });
  assert.deepEqual(subsetFor(labels, new Set(["z"])), { visible: false, subset: [] });
});

test("withSelection keeps model order", () => {
  assert.deepEqual(withSelection(["a", "b", "c"], ["c"], ["a"], true), ["a", "c"]);
  assert.deepEqual(withSelection(["a", "b", "c"], ["a", "c"], ["a", "b"], false), ["c"]);
});

test("bindMarks hides unselected curves and figures in the browser, and follows labels", async () => {
  const mark = fakeModel({ labels: ["a", "b"], visible: true, curves_subset: [], opacities: [1] });
  const layout = fakeModel({ display: null });
  const fig = fakeModel({ title: "b", layout });
  const models = { m1: mark, f1: fig };
  const model = fakeModel({
    selected: ["a", "b"],
    marks: ["IPY_MODEL_m1"],
    figures: ["IPY_MODEL_f1", "IPY_MODEL_missing"],
  });
  const ctl = bindMarks(model, (id) =>
    id in models ? Promise.resolve(models[id]) : Promise.reject(new Error("no model")),
  );
  await ctl.ready;
  model.set("selected", ["a"]);
  assert.deepEqual(mark.get("curves_subset"), [0]);
  assert.equal(layout.get("display"), "none");
  model.set("selected", []);
  assert.equal(mark.get("visible"), false);
  model.set("selected", ["b"]);
  assert.equal(mark.get("visible"), true);
  assert.deepEqual(mark.get("curves_subset"), [1]);
  assert.equal(layout.get("display"), null);
  mark.set("labels", ["b", "c"]); // the kernel redrew with other layers
  await flush(); // applied once the mark's update is over, never inside it
  assert.deepEqual(mark.get("curves_subset"), [0]);
  assert.equal(mark.nestedSets, 0);
  ctl.highlight("c");
  assert.deepEqual(mark.get("opacities"), [FADED, 1]);
  ctl.highlight(null);
  assert.deepEqual(mark.get("opacities"), [1]);
  assert.equal(model.saves, 0); // browser-side only: nothing is sent to the kernel
  ctl.dispose();
  assert.equal(model.listeners(), 0);
  assert.equal(mark.listeners(), 0);
});

test("bindMarks matches curves and figures by display name when labels differ", async () => {
  const mark = fakeModel({ labels: ["A", "B"], visible: true, curves_subset: [], opacities: [1] });
  const layout = fakeModel({ display: null });
  const fig = fakeModel({ title: "B", layout });
  const models = { m1: mark, f1: fig };
  const model = fakeModel({
    names: ["a", "b"], labels: ["A", "B"], selected: ["a", "b"],
    marks: ["IPY_MODEL_m1"], figures: ["IPY_MODEL_f1"],
  });
  const ctl = bindMarks(model, (id) => Promise.resolve(models[id]));
  await ctl.ready;
  model.set("selected", ["a"]);
  assert.deepEqual(mark.get("curves_subset"), [0]);
  assert.equal(layout.get("display"), "none");
  assert.equal(ctl.waiting(), 0);
  ctl.highlight("b");
  assert.deepEqual(mark.get("opacities"), [FADED, 1]);
  assert.deepEqual(labelMap(["x", "y"], ["X"]), new Map([["x", "X"], ["y", "y"]]));
  ctl.dispose();
  assert.equal(model.listeners(), 0);
});

test("picker: chips per layer, click toggles and saves, all/none follow the filter", async () => {
  const document = fakeDocument();
  const model = fakeModel({
    names: NAMES,
    colors: NAMES.map(() => "#123456"),
    selected: [NAMES[0]],
    filter: "",
    alerted: [NAMES[3]],
  });
  const el = fakeDocument().createElement("div");
  const cleanup = createPicker({ model, el, document, marks: null });
  const chips = all(el, (n) => n.dataset?.layer);
  assert.deepEqual(
    chips.map((c) => c.dataset.layer),
    NAMES,
  );
  const chip = (name) => chips.find((c) => c.dataset.layer === name);
  assert.equal(chip(NAMES[2]).children[1].textContent, NAMES[2]); // the whole name
  assert.ok(chip(NAMES[0]).classList.contains("aw-on"));
  assert.ok(chip(NAMES[3]).classList.contains("aw-alert"));
  chip(NAMES[1]).fire("click");
  assert.deepEqual(model.get("selected"), [NAMES[0], NAMES[1]]);
  assert.equal(model.saves, 1);
  assert.ok(chip(NAMES[1]).classList.contains("aw-on"));

  const input = all(el, (n) => n.className === "aw-filter")[0];
  input.value = "fc1";
  input.fire("input");
  assert.equal(model.get("filter"), "fc1");
  assert.equal(chip(NAMES[2]).style.display, "none");
  assert.equal(chip(NAMES[3]).style.display, "");
  all(el, (n) => n.className.includes("aw-all"))[0].fire("click");
  assert.deepEqual(model.get("selected"), [NAMES[0], NAMES[1], NAMES[3]]);
  all(el, (n) => n.className.includes("aw-none"))[0].fire("click");
  assert.deepEqual(model.get("selected"), [NAMES[0]]);
  const count = all(el, (n) => n.className === "aw-count")[0];
  assert.equal(count.textContent, "1 of 6 layers shown · 2 match");

  // Python changes the selection: the chips follow without a save.
  const saves = model.saves;
  model.set("selected", [NAMES[5]]);
  assert.ok(chip(NAMES[5]).classList.contains("aw-on"));
  assert.equal(model.saves, saves);
  cleanup();
  assert.equal(model.listeners(), 0);
  assert.deepEqual(el.children, []);
});

test("picker: group all/none select the group's matching layers", () => {
  const document = fakeDocument();
  const model = fakeModel({ names: NAMES, colors: [], selected: [], filter: "", alerted: [] });
  const el = document.createElement("div");
  createPicker({ model, el, document, marks: null });
  const group = all(el, (n) => n.dataset?.group === "blocks.1")[0];
  const [summary] = group.children;
  const [, , allBtn, noneBtn] = summary.children;
  allBtn.fire("click");
  assert.deepEqual(model.get("selected"), NAMES.slice(3, 5));
  noneBtn.fire("click");
  assert.deepEqual(model.get("selected"), []);
});

test("default export is an anywidget module with render", async () => {
  assert.equal(typeof widget.render, "function");
  await flush();
});

test("picker: alerted layers join the selection once, from auto_select", () => {
  const document = fakeDocument();
  const model = fakeModel({
    names: NAMES, colors: [], selected: [NAMES[0]], filter: "", alerted: [],
    auto_select: [NAMES[2]],
  });
  const el = document.createElement("div");
  createPicker({ model, el, document, marks: null });
  assert.deepEqual(model.get("selected"), [NAMES[0], NAMES[2]]); // at render
  assert.equal(model.saves, 1);
  const chip = all(el, (n) => n.dataset?.layer === NAMES[2])[0];
  chip.fire("click"); // the user hides it again: it stays hidden
  assert.deepEqual(model.get("selected"), [NAMES[0]]);
  model.set("auto_select", [NAMES[2], NAMES[4]]);
  assert.deepEqual(model.get("selected"), [NAMES[0], NAMES[4]]);
});

test("picker: says how many selected layers wait for the kernel to be drawn", async () => {
  const mark = fakeModel({ labels: [NAMES[0]], visible: true, curves_subset: [] });
  const model = fakeModel({
    names: NAMES, colors: [], selected: [NAMES[0]], filter: "", alerted: [],
    marks: ["IPY_MODEL_m"], figures: [],
  });
  let refresh = () => {};
  const marks = bindMarks(model, () => Promise.resolve(mark), () => refresh());
  await marks.ready;
  const document = fakeDocument();
  const el = document.createElement("div");
  createPicker({ model, el, document, marks, onUpdate: (f) => (refresh = f) });
  const count = all(el, (n) => n.className === "aw-count")[0];
  assert.equal(count.textContent, "1 of 6 layers shown");
  all(el, (n) => n.className.includes("aw-all"))[0].fire("click"); // kernel busy: not drawn
  assert.equal(count.textContent, "6 of 6 layers shown · 5 drawn when the kernel is free");
  mark.set("labels", NAMES); // the kernel caught up
  await flush();
  assert.equal(count.textContent, "6 of 6 layers shown");
});
