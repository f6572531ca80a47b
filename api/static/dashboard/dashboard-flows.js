// The journey flows panel (marketers): the flows in force, the chosen flow drawn as a graph
// (SVG, layers by depth) with its live counts (GET /v1/flows/{id}/results, all versions or
// one that exists, runs entered in a from/to window), who is at a node (clicked), its holdout
// uplift with the 95 % interval, pause, resume and delete (confirmed) for admins, a backtest over recorded
// history of the flow as stored or of a draft (TOML or JSON pasted in the editor), the
// draft launched with PUT /v1/flows/{id} (admins; a refusal's errors listed beside the
// text by node and field, a 409 said apart), and why a customer got or didn't get each
// message (GET /v1/customers/{id}/flows).
// Uses dashboard.js's helpers (api, $, row, fillTable, guarded, percent, handle, when).
"use strict";

let flowsShown = null; // the flow whose results the panel shows
// The list's entries by id: a deleted flow is known only there (no GET /v1/flows/{id}).
let flowsListed = new Map();
let flowReads = new AbortController(); // a newer choice aborts the older one's reads

// Where a node goes next: its `next`, a wait's outcomes, a branch's cases, a split's
// branches, each with the edge's label ("" for a plain next).
function nodeEdges(node) {
  const found = [];
  const add = (label, target) => { if (target) found.push({ label, target }); };
  add("", node.next);
  add("event", node.on_event);
  add("timeout", node.on_timeout);
  for (const [i, branch] of (node.cases || []).entries()) add(`case ${i + 1}`, branch.next);
  add("else", node.else);
  for (const branch of node.branches || []) add(`${branch.name} ${branch.percent} %`, branch.next);
  return found;
}

function nodeTargets(node) {
  return nodeEdges(node).map(({ label, target }) => (label ? `${label}: ${target}` : target));
}

// The definition's nodes from each entry, following every target (the graph is acyclic).
function nodeOrder(nodes) {
  const order = [];
  const visit = (id) => {
    if (!nodes[id] || order.includes(id)) return;
    order.push(id);
    for (const { target } of nodeEdges(nodes[id])) visit(target);
  };
  for (const [id, node] of Object.entries(nodes)) if (node.kind === "entry") visit(id);
  for (const id of Object.keys(nodes)) visit(id); // anything left (not reachable: invalid)
  return order;
}

// Each node's layer: its longest path from an entry (a DAG, so |nodes| rounds settle it).
function nodeDepths(nodes, order) {
  const depth = Object.fromEntries(order.map((id) => [id, 0]));
  for (let round = 0; round < order.length; round += 1) {
    let moved = false;
    for (const id of order) {
      for (const { target } of nodeEdges(nodes[id])) {
        if (target in depth && depth[target] < depth[id] + 1) {
          depth[target] = depth[id] + 1;
          moved = true;
        }
      }
    }
    if (!moved) break;
  }
  return depth;
}

function skippedText(skipped) {
  const reasons = Object.entries(skipped || {});
  return reasons.length ? reasons.map(([reason, n]) => `${reason} ${n}`).join(", ") : "0";
}

// One node's counts (live, or a backtest's), as lines of text.
function nodeFigures(node, counts, backtested) {
  const c = counts || {};
  const first = [`reached ${c.reached ?? 0}`];
  if (backtested) {
    if (Object.keys(c.skipped || {}).length) first.push(`skipped ${skippedText(c.skipped)}`);
  } else first.push(`waiting ${c.waiting ?? 0}`);
  if (c.converted) first.push(`converted ${c.converted}`);
  const lines = [first.join(" · ")];
  if (node.kind === "send" && !backtested) {
    const d = c.deliveries || {};
    lines.push(`sent ${c.sent ?? 0} · skipped ${skippedText(c.skipped)}`,
               `delivered ${d.delivered ?? 0} · failed ${d.failed ?? 0}`);
  }
  return lines;
}

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 250;
const NODE_GAP_X = 40;
const LAYER_GAP = 56;

function svg(tag, attributes = {}, text = "") {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text) element.textContent = text;
  return element;
}

// The flow as a laid-out graph (SVG): nodes in layers by depth from the entry, each with
// its name, kind and counts; edges with their branch, split or outcome labels. A live
// node opens its customers (onNode) when clicked.
function drawGraph(box, nodes, counts, backtested = false, onNode = null) {
  const order = nodeOrder(nodes);
  const depth = nodeDepths(nodes, order);
  const layers = [];
  for (const id of order) (layers[depth[id]] ||= []).push(id);
  const lineCount = Math.max(1, ...order.map((id) => nodeFigures(nodes[id], counts[id], backtested).length));
  const nodeH = 30 + 16 * lineCount;
  const widest = Math.max(1, ...layers.map((layer) => layer.length));
  const width = widest * (NODE_W + NODE_GAP_X) + NODE_GAP_X;
  const height = layers.length * (nodeH + LAYER_GAP) + LAYER_GAP / 2;
  const where = {};
  layers.forEach((layer, row) => {
    const offset = (width - layer.length * (NODE_W + NODE_GAP_X) + NODE_GAP_X) / 2;
    layer.forEach((id, i) => {
      where[id] = { x: offset + i * (NODE_W + NODE_GAP_X), y: LAYER_GAP / 2 + row * (nodeH + LAYER_GAP) };
    });
  });
  const drawing = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  drawing.append(svg("title", {}, `The flow's ${order.length} nodes and where each goes next`));
  const defs = svg("defs");
  const marker = svg("marker", { id: `${box.id}-arrow`, viewBox: "0 0 10 10", refX: 10, refY: 5,
                                 markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "edge-head" }));
  defs.append(marker);
  drawing.append(defs);
  const edges = svg("g", { class: "edges" });
  for (const id of order) {
    for (const { label, target } of nodeEdges(nodes[id])) {
      if (!where[target]) continue;
      const from = where[id];
      const to = where[target];
      const [x1, y1, x2, y2] = [from.x + NODE_W / 2, from.y + nodeH, to.x + NODE_W / 2, to.y];
      const bend = Math.max(24, (y2 - y1) / 2);
      const edge = svg("g", { class: "edge", "data-from": id, "data-to": target });
      edge.append(svg("path", { d: `M ${x1} ${y1} C ${x1} ${y1 + bend}, ${x2} ${y2 - bend}, ${x2} ${y2}`,
                                 "marker-end": `url(#${box.id}-arrow)` }));
      if (label) {
        edge.append(svg("text", { class: "edge-label", x: (x1 + x2) / 2 + 4, y: (y1 + y2) / 2,
                                  "text-anchor": x2 < x1 ? "end" : "start" }, label));
      }
      edges.append(edge);
    }
  }
  drawing.append(edges);
  for (const id of order) {
    const node = nodes[id];
    const { x, y } = where[id];
    const group = svg("g", { class: "flow-node", "data-node": id, "data-kind": node.kind,
                             transform: `translate(${x} ${y})` });
    const lines = nodeFigures(node, counts[id], backtested);
    group.append(svg("title", {}, `${id} (${node.kind}): ${lines.join(" · ")}`));
    group.append(svg("rect", { width: NODE_W, height: nodeH, rx: 6 }));
    group.append(svg("rect", { class: "node-band", width: 5, height: nodeH, rx: 2 }));
    const head = svg("text", { x: 12, y: 19 });
    head.append(svg("tspan", { class: "node-name" }, id), svg("tspan", { class: "node-kind", dx: 8 }, node.kind));
    const figures = svg("text", { class: "node-counts", x: 12, y: 19 });
    // Lines joined by " · " in the text (what a reader copies), each on its own row.
    lines.forEach((line, i) => figures.append(svg("tspan", { x: 12, dy: 16 }, i ? ` · ${line}` : line)));
    group.append(head, figures);
    if (onNode) {
      group.setAttribute("tabindex", "0");
      group.setAttribute("role", "button");
      group.addEventListener("click", () => onNode(id));
      group.addEventListener("keydown", (event) => { if (event.key === "Enter") onNode(id); });
    }
    drawing.append(group);
  }
  box.replaceChildren(drawing);
}

function upliftText(conversions) {
  if (conversions.difference === null || conversions.difference === undefined) return "–";
  const [low, high] = conversions.ci95;
  const points = (x) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)}`;
  return `${points(conversions.difference)} pts (95 % CI ${points(low)} to ${points(high)})`;
}

function groupText(group) {
  return `${group.converted}/${group.runs} ${percent(group.rate)}`;
}

// The results' version choice: all versions, or the runs entered on one.
function fillVersions(flow) {
  const choice = $("flows-version");
  const chosen = choice.dataset.flow === flow.id ? choice.value : "";
  // Only versions that exist: those runs were started on, and the one in force.
  const versions = [...(flow.versions || [flow.version])].sort((a, b) => b - a);
  choice.replaceChildren(new Option("all versions", ""), ...versions.map((v) => new Option(`v${v}`, String(v))));
  choice.value = versions.includes(Number(chosen)) ? chosen : "";
  choice.dataset.flow = flow.id;
}

async function showFlow(id) {
  if (id !== flowsShown) {
    flowReads.abort();
    flowReads = new AbortController();
    flowsShown = id;
  }
  const signal = AbortSignal.any([sessionReads.signal, flowReads.signal]);
  const path = `/v1/flows/${encodeURIComponent(id)}`;
  // A deleted flow's runs finish on their versions: its results stay readable.
  const listed = flowsListed.get(id);
  const flow = listed?.deleted ? listed : await api(path, { signal });
  fillVersions(flow);
  const version = $("flows-version").value;
  const query = new URLSearchParams();
  if (version) query.set("version", version);
  // The results' window: the runs entered in [from, to) (the API's from/to).
  if ($("flows-results-from").value) query.set("from", $("flows-results-from").value);
  if ($("flows-results-to").value) query.set("to", $("flows-results-to").value);
  const results = await api(`${path}/results${query.toString() ? `?${query}` : ""}`, { signal });
  // A version's own nodes (the results name them), else the definition in force.
  const nodes = flow.deleted || (version && Number(version) !== flow.version)
    ? Object.fromEntries(Object.entries(results.nodes).map(([n, c]) => [n, { kind: c.kind }]))
    : flow.definition.nodes || {};
  drawGraph($("flows-graph"), nodes, results.nodes, false, (node) => showNode(id, node));
  $("flows-entered").textContent = results.entered.runs;
  $("flows-inside").textContent = results.inside_now;
  $("flows-sent").textContent = Object.values(results.messages).reduce((a, b) => a + b, 0);
  $("flows-converted").textContent = results.converted;
  $("flows-uplift").textContent = upliftText(results.conversions);
  $("flows-treatment").textContent = groupText(results.conversions.treatment);
  $("flows-holdout").textContent = groupText(results.conversions.holdout);
  $("flows-pause").disabled = flow.deleted || flow.paused;
  $("flows-resume").disabled = flow.deleted || !flow.paused;
  $("flows-delete").disabled = flow.deleted;
  $("flows-edit-load").disabled = flow.deleted;
  if ($("flows-node").dataset.flow !== id) $("flows-node").hidden = true;
  return flow;
}

async function refreshFlows() {
  await guarded("flows-error", async () => {
    const { flows } = await api("/v1/flows?include_deleted=true");
    flowsListed = new Map(flows.map((f) => [f.id, f]));
    const status = (f) => f.deleted ? "deleted (runs inside finish)"
      : f.paused ? `paused since ${when(f.paused_at)}` : (f.enabled ? "live" : "disabled");
    fillTable("flows-table", flows.map((f) => row([
      [f.id, false], [f.name, false], [String(f.version), true], [status(f), false],
    ])));
    const choice = $("flows-choice");
    const chosen = choice.value || flowsShown;
    choice.replaceChildren(
      ...flows.map((f) => new Option(f.deleted ? `${f.name} (deleted)` : f.name, f.id)),
    );
    if (flows.some((f) => f.id === chosen)) choice.value = chosen;
    if (choice.value) await showFlow(choice.value);
  });
}

async function pauseOrResume(verb) {
  const id = $("flows-choice").value;
  if (!id) return;
  await guarded("flows-error", async () => {
    await api(`/v1/flows/${encodeURIComponent(id)}/${verb}`, { method: "POST" });
    await refreshFlows();
  });
}

// DELETE /v1/flows/{id} after a confirmation: no new runs; those inside finish.
async function deleteChosen() {
  const id = $("flows-choice").value;
  if (!id) return;
  const asked = `Delete the flow ${id}? No one new enters it; customers inside finish on ` +
    "their version. It can be defined again later with a new version.";
  if (!window.confirm(asked)) return;
  await guarded("flows-error", async () => {
    await api(`/v1/flows/${encodeURIComponent(id)}`, { method: "DELETE" });
    $("flows-choice").value = "";
    flowsShown = null;
    $("flows-node").hidden = true;
    $("flows-graph").replaceChildren();
    await refreshFlows();
  });
}

const NODE_PAGE = 50;

// Who is at a node: waiting there now, then those who passed it, newest first; each key
// opens their "why" below. "More" reads the next page.
async function showNode(flowId, node, offset = 0) {
  const view = $("flows-node");
  await guarded("flows-error", async () => {
    const found = await api(`/v1/flows/${encodeURIComponent(flowId)}/nodes/` +
      `${encodeURIComponent(node)}/customers?limit=${NODE_PAGE}&offset=${offset}`);
    view.dataset.flow = flowId;
    view.dataset.node = node;
    $("flows-node-title").textContent =
      `${node}: ${found.now} at the node now, ${found.passed} passed it`;
    const items = found.customers.map((c) => {
      const item = document.createElement("li");
      item.dataset.at = c.at_node;
      const detail = c.at_node === "now"
        ? ` now (v${c.version}, since ${when(c.since)}${c.waiting_until ? `, waiting until ${when(c.waiting_until)}` : ""})`
        : ` passed (v${c.version}, ${when(c.since)})`;
      item.append(whyButton(c.customer_id), detail);
      return item;
    });
    const list = $("flows-node-who");
    if (offset) list.append(...items);
    else list.replaceChildren(...items);
    const next = offset + found.customers.length;
    const more = $("flows-node-more");
    more.hidden = next >= found.now + found.passed;
    more.dataset.offset = String(next);
    view.hidden = false;
  });
}

function backtestWindow() {
  return { from: $("flows-backtest-from").value, to: $("flows-backtest-to").value };
}

// The stored flow chosen above, over the window.
async function runBacktest(event) {
  event.preventDefault();
  const id = $("flows-choice").value;
  if (!id) return;
  await guarded("flows-backtest-error", async () => {
    const path = `/v1/flows/${encodeURIComponent(id)}`;
    const [flow, report] = await Promise.all([
      api(path),
      api(`${path}/backtest`, { method: "POST", body: JSON.stringify(backtestWindow()) }),
    ]);
    showBacktest(report, flow.definition.nodes || {}, `${id} v${report.version} as stored`);
  });
}

function terms(card, figures) {
  card.replaceChildren(...figures.flatMap(([label, value]) => {
    const term = document.createElement("dt");
    term.textContent = label;
    const detail = document.createElement("dd");
    detail.textContent = String(value);
    return [term, detail];
  }));
}

// A backtest's report: headline figures, the nodes with their counts, the commonest paths,
// messages per day and channel, and the customers skipped (each opens their "why").
function showBacktest(report, nodes, label) {
  $("flows-backtest-title").textContent =
    `Backtest of ${label}, ${report.from.slice(0, 10)} to ${report.to.slice(0, 10)} (nothing sent)`;
  const messages = Object.entries(report.messages).map(([ch, n]) => `${ch} ${n}`).join(", ");
  const c = report.conversions;
  terms($("flows-backtest"), [
    ["Customers considered", report.customers_considered],
    ["Entered", `${report.entered.customers} customers, ${report.entered.runs} runs`],
    ["Re-entries refused", report.reentry_refused],
    ["Messages", messages || "0"],
    ["Quiet hours", `${report.quiet_hours.deferred} deferred, ${report.quiet_hours.skipped} skipped`],
    ["Caps hit", report.caps_hit],
    ["Skipped", skippedText(report.skipped)],
    ["Left", skippedText(report.left)],
    ["Inside at the end", report.inside_at_end],
    ["Treatment converted", groupText(c.treatment)],
    ["Holdout converted", groupText(c.holdout)],
    ["Holdout uplift", upliftText(c)],
  ]);
  drawGraph($("flows-backtest-graph"), nodes, report.nodes, true);
  fillTable("flows-backtest-paths", report.paths.map((p) => {
    const line = row([[p.path.join(" → "), false], [String(p.runs), true]]);
    const who = document.createElement("td");
    who.append(...p.customers.map(whyButton));
    line.append(who);
    return line;
  }));
  fillTable("flows-backtest-days", report.messages_per_day.map((d) => row([
    [d.day, false], [d.channel, false], [String(d.count), true],
  ])));
  const who = $("flows-backtest-who");
  who.replaceChildren(...Object.entries(report.skipped_customers).map(([reason, keys]) => {
    const item = document.createElement("li");
    item.append(`${reason}: `, ...keys.map(whyButton));
    return item;
  }));
  $("flows-backtest-result").hidden = false;
}

// A customer key that opens their "why" below.
function whyButton(key) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link";
  button.textContent = key;
  button.addEventListener("click", () => showWhy(key));
  return button;
}

// --- the editor: a draft's text (TOML as in the flows file, or JSON) ----------------------

function showDraftErrors(errors, conflict = "") {
  $("flows-edit-conflict").textContent = conflict;
  $("flows-edit-errors").replaceChildren(...errors.map(({ field, message }) => {
    const item = document.createElement("li");
    const path = document.createElement("code");
    path.textContent = field;
    item.append(path, message);
    return item;
  }));
}

// A refusal's errors by path; a lost session or an aborted read goes where every panel's does.
function refused(error) {
  if (error.name === "AbortError" || error instanceof Unauthorized) {
    handle(error, "flows-edit-status");
    return [];
  }
  const errors = error.body?.errors;
  return errors?.length ? errors : [{ field: "", message: error.message }];
}

// The draft's flow id and table, validated by the API (which parses TOML as the CLI does);
// null when refused (the errors are listed beside the text).
async function draft() {
  showDraftErrors([]);
  $("flows-edit-status").textContent = "";
  const text = $("flows-edit-text").value;
  let id = $("flows-edit-id").value.trim();
  const json = text.trimStart().startsWith("{");
  let whole; // a document of [flows.ID] tables, not one flow's table
  if (json) {
    try {
      whole = "flows" in JSON.parse(text);
    } catch (error) {
      showDraftErrors([{ field: "body", message: `not valid JSON: ${error.message}` }]);
      return null;
    }
  } else whole = /^\s*\[+\s*flows\./m.test(text);
  if (!whole && !id) {
    showDraftErrors([{ field: "id", message: "give the flow's id (the text is one flow's table)" }]);
    return null;
  }
  let answer;
  try {
    answer = await api(`/v1/flows/validate${whole ? "" : `?flow_id=${encodeURIComponent(id)}`}`, {
      method: "POST", body: text, headers: { "Content-Type": json ? "application/json" : "application/toml" },
    });
  } catch (error) {
    showDraftErrors(refused(error));
    return null;
  }
  const found = answer.flows.find((f) => f.id === id) || (!id && answer.flows.length === 1 ? answer.flows[0] : null);
  if (!found) {
    const ids = answer.flows.map((f) => f.id).join(", ");
    showDraftErrors([{ field: "id", message: `the text defines ${ids || "no flow"}: give the id of one` }]);
    return null;
  }
  id = found.id;
  $("flows-edit-id").value = id;
  return { id, definition: found.definition, version: found.version };
}

async function validateDraft() {
  const found = await draft();
  if (found) $("flows-edit-status").textContent = `${found.id} v${found.version} is valid`;
}

async function backtestDraft() {
  const found = await draft();
  if (!found) return;
  await guarded("flows-backtest-error", async () => {
    let report;
    try {
      report = await api(`/v1/flows/${encodeURIComponent(found.id)}/backtest`, {
        method: "POST", body: JSON.stringify({ ...backtestWindow(), definition: found.definition }),
      });
    } catch (error) {
      showDraftErrors(refused(error));
      return;
    }
    showBacktest(report, found.definition.nodes || {}, `the draft ${found.id} v${found.version}`);
  });
}

// PUT: the flow is live within seconds (the worker polls the stored flows). A 409 (a changed
// flow without a new version) is said apart from a 422 (a rule broken by a node's field).
async function launchDraft() {
  const found = await draft();
  if (!found) return;
  let shown;
  try {
    shown = await api(`/v1/flows/${encodeURIComponent(found.id)}`, {
      method: "PUT", body: JSON.stringify(found.definition),
    });
  } catch (error) {
    const errors = refused(error);
    const conflict = error.status === 409
      ? `Not launched: this flow changed without a new version. ${error.message}` : "";
    showDraftErrors(errors, conflict);
    return;
  }
  $("flows-edit-status").textContent =
    `${shown.id} v${shown.version} ${shown.enabled ? "launched" : "saved (disabled)"}`;
  $("flows-choice").value = shown.id;
  flowsShown = shown.id;
  await refreshFlows();
}

async function loadChosen() {
  const id = $("flows-choice").value;
  if (!id) return;
  await guarded("flows-error", async () => {
    const flow = await api(`/v1/flows/${encodeURIComponent(id)}`);
    $("flows-edit-id").value = id;
    $("flows-edit-text").value = JSON.stringify(flow.definition, null, 2);
    showDraftErrors([]);
  });
}

// --- why a customer got (or didn't get) each message -------------------------------------

function factItem(fact) {
  const item = document.createElement("li");
  item.dataset.type = fact.type;
  item.dataset.node = fact.node || "";
  const at = document.createElement("time");
  at.textContent = when(fact.at);
  const what = document.createElement("b");
  what.textContent = `${fact.type}${fact.node ? ` ${fact.node}` : ""}`;
  const why = document.createElement("span");
  why.textContent = fact.why;
  item.append(at, what, why);
  return item;
}

async function showWhy(customer) {
  $("flows-why-id").value = customer;
  const view = $("flows-why");
  view.hidden = true;
  await guarded("flows-why-error", async () => {
    const found = await api(`/v1/customers/${encodeURIComponent(customer)}/flows`);
    view.replaceChildren(...found.flows.map((flow) => {
      const block = document.createElement("div");
      block.className = "why-flow";
      block.dataset.flow = flow.flow_id;
      const head = document.createElement("h4");
      const run = flow.run;
      head.textContent = run
        ? `${flow.flow_id} v${run.version}: inside at ${run.node || "the end"}` +
          (run.waiting_until ? `, waiting until ${when(run.waiting_until)}` : "") +
          (run.holdout ? " (holdout)" : run.group ? ` (${run.group})` : "")
        : `${flow.flow_id}: not inside (entered ${flow.entries} times)`;
      const facts = document.createElement("ol");
      facts.className = "timeline";
      facts.append(...flow.facts.map(factItem));
      block.append(head, facts);
      return block;
    }));
    view.hidden = false;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const today = new Date();
  const monthAgo = new Date(today.getTime() - 30 * 86400000);
  $("flows-backtest-from").value = monthAgo.toISOString().slice(0, 10);
  $("flows-backtest-to").value = new Date(today.getTime() + 86400000).toISOString().slice(0, 10);
  $("flows-choice").addEventListener("change", () => guarded("flows-error", () => showFlow($("flows-choice").value)));
  $("flows-pause").addEventListener("click", () => pauseOrResume("pause"));
  $("flows-resume").addEventListener("click", () => pauseOrResume("resume"));
  $("flows-delete").addEventListener("click", deleteChosen);
  $("flows-node-more").addEventListener("click", () => {
    const view = $("flows-node");
    showNode(view.dataset.flow, view.dataset.node, Number($("flows-node-more").dataset.offset));
  });
  for (const bound of ["flows-results-from", "flows-results-to"]) {
    $(bound).addEventListener("change", () => guarded("flows-error", () => showFlow($("flows-choice").value)));
  }
  $("flows-backtest-form").addEventListener("submit", runBacktest);
  $("flows-version").addEventListener("change", () => guarded("flows-error", () => showFlow($("flows-choice").value)));
  $("flows-edit-load").addEventListener("click", loadChosen);
  $("flows-edit-validate").addEventListener("click", validateDraft);
  $("flows-edit-backtest").addEventListener("click", backtestDraft);
  $("flows-edit-launch").addEventListener("click", launchDraft);
  $("flows-why-form").addEventListener("submit", (event) => {
    event.preventDefault();
    showWhy($("flows-why-id").value.trim());
  });
});
