"""The web page `GET /` serves: one self-contained HTML document (no CDN, no external assets).

It reads `/model` to build one field per input (a file picker for image, audio and video, a
text box for text), posts the chosen ones to `/predict` with `fetch`, and shows the label, a
bar per class probability and a bar per modality weight (plain HTML/CSS bars). URLs are
relative, so the page also works behind a path prefix. When the server has an API key, the
page asks for it once and sends it as a bearer token (kept in the tab's sessionStorage).
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mmfuse</title>
<style>
  :root { --fg: #1d2330; --muted: #667085; --line: #d9dde5; --accent: #3563e9;
          --accent2: #10a37f; --bad: #c4320a; }
  * { box-sizing: border-box; }
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
         margin: 0 auto; max-width: 760px; padding: 24px; }
  h1 { font-size: 22px; margin: 0 0 4px; }
  h2 { font-size: 15px; margin: 20px 0 8px; color: var(--muted); font-weight: 600; }
  .sub { color: var(--muted); margin: 0 0 20px; }
  form { border: 1px solid var(--line); border-radius: 8px; padding: 16px; }
  .row { display: grid; grid-template-columns: 170px 1fr; gap: 12px; align-items: center;
         margin-bottom: 12px; }
  .row label { font-weight: 600; }
  .row small { display: block; color: var(--muted); font-weight: 400; }
  textarea { width: 100%; min-height: 56px; font: inherit; padding: 6px; }
  button { font: inherit; padding: 8px 18px; border: 0; border-radius: 6px;
           background: var(--accent); color: #fff; cursor: pointer; }
  button:disabled { opacity: .5; cursor: default; }
  #status { margin-left: 12px; color: var(--muted); }
  #error { color: var(--bad); margin-top: 16px; white-space: pre-wrap; }
  #result[hidden], #error[hidden] { display: none; }
  #label { font-size: 26px; font-weight: 700; margin: 16px 0 0; }
  .bars { display: grid; grid-template-columns: minmax(80px, max-content) 1fr 64px;
          gap: 6px 10px; align-items: center; }
  .bar-track { background: #eef0f4; border-radius: 4px; height: 16px; overflow: hidden; }
  .bar { height: 100%; background: var(--accent); border-radius: 4px; }
  #weights .bar { background: var(--accent2); }
  .bar-value { text-align: right; font-variant-numeric: tabular-nums; color: var(--muted); }
  .top { font-weight: 700; }
  #latency { margin-top: 14px; }
</style>
</head>
<body>
<h1>mmfuse</h1>
<p class="sub" id="model-info">Loading the model&hellip;</p>
<form id="predict-form">
  <div id="fields"></div>
  <button type="submit" id="submit" disabled>Predict</button><span id="status"></span>
</form>
<div id="error" role="alert" hidden></div>
<section id="result" hidden>
  <p id="label"></p>
  <h2>Class probabilities</h2>
  <div class="bars" id="probabilities"></div>
  <h2>Modality weights</h2>
  <div class="bars" id="weights"></div>
  <p class="sub" id="latency"></p>
</section>
<script>
"use strict";
const ACCEPT = { image: "image/*", audio: "audio/*", video: "video/*" };
const $ = (id) => document.getElementById(id);

function element(tag, props, text) {
  const el = document.createElement(tag);
  Object.assign(el, props || {});
  if (text !== undefined) el.textContent = text;
  return el;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function drawBars(container, values) {
  container.replaceChildren();
  const entries = Object.entries(values).sort((a, b) => b[1] - a[1]);
  entries.forEach(([name, value], i) => {
    const label = element("span", { className: "bar-label" + (i === 0 ? " top" : "") }, name);
    const track = element("div", { className: "bar-track" });
    const bar = element("div", { className: "bar", title: name + ": " + value });
    bar.style.width = (100 * Math.max(0, Math.min(1, value))).toFixed(1) + "%";
    bar.dataset.name = name;
    bar.dataset.value = value;
    track.append(bar);
    const number = element("span", { className: "bar-value" }, (100 * value).toFixed(1) + "%");
    container.append(label, track, number);
  });
}

// A server started with --api-key answers 401: ask for the key once, keep it for this tab.
async function call(url, options) {
  const send = () => {
    const key = sessionStorage.getItem("mmfuse-api-key");
    const headers = key ? { Authorization: "Bearer " + key } : {};
    return fetch(url, Object.assign({}, options, { headers }));
  };
  let response = await send();
  if (response.status === 401) {
    const key = window.prompt("This server needs an API key:");
    if (key) {
      sessionStorage.setItem("mmfuse-api-key", key);
      response = await send();
    }
  }
  return response;
}

async function loadModel() {
  const response = await call("model");
  if (!response.ok) throw new Error("GET /model answered " + response.status);
  const model = await response.json();
  const tasks = Object.entries(model.labels);
  $("model-info").textContent = model.fusion + " fusion of " +
    Object.keys(model.inputs).length + " inputs; classes: " + tasks[0][1].join(", ");
  const fields = $("fields");
  for (const [name, spec] of Object.entries(model.inputs)) {
    const row = element("div", { className: "row" });
    const id = "input-" + name;
    const label = element("label", { htmlFor: id }, name);
    label.append(element("small", {}, spec.modality + " \\u00b7 " + spec.encoder));
    let input;
    if (spec.modality === "text") {
      input = element("textarea", { id, name, placeholder: "Type the " + name + " text" });
    } else if (spec.modality === "numeric") {
      input = element("input", { id, name, type: "number", step: "any" });
    } else if (spec.modality === "categorical") {
      input = element("input", { id, name, type: "text", placeholder: "a " + name + " category" });
    } else {
      input = element("input", { id, name, type: "file", accept: ACCEPT[spec.modality] || "" });
    }
    input.dataset.modality = spec.modality;
    row.append(label, input);
    fields.append(row);
  }
  $("submit").disabled = false;
  document.body.dataset.ready = "true";
}

async function predict(event) {
  event.preventDefault();
  $("error").hidden = true;
  const data = new FormData();
  for (const input of $("fields").querySelectorAll("input, textarea")) {
    if (input.type === "file") {
      if (input.files.length) data.append(input.name, input.files[0], input.files[0].name);
    } else if (input.value !== "") {
      data.append(input.name, input.value);
    }
  }
  $("submit").disabled = true;
  $("status").textContent = "Predicting\\u2026";
  try {
    const response = await call("predict", { method: "POST", body: data });
    const body = await response.json();
    if (!response.ok) {
      const e = body.error || {};
      showError((e.field ? e.field + ": " : "") + (e.message || response.statusText) +
        " (" + response.status + (e.reason ? ", " + e.reason : "") + ")");
      return;
    }
    $("label").textContent = body.label;
    drawBars($("probabilities"), body.probabilities);
    const weights = body.modality_weights;
    $("weights").previousElementSibling.hidden = !weights;
    drawBars($("weights"), weights || {});
    $("latency").textContent = "from " + body.modalities_used.join(", ") + " in " +
      body.latency_ms.toFixed(1) + " ms";
    $("result").hidden = false;
  } catch (err) {
    showError("The request failed: " + err);
  } finally {
    $("submit").disabled = false;
    $("status").textContent = "";
  }
}

$("predict-form").addEventListener("submit", predict);
loadModel().catch((err) => showError("Cannot load the model description: " + err));
</script>
</body>
</html>
"""
