// The journey flows panel (marketers): the flows in force, the chosen flow's nodes in order
// with their live counts (GET /v1/flows/{id}/results), its holdout uplift with the 95 %
// interval, pause and resume for admins, and a backtest over recorded history.
// Uses dashboard.js's helpers (api, $, row, fillTable, guarded, percent, handle).
"use strict";

let flowsShown = null; // the flow whose results the panel shows
let flowReads = new AbortController(); // a newer choice aborts the older one's reads

// Where a node goes next: its `next`, a wait's outcomes, a branch's cases, a split's branches.
function nodeTargets(node) {
  const found = [];
  const add = (label, target) => { if (target) found.push(label ? `${label}: ${target}` : target); };
  add("", node.next);
  add("event", node.on_event);
  add("timeout", node.on_timeout);
  for (const [i, branch] of (node.cases || []).entries()) add(`case ${i + 1}`, branch.next);
  add("else", node.else);
  for (const branch of node.branches || []) add(`${branch.name} ${branch.percent} %`, branch.next);
  return found;
}

// The definition's nodes from each entry, following every target (the graph is acyclic).
function nodeOrder(nodes) {
  const order = [];
  const visit = (id) => {
    if (!nodes[id] || order.includes(id)) return;
    order.push(id);
    for (const target of nodeTargets(nodes[id])) visit(target.split(": ").pop());
  };
  for (const [id, node] of Object.entries(nodes)) if (node.kind === "entry") visit(id);
  for (const id of Object.keys(nodes)) visit(id); // anything left (not reachable: invalid)
  return order;
}

function skippedText(skipped) {
  const reasons = Object.entries(skipped || {});
  return reasons.length ? reasons.map(([reason, n]) => `${reason} ${n}`).join(", ") : "0";
}

function nodeItem(id, node, counts) {
  const item = document.createElement("li");
  item.dataset.kind = node.kind;
  item.dataset.node = id;
  const head = document.createElement("div");
  const name = document.createElement("span");
  name.className = "node-name";
  name.textContent = id;
  const kind = document.createElement("span");
  kind.className = "node-kind";
  kind.textContent = node.kind;
  const next = document.createElement("span");
  next.className = "node-next";
  const targets = nodeTargets(node);
  next.textContent = targets.length ? `→ ${targets.join(" · ")}` : "→ end";
  head.append(name, kind, next);
  const figures = document.createElement("div");
  figures.className = "node-counts";
  const c = counts || {};
  const parts = [`reached ${c.reached ?? 0}`, `waiting ${c.waiting ?? 0}`];
  if (node.kind === "send") {
    const d = c.deliveries || {};
    parts.push(`sent ${c.sent ?? 0}`, `skipped ${skippedText(c.skipped)}`,
               `delivered ${d.delivered ?? 0}`, `failed ${d.failed ?? 0}`);
  }
  if (c.converted) parts.push(`converted ${c.converted}`);
  figures.textContent = parts.join(" · ");
  item.append(head, figures);
  return item;
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

async function showFlow(id) {
  if (id !== flowsShown) {
    flowReads.abort();
    flowReads = new AbortController();
    flowsShown = id;
  }
  const signal = AbortSignal.any([sessionReads.signal, flowReads.signal]);
  const path = `/v1/flows/${encodeURIComponent(id)}`;
  const [flow, results] = await Promise.all([api(path, { signal }), api(`${path}/results`, { signal })]);
  const nodes = flow.definition.nodes || {};
  $("flows-graph").replaceChildren(...nodeOrder(nodes).map((n) => nodeItem(n, nodes[n], results.nodes[n])));
  $("flows-entered").textContent = results.entered.runs;
  $("flows-inside").textContent = results.inside_now;
  $("flows-sent").textContent = Object.values(results.messages).reduce((a, b) => a + b, 0);
  $("flows-converted").textContent = results.converted;
  $("flows-uplift").textContent = upliftText(results.conversions);
  $("flows-treatment").textContent = groupText(results.conversions.treatment);
  $("flows-holdout").textContent = groupText(results.conversions.holdout);
  $("flows-pause").disabled = flow.paused;
  $("flows-resume").disabled = !flow.paused;
}

async function refreshFlows() {
  await guarded("flows-error", async () => {
    const { flows } = await api("/v1/flows");
    fillTable("flows-table", flows.map((f) => row([
      [f.id, false], [f.name, false], [String(f.version), true],
      [f.paused ? `paused since ${when(f.paused_at)}` : (f.enabled ? "live" : "disabled"), false],
    ])));
    const choice = $("flows-choice");
    const chosen = choice.value || flowsShown;
    choice.replaceChildren(...flows.map((f) => new Option(f.name, f.id)));
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

async function runBacktest(event) {
  event.preventDefault();
  const id = $("flows-choice").value;
  if (!id) return;
  await guarded("flows-backtest-error", async () => {
    const body = { from: $("flows-backtest-from").value, to: $("flows-backtest-to").value };
    const report = await api(`/v1/flows/${encodeURIComponent(id)}/backtest`, {
      method: "POST", body: JSON.stringify(body),
    });
    const messages = Object.entries(report.messages).map(([ch, n]) => `${ch} ${n}`).join(", ");
    const figures = [
      ["Customers considered", report.customers_considered],
      ["Entered", `${report.entered.customers} customers, ${report.entered.runs} runs`],
      ["Messages", messages || "0"],
      ["Skipped", skippedText(report.skipped)],
      ["Left", skippedText(report.left)],
      ["Holdout uplift", upliftText(report.conversions)],
    ];
    const card = $("flows-backtest");
    card.replaceChildren(...figures.flatMap(([label, value]) => {
      const term = document.createElement("dt");
      term.textContent = label;
      const detail = document.createElement("dd");
      detail.textContent = String(value);
      return [term, detail];
    }));
    card.hidden = false;
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
  $("flows-backtest-form").addEventListener("submit", runBacktest);
});
