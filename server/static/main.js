// TinyLLM attention explorer: plain JavaScript modules, no build step, no dependencies.
//
//   Model    -> the models this server serves (GET /v1/models); the chosen one answers every request.
//   Analyse  -> the maps of every layer and head for the text, per byte or per character (analysis.js): the map
//               and the all-heads grid (map-view.js) and the head view (head-view.js); and what each head does
//               (summary-view.js).
//   Generate -> a streamed continuation, one byte per server-sent event with the row that chose it and what
//               pushed its logit (generate.js).
//   Step by step -> one head's arithmetic for one byte of the text, every operand shown (step-view.js,
//               step-operands.js, block-diagram.js), and the logit lens; heads switched off in the table
//               (heads-off.js) apply to it, and their loss change is shown. A click on a byte anywhere opens it.
//   What comes next -> the model's next-byte distribution after that byte, and what temperature, top-k and top-p
//               make of it (next-byte.js).
//
// This module owns what every view shares, the selected model, layer, head, colour scale and granularity, and
// wires the views together. Labels of bytes always come from the server (api.js tokenize, and each stream event).
import { fetchAnalysis } from "./analysis.js";
import { getJson } from "./api.js";
import { AtlasPanel } from "./atlas-view.js";
import { $, setStatus } from "./dom.js";
import { GeneratePanel } from "./generate.js";
import { HeadView } from "./head-view.js";
import { HeadsOff } from "./heads-off.js";
import { drawColorbar } from "./heatmap.js";
import { MapView } from "./map-view.js";
import { NextBytePanel } from "./next-byte.js";
import { PatchPanel } from "./patch-view.js";
import { StepPanel } from "./step-view.js";
import { fetchSummary, SummaryView } from "./summary-view.js";

const utf8 = new TextEncoder();
// head: an index, or "mean"; granularity: "byte" or "character" (the maps' rows and columns)
const selection = { model: null, layer: 0, head: 0, scale: "sqrt", granularity: "byte" };
let context = null;  // the model's context length in bytes, once GET /v1/model answered
let analyses = 0;    // analyses started, so a late answer to an older one is dropped
let summaryOf = null;  // the model and text the summary table describes (it is per byte: no granularity)

const mapView = new MapView(selection, {
  hover: (q) => headView.hover(q), leave: () => headView.leave(), pick: (q) => headView.pin(q), select,
});
let analysed = null;  // the text and unit the maps show, for the step panel when a byte of them is clicked
const headView = new HeadView(selection, mapView, (i) => {
  if (analysed) stepPanel.open(analysed.text, i, { unit: analysed.unit });
});
const nextByte = new NextBytePanel(selection);
const stepPanel = new StepPanel(selection, (text, i, info) => nextByte.show(text, i, info));
const headsOff = new HeadsOff(selection, () => stepPanel.refresh());
const summaryView = new SummaryView(selection, select, (layer, head) => headsOff.toggle(layer, head));
// across text: atlas-view.js (atlas, detectors), patch-view.js (patching, contexts)
const atlasPanel = new AtlasPanel(selection, select);
const patchPanel = new PatchPanel(selection, select, (text, i) => stepPanel.open(text, i, { source: "the clean text" }));
const panel = new GeneratePanel(selection, $("text"), (text) => {
  $("text").value = text;
  updateByteCount();
  analyse();
}, select, (text, i, drawn) => stepPanel.open(text, i, { source: "the generated text", drawn }));

async function loadModels() {
  const { data } = await getJson("/v1/models");
  const pick = $("model");
  pick.textContent = "";
  for (const m of data) pick.add(new Option(m.id, m.id));
  await loadModel(data[0].id);
}

async function loadModel(name) {
  const m = await getJson(`/v1/model?model=${encodeURIComponent(name)}`);
  selection.model = m.model;
  $("model").value = m.model;
  context = m.context_length;
  atlasPanel.setModel(m);  // the panels that hold what the last model said, its layers and heads
  patchPanel.clear();
  panel.reset();
  $("model-info").textContent = `${m.config.n_layer} layers × ${m.config.n_head} heads · ` +
    `d_k ${m.config.d_model / m.config.n_head} · context ${m.context_length} bytes · ${m.device}`;
  // keep the selected layer and head where this model has them
  selection.layer = Math.min(selection.layer, m.config.n_layer - 1);
  if (selection.head !== "mean") selection.head = Math.min(selection.head, m.config.n_head - 1);
  const layer = $("layer"), head = $("head");
  layer.textContent = head.textContent = "";
  for (let l = 0; l < m.config.n_layer; l++) layer.add(new Option(String(l), String(l)));
  for (let h = 0; h < m.config.n_head; h++) head.add(new Option(String(h), String(h)));
  head.add(new Option("mean of heads", "mean"));
  layer.value = String(selection.layer);
  head.value = String(selection.head);
  updateByteCount();
}

// The maps (in the selected granularity) and the heads' summary, unless the table already shows this text's.
async function analyse() {
  const status = $("status");
  const text = $("text").value;
  const n = utf8.encode(text).length;
  if (n === 0) return setStatus(status, "type some text first", true);
  if (context && n > context) {
    return setStatus(status, `the text is ${n} bytes; the model's context holds ${context}: shorten it`, true);
  }
  const id = ++analyses;
  setStatus(status, "analysing…");
  const t0 = performance.now();
  try {
    const key = `${selection.model}\n${text}`;
    const [an, heads] = await Promise.all([
      fetchAnalysis(text, selection),
      key === summaryOf ? null : fetchSummary(text, selection.model),
    ]);
    if (id !== analyses) return;
    const t1 = performance.now();
    mapView.show(an);
    headView.show(an);
    analysed = { text, unit: an.unit };
    stepPanel.open(text, an.T - 1, { unit: an.unit });
    if (heads) {
      summaryView.show(heads);
      headsOff.mark();
      headsOff.measure(text);
      summaryOf = key;
    }
    const t2 = performance.now();
    setStatus(status, `${an.T} ${an.unit}s · ${an.L} × ${an.H} maps · answer ${Math.round(t1 - t0)} ms · ` +
      `drawing ${Math.round(t2 - t1)} ms`);
  } catch (e) {
    if (id === analyses) setStatus(status, String(e.message || e), true);
  }
}

function select(layer, head) {
  Object.assign(selection, { layer, head });
  $("layer").value = String(layer);
  $("head").value = String(head);
  if (mapView.an) {
    mapView.draw();
    mapView.markSelected();
  }
  summaryView.markSelected();
  headView.refresh();
  panel.refresh();
  stepPanel.refresh({ lens: false });
}

// The views of the last model's analysis, when this model cannot analyse the text: nothing of it stays on the page to
// be clicked into requests this model would refuse (the text is longer than its context).
function forgetAnalysis() {
  analyses++;  // an analysis still on its way is the last model's too
  analysed = summaryOf = null;
  mapView.forget();
  headView.forget();
  summaryView.forget();
  stepPanel.forget();
  nextByte.forget();
}

function updateByteCount() {
  const n = utf8.encode($("text").value).length;
  const el = $("byte-count");
  el.textContent = context ? `${n} / ${context} bytes` : `${n} bytes`;
  el.classList.toggle("over", !!context && n > context);
}

function main() {
  drawColorbar(selection.scale);
  $("analyse").addEventListener("click", () => analyse());
  $("text").addEventListener("input", updateByteCount);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) analyse();
  });
  $("model").addEventListener("change", (e) => {
    loadModel(e.target.value).then(() => {
      headsOff.clear();
      if (utf8.encode($("text").value).length > context) forgetAnalysis();  // analyse() will refuse it
      analyse();
    }).catch((err) => setStatus($("status"), String(err.message || err), true));
  });
  $("layer").addEventListener("change", (e) => select(+e.target.value, selection.head));
  $("head").addEventListener("change", (e) => select(selection.layer, e.target.value === "mean" ? "mean" : +e.target.value));
  for (const radio of document.querySelectorAll("input[name=granularity]")) {
    radio.addEventListener("change", (e) => {
      selection.granularity = e.target.value;
      analyse();
    });
  }
  $("scale").addEventListener("change", (e) => {
    selection.scale = e.target.value;
    drawColorbar(selection.scale);
    if (mapView.an) {
      mapView.draw();
      mapView.drawGrid();
    }
  });
  window.addEventListener("resize", () => { if (mapView.an) mapView.layout(); });
  updateByteCount();
  loadModels().then(() => analyse()).catch((e) => setStatus($("status"), String(e.message || e), true));
}

main();
