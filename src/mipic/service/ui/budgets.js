// The budget page: plain SVG and tables from /info, /budgets and /budgets/traffic; a playground on POST /embed.
// No framework and no build step. Every chart has a table or an aria description beside it.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MEAN = "mean";
const POLL_MS = 2000;
const LAYER_COLOURS = ["#d62728", "#ff7f0e", "#bcbd22", "#2ca02c", "#17becf", "#1f77b4", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#393b79", "#637939"];

const state = { info: null, budgets: null, suite: MEAN, lastTraffic: null };

// --- small helpers
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function layerColour(layer) {
  return LAYER_COLOURS[(layer - 1) % LAYER_COLOURS.length];
}

// Light → dark blue for t in [0, 1]; the text on it switches to white past the middle.
function heatColour(t) {
  const c = Math.max(0, Math.min(1, t));
  return { background: `hsl(212, 70%, ${Math.round(94 - 60 * c)}%)`, text: c > 0.55 ? "#fff" : "#111" };
}

function quality(entry) {
  return state.suite === MEAN ? entry.quality : entry.scores[state.suite];
}

// The suite's Pareto budgets, by /budgets' definition (no other is at least as good for at most the cost);
// for the mean the server's own flags.
function paretoSet(entries) {
  if (state.suite === MEAN) return new Set(entries.filter((e) => e.pareto));
  return new Set(entries.filter((e) => !entries.some((o) => o !== e && o.relative_cost <= e.relative_cost &&
    quality(o) >= quality(e) && (o.relative_cost < e.relative_cost || quality(o) > quality(e)))));
}

function suiteLabel(suite) {
  if (suite === MEAN) return "the mean of all suites";
  return `${suite} (${state.budgets.suites[suite]})`;
}

// --- header
function renderModel() {
  const { info } = state;
  $("model-name").textContent = `${info.name} · version ${info.version}`;
  $("model-meta").textContent = `${info.model} · ${info.architecture}, ${info.num_layers} layers, hidden ` +
    `${info.hidden_size} · dims ${info.dims.join(", ")} · ${info.provider} · ${info.precision}` +
    (info.heads ? ` · exit heads: ${info.heads.method}` : " · plain truncation");
  document.title = `${info.name} · budgets`;
}

// --- quality against compute
function renderSuitePicker() {
  const select = $("suite");
  select.replaceChildren(el("option", { value: MEAN }, "mean of all suites"));
  for (const [suite, metric] of Object.entries(state.budgets.suites)) {
    select.append(el("option", { value: suite }, `${suite} (${metric})`));
  }
  select.value = state.suite;
  select.addEventListener("change", () => {
    state.suite = select.value;
    renderQuality();
  });
}

function renderChart(entries, front) {
  const chart = $("chart");
  // Drawn at the width it is shown (within 320-640 user units), so its text stays legible on a phone.
  const W = Math.round(Math.max(320, Math.min(640, chart.parentNode.clientWidth || 640))), H = W < 480 ? 300 : 380;
  const m = { left: 52, right: 14, top: 14, bottom: 46 };
  chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const qs = entries.map(quality);
  const yMin = Math.floor(Math.min(...qs) * 20) / 20, yMax = Math.ceil(Math.max(...qs) * 20) / 20 || 1;
  const x = (c) => m.left + c * (W - m.left - m.right);
  const y = (q) => H - m.bottom - ((q - yMin) / ((yMax - yMin) || 1)) * (H - m.top - m.bottom);
  chart.replaceChildren($("chart-title"), $("chart-desc"));
  const axes = svg("g", { class: "axes", "aria-hidden": "true" });
  const xTicks = W < 480 ? 4 : 5, yStep = yMax - yMin > 0.4 ? 0.1 : 0.05;
  for (let i = 0; i <= xTicks; i++) {
    const c = i / xTicks;
    axes.append(svg("line", { x1: x(c), x2: x(c), y1: m.top, y2: H - m.bottom, class: "grid" }),
      svg("text", { x: x(c), y: H - m.bottom + 18, "text-anchor": "middle" }, c.toFixed(xTicks === 4 ? 2 : 1)));
  }
  for (let q = yMin; q <= yMax + 1e-9; q += yStep) {
    axes.append(svg("line", { x1: m.left, x2: W - m.right, y1: y(q), y2: y(q), class: "grid" }),
      svg("text", { x: m.left - 8, y: y(q) + 4, "text-anchor": "end" }, q.toFixed(2)));
  }
  axes.append(svg("text", { x: (m.left + W - m.right) / 2, y: H - 6, "text-anchor": "middle", class: "label" },
    "relative compute (1.0 = full model)"),
  svg("text", { x: 14, y: (m.top + H - m.bottom) / 2, "text-anchor": "middle", class: "label",
    transform: `rotate(-90 14 ${(m.top + H - m.bottom) / 2})` }, "quality"));
  chart.append(axes);
  const frontSorted = [...front].sort((a, b) => a.relative_cost - b.relative_cost);
  chart.append(svg("polyline", { class: "front", "aria-hidden": "true",
    points: frontSorted.map((e) => `${x(e.relative_cost)},${y(quality(e))}`).join(" ") }));
  const points = svg("g", { class: "points" });
  for (const e of entries) {
    const onFront = front.has(e);
    const r = 2.5 + 1.3 * Math.log2(e.dim / Math.min(...state.info.dims) + 1);
    const point = svg("circle", {
      cx: x(e.relative_cost), cy: y(quality(e)), r: r.toFixed(1), fill: layerColour(e.layer),
      class: onFront ? "point pareto" : "point",
      "data-dim": e.dim, "data-layer": e.layer, "data-cost": e.relative_cost, "data-quality": quality(e),
      "data-pareto": onFront ? "true" : "false",
    }, svg("title", {}, `dim ${e.dim}, layer ${e.layer}: quality ${fmt(quality(e))}, compute ` +
      `${fmt(e.relative_cost, 2)}${onFront ? " (Pareto)" : ""}`));
    points.append(point);
  }
  chart.append(points);
  // Label the Pareto points, skipping one whose label would overlap one already placed.
  const placed = [];
  for (const e of [...frontSorted].sort((a, b) => quality(b) - quality(a))) {  // the best of a cluster wins
    const px = x(e.relative_cost), py = y(quality(e));
    const left = px > W - 80;
    const lx = left ? px - 10 : px + 8, ly = py - 8;
    if (placed.some(([ox, oy]) => Math.abs(ox - lx) < 44 && Math.abs(oy - ly) < 13)) continue;
    placed.push([lx, ly]);
    chart.append(svg("text", { x: lx, y: ly, class: "point-label", "text-anchor": left ? "end" : "start",
      "aria-hidden": "true" }, `${e.dim}/${e.layer}`));
  }
  const best = entries.reduce((a, b) => (quality(b) > quality(a) ? b : a));
  const cheapest = frontSorted[0];
  $("chart-desc").textContent = `Scatter of ${entries.length} budgets, quality (${suiteLabel(state.suite)}) ` +
    `from ${fmt(Math.min(...qs))} to ${fmt(Math.max(...qs))} against relative compute. ` +
    `${front.size} Pareto budgets, from dim ${cheapest.dim} layer ${cheapest.layer} ` +
    `(quality ${fmt(quality(cheapest))} at compute ${fmt(cheapest.relative_cost, 2)}) to the best, dim ` +
    `${best.dim} layer ${best.layer} (quality ${fmt(quality(best))} at compute ${fmt(best.relative_cost, 2)}). ` +
    "The table below lists every budget.";
  const legend = $("chart-legend");
  legend.replaceChildren("Colour = exit layer: ");
  for (const layer of state.info.layers) {
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = layerColour(layer);
    legend.append(swatch, ` ${layer} `);
  }
  legend.append(" · larger point = larger dim · dashed line and labels (dim/layer): the Pareto budgets");
}

function renderBudgetTable(entries, front) {
  const suites = Object.keys(state.budgets.suites);
  const head = el("tr", {}, el("th", { scope: "col" }, "dim"), el("th", { scope: "col" }, "layer"),
    el("th", { scope: "col" }, "compute"), el("th", { scope: "col" }, "quality (mean)"),
    ...suites.map((s) => el("th", { scope: "col" }, s)), el("th", { scope: "col" }, "Pareto"));
  const rows = entries.map((e) => el("tr", {}, el("td", {}, String(e.dim)), el("td", {}, String(e.layer)),
    el("td", {}, fmt(e.relative_cost, 3)), el("td", {}, fmt(e.quality)),
    ...suites.map((s) => el("td", {}, fmt(e.scores[s]))), el("td", {}, front.has(e) ? "yes" : "")));
  $("budget-table").replaceChildren(el("caption", {}, `Every budget of /budgets, cheapest first (Pareto: ` +
    `${suiteLabel(state.suite)})`), el("thead", {}, head), el("tbody", {}, ...rows));
}

// A dim × layer table whose cells are coloured by value: a heat map that is its own text alternative.
function heatTable(table, caption, entries, value, note, mark) {
  const dims = [...state.info.dims].sort((a, b) => b - a), layers = state.info.layers;
  const byKey = new Map(entries.map((e) => [`${e.dim},${e.layer}`, e]));
  const vals = entries.map(value).filter((v) => v !== null && v !== undefined);
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const head = el("tr", {}, el("th", { scope: "col" }, "dim \\ layer"),
    ...layers.map((l) => el("th", { scope: "col" }, String(l))));
  const rows = dims.map((d) => el("tr", {}, el("th", { scope: "row" }, String(d)), ...layers.map((l) => {
    const e = byKey.get(`${d},${l}`), v = e ? value(e) : null;
    const td = el("td", {});
    if (v === null || v === undefined) {
      td.textContent = "–";
      return td;
    }
    const colour = heatColour(hi > lo ? (v - lo) / (hi - lo) : 1);
    td.style.background = colour.background;
    td.style.color = colour.text;
    td.dataset.dim = d;
    td.dataset.layer = l;
    td.dataset.value = v;
    td.append(el("span", { class: "v" }, (mark && mark(e) ? "★ " : "") + fmt(v)));
    if (note) td.append(el("span", { class: "n" }, note(e)));
    return td;
  })));
  table.replaceChildren(el("caption", {}, caption), el("thead", {}, head), el("tbody", {}, ...rows));
}

function renderQuality() {
  const entries = state.budgets.budgets;
  const front = paretoSet(entries);
  renderChart(entries, front);
  renderBudgetTable(entries, front);
  for (const span of document.querySelectorAll(".suite-name")) span.textContent = suiteLabel(state.suite);
  heatTable($("heat-table"), `Quality (${suiteLabel(state.suite)}) per dim (rows) and exit layer (columns)`,
    entries, quality, (e) => fmt(e.relative_cost, 2), (e) => front.has(e));
}

function renderIndex() {
  const { budgets } = state;
  const entries = budgets.budgets.filter((e) => e.index_quality !== null && e.index_quality !== undefined);
  const space = budgets.exit_space;
  const suites = Object.entries(budgets.index_suites).map(([s, metric]) => `${s} (${metric})`).join(", ");
  if (!entries.length) {
    $("exit-space").textContent = "This model has no cross-budget measurement: query and index with the same " +
      `budget. ${space ? space.note : ""}`;
    $("index-table").replaceChildren();
    return;
  }
  $("exit-space").textContent = `Retrieval quality of queries embedded at each budget against documents ` +
    `embedded at (dim, last layer) — what an early exit is worth against one index built at full depth. ` +
    `Suites: ${suites}. ${space.note}` + (space.worst_cosine !== null && space.worst_cosine !== undefined
    ? ` (lowest mean cosine to the last layer: ${fmt(space.worst_cosine)} at dim ${space.worst_budget.dim} ` +
      `layer ${space.worst_budget.layer}; required ${fmt(space.min_cosine_required, 2)}). ` : " ") +
    "Small number: mean cosine of a text's vector here to its vector at the last layer.";
  heatTable($("index-table"), "Quality against a full-depth index per dim (rows) and query exit layer (columns)",
    entries, (e) => e.index_quality, (e) => (e.cosine_to_last === null ? "" : `cos ${fmt(e.cosine_to_last, 2)}`));
}

// --- live traffic
async function pollTraffic() {
  try {
    if (!document.hidden) renderTraffic(await getJSON("/budgets/traffic"), performance.now());
  } catch (err) {
    $("traffic-empty").textContent = `Could not read /budgets/traffic: ${err.message}`;
  } finally {
    setTimeout(pollTraffic, POLL_MS);
  }
}

function renderTraffic(traffic, now) {
  const last = state.lastTraffic;
  const before = new Map((last ? last.traffic.budgets : []).map((b) => [`${b.dim},${b.layer}`, b.requests]));
  const seconds = last ? (now - last.now) / 1000 : null;
  state.lastTraffic = { traffic, now };
  const table = $("traffic-table");
  $("traffic-empty").hidden = traffic.budgets.length > 0;
  if (!traffic.budgets.length) {
    table.replaceChildren();
    return;
  }
  const maxRequests = Math.max(...traffic.budgets.map((b) => b.requests));
  const head = el("tr", {}, ...["dim", "layer", "requests", "req/s (last poll)", "vectors", "mean ms", "p50 ms",
    "p95 ms"].map((h) => el("th", { scope: "col" }, h)));
  const rows = traffic.budgets.map((b) => {
    const rate = seconds ? (b.requests - (before.get(`${b.dim},${b.layer}`) ?? 0)) / seconds : null;
    const bar = el("span", { class: "bar", "aria-hidden": "true" });
    bar.style.width = `${Math.max(2, (60 * b.requests) / maxRequests)}px`;
    return el("tr", { "data-dim": b.dim, "data-layer": b.layer, "data-requests": b.requests },
      el("td", {}, String(b.dim)), el("td", {}, String(b.layer)), el("td", {}, bar, ` ${b.requests}`),
      el("td", {}, rate === null ? "–" : rate.toFixed(2)), el("td", {}, String(b.embeddings)),
      el("td", {}, fmt(b.mean_ms, 1)), el("td", {}, fmt(b.p50_ms, 1)), el("td", {}, fmt(b.p95_ms, 1)));
  });
  table.replaceChildren(el("caption", {}, `Requests and server latency per budget (${traffic.model})`),
    el("thead", {}, head), el("tbody", {}, ...rows));
}

// --- playground
function defaultPicks() {
  const entries = state.budgets.budgets;
  const full = `${Math.max(...state.info.dims)},${Math.max(...state.info.layers)}`;
  const cheapGood = entries.filter((e) => e.pareto && e.relative_cost <= 0.5)
    .reduce((a, b) => (a === null || b.quality > a.quality ? b : a), null);
  return new Set([full, ...(cheapGood ? [`${cheapGood.dim},${cheapGood.layer}`] : [])]);
}

function renderPicks() {
  const dims = [...state.info.dims].sort((a, b) => b - a), layers = state.info.layers;
  const picked = defaultPicks();
  const head = el("tr", {}, el("th", { scope: "col" }, "dim \\ layer"),
    ...layers.map((l) => el("th", { scope: "col" }, String(l))));
  const rows = dims.map((d) => el("tr", {}, el("th", { scope: "row" }, String(d)), ...layers.map((l) => {
    const box = el("input", { type: "checkbox", name: "budget", value: `${d},${l}`,
      "aria-label": `dim ${d}, layer ${l}` });
    box.checked = picked.has(`${d},${l}`);
    return el("td", {}, box);
  })));
  $("budget-picks").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
}

function similarityFigure(dim, layer, texts, vectors, serverMs, roundTripMs) {
  const head = el("tr", {}, el("th", { scope: "col" }, ""),
    ...texts.map((_, j) => el("th", { scope: "col" }, `T${j + 1}`)));
  const rows = vectors.map((a, i) => el("tr", {}, el("th", { scope: "row" }, `T${i + 1}`), ...vectors.map((b, j) => {
    const s = cosine(a, b);
    const colour = heatColour((s + 1) / 2);
    const td = el("td", { "data-i": i, "data-j": j, "data-sim": String(s) }, s.toFixed(3));
    td.style.background = colour.background;
    td.style.color = colour.text;
    return td;
  })));
  const caption = el("caption", {}, `Cosine similarity at dim ${dim}, layer ${layer}`);
  return el("figure", { class: "sim", "data-dim": dim, "data-layer": layer, "data-total-ms": serverMs },
    el("figcaption", {}, el("strong", {}, `dim ${dim} · layer ${layer}`), el("br"),
      `server ${serverMs} ms (x-total-time) · round trip ${roundTripMs.toFixed(1)} ms`),
    el("div", { class: "scroll" }, el("table", { class: "heat" }, caption, el("thead", {}, head),
      el("tbody", {}, ...rows))));
}

async function runPlayground(event) {
  event.preventDefault();
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter((t) => t);
  const picks = [...document.querySelectorAll("input[name=budget]:checked")].map((b) => b.value.split(",")
    .map(Number));
  const status = $("play-status"), results = $("play-results");
  if (!texts.length || !picks.length) {
    status.textContent = "Type at least one text and pick at least one budget.";
    return;
  }
  const key = $("api-key").value.trim();
  const headers = { "content-type": "application/json" };
  if (key) headers.authorization = `Bearer ${key}`;
  $("run").disabled = true;
  results.replaceChildren();
  $("play-texts").replaceChildren(...texts.map((t, i) => el("li", {}, `T${i + 1}: ${t}`)));
  status.textContent = `Embedding ${texts.length} texts at ${picks.length} budgets…`;
  try {
    // One budget at a time, so that each latency is that budget's alone.
    for (const [dim, layer] of picks) {
      const t0 = performance.now();
      const r = await fetch(`/embed?dim=${dim}&layer=${layer}`, { method: "POST", headers,
        body: JSON.stringify({ inputs: texts }) });
      const roundTrip = performance.now() - t0;
      if (r.status === 401) {
        status.textContent = key ? "The server refused this API key (401)." :
          "This server needs an API key: type it in the API key field and run again.";
        return;
      }
      const body = await r.json();
      if (!r.ok) {
        status.textContent = `dim ${dim}, layer ${layer}: HTTP ${r.status}: ${body.error ? body.error.message : ""}`;
        return;
      }
      results.append(similarityFigure(dim, layer, texts, body.embeddings, r.headers.get("x-total-time"),
        roundTrip));
    }
    status.textContent = `Done: ${picks.length} budget(s), ${texts.length} texts.`;
    results.dataset.done = "true";
  } catch (err) {
    status.textContent = `Request failed: ${err.message}`;
  } finally {
    $("run").disabled = false;
  }
}

// --- start
async function main() {
  try {
    const [info, budgets] = await Promise.all([getJSON("/info"), getJSON("/budgets")]);
    Object.assign(state, { info, budgets });
    renderModel();
    if (budgets.available && budgets.budgets.length) {
      renderSuitePicker();
      renderQuality();
      renderIndex();
    } else {
      $("tradeoff").append(el("p", {}, "This model's manifest has no budget table: nothing measured to show."));
    }
    renderPicks();
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => state.budgets.budgets.length && renderQuality(), 200);
    });
    $("play-form").addEventListener("submit", runPlayground);
    // performance.now() counts from the navigation's start: the time to a complete first view.
    document.documentElement.dataset.readyMs = performance.now().toFixed(1);
  } catch (err) {
    const box = $("load-error");
    box.hidden = false;
    box.textContent = `Could not load the budgets: ${err.message}`;
  }
  pollTraffic();
}

main();
