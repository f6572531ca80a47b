// Segments and computed traits on the dashboard (issue 17): the traits list, an editor of a
// segment's or a trait's table (TOML as in the definitions file, or JSON) for admins, with a
// refusal's errors listed beside it by path, a static segment's list uploaded as CSV, and the
// funnel and retention broken down by a segment.
// Uses dashboard.js's helpers ($, api, row, fillTable, guarded, draw, funnelRequest, percent)
// and dashboard-toml.js's window.TOML.
"use strict";

// What "Example" puts in the editor: issue 17's three segments are of this shape.
const DEFINITION_EXAMPLES = {
  segments: {
    name: "Viewed shoes three times this week and has not bought",
    where: {
      and: [
        { event: "Product Viewed", properties: { category: "shoes" }, within: "7d", count: 3 },
        { event: "Order Completed", within: "7d", absent: true },
      ],
    },
  },
  traits: { op: "sum", property: "revenue", event: "Order Completed", within: "365d" },
};
const definitions = { segments: {}, traits: {} }; // id -> definition as stored, per kind

function traitText(definition) {
  return JSON.stringify(definition);
}

async function refreshDefinitions() {
  await guarded("traits-error", async () => {
    const [{ segments }, { traits }] = await Promise.all([api("/v1/segments"), api("/v1/traits")]);
    definitions.segments = Object.fromEntries(segments.map((s) => [s.id, s.definition]));
    definitions.traits = Object.fromEntries(traits.map((t) => [t.id, t.definition]));
    fillTable("traits-table", traits.map((t) => row([
      [t.id, false], [traitText(t.definition), false], [t.used_by.join(", ") || "–", false],
    ])));
    fillChoice($("definition-choice"), [
      ...segments.map((s) => [`segments:${s.id}`, `segment ${s.id}`]),
      ...traits.map((t) => [`traits:${t.id}`, `trait ${t.id}`]),
    ]);
    const choices = [["", "none"], ...segments.map((s) => [s.id, s.name])];
    fillChoice($("funnel-segment"), choices);
    fillChoice($("retention-segment"), choices);
  });
}

// Replace a select's options, keeping the chosen value when it is still there.
function fillChoice(choice, options) {
  const chosen = choice.value;
  choice.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
  if (options.some(([value]) => value === chosen)) choice.value = chosen;
}

function definitionPath() {
  const kind = $("definition-kind").value;
  const id = $("definition-id").value.trim();
  return [kind, id, `/v1/${kind}/${encodeURIComponent(id)}`];
}

// The editor's text of a definition, and back, in the chosen format (TOML: the file's).
function editorText(definition, format = $("definition-format").value) {
  return format === "toml" ? window.TOML.stringify(definition) : JSON.stringify(definition, null, 2);
}

function editorValue(format = $("definition-format").value) {
  const text = $("definition-body").value;
  try {
    return format === "toml" ? window.TOML.parse(text) : JSON.parse(text);
  } catch (error) {
    const problem = new Error(`not valid ${format.toUpperCase()}: ${error.message}`);
    problem.field = "body";
    throw problem;
  }
}

// Switching the format rewrites the text in the other one (if it reads as the first).
let editorFormat = "toml";
function changeFormat() {
  const format = $("definition-format").value;
  if ($("definition-body").value.trim()) {
    try {
      $("definition-body").value = editorText(editorValue(editorFormat), format);
      showErrors([]);
    } catch (error) {
      $("definition-format").value = editorFormat;
      showErrors([{ field: error.field || "", message: error.message }]);
      return;
    }
  }
  editorFormat = format;
}

function showErrors(errors, list = $("definition-errors")) {
  list.replaceChildren(...errors.map(({ field, message }) => {
    const item = document.createElement("li");
    const path = document.createElement("code");
    path.textContent = field;
    item.append(path, message);
    return item;
  }));
}

function loadDefinition() {
  const [kind, id] = $("definition-choice").value.split(":");
  if (!id) return;
  $("definition-kind").value = kind;
  $("definition-id").value = id;
  $("definition-body").value = editorText(definitions[kind][id]);
  showErrors([]);
  $("definition-status").textContent = "";
}

async function saveDefinition() {
  const [kind, id, path] = definitionPath();
  let body;
  try {
    body = editorValue();
  } catch (error) {
    showErrors([{ field: error.field, message: error.message }]);
    return;
  }
  await changeDefinition(path, { method: "PUT", body: JSON.stringify(body) },
                         `${kind === "traits" ? "trait" : "segment"} ${id} saved`);
}

async function deleteDefinition() {
  const [kind, id, path] = definitionPath();
  await changeDefinition(path, { method: "DELETE" },
                         `${kind === "traits" ? "trait" : "segment"} ${id} deleted`);
}

// PUT or DELETE; a refusal (422, 409) lists its errors by path beside the editor.
async function changeDefinition(path, options, done) {
  showErrors([]);
  $("definition-status").textContent = "";
  if (!$("definition-id").value.trim()) {
    showErrors([{ field: "id", message: "give the segment's or trait's id" }]);
    return;
  }
  try {
    await api(path, options);
  } catch (error) {
    if (error.name === "AbortError") return;
    const errors = error.body?.errors;
    showErrors(errors?.length ? errors : [{ field: "", message: error.message }]);
    return;
  }
  $("definition-status").textContent = done;
  await Promise.all([refreshSegments(), refreshDefinitions()]);
}

// --- a static segment's list from a CSV file ---------------------------------------------------

async function uploadList() {
  const errors = $("list-errors");
  showErrors([], errors);
  $("list-status").textContent = "";
  const id = $("list-segment").value.trim();
  const file = $("list-file").files[0];
  if (!id || !file) {
    showErrors([{ field: id ? "file" : "segment", message: "give the segment's id and a CSV file" }],
               errors);
    return;
  }
  let answer;
  try {
    answer = await api(`/v1/segments/${encodeURIComponent(id)}/members`, {
      method: "POST", headers: { "Content-Type": "text/csv" }, body: await file.text(),
    });
  } catch (error) {
    if (error.name === "AbortError") return;
    const found = error.body?.errors;
    showErrors(found?.length ? found : [{ field: "", message: error.message }], errors);
    return;
  }
  $("list-status").textContent =
    `${answer.segment}: ${answer.members} members (${answer.added} added, ${answer.removed} removed)`;
  await Promise.all([refreshSegments(), refreshDefinitions()]);
}

// --- the funnel by segment -----------------------------------------------------------------

async function runFunnelBySegment(event) {
  if (event) event.preventDefault();
  const segment = $("funnel-segment").value;
  $("funnel-breakdown").hidden = !segment;
  if (!segment) return;
  $("funnel-breakdown-segment").textContent = segment;
  await guarded("funnel-breakdown-error", async () => {
    const result = await api("/v1/funnels", {
      method: "POST", body: JSON.stringify({ ...funnelRequest(), breakdown_segment: segment }),
    });
    const groups = ["in", "not in"].map((group) => [group, result.breakdown?.[group] ?? []]);
    fillTable("funnel-breakdown-table", groups.flatMap(([group, steps]) => steps.map((step) => row([
      [group, false], [step.step, false], [step.customers.toLocaleString(), true],
      [percent(step.conversion_from_previous), true], [percent(step.conversion_from_first), true],
    ]))));
    draw("funnel-breakdown-chart", "bar", {
      labels: result.steps.map((step) => step.step),
      datasets: groups.map(([group, steps], i) => ({
        label: group, data: steps.map((step) => step.customers), backgroundColor: PALETTE[i],
      })),
    });
  });
}

// --- retention by segment ------------------------------------------------------------------

async function runRetentionBySegment(event) {
  if (event) event.preventDefault();
  const segment = $("retention-segment").value;
  $("retention-breakdown").hidden = !segment;
  if (!segment) return;
  $("retention-breakdown-segment").textContent = segment;
  await guarded("retention-breakdown-error", async () => {
    const periods = Number($("retention-periods").value);
    const result = await api("/v1/retention", {
      method: "POST",
      body: JSON.stringify({
        start_event: { event_type: $("retention-start").value },
        return_event: { event_type: $("retention-return").value },
        period: $("retention-period").value,
        periods,
        breakdown_segment: segment,
      }),
    });
    const head = document.createElement("tr");
    const titles = ["Group", "Cohort", "Customers",
                    ...Array.from({ length: periods }, (_, i) => `${result.period} ${i + 1}`)];
    for (const text of titles) {
      const th = document.createElement("th");
      th.textContent = text;
      head.append(th);
    }
    document.querySelector("#retention-breakdown-table thead").replaceChildren(head);
    const groups = ["in", "not in"].map((group) => [group, result.breakdown?.[group] ?? []]);
    fillTable("retention-breakdown-table", groups.flatMap(([group, cohorts]) => cohorts.map(
      (cohort) => row([
        [group, false], [cohort.cohort, false], [cohort.size.toLocaleString(), true],
        ...cohort.rates.map((rate) => [percent(rate), true]),
      ]))));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("definition-load").addEventListener("click", loadDefinition);
  $("definition-save").addEventListener("click", saveDefinition);
  $("definition-delete").addEventListener("click", deleteDefinition);
  $("definition-example").addEventListener("click", () => {
    $("definition-body").value = editorText(DEFINITION_EXAMPLES[$("definition-kind").value]);
  });
  $("definition-format").addEventListener("change", changeFormat);
  $("list-upload").addEventListener("click", uploadList);
  $("funnel-form").addEventListener("submit", runFunnelBySegment);
  $("funnel-segment").addEventListener("change", runFunnelBySegment);
  $("retention-form").addEventListener("submit", runRetentionBySegment);
  $("retention-segment").addEventListener("change", runRetentionBySegment);
});
