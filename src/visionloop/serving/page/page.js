// The visionloop page: ask any model the server serves, and watch the queues.
// No framework, no build step, nothing fetched from elsewhere. The API token, when the
// server wants one, lives in this page's memory only (never in storage or the URL).
"use strict";

const TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"];
const COLOURS = ["#e4572e", "#17bebb", "#ffc914", "#76b041", "#7b5ea7", "#2e86ab"];
const POLL_MS = 2000;
const page = {
  token: "",
  models: [],
  limits: { bytes: 20 * 1024 * 1024, files: 16 },
  dropped: [],
  previous: null,
  needsToken: false,
};

const $ = (id) => document.getElementById(id);

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (page.token) headers.Authorization = "Bearer " + page.token;
  return headers;
}

function element(tag, attributes, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  const shown = [...$("errors").children].map((p) => p.textContent);
  if (!shown.includes(message)) $("errors").append(element("p", { class: "error" }, message));
}

function clearErrors() {
  $("errors").replaceChildren();
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error || response.statusText;
  } catch (_) {
    return response.statusText || "no answer";
  }
}

// -- models ----------------------------------------------------------------------------------

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch (_) {
    showError("the server cannot be reached");
    return false;
  }
  if (response.status === 401) {
    page.needsToken = true;  // no more tries until Send brings a token
    $("token-row").hidden = false;
    showError("this server asks for an API token: enter it, then press Send");
    return false;
  }
  if (!response.ok) {
    showError(`models: ${response.status} ${await errorText(response)}`);
    return false;
  }
  let body;
  try {
    body = await response.json();
  } catch (_) {
    showError("models: the server's answer is not JSON");
    return false;
  }
  page.needsToken = false;
  page.models = body.models;
  page.limits = { bytes: body.max_upload_bytes, files: body.max_files, request: body.max_request_bytes };
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...page.models.map((m) => element("option", { value: m.name }, m.name)));
  if (chosen && page.models.some((m) => m.name === chosen)) select.value = chosen;
  fillVersions();
  return true;
}

function currentModel() {
  return page.models.find((m) => m.name === $("model").value);
}

function kindOf(description) {
  const names = ((description && description.outputs) || []).map((o) => o.name);
  if (names.includes("image")) return "restorer";
  if (names.includes("masks")) return "segmenter";
  if (names.includes("scores")) return "classifier";
  return "other";
}

function fillVersions() {
  const model = currentModel();
  const select = $("version");
  const options = [element("option", { value: "" }, "serving")];
  for (const v of (model && model.versions) || []) options.push(element("option", { value: v }, v));
  select.replaceChildren(...options);
  const about = $("about");
  if (!model) {
    about.textContent = "";
  } else if (model.error) {
    about.textContent = `not ready: ${model.error}`;
  } else {
    const d = model.serving;
    const classes = d.classes.length ? ` Classes: ${d.classes.join(", ")}.` : "";
    const weak = d.weak ? ` Made without labels: ${Object.keys(d.weak).join(", ")}.` : "";
    about.textContent = `${d.description}.${classes}${weak}`;
  }
}

// -- asking ----------------------------------------------------------------------------------

function chosenFiles() {
  return [...$("photos").files, ...$("camera").files, ...page.dropped];
}

function problemsWith(files) {
  const problems = [];
  if (!files.length) problems.push("choose a photo first");
  if (files.length > page.limits.files) {
    problems.push(`${files.length} photos at once; this server takes at most ${page.limits.files}`);
  }
  const total = files.reduce((sum, f) => sum + f.size, 0);
  if (files.length > 1 && page.limits.request && total > page.limits.request) {
    const mib = (n) => (n / 1048576).toFixed(1);
    problems.push(`${mib(total)} MiB in all, over this server's ${mib(page.limits.request)} MiB a request: send fewer at once`);
  }
  for (const file of files) {
    if (!TYPES.includes(file.type)) {
      problems.push(`${file.name}: not a JPEG, PNG, WebP, GIF or BMP image (${file.type || "unknown type"})`);
    } else if (file.size > page.limits.bytes) {
      const mib = (n) => (n / 1048576).toFixed(1);
      problems.push(`${file.name}: ${mib(file.size)} MiB, over this server's ${mib(page.limits.bytes)} MiB`);
    }
  }
  return problems;
}

async function send(event) {
  event.preventDefault();
  clearErrors();
  $("results").replaceChildren();
  page.token = $("token").value.trim();
  if (!page.models.length && !(await loadModels())) return;
  const model = currentModel();
  if (!model) {
    showError("no model to ask");
    return;
  }
  const files = chosenFiles();
  const problems = problemsWith(files);
  if (problems.length) {
    problems.forEach(showError);  // refused here, before anything is sent
    return;
  }
  const kind = kindOf(model.serving);
  const version = $("version").value;
  const base = `/v1/models/${encodeURIComponent(model.name)}` +
    (version ? `/versions/${encodeURIComponent(version)}` : "") + "/predict";
  const url = kind === "segmenter" ? `${base}?masks=png` : base;
  $("send").disabled = true;
  let response;
  try {
    if (files.length === 1) {
      response = await fetch(url, {
        method: "POST",
        headers: authHeaders({ "Content-Type": files[0].type, Accept: "application/json" }),
        body: files[0],
      });
    } else {
      const form = new FormData();
      for (const file of files) form.append("files", file, file.name);
      response = await fetch(url, { method: "POST", headers: authHeaders(), body: form });
    }
  } catch (_) {
    showError("the server did not answer (disconnected?)");
    return;
  } finally {
    $("send").disabled = false;
  }
  if (response.status === 401) $("token-row").hidden = false;
  if (!response.ok) {
    showError(`${response.status}: ${await errorText(response)}`);
    return;
  }
  let body;
  try {
    body = await response.json();
  } catch (_) {
    showError(`${response.status}: the server's answer is not JSON`);
    return;
  }
  const answers = body.predictions || [Object.assign({ file: files[0].name }, body)];
  answers.forEach((answer, i) => show(files[i], answer, model.serving, kind));
}

// -- answers ---------------------------------------------------------------------------------

function loadImage(source) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = reject;
    image.src = source;
  });
}

// The photo as the model saw it: short side resized, centre crop (the server does the same).
async function modelView(file, description) {
  const url = URL.createObjectURL(file);
  try {
    const image = await loadImage(url);
    const [height, width] = description.input.shape;
    const short = description.input.resize_short_side || Math.min(width, height);
    const scale = short / Math.min(image.naturalWidth, image.naturalHeight);
    const w = image.naturalWidth * scale;
    const h = image.naturalHeight * scale;
    const canvas = element("canvas", { width, height, class: "view" });
    canvas.getContext("2d").drawImage(image, (width - w) / 2, (height - h) / 2, w, h);
    return canvas;
  } finally {
    URL.revokeObjectURL(url);
  }
}

function show(file, answer, description, kind) {
  const card = element("article", { class: "answer" });
  card.append(element("h3", {}, answer.file || (file && file.name) || "photo"));
  $("results").append(card);
  if (answer.error) {
    card.append(element("p", { class: "error", role: "alert" }, `${answer.status || ""} ${answer.error}`.trim()));
    return;
  }
  card.append(element("p", { class: "label" }, `label: ${answer.label}`));
  if (answer.scores) card.append(scoreBars(answer.scores));
  const failed = (error) => {
    console.error(error);
    card.append(element("p", { class: "error" }, `this answer could not be drawn: ${error}`));
  };
  if (kind === "segmenter" && answer.masks) masksView(card, file, answer, description).catch(failed);
  if (kind === "restorer" && answer.image) restoredView(card, file, answer, description).catch(failed);
  const t = answer.timing_ms;
  if (t) {
    card.append(element("p", { class: "hint" },
      `batch of ${answer.batch_size}; queue ${t.queue.toFixed(1)} ms, inference ${t.inference.toFixed(1)} ms, total ${t.total.toFixed(1)} ms`));
  }
}

function scoreBars(scores) {
  const list = element("div", { class: "scores" });
  Object.entries(scores).forEach(([name, value], i) => {
    const id = `score-${Math.random().toString(36).slice(2)}-${i}`;
    const row = element("div", { class: "score" });
    row.append(element("label", { for: id }, name));
    row.append(element("meter", { id, min: "0", max: "1", value: String(value) }));
    row.append(element("span", {}, `${(value * 100).toFixed(1)} %`));
    list.append(row);
  });
  return list;
}

async function masksView(card, file, answer, description) {
  const base = await modelView(file, description);
  const overlay = element("canvas", { width: base.width, height: base.height, class: "view" });
  const stack = element("div", { class: "stack" });
  stack.append(base, overlay);
  const controls = element("fieldset", { class: "controls" });
  controls.append(element("legend", {}, "Masks"));
  const layers = [];
  const classes = Object.keys(answer.masks);
  for (const [i, name] of classes.entries()) {
    const mask = await loadImage(`data:image/png;base64,${answer.masks[name]}`);
    const tinted = element("canvas", { width: base.width, height: base.height });
    const g = tinted.getContext("2d");
    g.drawImage(mask, 0, 0, base.width, base.height);
    // the mask is grey (255 = the class): make that the alpha of the class's colour
    const pixels = g.getImageData(0, 0, base.width, base.height);
    const colour = COLOURS[i % COLOURS.length];
    const rgb = [1, 3, 5].map((k) => parseInt(colour.slice(k, k + 2), 16));
    for (let p = 0; p < pixels.data.length; p += 4) {
      pixels.data[p + 3] = pixels.data[p];
      [pixels.data[p], pixels.data[p + 1], pixels.data[p + 2]] = rgb;
    }
    g.putImageData(pixels, 0, 0);
    const id = `mask-${name}-${Math.random().toString(36).slice(2)}`;
    const box = element("input", { type: "checkbox", id, checked: "" });
    const area = answer.areas ? ` (${(answer.areas[name] * 100).toFixed(1)} %)` : "";
    const label = element("label", { for: id, class: "swatch" }, `${name}${area}`);
    label.style.borderColor = COLOURS[i % COLOURS.length];
    controls.append(box, label);
    layers.push({ box, tinted });
  }
  const opacityId = `opacity-${Math.random().toString(36).slice(2)}`;
  const opacity = element("input", { type: "range", id: opacityId, min: "0", max: "1", step: "0.05", value: "0.5" });
  controls.append(element("label", { for: opacityId }, "opacity"), opacity);
  const draw = () => {
    const g = overlay.getContext("2d");
    g.clearRect(0, 0, overlay.width, overlay.height);
    g.globalAlpha = Number(opacity.value);
    for (const layer of layers) if (layer.box.checked) g.drawImage(layer.tinted, 0, 0);
  };
  controls.addEventListener("input", draw);
  controls.addEventListener("change", draw);
  draw();
  card.append(stack, controls);
}

async function restoredView(card, file, answer, description) {
  const before = await modelView(file, description);
  const after = element("img", { src: `data:image/png;base64,${answer.image}`, alt: "restored", class: "view" });
  const pair = element("div", { class: "pair" });
  const left = element("figure", {});
  left.append(before, element("figcaption", {}, "sent (as the model saw it)"));
  const right = element("figure", {});
  right.append(after, element("figcaption", {}, "restored"));
  pair.append(left, right);
  const compare = element("div", { class: "stack" });
  const underneath = element("img", { src: before.toDataURL(), alt: "sent", class: "view" });
  const onTop = element("img", { src: after.src, alt: "restored, cut at the slider", class: "view" });
  compare.append(underneath, onTop);
  const id = `split-${Math.random().toString(36).slice(2)}`;
  const slider = element("input", { type: "range", id, min: "0", max: "100", value: "50" });
  const cut = () => { onTop.style.clipPath = `inset(0 0 0 ${slider.value}%)`; };
  slider.addEventListener("input", cut);
  cut();
  const sliderRow = element("div", { class: "row" });
  sliderRow.append(element("label", { for: id }, "compare: sent | restored"), slider);
  card.append(pair, sliderRow, compare);
  if (answer.mean_change !== undefined) {
    card.append(element("p", { class: "hint" }, `mean change ${answer.mean_change.toFixed(2)} of 255`));
  }
}

// -- live panel ------------------------------------------------------------------------------

function quantile(buckets, q) {
  const bounds = Object.entries(buckets)
    .map(([le, count]) => [le === "+Inf" ? Infinity : Number(le), count])
    .sort((a, b) => a[0] - b[0]);
  if (!bounds.length || bounds[bounds.length - 1][1] <= 0) return null;
  const rank = q * bounds[bounds.length - 1][1];
  let lower = 0;
  let below = 0;
  for (const [upper, count] of bounds) {
    if (count >= rank) {
      if (upper === Infinity) return lower;
      const inside = count - below;
      return lower + (upper - lower) * (inside ? (rank - below) / inside : 0);
    }
    lower = upper;
    below = count;
  }
  return lower;
}

function windowOf(before, after, name) {
  const b = after.models[name];
  const a = before && before.models[name];
  const total = (m) => Object.values(m.requests).reduce((t, v) => t + v, 0);
  if (!a || total(b) < total(a)) {  // first look, or the server restarted: no interval yet
    return { answers: null, p50: null, p99: null, refusals: {} };
  }
  const seconds = Math.max(1e-9, after.time - before.time);
  const ok = (m) => Object.entries(m.requests).filter(([s]) => s.startsWith("2")).reduce((t, [, v]) => t + v, 0);
  const latency = {};
  for (const [le, v] of Object.entries(b.latency)) latency[le] = v - (a.latency[le] || 0);
  const refusals = {};
  for (const [reason, v] of Object.entries(b.refusals)) {
    const d = v - (a.refusals[reason] || 0);
    if (d > 0) refusals[reason] = d / seconds;
  }
  return {
    answers: (ok(b) - ok(a)) / seconds,
    p50: quantile(latency, 0.5),
    p99: quantile(latency, 0.99),
    refusals,
  };
}

function histogram(buckets) {
  const bounds = Object.entries(buckets)
    .map(([le, count]) => [le, le === "+Inf" ? Infinity : Number(le), count])
    .sort((a, b) => a[1] - b[1]);
  const bars = [];
  let below = 0;
  for (const [le, , count] of bounds) {
    bars.push([le === "+Inf" ? "more" : `≤${Number(le)}`, count - below]);
    below = count;
  }
  const most = Math.max(1, ...bars.map(([, n]) => n));
  const figure = element("div", { class: "histogram", role: "img",
    "aria-label": "batch sizes so far: " + bars.filter(([, n]) => n).map(([l, n]) => `${l}: ${n}`).join(", ") });
  for (const [label, n] of bars) {
    const bar = element("div", { class: "bar", title: `${label}: ${n}` });
    const fill = element("span", {});
    fill.style.height = `${(100 * n) / most}%`;
    bar.append(fill, element("small", {}, label));
    figure.append(bar);
  }
  return figure;
}

function ms(seconds) {
  return seconds === null || seconds === undefined ? "–" : `${(seconds * 1000).toFixed(1)} ms`;
}

function renderLive(now) {
  const cards = [];
  for (const [name, m] of Object.entries(now.models).sort()) {
    const w = windowOf(page.previous, now, name);
    const card = element("article", { class: "live-card" });
    card.append(element("h3", {}, name));
    const facts = element("dl", {});
    const refused = Object.entries(w.refusals).map(([r, v]) => `${r} ${v.toFixed(2)}/s`).join(", ") || "none";
    const rows = [
      ["queue depth", String(m.queue_depth)],
      ["answers/s", w.answers === null ? "–" : w.answers.toFixed(1)],
      ["p50 / p99", `${ms(w.p50)} / ${ms(w.p99)}`],
      ["refusals", refused],
      ["drift", m.drift === null ? "off" : m.drift.toFixed(4)],
    ];
    for (const [term, value] of rows) facts.append(element("dt", {}, term), element("dd", {}, value));
    card.append(facts, element("p", { class: "hint" }, "batch sizes so far"), histogram(m.batch_size));
    cards.push(card);
  }
  $("live").replaceChildren(...cards);
}

function say(text, kind) {  // an aria-live region: written only when it changes
  const node = $("connection");
  if (node.textContent !== text) {
    node.textContent = text;
    node.className = kind;
  }
}

async function poll() {
  try {
    const response = await fetch("/v1/stats", { cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    const now = await response.json();
    say("connected", "ok");
    renderLive(now);
    page.previous = now;
    if (!page.models.length && !page.needsToken) await loadModels();
  } catch (_) {
    say("disconnected: retrying", "bad");
    page.previous = null;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// -- wiring ----------------------------------------------------------------------------------

function start() {
  $("ask").addEventListener("submit", send);
  $("model").addEventListener("change", fillVersions);
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    page.dropped = [...event.dataTransfer.files];
    $("photos").value = "";
    $("camera").value = "";
    $("dropped").textContent = `${page.dropped.length} photo(s) dropped; press Send`;
  });
  // a photo dropped beside the zone must not replace the page (and the token it holds)
  for (const type of ["dragover", "drop"]) document.addEventListener(type, (e) => e.preventDefault());
  for (const [id, other] of [["photos", "camera"], ["camera", "photos"]]) {
    $(id).addEventListener("change", () => {  // the latest choice is what is sent
      page.dropped = [];
      $(other).value = "";
      $("dropped").textContent = "";
    });
  }
  loadModels();
  poll();
}

document.addEventListener("DOMContentLoaded", start);
