/**
 * actwidget layer picker (anywidget ES module; no build step, no dependencies).
 *
 * Python side: actwidget/widget/_layers.py `LayerPicker` (traits) and `LayerState` (logic).
 *
 * Message protocol: synced traits only, no custom messages.
 * @typedef {Object} PickerState
 * @property {string[]} names     every layer in model order, e.g. "blocks.3.mlp.fc1 (Linear)"
 * @property {string[]} labels    each layer's display name (same order; Python's
 *                                `display_name`): its chip's text, the `labels` of its
 *                                curves and the `title` of its heatmap; missing: the name
 * @property {string[]} colors    one CSS colour per name (same order)
 * @property {string[]} selected  the layers shown; written by Python (show_layers, alerts)
 *                                and by this view (clicks), in either order
 * @property {string} filter      the filter box: a glob when it has * ? or [, else a
 *                                substring; case-insensitive (`matches`, same in Python)
 * @property {string[]} alerted   layers with an alert (marked ⚠)
 * @property {string[]} auto_select  layers that joined the selection because of an alert,
 *                                in order (it only grows): the view adds each once to
 *                                `selected` and saves. (Python adds them to its own copy
 *                                without sending `selected`, which could undo clicks
 *                                still queued behind a blocking fit.)
 * @property {string[]} marks     "IPY_MODEL_<id>" refs of bqplot multi-line marks whose curve
 *                                `labels` are layers' display names: curves not selected are
 *                                hidden here (`curves_subset`, `visible`), browser-side only
 * @property {string[]} figures   refs of per-layer figures whose `title` is a layer's display
 *                                name: hidden here (`layout.display`) when not selected
 *
 * Why browser-side hiding: while a blocking fit runs, the kernel handles no message from the
 * browser until the cell ends, so a click must act here. The kernel redraws with the new
 * selection (only selected layers' data are sent) once it is free.
 */

const REF = "IPY_MODEL_";
export const FADED = 0.12; // opacity of the other curves while one layer is hovered

/** The filter rule: glob when the pattern has * ? or [, else substring; case-insensitive. */
export function matches(pattern, name) {
  const p = String(pattern ?? "").trim().toLowerCase();
  const n = String(name).toLowerCase();
  if (!p) return true;
  if (/[*?[]/.test(p)) {
    const re = globToRegExp(p);
    return re.test(n) || re.test(n.split(" (")[0]);
  }
  return n.includes(p);
}

/** A glob (* ? [abc] [!abc]) as an anchored RegExp, like Python's fnmatch. */
export function globToRegExp(glob) {
  let out = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") out += ".*";
    else if (c === "?") out += ".";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) out += "\\[";
      else {
        let body = glob.slice(i + 1, end).replace(/\\/g, "\\\\");
        if (body[0] === "!") body = "^" + body.slice(1);
        out += `[${body}]`;
        i = end;
      }
    } else out += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
  }
  return new RegExp(`^${out}$`, "s");
}

/** Module path of a layer name: "blocks.3.fc1 (Linear)" -> "blocks.3.fc1". */
export function pathOf(name) {
  const i = name.lastIndexOf(" (");
  return i > 0 ? name.slice(0, i) : name;
}

/** name -> display name, from the model's `names` and `labels` (a name is its own label
 * when `labels` lacks it). */
export function labelMap(names, labels) {
  return new Map((names ?? []).map((n, i) => [n, labels?.[i] ?? n]));
}

/**
 * Group names by module path: a tree of {key, label, leaves: [{name, label}], groups}.
 * A group whose only content is one subgroup merges with it ("blocks.3.mlp"). A leaf's
 * label is its display name (`labelOf`), the same wherever the layer is shown.
 */
export function buildTree(names, labelOf = new Map()) {
  const root = { key: "", label: "", leaves: [], groups: [], index: new Map() };
  for (const name of names) {
    const parts = pathOf(name).split(".");
    let node = root;
    for (let d = 0; d < parts.length - 1; d++) {
      const key = parts.slice(0, d + 1).join(".");
      let child = node.index.get(key);
      if (!child) {
        child = { key, label: parts[d], leaves: [], groups: [], index: new Map() };
        node.index.set(key, child);
        node.groups.push(child);
      }
      node = child;
    }
    node.leaves.push({ name, label: labelOf.get(name) ?? name });
  }
  const collapse = (node) => {
    node.groups = node.groups.map(collapse);
    delete node.index;
    while (node.key && node.leaves.length === 0 && node.groups.length === 1) {
      const only = node.groups[0];
      node.key = only.key;
      node.label = `${node.label}.${only.label}`;
      node.leaves = only.leaves;
      node.groups = only.groups;
    }
    return node;
  };
  return collapse(root);
}

/** Every layer name under a tree node. */
export function leavesOf(node) {
  return [...node.leaves.map((l) => l.name), ...node.groups.flatMap(leavesOf)];
}

/** What a multi-line mark shows for a selection: {visible, subset} (subset [] = all). */
export function subsetFor(labels, selected) {
  const idx = [];
  labels.forEach((l, i) => {
    if (selected.has(l)) idx.push(i);
  });
  if (idx.length === 0) return { visible: false, subset: [] };
  return { visible: true, subset: idx.length === labels.length ? [] : idx };
}

/** `selected` after setting `names` on (add) or off, in model order. */
export function withSelection(all, selected, names, on) {
  const now = new Set(selected);
  for (const n of names) {
    if (on) now.add(n);
    else now.delete(n);
  }
  return all.filter((n) => now.has(n));
}

const sameList = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * Keep the bound marks and figures in step with `selected`, in the browser.
 * `getModel(id)` resolves a widget model id (anywidget's `widget_manager.get_model`);
 * `onApply()` runs after each application. Returns {apply, highlight, waiting, dispose}.
 */
export function bindMarks(model, getModel, onApply = () => {}) {
  let marks = [];
  let figures = [];
  let disposed = false;
  let generation = 0;
  const base = new Map(); // mark -> opacities before a hover

  const resolve = (refs) =>
    Promise.all(
      (refs ?? [])
        .filter((r) => typeof r === "string" && r.startsWith(REF))
        .map((r) => Promise.resolve(getModel(r.slice(REF.length))).catch(() => null)),
    ).then((ms) => ms.filter(Boolean));

  /** Display names of the selected layers: what curves and figures are labelled by. */
  const selectedLabels = () => {
    const labelOf = labelMap(model.get("names"), model.get("labels"));
    return new Set((model.get("selected") ?? []).map((n) => labelOf.get(n) ?? n));
  };

  function apply() {
    if (disposed) return;
    const selected = selectedLabels();
    for (const mark of marks) {
      const { visible, subset } = subsetFor(mark.get("labels") ?? [], selected);
      if (mark.get("visible") !== visible) mark.set("visible", visible);
      if (!sameList(mark.get("curves_subset") ?? [], subset)) mark.set("curves_subset", subset);
    }
    for (const fig of figures) {
      const layout = fig.get("layout");
      if (!layout || typeof layout.set !== "function") continue;
      const display = selected.has(fig.get("title")) ? null : "none";
      if ((layout.get("display") ?? null) !== display) layout.set("display", display);
    }
    onApply();
  }

  // A mark's new labels come with its new x and y in one update. Setting the mark's
  // `visible` or `curves_subset` from inside that update's change:labels event would make
  // Backbone drop the x/y change (the model then never recomputes its curves, and the
  // chart keeps showing old batches): apply once the update is over.
  let pending = false;
  function applySoon() {
    if (pending) return;
    pending = true;
    queueMicrotask(() => {
      pending = false;
      apply();
    });
  }

  /** Selected layers that no bound mark has a curve for yet (the kernel draws them). */
  function waiting() {
    if (!marks.length) return 0;
    const drawn = new Set(marks.flatMap((m) => m.get("labels") ?? []));
    return [...selectedLabels()].filter((n) => !drawn.has(n)).length;
  }

  function highlight(name) {
    const labelOf = labelMap(model.get("names"), model.get("labels"));
    const label = name === null ? null : (labelOf.get(name) ?? name);
    for (const mark of marks) {
      const labels = mark.get("labels") ?? [];
      if (name === null) {
        if (base.has(mark)) mark.set("opacities", base.get(mark));
        base.delete(mark);
        continue;
      }
      if (!base.has(mark)) base.set(mark, mark.get("opacities") ?? [1]);
      const o = base.get(mark);
      const at = (i) => Number(o[i % Math.max(o.length, 1)] ?? 1);
      mark.set("opacities", labels.map((l, i) => (l === label ? 1 : at(i) * FADED)));
    }
  }

  async function rebind() {
    const gen = ++generation;
    const [m, f] = await Promise.all([resolve(model.get("marks")), resolve(model.get("figures"))]);
    if (disposed || gen !== generation) return;
    for (const mark of marks) mark.off("change:labels", applySoon);
    marks = m;
    figures = f;
    for (const mark of marks) mark.on("change:labels", applySoon);
    apply();
  }

  model.on("change:selected", apply);
  model.on("change:labels", apply);
  model.on("change:marks", rebind);
  model.on("change:figures", rebind);
  const ready = rebind();

  function dispose() {
    disposed = true;
    model.off("change:selected", apply);
    model.off("change:labels", apply);
    model.off("change:marks", rebind);
    model.off("change:figures", rebind);
    for (const mark of marks) mark.off("change:labels", applySoon);
  }
  return { apply, highlight, waiting, dispose, ready };
}

const STYLE = `
.aw-picker { font-size: 12px; width: 100%; }
.aw-bar { display: flex; gap: 6px; align-items: center; margin: 2px 0 4px; }
.aw-bar input { flex: 0 1 260px; min-width: 120px; padding: 2px 6px; font-size: 12px; }
.aw-count { color: #666; margin-left: 4px; }
.aw-tree { max-height: 170px; overflow-y: auto; }
.aw-group { margin: 1px 0 1px 2px; }
.aw-group > summary { cursor: pointer; color: #333; padding: 1px 0; }
.aw-group > .aw-body { margin-left: 14px; }
.aw-gcount { color: #888; margin: 0 6px; }
.aw-leaves { display: flex; flex-wrap: wrap; gap: 3px; margin: 2px 0; }
.aw-small { font-size: 11px; padding: 0 6px; margin-left: 2px; cursor: pointer;
  border: 1px solid #ccc; border-radius: 3px; background: #f7f7f7; color: #333; }
.aw-layer { font-size: 12px; padding: 1px 7px; border: 1px solid #ccc; border-radius: 10px;
  background: #fff; color: #888; cursor: pointer; display: inline-flex; align-items: center;
  gap: 4px; white-space: nowrap; }
.aw-layer.aw-on { color: #222; border-color: #888; background: #eef3fb; }
.aw-swatch { width: 10px; height: 10px; border-radius: 2px; display: inline-block; opacity: .3; }
.aw-layer.aw-on .aw-swatch { opacity: 1; }
.aw-layer.aw-alert::before { content: "⚠"; color: #d62728; }
`;

/** Render the picker into `el`; returns a cleanup function. */
export function createPicker({ model, el, document, marks, onUpdate }) {
  const doc = document;
  const make = (tag, cls, text) => {
    const e = doc.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const style = make("style");
  style.textContent = STYLE;
  const root = make("div", "aw-picker");
  const bar = make("div", "aw-bar");
  const input = make("input", "aw-filter");
  input.type = "search";
  input.placeholder = "filter layers: fc1, blocks.*.mlp*";
  input.setAttribute("aria-label", "filter layers");
  const allBtn = make("button", "aw-small aw-all", "all");
  const noneBtn = make("button", "aw-small aw-none", "none");
  allBtn.title = "show every layer that matches the filter";
  noneBtn.title = "hide every layer that matches the filter";
  const count = make("span", "aw-count");
  bar.append(input, allBtn, noneBtn, count);
  const tree = make("div", "aw-tree");
  root.append(bar, tree);
  el.replaceChildren(style, root);

  const open = new Map(); // group key -> open (the user's choice)
  let chips = new Map(); // name -> chip
  let groups = []; // [{key, details, count, names}]

  const names = () => model.get("names") ?? [];
  const filterText = () => model.get("filter") ?? "";
  const matching = (list) => list.filter((n) => matches(filterText(), n));
  const setSelected = (list) => {
    model.set("selected", list);
    model.save_changes();
  };
  const change = (list, on) =>
    setSelected(withSelection(names(), model.get("selected") ?? [], list, on));

  function groupEl(node, depth) {
    const all = leavesOf(node);
    const details = make("details", "aw-group");
    details.dataset.group = node.key;
    details.open = open.has(node.key) ? open.get(node.key) : all.length <= 16;
    details.addEventListener("toggle", () => open.set(node.key, details.open));
    const summary = make("summary");
    const gcount = make("span", "aw-gcount");
    const a = make("button", "aw-small", "all");
    const n = make("button", "aw-small", "none");
    a.addEventListener("click", (e) => (e.preventDefault(), change(matching(all), true)));
    n.addEventListener("click", (e) => (e.preventDefault(), change(matching(all), false)));
    summary.append(make("span", "aw-gname", node.label), gcount, a, n);
    details.append(summary);
    const body = make("div", "aw-body");
    body.append(leavesEl(node.leaves));
    for (const g of node.groups) body.append(groupEl(g, depth + 1));
    details.append(body);
    groups.push({ key: node.key, details, count: gcount, names: all });
    return details;
  }

  function leavesEl(leaves) {
    const box = make("div", "aw-leaves");
    const colors = model.get("colors") ?? [];
    const index = new Map(names().map((n, i) => [n, i]));
    for (const leaf of leaves) {
      const chip = make("button", "aw-layer");
      chip.dataset.layer = leaf.name;
      chip.title = leaf.label;
      const swatch = make("span", "aw-swatch");
      swatch.style.background = colors[index.get(leaf.name)] ?? "#555";
      chip.append(swatch, make("span", "aw-label", leaf.label));
      chip.addEventListener("click", () => {
        const on = !(model.get("selected") ?? []).includes(leaf.name);
        change([leaf.name], on);
      });
      chip.addEventListener("mouseenter", () => marks?.highlight(leaf.name));
      chip.addEventListener("mouseleave", () => marks?.highlight(null));
      chips.set(leaf.name, chip);
      box.append(chip);
    }
    return box;
  }

  function build() {
    chips = new Map();
    groups = [];
    const t = buildTree(names(), labelMap(names(), model.get("labels")));
    const parts = [leavesEl(t.leaves), ...t.groups.map((g) => groupEl(g, 0))];
    tree.replaceChildren(...parts);
    update();
  }

  function update() {
    const selected = new Set(model.get("selected") ?? []);
    const alerted = new Set(model.get("alerted") ?? []);
    const f = filterText();
    if (input.value !== f && doc.activeElement !== input) input.value = f;
    let shown = 0;
    for (const [name, chip] of chips) {
      const on = selected.has(name);
      shown += on;
      chip.classList.toggle("aw-on", on);
      chip.classList.toggle("aw-alert", alerted.has(name));
      chip.setAttribute("aria-pressed", String(on));
      chip.style.display = matches(f, name) ? "" : "none";
    }
    for (const g of groups) {
      const hits = matching(g.names);
      g.details.style.display = hits.length ? "" : "none";
      g.count.textContent = `${g.names.filter((n) => selected.has(n)).length}/${g.names.length}`;
      if (f.trim() && hits.length) g.details.open = true;
    }
    const total = names().length;
    const hits = f.trim() ? ` · ${matching(names()).length} match` : "";
    const wait = marks?.waiting?.() ?? 0;
    const busy = wait ? ` · ${wait} drawn when the kernel is free` : "";
    count.textContent = `${shown} of ${total} layer${total === 1 ? "" : "s"} shown${hits}${busy}`;
  }

  let handled = 0; // auto_select entries applied by this view
  function autoSelect() {
    const auto = model.get("auto_select") ?? [];
    if (auto.length <= handled) return;
    const fresh = auto.slice(handled);
    handled = auto.length;
    const selected = model.get("selected") ?? [];
    if (fresh.some((n) => !selected.includes(n))) change(fresh, true);
  }

  input.addEventListener("input", () => {
    model.set("filter", input.value);
    model.save_changes();
    update();
  });
  allBtn.addEventListener("click", () => change(matching(names()), true));
  noneBtn.addEventListener("click", () => change(matching(names()), false));
  const onNames = () => build();
  model.on("change:names", onNames);
  model.on("change:colors", onNames);
  model.on("change:labels", onNames);
  model.on("change:selected", update);
  model.on("change:alerted", update);
  model.on("change:filter", update);
  model.on("change:auto_select", autoSelect);
  build();
  autoSelect();

  onUpdate?.(update);
  return () => {
    model.off("change:names", onNames);
    model.off("change:colors", onNames);
    model.off("change:labels", onNames);
    model.off("change:selected", update);
    model.off("change:alerted", update);
    model.off("change:filter", update);
    model.off("change:auto_select", autoSelect);
    el.replaceChildren();
  };
}

function render({ model, el }) {
  // One binder per view: applying a selection is idempotent, so two views agree.
  let refresh = () => {};
  const marks = bindMarks(model, (id) => model.widget_manager.get_model(id), () => refresh());
  const cleanup = createPicker({ model, el, document, marks, onUpdate: (f) => (refresh = f) });
  return () => {
    marks.dispose();
    cleanup();
  };
}

export default { render };
