// TinyLLM attention explorer: plain JavaScript, no build step, no dependencies.
//
//   Analyse  -> POST /v1/attention {format: "npy", dtype: "float16"}: every layer and head in one array
//               (L, H, T, T), ~19 MB at 512 bytes with 6 × 6 heads, where JSON would be over 100 MB and over
//               the server's JSON cell cap -> the map, the all-heads grid and the head view.
//   Generate -> POST /v1/generate {stream: true, attention: all}: one server-sent event per byte, carrying the
//               row that chose it, token.attention[layer][head][key].
//
// The map canvas holds one pixel per cell (T × T, upper triangle left transparent) and is scaled up by CSS, so
// drawing 512 × 512 cells is one putImageData.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  model: null,        // GET /v1/model
  layer: 0,
  head: 0,            // a head index, or "mean"
  scale: "sqrt",
  an: null,           // the analysis: {bytes, labels, T, L, H, maps: (L*H*T*T) floats, means: []}
  focus: null,        // the byte in focus in the head view, and whether a click pinned it
  pinned: false,
  gen: null,          // the generation: {bytes, labels, start, rows: [[layer][head][key]], focus, pinned, ...}
  requests: 0,        // analyses started, so a late answer to an older one is dropped
};

// ------------------------------------------------------------------ bytes and their labels

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function utf8Length(lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 1;
}

function byteLabel(b) {  // as the server's tokenizer.label: the ASCII character, else an escape
  if (b >= 0x20 && b < 0x7f) return String.fromCharCode(b);
  if (b === 10) return "\\n";
  if (b === 9) return "\\t";
  if (b === 13) return "\\r";
  return "\\x" + b.toString(16).padStart(2, "0");
}

// One label per byte; a whole multi-byte character is shown once, on its first byte, its other bytes get "".
function charLabels(bytes) {
  const labels = Array.from(bytes, byteLabel);
  for (let i = 0; i < bytes.length;) {
    const n = utf8Length(bytes[i]);
    if (n > 1 && i + n <= bytes.length) {
      try {
        labels[i] = strictUtf8.decode(Uint8Array.from(bytes.slice(i, i + n)));
        for (let j = i + 1; j < i + n; j++) labels[j] = "";
        i += n;
        continue;
      } catch (e) { /* not a valid character: keep the escapes */ }
    }
    i += 1;
  }
  return labels;
}

function shown(label) {  // how a label reads inside a strip of bytes or on an axis
  return { "\\n": "↵", "\\t": "⇥", "\\r": "␍" }[label] ?? label;
}

function isEscape(label) {  // a byte shown as an escape like \x9f: it is no character of its own
  return label.length > 1 && label.startsWith("\\") && shown(label) === label;
}

function describe(i, labels, bytes) {
  const label = labels[i] === "" ? "…" : labels[i] === " " ? "␣" : shown(labels[i]);
  return `‹${label}› #${i}` + (labels[i] === "" ? ` (0x${bytes[i].toString(16)})` : "");
}

// A strip of byte chips (one .b element per byte); a newline byte also breaks the line.
function renderStrip(el, bytes, labels, classOf) {
  el.textContent = "";
  const frag = document.createDocumentFragment();
  const chips = [];
  for (let i = 0; i < bytes.length; i++) chips.push(appendChip(frag, i, bytes, labels, classOf(i)));
  el.appendChild(frag);
  return chips;
}

function appendChip(parent, i, bytes, labels, cls) {
  const chip = document.createElement("span");
  chip.dataset.i = i;
  setChipLabel(chip, i, bytes, labels);
  chip.classList.add(...cls);
  parent.appendChild(chip);
  if (bytes[i] === 10) parent.appendChild(document.createElement("br"));
  return chip;
}

function setChipLabel(chip, i, bytes, labels) {
  const label = labels[i];
  chip.className = chip.className.replace(/\b(b|cont|esc)\b/g, "").trim();
  chip.classList.add("b");
  if (label === "") chip.classList.add("cont");
  else if (isEscape(label)) chip.classList.add("esc");
  chip.textContent = shown(label);
  chip.title = `byte ${i} · 0x${bytes[i].toString(16).padStart(2, "0")}` + (label === "" ? " (continues a character)" : "");
}

// ------------------------------------------------------------------ colours

const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
                 "#b5de2b", "#fde725"];
const LUT = buildLut(VIRIDIS);  // 256 colours as packed RGBA (little-endian: 0xAABBGGRR)

function buildLut(stops) {
  const rgb = stops.map((h) => [1, 3, 5].map((o) => parseInt(h.slice(o, o + 2), 16)));
  const lut = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (rgb.length - 1);
    const a = Math.min(Math.floor(x), rgb.length - 2);
    const t = x - a;
    const [r, g, b] = [0, 1, 2].map((c) => Math.round(rgb[a][c] + (rgb[a + 1][c] - rgb[a][c]) * t));
    lut[i] = (255 << 24 | b << 16 | g << 8 | r) >>> 0;
  }
  return lut;
}

// Probability -> colour, through a table over p quantised to 1/65535 (so drawing a cell is one lookup).
let COLOUR_OF = null, COLOUR_SCALE = null;

function colourTable() {
  if (COLOUR_SCALE !== state.scale) {
    COLOUR_OF = new Uint32Array(65536);
    for (let i = 0; i < 65536; i++) {
      const p = i / 65535;
      COLOUR_OF[i] = LUT[Math.round((state.scale === "sqrt" ? Math.sqrt(p) : p) * 255)];
    }
    COLOUR_SCALE = state.scale;
  }
  return COLOUR_OF;
}

// Draw a (T, T) map into a canvas, one pixel per cell: queries down, keys across, the masked future transparent.
function drawMap(canvas, map, T) {
  const colour = colourTable();
  canvas.width = T;
  canvas.height = T;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(T, T);
  const px = new Uint32Array(img.data.buffer);
  for (let q = 0; q < T; q++) {
    const row = q * T;
    for (let k = 0; k <= q; k++) px[row + k] = colour[Math.min(65535, Math.max(0, map[row + k] * 65535 + 0.5 | 0))];
  }
  ctx.putImageData(img, 0, 0);
}

function drawColorbar() {
  const canvas = $("colorbar");
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(256, 1);
  new Uint32Array(img.data.buffer).set(LUT);
  ctx.putImageData(img, 0, 0);
  $("tick-mid").textContent = state.scale === "sqrt" ? "0.25" : "0.5";
}

// ------------------------------------------------------------------ the npy body

let HALF = null;  // float16 bit pattern -> float32, built on first use

function halfTable() {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    t[h] = exp === 0 ? sign * frac * 2 ** -24
      : exp === 31 ? (frac ? NaN : sign * Infinity)
        : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return t;
}

function parseNpy(buffer) {
  const head = new Uint8Array(buffer, 0, 12);
  if (head[0] !== 0x93 || String.fromCharCode(...head.subarray(1, 6)) !== "NUMPY") throw new Error("not a .npy body");
  const view = new DataView(buffer);
  const [start, length] = head[6] === 1 ? [10, view.getUint16(8, true)] : [12, view.getUint32(8, true)];
  const header = new TextDecoder().decode(new Uint8Array(buffer, start, length));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  if (/'fortran_order':\s*True/.test(header)) throw new Error("fortran-order .npy is not supported");
  const n = shape.reduce((a, b) => a * b, 1);
  const offset = start + length;  // numpy pads the header so the data is 64-byte aligned
  if (descr === "<f4") return { shape, data: new Float32Array(buffer, offset, n) };
  if (descr === "<f2" && typeof Float16Array === "function") return { shape, data: new Float16Array(buffer, offset, n) };
  if (descr === "<f2") {  // browsers without Float16Array: decode through a table
    HALF = HALF || halfTable();
    const src = new Uint16Array(buffer, offset, n);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = HALF[src[i]];
    return { shape, data };
  }
  throw new Error(`unexpected .npy dtype ${descr}`);
}

// ------------------------------------------------------------------ HTTP

async function errorMessage(res) {
  try {
    const body = await res.json();
    return body.error?.message || `HTTP ${res.status}`;
  } catch (e) {
    return `HTTP ${res.status}`;
  }
}

function setStatus(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// With TINYLLM_API_KEY set on the server, API calls need the key: ask once, keep it in this browser.
async function api(url, options = {}) {
  const send = () => {
    const key = localStorage.getItem("tinyllm-api-key");
    const headers = { ...(options.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
    return fetch(url, { ...options, headers });
  };
  let res = await send();
  if (res.status === 401) {
    const key = window.prompt("This server needs an API key (TINYLLM_API_KEY):");
    if (key) {
      localStorage.setItem("tinyllm-api-key", key);
      res = await send();
    }
  }
  return res;
}

async function loadModel() {
  const res = await api("/v1/model");
  if (!res.ok) throw new Error(await errorMessage(res));
  const m = await res.json();
  state.model = { n_layer: m.config.n_layer, n_head: m.config.n_head, context: m.context_length };
  $("model-info").textContent = `${m.checkpoint} · ${m.config.n_layer} layers × ${m.config.n_head} heads · ` +
    `d_k ${m.config.d_model / m.config.n_head} · context ${m.context_length} bytes · ${m.device}`;
  const layer = $("layer"), head = $("head");
  layer.textContent = head.textContent = "";
  for (let l = 0; l < m.config.n_layer; l++) layer.add(new Option(String(l), String(l)));
  for (let h = 0; h < m.config.n_head; h++) head.add(new Option(String(h), String(h)));
  head.add(new Option("mean of heads", "mean"));
  updateByteCount();
}

// ------------------------------------------------------------------ analysis

async function analyse() {
  const text = $("text").value;
  const n = utf8.encode(text).length;
  if (n === 0) return setStatus("status", "type some text first", true);
  if (state.model && n > state.model.context) {
    return setStatus("status", `the text is ${n} bytes; the model's context holds ${state.model.context}: shorten it`, true);
  }
  const id = ++state.requests;
  setStatus("status", "analysing…");
  const t0 = performance.now();
  const res = await api("/v1/attention", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text, layers: null, heads: null, format: "npy", dtype: "float16" }),
  });
  if (!res.ok) {
    if (id === state.requests) setStatus("status", await errorMessage(res), true);
    return;
  }
  const buffer = await res.arrayBuffer();
  if (id !== state.requests) return;
  const t1 = performance.now();
  const { shape, data } = parseNpy(buffer);
  const [L, H, T] = shape;
  const bytes = JSON.parse(res.headers.get("X-Tokens") || "null") || Array.from(utf8.encode(text));
  if (bytes.length !== T) throw new Error(`the answer has ${T} rows for ${bytes.length} bytes`);
  state.an = { bytes, labels: charLabels(bytes), T, L, H, maps: data, means: [] };
  state.focus = null;
  state.pinned = false;
  renderAnalysis();
  const t2 = performance.now();
  setStatus("status", `${T} bytes · ${L} × ${H} maps · answer ${Math.round(t1 - t0)} ms · ` +
    `drawing ${Math.round(t2 - t1)} ms`);
}

function currentMap() {  // the selected (T, T) map, a view into the array
  const { T, H, maps, means } = state.an;
  const l = state.layer;
  if (state.head !== "mean") return maps.subarray((l * H + state.head) * T * T, (l * H + state.head + 1) * T * T);
  if (!means[l]) {
    const mean = new Float32Array(T * T);
    for (let h = 0; h < H; h++) {
      const m = maps.subarray((l * H + h) * T * T, (l * H + h + 1) * T * T);
      for (let i = 0; i < mean.length; i++) mean[i] += m[i];
    }
    for (let i = 0; i < mean.length; i++) mean[i] /= H;
    means[l] = mean;
  }
  return means[l];
}

function renderAnalysis() {
  const { bytes, labels } = state.an;
  state.an.chips = renderStrip($("bytes"), bytes, labels, () => []);
  layoutHeatmap();
  renderHeatmap();
  renderGrid();
  clearFocus();
}

function layoutHeatmap() {
  const { T, labels } = state.an;
  const frame = $("heatmap-frame");
  const room = frame.parentElement.clientWidth - 40;
  const size = Math.max(240, Math.min(640, room));
  const cell = size / T;
  frame.style.setProperty("--size", `${size}px`);
  frame.style.setProperty("--cell", `${cell}px`);
  frame.classList.toggle("dense", cell < 7);  // too small to read: the readout names the bytes instead
  for (const id of ["key-labels", "query-labels"]) {
    const axis = $(id);
    axis.textContent = "";
    labels.forEach((label, i) => {
      const span = document.createElement("span");
      span.textContent = label === " " ? "␣" : isEscape(label) ? "·" : shown(label);  // escapes: too wide
      span.dataset.i = i;
      axis.appendChild(span);
    });
  }
  state.an.cell = cell;
}

function renderHeatmap() {
  const { T } = state.an;
  const canvas = $("heatmap");
  drawMap(canvas, currentMap(), T);
  canvas.dataset.t = T;
  canvas.dataset.layer = state.layer;
  canvas.dataset.head = state.head;
  $("map-title").textContent = `layer ${state.layer}, ${state.head === "mean" ? "mean of heads" : `head ${state.head}`}` +
    ` · ${T} × ${T}`;
}

function renderGrid() {
  const { L, H, T, maps } = state.an;
  const grid = $("grid");
  grid.textContent = "";
  grid.style.gridTemplateColumns = `28px repeat(${H}, auto)`;
  grid.appendChild(Object.assign(document.createElement("div"), { className: "label" }));
  for (let h = 0; h < H; h++) grid.appendChild(Object.assign(document.createElement("div"), { className: "label", textContent: `head ${h}` }));
  for (let l = 0; l < L; l++) {
    grid.appendChild(Object.assign(document.createElement("div"), { className: "label", textContent: `L${l}` }));
    for (let h = 0; h < H; h++) {
      const canvas = document.createElement("canvas");
      canvas.className = "mini";
      canvas.dataset.layer = l;
      canvas.dataset.head = h;
      canvas.title = `layer ${l}, head ${h}`;
      drawMap(canvas, maps.subarray((l * H + h) * T * T, (l * H + h + 1) * T * T), T);
      grid.appendChild(canvas);
    }
  }
  markSelected();
}

function markSelected() {
  for (const c of document.querySelectorAll("#grid canvas.mini")) {
    c.classList.toggle("selected", +c.dataset.layer === state.layer && c.dataset.head === String(state.head));
  }
}

function select(layer, head) {
  state.layer = layer;
  state.head = head;
  $("layer").value = String(layer);
  $("head").value = String(head);
  if (state.an) {
    renderHeatmap();
    markSelected();
    if (state.focus !== null) showFocus(state.focus);
  }
  if (state.gen && state.gen.focus !== null) showGenFocus(state.gen.focus);
}

// ------------------------------------------------------------------ the head view: one byte's row and column

function showFocus(i) {
  const { T, chips, labels, bytes } = state.an;
  const map = currentMap();
  state.focus = i;
  let rowMax = 0, colMax = 0;
  for (let k = 0; k <= i; k++) rowMax = Math.max(rowMax, map[i * T + k]);
  for (let q = i; q < T; q++) colMax = Math.max(colMax, map[q * T + i]);
  for (let j = 0; j < T; j++) {
    const chip = chips[j];
    const to = j <= i ? map[i * T + j] : null;    // what byte i attends to: row i
    const from = j >= i ? map[j * T + i] : null;  // what attends to byte i: column i
    chip.style.backgroundColor = to === null ? "" : `rgba(var(--to), ${(to / (rowMax || 1)).toFixed(3)})`;
    chip.style.boxShadow = from === null ? "" : `inset 0 -3px 0 rgba(var(--from), ${(from / (colMax || 1)).toFixed(3)})`;
    if (to === null) delete chip.dataset.to; else chip.dataset.to = to;
    if (from === null) delete chip.dataset.from; else chip.dataset.from = from;
    chip.classList.toggle("focus", j === i);
  }
  highlightRow(i);
  const row = Array.from(map.subarray(i * T, i * T + i + 1));
  const col = Array.from({ length: T - i }, (_, d) => map[(i + d) * T + i]);
  const readout = $("readout");
  readout.textContent = "";
  readout.append(
    topLine(`${describe(i, labels, bytes)} attends to`, row, (k) => k, labels, bytes, "to"),
    topLine("attended to most by", col, (d) => i + d, labels, bytes, "from"));
}

function clearFocus() {
  state.focus = null;
  state.pinned = false;
  for (const chip of state.an?.chips || []) {
    chip.style.backgroundColor = chip.style.boxShadow = "";
    delete chip.dataset.to;
    delete chip.dataset.from;
    chip.classList.remove("focus");
  }
  highlightRow(null);
  $("readout").textContent = state.an ? "Hover a byte above, or a cell of the map." : "";
}

// The row (blue) and column (orange) of byte i on the map, and its labels on both axes.
function highlightRow(i) {
  const rowEl = $("row-highlight"), colEl = $("col-highlight");
  for (const span of document.querySelectorAll(".axis span.on")) span.classList.remove("on");
  if (i === null || !state.an) {
    rowEl.hidden = colEl.hidden = true;
    delete rowEl.dataset.row;
    return;
  }
  const { cell, T } = state.an;
  Object.assign(rowEl.style, { top: `${i * cell}px`, left: "0px", width: `${(i + 1) * cell}px`, height: `${cell}px` });
  Object.assign(colEl.style, { top: `${i * cell}px`, left: `${i * cell}px`, width: `${cell}px`, height: `${(T - i) * cell}px` });
  rowEl.dataset.row = i;
  rowEl.hidden = colEl.hidden = false;
  $("query-labels").children[i].classList.add("on");
  $("key-labels").children[i].classList.add("on");
}

function topLine(title, weights, indexOf, labels, bytes, kind, n = 5) {
  const line = document.createElement("div");
  line.className = "line";
  line.append(`${title}: `);
  const order = weights.map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, n);
  for (const [w, j] of order) {
    const pair = document.createElement("span");
    pair.className = "pair";
    const bar = document.createElement("span");
    bar.className = `bar ${kind}`;
    bar.style.width = `${Math.max(1, Math.round(w * 40))}px`;
    pair.append(`${describe(indexOf(j), labels, bytes)} ${w.toFixed(3)}`, bar);
    line.appendChild(pair);
  }
  return line;
}

function byteAt(event, container) {
  const chip = event.target.closest?.(".b");
  return chip && container.contains(chip) ? +chip.dataset.i : null;
}

function wireHeadView() {
  const strip = $("bytes");
  strip.addEventListener("mouseover", (e) => {
    const i = byteAt(e, strip);
    if (i !== null && state.an && !state.pinned) showFocus(i);
  });
  strip.addEventListener("mouseleave", () => { if (state.an && !state.pinned) clearFocus(); });
  strip.addEventListener("click", (e) => {
    const i = byteAt(e, strip);
    if (i === null || !state.an) return;
    if (state.pinned && state.focus === i) return clearFocus();
    showFocus(i);
    state.pinned = true;
  });
  strip.addEventListener("keydown", (e) => {
    if (!state.an || state.focus === null || !["ArrowLeft", "ArrowRight"].includes(e.key)) return;
    const i = Math.max(0, Math.min(state.an.T - 1, state.focus + (e.key === "ArrowLeft" ? -1 : 1)));
    showFocus(i);
    state.pinned = true;
    e.preventDefault();
  });

  const canvas = $("heatmap");
  canvas.addEventListener("mousemove", (e) => {
    if (!state.an) return;
    const { cell, T, labels, bytes } = state.an;
    const q = Math.min(T - 1, Math.floor(e.offsetY / cell)), k = Math.min(T - 1, Math.floor(e.offsetX / cell));
    const p = k <= q ? currentMap()[q * T + k] : null;
    $("cell-readout").textContent = `query ${describe(q, labels, bytes)} → key ${describe(k, labels, bytes)}: ` +
      (p === null ? "masked (the future)" : p.toFixed(4));
    if (!state.pinned) showFocus(q);
  });
  canvas.addEventListener("mouseleave", () => {
    $("cell-readout").textContent = "";
    if (state.an && !state.pinned) clearFocus();
  });
  canvas.addEventListener("click", (e) => {
    if (!state.an) return;
    showFocus(Math.min(state.an.T - 1, Math.floor(e.offsetY / state.an.cell)));
    state.pinned = true;
  });
  $("grid").addEventListener("click", (e) => {
    const c = e.target.closest("canvas.mini");
    if (c) select(+c.dataset.layer, +c.dataset.head);
  });
}

// ------------------------------------------------------------------ generation, streamed

async function generate() {
  const prompt = $("text").value;
  if (!prompt) return setStatus("gen-status", "type a prompt in the text box first", true);
  const seed = $("seed").value === "" ? null : +$("seed").value;
  const bytes = Array.from(utf8.encode(prompt));
  const gen = state.gen = { bytes, labels: charLabels(bytes), start: bytes.length, rows: [], focus: null,
                            pinned: false, controller: new AbortController() };
  gen.chips = renderStrip($("gen-bytes"), bytes, gen.labels, () => ["prompt"]);
  $("gen-readout").textContent = "";
  setGenerating(true);
  setStatus("gen-status", "generating…");
  const t0 = performance.now();
  try {
    const res = await api("/v1/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, signal: gen.controller.signal,
      body: JSON.stringify({ prompt, max_new_tokens: +$("max-new").value, temperature: +$("temperature").value,
                             seed, stream: true, attention: { layers: null, heads: null } }),
    });
    if (!res.ok) return setStatus("gen-status", await errorMessage(res), true);
    await readEvents(res.body, (event) => onGenerateEvent(gen, event, t0));
  } catch (e) {
    if (e.name === "AbortError") setStatus("gen-status", `stopped after ${gen.bytes.length - gen.start} bytes`);
    else setStatus("gen-status", String(e.message || e), true);
  } finally {
    setGenerating(false);
  }
}

// Read a text/event-stream body and call onEvent with each event's parsed JSON data, until [DONE].
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) onEvent(JSON.parse(data));
    }
  }
}

function onGenerateEvent(gen, event, t0) {
  if (event.error) return setStatus("gen-status", event.error.message, true);
  if (event.token) return appendGenerated(gen, event.token);
  if (event.finish_reason) {
    const n = gen.bytes.length - gen.start;
    setStatus("gen-status", `${n} bytes · finished: ${event.finish_reason} · ` +
      `${event.timing.tokens_per_second} bytes/s · ${Math.round(performance.now() - t0)} ms`);
    $("gen-bytes").dataset.done = "true";
  }
}

function appendGenerated(gen, token) {
  const i = gen.bytes.length;
  gen.bytes.push(token.id);
  gen.rows.push(token.attention);  // [layer][head][key], keys 0..i-1: what the model looked at to choose byte i
  const labels = charLabels(gen.bytes);
  gen.chips.push(appendChip($("gen-bytes"), i, gen.bytes, labels, ["gen"]));
  for (let j = Math.max(0, i - 3); j <= i; j++) {  // a character completed by this byte relabels its first byte
    if (labels[j] !== gen.labels[j]) setChipLabel(gen.chips[j], j, gen.bytes, labels);
  }
  gen.labels = labels;
  $("gen-bytes").dataset.generated = i + 1 - gen.start;
}

function setGenerating(on) {
  $("generate").disabled = on;
  $("stop").disabled = !on;
  $("analyse-generated").disabled = on || !state.gen || state.gen.bytes.length === state.gen.start;
  if (on) delete $("gen-bytes").dataset.done;
}

// What the model looked at when it chose generated byte n: the row recorded while generating, for the
// selected layer and head (or their mean), shaded over the bytes before it.
function showGenFocus(n) {
  const gen = state.gen;
  const heads = gen.rows[n - gen.start][state.layer];  // [head][key]
  const row = state.head === "mean"
    ? heads[0].map((_, k) => heads.reduce((s, h) => s + h[k], 0) / heads.length)
    : heads[state.head];
  const max = Math.max(...row) || 1;
  gen.focus = n;
  gen.chips.forEach((chip, j) => {
    chip.classList.toggle("focus", j === n);
    chip.style.backgroundColor = j < n ? `rgba(var(--to), ${(row[j] / max).toFixed(3)})` : "";
    if (j < n) chip.dataset.w = row[j]; else delete chip.dataset.w;
  });
  const readout = $("gen-readout");
  readout.textContent = "";
  const which = `layer ${state.layer}, ${state.head === "mean" ? "mean of heads" : `head ${state.head}`}`;
  readout.append(topLine(`${describe(n, gen.labels, gen.bytes)} was chosen looking at (${which})`, row, (k) => k,
    gen.labels, gen.bytes, "to"));
}

function clearGenFocus() {
  const gen = state.gen;
  if (!gen) return;
  gen.focus = null;
  gen.pinned = false;
  for (const chip of gen.chips) {
    chip.classList.remove("focus");
    chip.style.backgroundColor = "";
    delete chip.dataset.w;
  }
  $("gen-readout").textContent = "";
}

function wireGenerate() {
  const strip = $("gen-bytes");
  const generatedAt = (e) => {
    const n = byteAt(e, strip);
    return n !== null && state.gen && n >= state.gen.start && n < state.gen.start + state.gen.rows.length ? n : null;
  };
  strip.addEventListener("mouseover", (e) => {
    const n = generatedAt(e);
    if (n !== null && !state.gen.pinned) showGenFocus(n);
  });
  strip.addEventListener("mouseleave", () => { if (state.gen && !state.gen.pinned) clearGenFocus(); });
  strip.addEventListener("click", (e) => {
    const n = generatedAt(e);
    if (n === null) return;
    if (state.gen.pinned && state.gen.focus === n) return clearGenFocus();
    showGenFocus(n);
    state.gen.pinned = true;
  });
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.gen?.controller.abort());
  $("analyse-generated").addEventListener("click", () => {
    $("text").value = new TextDecoder().decode(Uint8Array.from(state.gen.bytes));
    updateByteCount();
    analyse().catch(showError);
  });
}

// ------------------------------------------------------------------ start

function updateByteCount() {
  const n = utf8.encode($("text").value).length;
  const ctx = state.model?.context;
  const el = $("byte-count");
  el.textContent = ctx ? `${n} / ${ctx} bytes` : `${n} bytes`;
  el.classList.toggle("over", !!ctx && n > ctx);
}

function showError(e) {
  setStatus("status", String(e.message || e), true);
}

function main() {
  drawColorbar();
  $("analyse").addEventListener("click", () => analyse().catch(showError));
  $("text").addEventListener("input", updateByteCount);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) analyse().catch(showError);
  });
  $("layer").addEventListener("change", (e) => select(+e.target.value, state.head));
  $("head").addEventListener("change", (e) => select(state.layer, e.target.value === "mean" ? "mean" : +e.target.value));
  $("scale").addEventListener("change", (e) => {
    state.scale = e.target.value;
    drawColorbar();
    if (state.an) {
      renderHeatmap();
      renderGrid();
    }
  });
  window.addEventListener("resize", () => {
    if (!state.an) return;
    layoutHeatmap();
    if (state.focus !== null) highlightRow(state.focus);
  });
  wireHeadView();
  wireGenerate();
  updateByteCount();
  loadModel().then(() => analyse()).catch(showError);
}

document.addEventListener("DOMContentLoaded", main);
