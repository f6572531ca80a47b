// The marketers' dashboard: plain modules over the platform's read API.
// The read key lives in sessionStorage only; every request carries it as a Bearer token.
"use strict";

const KEY_STORE = "journeys.readKey";
const EVENT_TYPES = ["browse", "cart", "checkout", "purchase", "support", "identify", "custom"];
const DEFAULT_STEPS = ["browse", "cart", "checkout", "purchase"];
let funnelChart = null;

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORE) || "";
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": `Bearer ${key}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (response.status === 401) throw new Unauthorized("this key is not a valid read key");
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `${response.status} ${response.statusText}`);
  return body;
}

// --- the key ---------------------------------------------------------------------

function askForKey(message = "") {
  document.getElementById("content").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("key-error").textContent = message;
  const dialog = document.getElementById("key-dialog");
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
  document.getElementById("key-dialog").close();
  document.getElementById("content").hidden = false;
  document.getElementById("sign-out").hidden = false;
  refreshLive();
  runFunnel();
}

function handle(error, where) {
  if (error instanceof Unauthorized) askForKey("The key is no longer accepted.");
  else document.getElementById(where).textContent = error.message;
}

// --- live counters -------------------------------------------------------------------

async function refreshLive() {
  try {
    const health = await fetch("/health").then((r) => r.json());
    const pill = document.getElementById("live-health");
    pill.textContent = health.status;
    pill.className = `pill ${health.status}`;
    if (!sessionStorage.getItem(KEY_STORE)) return;
    const stats = await api("/v1/stats");
    document.getElementById("live-rate").textContent = stats.events_per_second.toFixed(1);
    document.getElementById("live-minute").textContent = stats.events_last_minute.toLocaleString();
    document.getElementById("live-lag").textContent = stats.worker_lag ?? "–";
  } catch (error) {
    if (error instanceof Unauthorized) askForKey("The key is no longer accepted.");
  }
}

// --- funnel ----------------------------------------------------------------------------

function stepRow(value) {
  const item = document.createElement("li");
  const kind = document.createElement("select");
  kind.className = "step-kind";
  for (const [v, label] of [["event_type", "event type"], ["event", "event name"]]) {
    kind.add(new Option(label, v));
  }
  const typeChoice = document.createElement("select");
  typeChoice.className = "step-type";
  for (const type of EVENT_TYPES) typeChoice.add(new Option(type, type));
  const nameInput = document.createElement("input");
  nameInput.className = "step-name";
  nameInput.placeholder = "e.g. Order Completed";
  nameInput.hidden = true;
  if (EVENT_TYPES.includes(value)) typeChoice.value = value;
  else { kind.value = "event"; nameInput.value = value; nameInput.hidden = false; typeChoice.hidden = true; }
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

function funnelRequest() {
  const steps = [...document.querySelectorAll("#funnel-steps li")].map((item) =>
    item.querySelector(".step-kind").value === "event"
      ? { event: item.querySelector(".step-name").value.trim() }
      : { event_type: item.querySelector(".step-type").value });
  const window = Number(document.getElementById("funnel-window").value);
  const unit = Number(document.getElementById("funnel-window-unit").value);
  return { steps, window_seconds: window * unit };
}

async function runFunnel(event) {
  if (event) event.preventDefault();
  document.getElementById("funnel-error").textContent = "";
  let result;
  try {
    result = await api("/v1/funnels", { method: "POST", body: JSON.stringify(funnelRequest()) });
  } catch (error) {
    handle(error, "funnel-error");
    return;
  }
  const body = document.querySelector("#funnel-table tbody");
  body.replaceChildren(...result.steps.map((step) => {
    const row = document.createElement("tr");
    const percent = (value) => (value === null ? "–" : `${(value * 100).toFixed(1)}%`);
    for (const [text, numeric] of [[step.step, false], [step.customers.toLocaleString(), true],
                                   [percent(step.conversion_from_previous), true],
                                   [percent(step.conversion_from_first), true]]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (numeric) cell.className = "num";
      row.append(cell);
    }
    return row;
  }));
  const data = {
    labels: result.steps.map((step) => step.step),
    datasets: [{ label: "customers", data: result.steps.map((step) => step.customers), backgroundColor: "#2f6fed" }],
  };
  if (funnelChart) {
    funnelChart.data = data;
    funnelChart.update();
  } else {
    funnelChart = new Chart(document.getElementById("funnel-chart"), {
      type: "bar",
      data,
      options: { maintainAspectRatio: false, animation: false, plugins: { legend: { display: false } },
                 scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
  }
}

// --- customer ----------------------------------------------------------------------------

async function showCustomer(event) {
  event.preventDefault();
  const card = document.getElementById("customer-card");
  document.getElementById("customer-error").textContent = "";
  card.hidden = true;
  const id = document.getElementById("customer-id").value.trim();
  let customer;
  try {
    customer = await api(`/v1/customers/${encodeURIComponent(id)}`);
  } catch (error) {
    handle(error, "customer-error");
    return;
  }
  const fields = [["Customer", customer.customer_id], ["Stage", customer.stage],
                  ["Since", new Date(customer.stage_since).toLocaleString()],
                  ["Events", customer.event_count], ["Orders", customer.orders],
                  ["First seen", new Date(customer.first_seen).toLocaleString()],
                  ["Last seen", new Date(customer.last_seen).toLocaleString()]];
  card.replaceChildren(...fields.flatMap(([label, value]) => {
    const term = document.createElement("dt");
    term.textContent = label;
    const detail = document.createElement("dd");
    detail.textContent = value;
    detail.dataset.field = label.toLowerCase().replace(" ", "_");
    return [term, detail];
  }));
  card.hidden = false;
}

// --- start ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const steps = document.getElementById("funnel-steps");
  for (const step of DEFAULT_STEPS) steps.append(stepRow(step));
  document.getElementById("add-step").addEventListener("click", () => steps.append(stepRow("purchase")));
  document.getElementById("funnel-form").addEventListener("submit", runFunnel);
  document.getElementById("customer-form").addEventListener("submit", showCustomer);
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    tryKey(document.getElementById("key-input").value.trim());
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    askForKey();
  });
  setInterval(refreshLive, 2000);
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) tryKey(key); else askForKey();
  refreshLive();
});
