// tunelab studio: one page, routed by the URL's hash; every text from the server is set with
// textContent (never parsed as HTML).
"use strict";

const view = document.getElementById("view");
let leave = () => {};  // closes the streams of the view being left

function el(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") element.className = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) element.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits ?? 4);
  return String(value);
}

function statusBadge(status) {
  return el("span", { class: `status ${status}`, "data-status": status }, status);
}

function table(headers, rows, attributes) {
  return el("table", attributes || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) =>
      c instanceof Node ? el("td", {}, c) : el("td", { class: typeof c === "number" ? "num" : "" }, fmt(c)))))));
}

function showError(where, error) {
  where.replaceChildren(el("p", { class: "error", role: "alert" }, String(error.message || error)));
}

// ---- runs ----------------------------------------------------------------------------------

async function runsView() {
  const holder = el("div");
  view.replaceChildren(el("h2", {}, "Runs"), holder);
  const refresh = async () => {
    try {
      const runs = await api("/api/runs");
      if (runs.length === 0) {
        holder.replaceChildren(el("p", { class: "note" }, "No runs in this workspace yet: start one from ", el("a", { href: "#/new" }, "New run"), "."));
        return;
      }
      holder.replaceChildren(table(
        ["run", "status", "task", "model", "step", "metric", "score", "TF-IDF+LR", "vs baseline", "tokens/s"],
        runs.map((r) => [
          el("a", { href: `#/run/${encodeURIComponent(r.name)}` }, r.name), statusBadge(r.status), r.task, r.model,
          r.step, r.metric, r.score, r.baseline, r.vs_baseline, r.tokens_per_s === null ? null : Math.round(r.tokens_per_s)]),
        { id: "runs-table" }));
    } catch (error) { showError(holder, error); }
  };
  await refresh();
  const timer = setInterval(refresh, 2000);
  leave = () => clearInterval(timer);
}

// ---- one run -------------------------------------------------------------------------------

const CURVES = [
  ["loss", "training loss", (r) => r.loss, (r) => r.eval_loss],
  ["metric", "eval metric", (r) => firstEvalMetric(r), null],
  ["lr", "learning rate", (r) => r.lr, null],
  ["speed", "real tokens/s", (r) => r.tokens_per_s, null],
];

function firstEvalMetric(record) {
  for (const [key, value] of Object.entries(record)) {
    if (key.startsWith("eval_") && key !== "eval_loss" && key !== "eval_perplexity" && typeof value === "number") return value;
  }
  return null;
}

async function runView(name) {
  const header = el("div");
  const body = el("div");
  view.replaceChildren(header, body);
  let run;
  try { run = await api(`/api/runs/${encodeURIComponent(name)}`); } catch (error) { showError(view, error); return; }
  const records = [];
  const charts = {};
  const chartGrid = el("div", { class: "charts" }, CURVES.map(([key, title]) => {
    charts[key] = el("div");
    const legend = key === "loss" ? el("span", { class: "legend" }, el("span", { style: `color:${window.charts.COLORS[0]}` }, " — train"),
      el("span", { style: `color:${window.charts.COLORS[1]}` }, "— eval")) : null;
    return el("div", { class: "chart", id: `chart-${key}` }, el("div", { class: "title" }, title, legend), charts[key]);
  }));
  const draw = () => {
    for (const [key, , train, evaluation] of CURVES) {
      const series = [{ name: "train", points: records.filter((r) => train(r) !== null && train(r) !== undefined).map((r) => [r.step, train(r)]) }];
      if (evaluation) series.push({ name: "eval", points: records.filter((r) => typeof evaluation(r) === "number").map((r) => [r.step, evaluation(r)]) });
      window.charts.lineChart(charts[key], series, { xLabel: "step", empty: key === "metric" ? "no scorings during training (eval.select.every)" : null });
    }
  };
  renderRunHeader(header, run);
  body.replaceChildren(chartGrid, ...runSections(run));
  draw();
  const source = new EventSource(`/api/runs/${encodeURIComponent(name)}/stream`);
  let pending = false;
  source.addEventListener("metrics", (event) => {
    records.push(JSON.parse(event.data));
    if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); }
  });
  const watched = (r) => JSON.stringify(["status", "score", "evaluations", "jobs_running", "error"].map((k) => r[k] ?? null));
  source.addEventListener("status", async (event) => {
    const status = JSON.parse(event.data);
    if (watched(status) !== watched(run)) {
      try { run = await api(`/api/runs/${encodeURIComponent(name)}`); } catch (error) { return; }
      renderRunHeader(header, run);
      body.replaceChildren(chartGrid, ...runSections(run));
    }
  });
  leave = () => source.close();
}

function renderRunHeader(header, run) {
  const message = el("p", { class: "error", role: "alert" });
  const act = (action) => async () => {
    message.textContent = "";
    try { await post(`/api/runs/${encodeURIComponent(run.name)}/${action}`); }
    catch (error) { message.textContent = error.message; }
  };
  const active = run.status === "running" || run.status === "starting";
  const busy = run.jobs_running.length > 0;
  const finished = run.has_adapter && !active && !busy;
  header.replaceChildren(
    el("h2", {}, run.name, " ", statusBadge(run.status)),
    el("p", { class: "note" }, `${run.task} · ${run.model} · step ${run.step}`,
      run.score !== null && run.score !== undefined ? ` · ${run.metric} ${fmt(run.score)} (TF-IDF+LR ${fmt(run.baseline)})` : "",
      run.error ? ` · ${run.error}` : "", busy ? ` · ${run.jobs_running.join(", ")} running…` : ""),
    el("div", { class: "actions" },
      el("button", { id: "stop", onclick: act("stop"), disabled: !active }, "Stop"),
      el("button", { id: "resume", onclick: act("resume"), disabled: active || busy || run.checkpoints.length === 0 || run.status === "finished" }, "Resume"),
      el("button", { id: "evaluate", onclick: act("evaluate"), disabled: !finished }, "Evaluate"),
      el("button", { id: "merge", onclick: act("merge"), disabled: !finished }, "Merge"),
      el("a", { href: `#/chat/${encodeURIComponent(run.name)}` }, el("button", { disabled: !finished }, "Chat"))),
    message);
}

function runSections(run) {
  const sections = [];
  sections.push(el("h3", {}, "Checkpoints"),
    el("p", { id: "checkpoints" }, run.checkpoints.length ? run.checkpoints.join(", ") : "none yet", run.has_best ? " · best/" : ""));
  sections.push(...dataReport(run));
  if (run.evaluations.length) sections.push(...evaluationSection(run));
  if (run.simulation && run.simulation.results) sections.push(...simulationSection(run.simulation));
  if (run.log) sections.push(el("h3", {}, "Output"), el("pre", { id: "log" }, run.log));
  return sections;
}

function dataReport(run) {
  const report = run.data_report || {};
  const splits = ["train", "val"].filter((s) => report[s]);
  if (!splits.length) return [];
  const rows = splits.map((s) => [s, report[s].kept, report[s].rejected, report[s].truncated,
    report[s].tokens ? report[s].tokens.p50 : null, report[s].tokens ? report[s].tokens.max : null]);
  const parts = [el("h3", {}, "Data"), table(["split", "kept", "rejected", "truncated", "p50 tokens", "max tokens"], rows, { id: "data-report" })];
  if (run.rejects.length) {
    parts.push(el("h3", {}, `Rejected rows (first ${run.rejects.length})`),
      table(["file", "line / row", "field", "reason"], run.rejects.map((r) => [r.file, r.line ?? r.row, r.field, r.reason]), { id: "rejects" }));
  }
  return parts;
}

function evaluationSection(run) {
  const holder = el("div", { id: "evaluation" });
  const choice = el("select", { id: "eval-choice", onchange: () => showEvaluation(run.name, choice.value, holder) },
    run.evaluations.filter((n) => n !== "baseline").map((n) => el("option", { value: n }, n)));
  if (choice.options.length) showEvaluation(run.name, choice.value, holder);
  return [el("h3", {}, "Evaluation ", choice), holder];
}

async function showEvaluation(name, evalName, holder) {
  let result;
  try { result = await api(`/api/runs/${encodeURIComponent(name)}/eval/${encodeURIComponent(evalName)}`); }
  catch (error) { showError(holder, error); return; }
  const parts = [];
  const tasks = (result.metrics && result.metrics.tasks) || {};
  const baselineTasks = (result.baseline && result.baseline.tasks) || {};
  for (const [task, scores] of Object.entries(tasks)) {
    const keys = Object.keys(scores).filter((k) => typeof scores[k] === "number");
    const base = baselineTasks[task] || {};
    const classification = scores.classification || {};
    const baseClassification = base.classification || {};
    const rows = keys.map((k) => [k, scores[k], base[k] ?? null]);
    if (classification.macro && !keys.includes("macro_f1")) rows.unshift(["macro_f1", classification.macro.f1, baseClassification.macro ? baseClassification.macro.f1 : null]);
    if (classification.accuracy !== undefined && !keys.includes("accuracy")) rows.unshift(["accuracy", classification.accuracy, baseClassification.accuracy ?? null]);
    parts.push(el("p", {}, `task ${task}`), table(["metric", "model", "TF-IDF+LR"], rows, { class: "eval-metrics" }));
    if (classification.confusion) parts.push(confusionTable(classification.confusion));
  }
  parts.push(...predictionTable(result.predictions));
  holder.replaceChildren(...parts);
}

function confusionTable(confusion) {
  return el("table", { id: "confusion" },
    el("thead", {}, el("tr", {}, el("th", {}, "reference \\ predicted"), confusion.columns.map((c) => el("th", {}, c)))),
    el("tbody", {}, confusion.rows.map((label, i) => el("tr", {}, el("th", {}, label),
      confusion.matrix[i].map((count) => el("td", { class: "num" }, String(count)))))));
}

function predictionTable(predictions) {
  if (!predictions.length) return [];
  const statuses = ["all", "correct", "partial", "wrong", "invalid"];
  const body = el("tbody");
  const count = el("span", { id: "prediction-count" });
  const fill = (status) => {
    const shown = predictions.filter((p) => status === "all" || p.status === status);
    count.textContent = `${shown.length} of ${predictions.length} rows`;
    body.replaceChildren(...shown.slice(0, 300).map((p) => el("tr", { "data-status": p.status },
      el("td", {}, p.status), el("td", {}, p.input ?? ""), el("td", {}, p.reference ?? ""), el("td", {}, p.prediction ?? ""))));
  };
  const filter = el("select", { id: "status-filter", onchange: () => fill(filter.value) }, statuses.map((s) => el("option", { value: s }, s)));
  fill("all");
  return [el("h3", {}, "Predictions ", filter, " ", count),
    el("table", { id: "predictions" }, el("thead", {}, el("tr", {}, ["status", "input", "reference", "prediction"].map((h) => el("th", {}, h)))), body)];
}

function simulationSection(simulation) {
  const byPolicy = {};
  for (const r of simulation.results) (byPolicy[r.policy] = byPolicy[r.policy] || []).push([r.capacity, r.hit_rate]);
  const holder = el("div", { class: "chart", id: "simulation" });
  const series = Object.entries(byPolicy).map(([name, points]) => ({ name, points: points.sort((a, b) => a[0] - b[0]) }));
  window.charts.lineChart(holder, series, { xLabel: "K (apps kept ready)" });
  const legend = el("div", { class: "legend" }, series.map((s, i) => el("span", { style: `color:${window.charts.COLORS[i % 7]}` }, `— ${s.name}`)));
  return [el("h3", {}, `Dispatch simulation: hit rate against K (${simulation.rows} events)`), holder, legend];
}

// ---- new run -------------------------------------------------------------------------------

const SECTIONS = ["run", "model", "data", "lora", "train", "eval"];

async function newRunView() {
  let form;
  try { form = await api("/api/form"); } catch (error) { showError(view, error); return; }
  const inputs = {};
  const fieldBoxes = {};
  const preview = el("pre", { id: "yaml-preview" }, "");
  const message = el("p", { class: "error", id: "form-message", role: "alert" });
  const files = el("datalist", { id: "workspace-files" }, form.files.map((f) => el("option", { value: f })));
  const values = () => {
    const result = {};
    for (const [key, input] of Object.entries(inputs)) {
      if (input.type === "checkbox") { if (input.checked !== input.defaultChecked) result[key] = input.checked ? "true" : "false"; }
      else if (input.value.trim() !== "") result[key] = input.value;
    }
    return result;
  };
  let timer = null;
  const check = async () => {
    try {
      const answer = await post("/api/config/check", { values: values() });
      for (const [key, box] of Object.entries(fieldBoxes)) {
        box.classList.toggle("invalid", Boolean(answer.fields && answer.fields[key]));
        box.querySelector(".field-error").textContent = (answer.fields && answer.fields[key]) || "";
      }
      message.textContent = answer.ok ? "" : answer.message;
      if (answer.ok) preview.textContent = answer.yaml;
      return answer.ok;
    } catch (error) { message.textContent = error.message; return false; }
  };
  const changed = () => { clearTimeout(timer); timer = setTimeout(check, 250); };
  const fieldsets = SECTIONS.map((section) => el("fieldset", {}, el("legend", {}, section),
    form.fields.filter((f) => f.section === section).map((field) => {
      const [box, input] = formField(field, changed);
      inputs[field.key] = input;
      fieldBoxes[field.key] = box;
      return box;
    })));
  const overwrite = el("input", { type: "checkbox", id: "overwrite" });
  const launchButton = el("button", { class: "primary", id: "launch", onclick: async () => {
    clearTimeout(timer);
    if (!(await check())) return;
    try {
      const answer = await post("/api/runs", { values: values(), overwrite: overwrite.checked });
      location.hash = `#/run/${encodeURIComponent(answer.name)}`;
    } catch (error) { message.textContent = error.message; }
  } }, "Launch");
  view.replaceChildren(el("h2", {}, "New run"), files,
    el("div", { class: "form" }, el("div", {}, fieldsets),
      el("div", {}, el("h3", {}, "YAML (saved as runs/NAME/launch.yaml)"), preview, message,
        el("label", {}, overwrite, " overwrite a run of the same name"), el("br"), launchButton)));
  check();
}

function formField(field, changed) {
  let input;
  const id = `field-${field.key}`;
  if (field.kind === "choice") {
    input = el("select", { id, name: field.key, onchange: changed }, el("option", { value: "" }, `(default: ${fmt(field.default)})`),
      field.choices.map((c) => el("option", { value: String(c) }, String(c))));
  } else if (field.kind === "boolean") {
    input = el("input", { type: "checkbox", id, name: field.key, onchange: changed });
    input.checked = input.defaultChecked = Boolean(field.default);
  } else {
    const placeholder = field.default === null || field.default === undefined ? "" : JSON.stringify(field.default);
    input = el("input", { type: "text", id, name: field.key, placeholder, oninput: changed,
      list: field.key === "data.train" || field.key === "data.val" ? "workspace-files" : null });
  }
  const box = el("div", { class: "field", "data-key": field.key },
    el("label", { for: id }, field.key), input,
    el("div", { class: "help" }, field.description), el("div", { class: "field-error" }));
  return [box, input];
}

// ---- data ----------------------------------------------------------------------------------

async function dataView() {
  let form;
  try { form = await api("/api/form"); } catch (error) { showError(view, error); return; }
  const result = el("div", { id: "data-preview" });
  const file = el("select", { id: "data-file" }, el("option", { value: "" }, "(pick a file)"), form.files.map((f) => el("option", { value: f }, f)));
  const model = el("input", { type: "text", id: "data-model", value: "smollm2-135m" });
  const show = async () => {
    if (!file.value) return;
    result.replaceChildren(el("p", { class: "note" }, "reading…"));
    try {
      const params = new URLSearchParams({ path: file.value, model: model.value });
      renderData(result, await api(`/api/data?${params}`));
    } catch (error) { showError(result, error); }
  };
  file.addEventListener("change", show);
  view.replaceChildren(el("h2", {}, "Data"), el("p", {}, "file ", file, " tokens counted by ", model, " ", el("button", { onclick: show }, "Show")), result);
}

function renderData(holder, data) {
  const parts = [el("p", { id: "data-summary" }, `${data.file}: ${data.rows} rows, format ${data.format}`,
    data.format_fields ? ` (${data.format_fields})` : "", ` · kept ${data.kept} · rejected ${data.rejected}`)];
  if (data.lengths && data.lengths.counts.length) {
    const chart = el("div", { class: "chart", id: "length-histogram" });
    window.charts.barChart(chart, data.lengths.counts, data.lengths.edges);
    parts.push(el("h3", {}, `Token lengths (${data.lengths.model}, ${data.lengths.measured} rows: p50 ${data.lengths.p50}, p90 ${data.lengths.p90}, max ${data.lengths.max})`), chart);
  }
  if (data.rejects.length) {
    parts.push(el("h3", {}, "Rejected rows"), table(["file", "line / row", "field", "reason"], data.rejects.map((r) => [r.file, r.line ?? r.row, r.field, r.reason]), { id: "data-rejects" }));
  }
  if (data.conversations.length) {
    parts.push(el("h3", {}, "First rows"), ...data.conversations.map((c) => el("div", { class: "conversation" },
      el("div", { class: "note" }, c.source), c.messages.map((m) => el("div", { class: "message" }, el("span", { class: "role" }, m.role), m.content)))));
  } else if (data.table.length) {
    parts.push(el("h3", {}, "First rows"), table(data.columns, data.table.map((row) => data.columns.map((c) => row[c] ?? null)), { id: "data-table" }));
  }
  holder.replaceChildren(...parts);
}

// ---- compare -------------------------------------------------------------------------------

async function compareView() {
  let runs;
  try { runs = await api("/api/runs"); } catch (error) { showError(view, error); return; }
  const chosen = new Set();
  const result = el("div", { id: "compare-result" });
  const update = async () => {
    const names = [...chosen];
    const details = await Promise.all(names.map((n) => api(`/api/runs/${encodeURIComponent(n)}`)));
    const metrics = await Promise.all(names.map((n) => api(`/api/runs/${encodeURIComponent(n)}/metrics`)));
    const loss = el("div", { class: "chart", id: "compare-loss" });
    const evaluation = el("div", { class: "chart", id: "compare-metric" });
    window.charts.lineChart(loss, names.map((n, i) => ({ name: n, points: metrics[i].filter((r) => typeof r.loss === "number").map((r) => [r.step, r.loss]) })), { xLabel: "step" });
    window.charts.lineChart(evaluation, names.map((n, i) => ({ name: n, points: metrics[i].filter((r) => firstEvalMetric(r) !== null).map((r) => [r.step, firstEvalMetric(r)]) })), { xLabel: "step", empty: "no scorings during training" });
    const legend = el("div", { class: "legend" }, names.map((n, i) => el("span", { style: `color:${window.charts.COLORS[i % 7]}` }, `— ${n}`)));
    const rows = [["status", (d) => d.status], ["task", (d) => d.task], ["model", (d) => d.model], ["steps", (d) => d.step],
      ["metric", (d) => d.metric], ["score", (d) => d.score], ["TF-IDF+LR", (d) => d.baseline], ["vs baseline", (d) => d.vs_baseline],
      ["final train loss", (d) => d.results.train_loss], ["eval loss", (d) => d.results.eval_loss], ["tokens/s", (d) => d.tokens_per_s]];
    result.replaceChildren(legend, el("div", { class: "charts" },
      el("div", {}, el("div", { class: "title" }, "training loss"), loss), el("div", {}, el("div", { class: "title" }, "eval metric"), evaluation)),
    table(["", ...names], rows.map(([label, get]) => [label, ...details.map((d) => get(d) ?? null)]), { id: "compare-table" }));
  };
  const boxes = runs.map((r) => el("label", { style: "margin-right:1em" }, el("input", { type: "checkbox", value: r.name, onchange: (event) => {
    if (event.target.checked) chosen.add(r.name); else chosen.delete(r.name);
    update().catch((error) => showError(result, error));
  } }), ` ${r.name}`));
  view.replaceChildren(el("h2", {}, "Compare"), el("p", { id: "compare-runs" }, boxes), result);
}

// ---- chat ----------------------------------------------------------------------------------

async function chatView(name) {
  const prompt = el("textarea", { class: "prompt", id: "chat-prompt", placeholder: "A message; Ctrl+Enter sends" });
  const tuned = el("div", { class: "answer", id: "answer-run" });
  const base = el("div", { class: "answer", id: "answer-base" });
  const withBase = el("input", { type: "checkbox", id: "chat-base", checked: true });
  const maxTokens = el("input", { type: "number", id: "chat-max-tokens", value: "128", min: "1", max: "512", style: "width:5em" });
  const send = async () => {
    const messages = [{ role: "user", content: prompt.value }];
    const limit = Number(maxTokens.value) || 128;
    await streamAnswer(name, messages, false, tuned, limit);
    if (withBase.checked) await streamAnswer(name, messages, true, base, limit);
  };
  prompt.addEventListener("keydown", (event) => { if (event.key === "Enter" && event.ctrlKey) send(); });
  view.replaceChildren(el("h2", {}, "Chat with ", el("a", { href: `#/run/${encodeURIComponent(name)}` }, name)), prompt,
    el("p", {}, el("button", { class: "primary", id: "chat-send", onclick: send }, "Send"), el("label", {}, withBase, " and the base model on the same prompt"), el("label", {}, " · at most ", maxTokens, " new tokens")),
    el("div", { class: "chat-columns" }, el("div", {}, el("h3", {}, "fine-tuned"), tuned), el("div", {}, el("h3", {}, "base model"), base)));
}

async function streamAnswer(name, messages, base, target, maxNewTokens) {
  target.textContent = "";
  target.dataset.state = "streaming";
  const response = await fetch(`/api/runs/${encodeURIComponent(name)}/chat`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ messages, base, max_new_tokens: maxNewTokens }) });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    target.textContent = body.error || `HTTP ${response.status}`;
    target.dataset.state = "error";
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const kind = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "null");
      if (kind === "piece") target.textContent += data;
      else if (kind === "classes") target.textContent = Object.entries(data).map(([label, p]) => `${label}: ${p.toFixed(3)}`).join("\n");
      else if (kind === "error") { target.textContent = data; target.dataset.state = "error"; return; }
      else if (kind === "done") target.dataset.state = "done";
    }
  }
}

// ---- routing -------------------------------------------------------------------------------

function route() {
  leave();
  leave = () => {};
  const [, page, name] = location.hash.split("/").map(decodeURIComponent);
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.nav === (page || "runs"));
  if (page === "run" && name) runView(name);
  else if (page === "chat" && name) chatView(name);
  else if (page === "new") newRunView();
  else if (page === "data") dataView();
  else if (page === "compare") compareView();
  else runsView();
}

window.addEventListener("hashchange", route);
route();
