// The marketers' dashboard: plain modules over the platform's read API.
// People sign in (a session cookie, HttpOnly: scripts never see it; unsafe calls echo the
// session's CSRF token). A key instead lives in sessionStorage only and goes as a Bearer token.
"use strict";

const KEY_STORE = "journeys.readKey";
const SIGNED_IN = "journeys.signedIn"; // a session was opened in this tab: ask for it on reload
const ROLES = ["viewer", "analyst", "marketer", "admin"];
let csrfToken = null; // the signed-in session's, from POST or GET /v1/session
const EVENT_TYPES = ["browse", "cart", "checkout", "purchase", "support", "identify", "custom"];
const DEFAULT_STEPS = ["browse", "cart", "checkout", "purchase"];
const STAGE_COLOURS = {
  awareness: "#8fb3f5", consideration: "#2f6fed", purchase: "#1f8a4c", service: "#e0a526",
  loyalty: "#8e44ad", lapsed: "#9aa3b2", merged: "#cfd5df",
};
const PALETTE = ["#2f6fed", "#1f8a4c", "#e0a526", "#8e44ad", "#c2352b", "#17a2b8", "#9aa3b2", "#5b6475"];
// Stage flow over time: how far back, and how many bars.
const FLOW_SPANS = { hour: [3600, 12], day: [86400, 12], month: [30 * 86400, 15] };
const PANEL_REFRESH_MS = 10000;
const charts = {};

class Unauthorized extends Error {}
// Every read of the signed-in session goes with this signal: sign-out aborts them, so a
// panel's refresh in flight does not come back as a 401 from the session just closed.
let sessionReads = new AbortController();

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (csrfToken && (options.method || "GET") !== "GET") headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, {
    signal: sessionReads.signal, ...options, headers, credentials: "same-origin",
  });
  if (response.status === 401) throw new Unauthorized("this key is not a valid read key");
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const failure = new Error(body.message || body.detail || `${response.status} ${response.statusText}`);
    failure.body = body; // its errors name the field (a definition's path), for the editor
    failure.status = response.status;
    throw failure;
  }
  return body;
}

// --- small helpers ------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const percent = (value) => (value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

// A table row from [text, numeric?] cells.
function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, numeric] of cells) {
    const cell = document.createElement("td");
    cell.textContent = text;
    if (numeric) cell.className = "num";
    tr.append(cell);
  }
  return tr;
}

function fillTable(id, rows) {
  document.querySelector(`#${id} tbody`).replaceChildren(...rows);
}

// Draw a Chart.js chart on the canvas ``id``, or give the existing one new data.
function draw(id, type, data, options = {}) {
  if (charts[id]) {
    charts[id].data = data;
    charts[id].update();
    return;
  }
  charts[id] = new Chart($(id), {
    type,
    data,
    options: { maintainAspectRatio: false, animation: false, ...options },
  });
}

const countAxes = { y: { beginAtZero: true, ticks: { precision: 0 } } };

// --- the key ---------------------------------------------------------------------

function askForKey(message = "") {
  $("content").hidden = true;
  $("sign-out").hidden = true;
  $("key-error").textContent = message;
  const dialog = $("key-dialog");
  if (!dialog.open) dialog.showModal();
}

async function tryKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
  try {
    await api("/v1/stats");
  } catch (error) {
    sessionStorage.removeItem(KEY_STORE);
    askForKey(error instanceof Unauthorized ? "That key was refused: check the read key." : error.message);
    return;
  }
  enter(await api("/v1/session"));
}

async function signIn(name, password) {
  const response = await fetch("/v1/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name, password }),
    credentials: "same-origin",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    askForKey(body.message || `${response.status} ${response.statusText}`);
    return;
  }
  sessionStorage.setItem(SIGNED_IN, "1");
  enter(body);
}

async function signOut() {
  sessionReads.abort();
  sessionReads = new AbortController();
  $("content").hidden = true; // no panel refresh starts while the session closes
  if (csrfToken) await api("/v1/session", { method: "DELETE" }).catch(() => {});
  csrfToken = null;
  sessionStorage.removeItem(KEY_STORE);
  sessionStorage.removeItem(SIGNED_IN);
  askForKey();
}

// Show what the role may see: a panel marked data-role="analyst" is hidden from viewers.
function enter(session) {
  csrfToken = session.csrf_token || null;
  const rank = ROLES.indexOf(session.role);
  for (const panel of document.querySelectorAll("[data-role]")) {
    panel.hidden = rank < ROLES.indexOf(panel.dataset.role);
  }
  $("who").textContent = `${session.actor} (${session.role})`;
  $("key-dialog").close();
  $("content").hidden = false;
  $("sign-out").hidden = false;
  refreshLive();
  runFunnel();
  runRetention();
  refreshPanels();
}

function handle(error, where) {
  if (error.name === "AbortError") return; // signed out meanwhile
  if (error instanceof Unauthorized) askForKey("The key is no longer accepted.");
  else $(where).textContent = error.message;
}

// Run ``work``; its error goes to the element ``where`` (cleared first).
async function guarded(where, work) {
  $(where).textContent = "";
  try {
    await work();
  } catch (error) {
    handle(error, where);
  }
}

// --- live counters -------------------------------------------------------------------

async function refreshLive() {
  try {
    const health = await fetch("/health").then((r) => r.json());
    const pill = $("live-health");
    pill.textContent = health.status;
    pill.className = `pill ${health.status}`;
    if (!sessionStorage.getItem(KEY_STORE)) return;
    const stats = await api("/v1/stats");
    $("live-rate").textContent = stats.events_per_second.toFixed(1);
    $("live-minute").textContent = stats.events_last_minute.toLocaleString();
    $("live-lag").textContent = stats.worker_lag ?? "–";
    $("live-behind").textContent =
      stats.backlog_seconds == null ? "–" : `${stats.backlog_seconds.toFixed(1)} s`;
    $("live-dead").textContent = stats.dead_letters ?? "–";
  } catch (error) {
    if (error instanceof Unauthorized) askForKey("The key is no longer accepted.");
  }
}

// --- funnel ----------------------------------------------------------------------------

// Fill ``choice`` (a select) with the canonical event types, ``value`` chosen.
function eventTypeChoice(choice, value) {
  for (const type of EVENT_TYPES) choice.add(new Option(type, type));
  choice.value = value;
  return choice;
}

function stepRow(value) {
  const item = document.createElement("li");
  const kind = document.createElement("select");
  kind.className = "step-kind";
  for (const [v, label] of [["event_type", "event type"], ["event", "event name"]]) {
    kind.add(new Option(label, v));
  }
  const typeChoice = eventTypeChoice(document.createElement("select"), EVENT_TYPES.includes(value) ? value : "browse");
  typeChoice.className = "step-type";
  const nameInput = document.createElement("input");
  nameInput.className = "step-name";
  nameInput.placeholder = "e.g. Order Completed";
  nameInput.hidden = true;
  if (!EVENT_TYPES.includes(value)) {
    kind.value = "event"; nameInput.value = value; nameInput.hidden = false; typeChoice.hidden = true;
  }
  kind.addEventListener("change", () => {
    nameInput.hidden = kind.value !== "event";
    typeChoice.hidden = kind.value === "event";
  });
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.title = "remove step";
  remove.addEventListener("click", () => item.remove());
  item.append(kind, typeChoice, nameInput, remove);
  return item;
}

// A date input as an ISO instant: its day's start, or (``after``) the next day's start.
function dayBoundary(id, after = false) {
  const value = $(id).value;
  if (!value) return undefined;
  const day = new Date(`${value}T00:00:00Z`);
  if (after) day.setUTCDate(day.getUTCDate() + 1);
  return day.toISOString();
}

function funnelRequest() {
  const steps = [...document.querySelectorAll("#funnel-steps li")].map((item) =>
    item.querySelector(".step-kind").value === "event"
      ? { event: item.querySelector(".step-name").value.trim() }
      : { event_type: item.querySelector(".step-type").value });
  const window = Number($("funnel-window").value);
  const unit = Number($("funnel-window-unit").value);
  return { steps, window_seconds: window * unit, start: dayBoundary("funnel-start"), end: dayBoundary("funnel-end", true) };
}

async function runFunnel(event) {
  if (event) event.preventDefault();
  await guarded("funnel-error", async () => {
    const result = await api("/v1/funnels", { method: "POST", body: JSON.stringify(funnelRequest()) });
    fillTable("funnel-table", result.steps.map((step) => row([
      [step.step, false], [step.customers.toLocaleString(), true],
      [percent(step.conversion_from_previous), true], [percent(step.conversion_from_first), true],
      [duration(step.median_seconds), true], [duration(step.p90_seconds), true],
    ])));
    draw("funnel-chart", "bar", {
      labels: result.steps.map((step) => step.step),
      datasets: [{ label: "customers", data: result.steps.map((step) => step.customers), backgroundColor: "#2f6fed" }],
    }, { plugins: { legend: { display: false } }, scales: countAxes });
  });
}

// --- stages ------------------------------------------------------------------------------

async function refreshStages() {
  await guarded("stages-error", async () => {
    const [now, reached] = await Promise.all([api("/v1/stages"), api("/v1/funnels/stages")]);
    const names = Object.keys(now.stages);
    fillTable("stages-table", names.map((stage) => row([[stage, false], [now.stages[stage].toLocaleString(), true]])));
    draw("stages-chart", "bar", {
      labels: names,
      datasets: [{ label: "customers", data: names.map((s) => now.stages[s]),
                   backgroundColor: names.map((s) => STAGE_COLOURS[s] || "#9aa3b2") }],
    }, { plugins: { legend: { display: false } }, scales: countAxes });
    fillTable("stage-funnel-table", reached.stages.map((s) => row([
      [s.stage, false], [s.customers.toLocaleString(), true], [percent(s.conversion_from_previous), true],
    ])));
  });
}

function flowQuery(start, end) {
  return api(`/v1/stage-flow?start=${encodeURIComponent(start.toISOString())}&end=${encodeURIComponent(end.toISOString())}`);
}

async function refreshFlow() {
  await guarded("flow-error", async () => {
    const [seconds, bars] = FLOW_SPANS[$("flow-span").value];
    const end = new Date();
    const start = new Date(end.getTime() - seconds * 1000);
    const step = (seconds * 1000) / bars;
    const edges = Array.from({ length: bars }, (_, i) => new Date(start.getTime() + i * step));
    const [whole, ...buckets] = await Promise.all([
      flowQuery(start, end),
      ...edges.map((from) => flowQuery(from, new Date(from.getTime() + step))),
    ]);
    fillTable("flow-table", whole.transitions.map((t) => row([
      [t.from ?? "(new)", false], [t.to, false], [t.customers.toLocaleString(), true],
    ])));
    // One stacked series per stage reached: customers who entered it in each bar.
    const reached = [...new Set(whole.transitions.map((t) => t.to))];
    const datasets = reached.map((stage) => ({
      label: stage,
      backgroundColor: STAGE_COLOURS[stage] || "#9aa3b2",
      data: buckets.map((b) => b.transitions.filter((t) => t.to === stage).reduce((n, t) => n + t.customers, 0)),
    }));
    const label = seconds > 86400 ? (d) => d.toLocaleDateString() : (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    draw("flow-chart", "bar", { labels: edges.map(label), datasets },
         { scales: { x: { stacked: true }, y: { ...countAxes.y, stacked: true } } });
  });
}

// --- retention ------------------------------------------------------------------------------

async function runRetention(event) {
  if (event) event.preventDefault();
  await guarded("retention-error", async () => {
    const periods = Number($("retention-periods").value);
    const result = await api("/v1/retention", {
      method: "POST",
      body: JSON.stringify({
        start_event: { event_type: $("retention-start").value },
        return_event: { event_type: $("retention-return").value },
        period: $("retention-period").value,
        periods,
      }),
    });
    const head = document.createElement("tr");
    for (const text of ["Cohort", "Customers", ...Array.from({ length: periods }, (_, i) => `${result.period} ${i + 1}`)]) {
      const th = document.createElement("th");
      th.textContent = text;
      head.append(th);
    }
    document.querySelector("#retention-table thead").replaceChildren(head);
    fillTable("retention-table", result.cohorts.map((cohort) => {
      const tr = row([[cohort.cohort, false], [cohort.size.toLocaleString(), true]]);
      cohort.rates.forEach((rate, i) => {
        const cell = document.createElement("td");
        cell.className = "num";
        cell.textContent = percent(rate);
        cell.title = `${cohort.retained[i]} of ${cohort.size}`;
        cell.dataset.retained = cohort.retained[i];
        // Heat: the share that came back, as the cell's shade.
        cell.style.background = `rgba(47, 111, 237, ${(0.08 + rate * 0.92).toFixed(3)})`;
        if (rate > 0.55) cell.style.color = "#fff";
        tr.append(cell);
      });
      return tr;
    }));
  });
}

// --- RFM ---------------------------------------------------------------------------------------

async function refreshRfm() {
  await guarded("rfm-error", async () => {
    const result = await api("/v1/rfm?limit=1");
    $("rfm-customers").textContent = result.customers.toLocaleString();
    const segments = Object.entries(result.segments).sort((a, b) => b[1] - a[1]);
    draw("rfm-chart", "bar", {
      labels: segments.map(([name]) => name.replaceAll("_", " ")),
      datasets: [{ label: "customers", data: segments.map(([, n]) => n),
                   backgroundColor: segments.map((_, i) => PALETTE[i % PALETTE.length]) }],
    }, { indexAxis: "y", plugins: { legend: { display: false } },
         scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } });
    fillTable("rfm-tiers", Object.entries(result.tiers).map(([tier, n]) => row([
      [tier.replaceAll("_", " "), false], [n.toLocaleString(), true],
    ])));
  });
}

// --- segments ------------------------------------------------------------------------------------

function backfillText(segment) {
  const backfill = segment.backfill;
  if (backfill.state === "done") return "backfilled";
  if (backfill.state === "running") return `backfilling ${(backfill.progress * 100).toFixed(0)}%`;
  return "not backfilled yet";
}

// The list refreshes with the panels (one call); sizes count members each day, so they
// are asked for when shown.
async function refreshSegments() {
  await guarded("segments-error", async () => {
    const { segments } = await api("/v1/segments");
    fillTable("segments-table", segments.map((s) => row([
      [s.id, false], [s.name, false], [backfillText(s), false],
    ])));
    const choice = $("segment-choice");
    const chosen = choice.value;
    choice.replaceChildren(...segments.map((s) => new Option(s.name, s.id)));
    if (segments.some((s) => s.id === chosen)) choice.value = chosen;
  });
}

async function showSegmentSizes(event) {
  event?.preventDefault();
  const id = $("segment-choice").value;
  if (!id) return;
  await guarded("segments-error", async () => {
    const { sizes } = await api(`/v1/segments/${encodeURIComponent(id)}/sizes?days=30`);
    $("segment-members").textContent = sizes[sizes.length - 1].size.toLocaleString();
    draw("segment-sizes-chart", "line", {
      labels: sizes.map((s) => s.at.slice(0, 10)),
      datasets: [{ label: "members", data: sizes.map((s) => s.size), borderColor: PALETTE[0] }],
    }, { plugins: { legend: { display: false } }, scales: countAxes });
  });
}

// --- triggers ------------------------------------------------------------------------------------

function deliveryPills(trigger) {
  const cell = document.createElement("td");
  for (const d of trigger.deliveries) {
    const pill = document.createElement("span");
    pill.className = `pill delivery ${d.state}`;
    pill.dataset.state = d.state;
    pill.textContent = `${d.channel}: ${d.state}`;
    if (d.last_error) pill.title = d.last_error;
    cell.append(pill);
  }
  if (!trigger.deliveries.length) cell.textContent = "no channel";
  return cell;
}

async function refreshTriggers() {
  await guarded("triggers-error", async () => {
    const result = await api("/v1/triggers?limit=50");
    fillTable("triggers-table", result.triggers.map((trigger) => {
      const tr = row([[when(trigger.fired_at), false], [trigger.rule, false]]);
      tr.dataset.triggerId = trigger.trigger_id;
      const who = document.createElement("td");
      const link = document.createElement("a");
      link.href = "#customer";
      link.textContent = trigger.customer_id;
      link.addEventListener("click", () => { $("customer-id").value = trigger.customer_id; showCustomer(); });
      who.append(link);
      tr.append(who, deliveryPills(trigger));
      return tr;
    }));
  });
}

// --- audit log (admins) -------------------------------------------------------------------

async function refreshAudit() {
  await guarded("audit-error", async () => {
    const entries = await api("/v1/audit?limit=100");
    fillTable("audit-table", entries.map((entry) => row([
      [when(entry.at), false], [entry.actor, false], [entry.role, false], [entry.action, false],
      [entry.target, false], [entry.source, false], [entry.outcome, false],
    ])));
  });
}

// --- customer ----------------------------------------------------------------------------

function timelineItem(kind, at, title, detail) {
  const item = document.createElement("li");
  item.dataset.kind = kind;
  const time = document.createElement("time");
  time.dateTime = at;
  time.textContent = when(at);
  const what = document.createElement("b");
  what.textContent = title;
  item.append(time, what);
  if (detail) {
    const more = document.createElement("span");
    more.textContent = detail;
    item.append(more);
  }
  return item;
}

// A journey entry as [kind, title, detail]: an event, a stage change, or an identity fact.
function describe(entry) {
  if (entry.type === "StageReached") return ["stage", `stage: ${entry.stage}`, entry.reason];
  if (entry.event_name) {
    const extra = [entry.category, entry.order_id, entry.revenue !== undefined ? `$${entry.revenue}` : null]
      .filter(Boolean).join(" · ");
    return ["event", entry.event_name, extra];
  }
  const detail = entry.anonymous_key || entry.customer_key || "";
  return ["identity", entry.type.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase(), detail];
}

async function showCustomer(event) {
  if (event) event.preventDefault();
  const card = $("customer-card");
  const timeline = $("customer-timeline");
  card.hidden = true;
  timeline.hidden = true;
  const id = $("customer-id").value.trim();
  await guarded("customer-error", async () => {
    const path = `/v1/customers/${encodeURIComponent(id)}`;
    const customer = await api(path);
    const [journey, triggers] = await Promise.all([
      api(`${path}/journey`),
      api(`/v1/triggers?limit=100&customer_id=${encodeURIComponent(customer.customer_id)}`),
    ]);
    const fields = [["Customer", customer.customer_id], ["Stage", customer.stage],
                    ["Since", when(customer.stage_since)],
                    ["Events", customer.event_count], ["Orders", customer.orders],
                    ["First seen", when(customer.first_seen)],
                    ["Last seen", when(customer.last_seen)],
                    ["RFM segment", customer.profile?.rfm?.segment?.replaceAll("_", " ") ?? "–"]];
    card.replaceChildren(...fields.flatMap(([label, value]) => {
      const term = document.createElement("dt");
      term.textContent = label;
      const detail = document.createElement("dd");
      detail.textContent = value;
      detail.dataset.field = label.toLowerCase().replace(" ", "_");
      return [term, detail];
    }));
    const items = journey.entries.map((entry) => {
      const [kind, title, detail] = describe(entry);
      return [entry.at, timelineItem(kind, entry.at, title, detail)];
    });
    for (const trigger of triggers.triggers) {
      const states = trigger.deliveries.map((d) => `${d.channel}: ${d.state}`).join(", ");
      items.push([trigger.fired_at, timelineItem("trigger", trigger.fired_at, `trigger: ${trigger.rule}`, states)]);
    }
    // Stable sort: the journey's own order is kept among equal times.
    items.sort((a, b) => new Date(a[0]) - new Date(b[0]));
    timeline.replaceChildren(...items.map(([, item]) => item));
    card.hidden = false;
    timeline.hidden = false;
  });
}

// --- start ---------------------------------------------------------------------------------

function refreshPanels() {
  if ($("content").hidden) return;
  refreshStages();
  refreshFlow();
  if (!$("rfm").hidden) refreshRfm();
  if (!$("segments").hidden) {
    refreshSegments();
    refreshDefinitions(); // dashboard-segments.js
  }
  if (!$("triggers").hidden) refreshTriggers();
  if (!$("audit").hidden) refreshAudit();
  if (!$("flows").hidden) refreshFlows(); // dashboard-flows.js
}

document.addEventListener("DOMContentLoaded", () => {
  const steps = $("funnel-steps");
  for (const step of DEFAULT_STEPS) steps.append(stepRow(step));
  eventTypeChoice($("retention-start"), "browse");
  eventTypeChoice($("retention-return"), "browse");
  $("add-step").addEventListener("click", () => steps.append(stepRow("purchase")));
  $("funnel-form").addEventListener("submit", runFunnel);
  $("retention-form").addEventListener("submit", runRetention);
  $("flow-span").addEventListener("change", refreshFlow);
  $("segment-form").addEventListener("submit", showSegmentSizes);
  $("customer-form").addEventListener("submit", showCustomer);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    tryKey($("key-input").value.trim());
  });
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("user-name").value.trim(), $("user-password").value);
  });
  $("sign-out").addEventListener("click", signOut);
  setInterval(refreshLive, 2000);
  setInterval(refreshPanels, PANEL_REFRESH_MS);
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) tryKey(key);
  else if (sessionStorage.getItem(SIGNED_IN)) api("/v1/session").then(enter, () => signOut());
  else askForKey();
  refreshLive();
});
