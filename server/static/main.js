// TinyLLM attention explorer: plain JavaScript modules, no build step, no dependencies.
//
//   Analyse  -> the maps of every layer and head for the text (analysis.js): the map and the all-heads grid
//               (map-view.js) and the head view (head-view.js).
//   Generate -> a streamed continuation, one byte per server-sent event with the row that chose it
//               (generate.js).
//
// This module owns what every view shares, the selected layer, head and colour scale, and wires the views
// together. Labels of bytes always come from the server (api.js tokenize, and each stream event).
import { fetchAnalysis } from "./analysis.js";
import { getJson } from "./api.js";
import { $, setStatus } from "./dom.js";
import { GeneratePanel } from "./generate.js";
import { HeadView } from "./head-view.js";
import { drawColorbar } from "./heatmap.js";
import { MapView } from "./map-view.js";

const utf8 = new TextEncoder();
const selection = { layer: 0, head: 0, scale: "sqrt" };  // head: an index, or "mean"
let context = null;  // the model's context length in bytes, once GET /v1/model answered
let analyses = 0;    // analyses started, so a late answer to an older one is dropped

const mapView = new MapView(selection, {
  hover: (q) => headView.hover(q), leave: () => headView.leave(), pick: (q) => headView.pin(q), select,
});
const headView = new HeadView(selection, mapView);
const panel = new GeneratePanel(selection, $("text"), (text) => {
  $("text").value = text;
  updateByteCount();
  analyse();
});

async function loadModel() {
  const m = await getJson("/v1/model");
  context = m.context_length;
  $("model-info").textContent = `${m.checkpoint} · ${m.config.n_layer} layers × ${m.config.n_head} heads · ` +
    `d_k ${m.config.d_model / m.config.n_head} · context ${m.context_length} bytes · ${m.device}`;
  const layer = $("layer"), head = $("head");
  layer.textContent = head.textContent = "";
  for (let l = 0; l < m.config.n_layer; l++) layer.add(new Option(String(l), String(l)));
  for (let h = 0; h < m.config.n_head; h++) head.add(new Option(String(h), String(h)));
  head.add(new Option("mean of heads", "mean"));
  updateByteCount();
}

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
    const an = await fetchAnalysis(text);
    if (id !== analyses) return;
    const t1 = performance.now();
    mapView.show(an);
    headView.show(an);
    const t2 = performance.now();
    setStatus(status, `${an.T} bytes · ${an.L} × ${an.H} maps · answer ${Math.round(t1 - t0)} ms · ` +
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
  headView.refresh();
  panel.refresh();
}

function updateByteCount() {
  const n = utf8.encode($("text").value).length;
  const el = $("byte-count");
  el.textContent = context ? `${n} / ${context} bytes` : `${n} bytes`;
  el.classList.toggle("over", !!context && n > context);
}

function main() {
  drawColorbar(selection.scale);
  $("analyse").addEventListener("click", analyse);
  $("text").addEventListener("input", updateByteCount);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) analyse();
  });
  $("layer").addEventListener("change", (e) => select(+e.target.value, selection.head));
  $("head").addEventListener("change", (e) => select(selection.layer, e.target.value === "mean" ? "mean" : +e.target.value));
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
  loadModel().then(analyse).catch((e) => setStatus($("status"), String(e.message || e), true));
}

main();
