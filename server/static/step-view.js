// Step by step: one head's softmax(q·kᵀ/√d_k)·V for one byte of a short text, every number the model's own
// (POST /v1/attention/explain), and the logit lens of the same text (POST /v1/lens): what the model would say
// next if it stopped after each layer. It opens with "The cat sat on the mat" and its last byte; click a byte to
// make it the query; the layer and head are the ones selected above; heads switched off (heads-off.js) apply.
import { errorMessage, postJson, tokenize } from "./api.js";
import { $, setStatus } from "./dom.js";
import { axisLabel, describe } from "./labels.js";
import { byteAt, renderStrip } from "./strip.js";

const BAR = 160;  // pixels of a weight of 1

export class StepPanel {
  constructor(selection) {
    this.selection = selection;
    this.text = null;
    this.bytes = [];
    this.labels = [];
    this.chips = [];
    this.query = null;
    this.asked = { walk: 0, lens: 0 };  // requests started, so a late answer to an older one is dropped
    $("step-go").addEventListener("click", () => this.load());
    $("step-text").addEventListener("keydown", (e) => { if (e.key === "Enter") this.load(); });
    $("step-bytes").addEventListener("click", (e) => {
      const i = byteAt(e, $("step-bytes"));
      if (i !== null) this.walk(i);
    });
  }

  // A new text: its bytes, the walkthrough of its last byte, and its lens.
  async load() {
    const text = $("step-text").value;
    if (!text) return setStatus($("step-status"), "type some text first", true);
    try {
      const { bytes, labels } = await tokenize(text);
      Object.assign(this, { text, bytes, labels });
      this.chips = renderStrip($("step-bytes"), bytes, labels, []);
      await Promise.all([this.walk(bytes.length - 1), this.lens()]);
    } catch (e) {
      setStatus($("step-status"), String(e.message || e), true);
    }
  }

  // After the model, the selected layer or head, or the heads switched off changed.
  refresh({ lens = true } = {}) {
    if (this.text === null) return;
    this.walk(Math.min(this.query, this.bytes.length - 1));
    if (lens) this.lens();
  }

  async walk(query) {
    this.query = query;
    this.chips.forEach((chip, j) => chip.classList.toggle("focus", j === query));
    const { model, layer, head, headsOff } = this.selection;
    if (head === "mean") {
      $("step-walk").textContent = "Choose one head (above) to walk through its arithmetic.";
      return;
    }
    const id = ++this.asked.walk;
    setStatus($("step-status"), "computing…");
    const res = await postJson("/v1/attention/explain",
      { model, text: this.text, layer, head, query, heads_off: headsOff });
    if (id !== this.asked.walk) return;
    if (!res.ok) return setStatus($("step-status"), await errorMessage(res), true);
    const out = await res.json();
    if (id !== this.asked.walk) return;
    setStatus($("step-status"), headsOff.length ? `with ${headsOff.map(([l, h]) => `${l}.${h}`).join(", ")} off` : "");
    this.show(out);
  }

  show(out) {
    const { labels, bytes } = this;
    const q = out.query;
    const walk = $("step-walk");
    walk.dataset.query = q;
    const scores = this.scoreTable(out);
    walk.replaceChildren(
      line("step-title", `layer ${out.layer}, head ${out.head} · query ${describe(q, labels, bytes)} · ` +
        `d_k = ${out.head_dim}, √d_k = ${+out.sqrt_d_k.toFixed(3)}` + (out.switched_off ? " · switched off" : "")),
      vectorLine("q = h·W_Q, before RoPE", out.q_before_rope),
      vectorLine("q after RoPE (rotated by its position)", out.q),
      scores,
      vectorLine(`z = Σ weight·v: ${mixTerms(out, labels, bytes)}`, out.z),
      vectorLine(`z·W_O: what this head adds to the residual stream (norm ${out.write_norm.toFixed(3)}; ` +
        `the stream before this block: ${out.block_input_norm.toFixed(3)})`, out.write),
      line("step-checks", `checks (max |difference|): these weights vs /v1/attention's row ` +
        `${out.checks.weights_vs_attention.toExponential(1)} · Σ heads' writes + the block's input vs the residual ` +
        `after attention ${out.checks.writes_plus_input_vs_residual.toExponential(1)}`));
    scores.scrollTop = scores.scrollHeight;  // the query's own row and its neighbours, the last rows, in view
  }

  // One row per byte the query may attend to: q·k → ÷√d_k → softmax, a bar per weight; later bytes are masked.
  scoreTable(out) {
    const q = out.query;
    const table = document.createElement("table");
    table.id = "step-table";
    const head = table.createTHead().insertRow();
    for (const name of ["key byte", "q·k", `÷ ${+out.sqrt_d_k.toFixed(3)}`, "softmax"]) {
      head.appendChild(cell("th", name));
    }
    const body = table.createTBody();
    for (let j = 0; j <= q; j++) {
      const row = body.insertRow();
      row.dataset.key = j;
      row.append(cell("td", describe(j, this.labels, this.bytes)), cell("td", out.raw_scores[j].toFixed(3)),
        cell("td", out.scaled_scores[j].toFixed(3)));
      const weight = cell("td", "");
      const bar = document.createElement("span");
      bar.className = "wbar";
      bar.dataset.w = out.weights[j];
      bar.style.width = `${Math.max(1, Math.round(out.weights[j] * BAR))}px`;
      weight.append(bar, ` ${out.weights[j].toFixed(4)}`);
      row.appendChild(weight);
    }
    if (q + 1 < out.mask.length) {
      const row = body.insertRow();
      row.className = "masked";
      const note = cell("td", `bytes ${q + 1}–${out.mask.length - 1} come later: the causal mask sets their ` +
        "scores to −∞, so their weights are 0");
      note.colSpan = 4;
      row.appendChild(note);
    }
    const frame = document.createElement("div");
    frame.className = "step-scroll";
    frame.appendChild(table);
    return frame;
  }

  async lens() {
    const { model, headsOff } = this.selection;
    const id = ++this.asked.lens;
    const res = await postJson("/v1/lens", { model, text: this.text, top_k: 3, heads_off: headsOff });
    if (id !== this.asked.lens) return;
    if (!res.ok) return setStatus($("step-status"), await errorMessage(res), true);
    const out = await res.json();
    if (id === this.asked.lens) this.showLens(out);
  }

  // Rows: stages (the embedding, after each layer's attention and MLP); columns: the text's bytes; a cell holds the
  // byte the model would say next at that stage, shaded by its probability, outlined when it is the byte that comes.
  showLens(out) {
    const { labels, bytes } = this;
    const table = $("lens");
    table.textContent = "";
    const top = table.createTHead().insertRow();
    top.appendChild(cell("th", "after"));
    labels.forEach((label) => top.appendChild(cell("th", label === "" ? "·" : axisLabel(label))));
    top.appendChild(cell("th", "bits/byte"));
    const body = table.createTBody();
    out.stages.forEach((stage, s) => {
      const row = body.insertRow();
      row.dataset.stage = stage;
      row.appendChild(cell("th", stage));
      out.top_ids[s].forEach((ids, t) => {
        const p = out.top_probs[s][t][0];
        const td = cell("td", axisLabel(out.byte_labels[ids[0]]));
        td.style.backgroundColor = `rgba(var(--to), ${(0.6 * p).toFixed(3)})`;
        const next = t + 1 < bytes.length ? bytes[t + 1] : null;
        td.classList.toggle("hit", ids[0] === next);
        td.title = `${stage}, after ${describe(t, labels, bytes)}: ` +
          ids.map((b, k) => `${out.byte_labels[b]} ${out.top_probs[s][t][k].toFixed(3)}`).join(" · ") +
          (next === null ? "" : ` — the next: rank ${out.next_rank[s][t]}, p ${out.next_prob[s][t].toFixed(3)}`);
        row.appendChild(td);
      });
      const bits = out.bits_per_byte[s];
      row.appendChild(cell("td", bits === null ? "–" : bits.toFixed(2)));
    });
  }
}

function cell(tag, text) {
  return Object.assign(document.createElement(tag), { textContent: text });
}

function line(cls, text) {
  return Object.assign(document.createElement("div"), { className: cls, textContent: text });
}

// The largest terms of the weighted mix: 0.949·v‹m› + 0.015·v‹h› + …
function mixTerms(out, labels, bytes) {
  const terms = out.weights.map((w, j) => [w, j]).filter(([w]) => w > 0).sort((a, b) => b[0] - a[0]);
  const largest = terms.slice(0, 3).map(([w, j]) => `${w.toFixed(3)}·v${describe(j, labels, bytes).split(" ")[0]}`);
  return largest.join(" + ") + (terms.length > 3 ? ` + … (${terms.length} terms)` : "");
}

// A vector as a strip of cells, red for positive and blue for negative, shaded by size relative to its largest.
function vectorLine(title, values) {
  const div = document.createElement("div");
  div.className = "vector";
  const canvas = document.createElement("canvas");
  canvas.width = values.length;
  canvas.height = 1;
  canvas.style.width = `${Math.min(4 * values.length, 480)}px`;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(values.length, 1);
  const max = Math.max(...values.map(Math.abs)) || 1;
  values.forEach((v, i) => {
    const [r, g, b] = v >= 0 ? [234, 88, 12] : [37, 99, 235];
    image.data.set([r, g, b, Math.round(255 * Math.abs(v) / max)], 4 * i);
  });
  ctx.putImageData(image, 0, 0);
  div.append(line("vector-title", `${title} (${values.length} numbers)`), canvas);
  return div;
}
