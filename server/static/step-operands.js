// Every operand of one head's softmax(q·kᵀ/√d_k)·V for one query byte, from POST /v1/attention/explain, laid out
// so that each step can be checked by eye: per key byte its key k, q∘k (the products whose sum is q·k), q·k,
// ÷√d_k, exp(s − max) and their sum Σ, the weight exp/Σ, the value v and w·v (whose column sums are z); the masked
// later bytes (their scores null in the JSON: −∞ for the softmax). Clicking a row opens its numbers dimension by
// dimension. Strips: red positive, blue negative, shaded by |x| ÷ the largest |x| of their column (in its header).
import { describe } from "./labels.js";

const BAR = 160;  // pixels of a weight of 1
const CELL = 3;   // pixels per number in a strip of the table

export function operandTable(out, labels, bytes) {
  const q = out.query;
  const seen = out.weights.slice(0, q + 1).map((_, j) => j);
  const scaled = seen.map((j) => out.scaled_scores[j]);
  const top = Math.max(...scaled);
  const exps = scaled.map((s) => Math.exp(s - top));
  const total = exps.reduce((a, b) => a + b, 0);
  const products = seen.map((j) => out.keys[j].map((k, i) => k * out.q[i]));
  const mixed = seen.map((j) => out.values[j].map((v) => v * out.weights[j]));
  const largest = (rows) => Math.max(...rows.flat().map(Math.abs)) || 1;
  const scale = { k: largest(seen.map((j) => out.keys[j])), qk: largest(products),
                  v: largest(seen.map((j) => out.values[j])), wv: largest(mixed) };
  const table = document.createElement("table");
  table.id = "step-table";
  const head = table.createTHead().insertRow();
  const columns = [
    ["key byte", "mask"], [`k (max |x| ${fmt(scale.k, 2)})`, "keys"], [`q∘k (max ${fmt(scale.qk, 2)})`, "scores"],
    ["q·k", "scores"], [`÷ √d_k = ${+out.sqrt_d_k.toFixed(3)}`, "scale"], [`exp(s − ${fmt(top, 3)})`, "softmax"],
    ["weight = exp ÷ Σ", "softmax"], [`v (max ${fmt(scale.v, 2)})`, "values"], [`w·v (max ${fmt(scale.wv, 2)})`, "mix"],
  ];
  for (const [name, stage] of columns) head.appendChild(cell("th", name, stage));
  const body = table.createTBody();
  for (const j of seen) {
    const row = body.insertRow();
    row.dataset.key = j;
    row.title = "click for this row's numbers, dimension by dimension";
    const weight = cell("td", "", "softmax");
    const bar = document.createElement("span");
    bar.className = "wbar";
    bar.dataset.w = out.weights[j];
    bar.style.width = `${Math.max(1, Math.round(out.weights[j] * BAR))}px`;
    weight.append(bar, ` ${out.weights[j].toFixed(4)}`);
    row.append(cell("td", describe(j, labels, bytes), "mask"), stripCell(out.keys[j], scale.k, "keys"),
      stripCell(products[j], scale.qk, "scores"), cell("td", out.raw_scores[j].toFixed(3), "scores"),
      cell("td", out.scaled_scores[j].toFixed(3), "scale"), cell("td", exps[j].toFixed(4), "softmax"), weight,
      stripCell(out.values[j], scale.v, "values"), stripCell(mixed[j], scale.wv, "mix"));
    ["", "", "", "raw", "scaled", "exp"].forEach((name, c) => name && row.cells[c].classList.add(name));
    row.cells[5].dataset.exp = exps[j];
  }
  if (q + 1 < out.mask.length) {
    const row = body.insertRow();
    row.className = "masked";
    row.dataset.stage = "mask";
    const note = cell("td", `bytes ${q + 1}–${out.mask.length - 1} come later: the causal mask sets their scores to ` +
      "−∞ (null in the JSON), exp(−∞) = 0, so their weights are 0", "mask");
    note.colSpan = columns.length;
    row.appendChild(note);
  }
  const sum = table.createTFoot().insertRow();
  sum.className = "sum";
  const z = out.z.map((_, i) => mixed.reduce((s, m) => s + m[i], 0));
  sum.append(cell("td", "Σ", "mix"), cell("td", ""), cell("td", ""), cell("td", ""), cell("td", ""),
    cell("td", `Σ = ${total.toFixed(4)}`, "softmax"),
    cell("td", `Σ = ${out.weights.reduce((a, b) => a + b, 0).toFixed(4)}`, "softmax"), cell("td", "z = Σ w·v →", "mix"),
    stripCell(z, largest([z]), "mix"));
  sum.cells[5].dataset.sum = total;
  return table;
}

// One key row's numbers, dimension by dimension: q_i, k_i, q_i·k_i (summing to q·k), v_i and w·v_i (this key's
// share of z_i), and z_i itself.
export function operandDetail(out, j, labels, bytes) {
  const w = out.weights[j];
  const div = document.createElement("div");
  div.className = "step-detail";
  div.dataset.key = j;
  const products = out.q.map((x, i) => x * out.keys[j][i]);
  const sum = products.reduce((a, b) => a + b, 0);
  div.append(line("detail-title", `key ${describe(j, labels, bytes)}: q·k = Σ_i q_i·k_i = ${sum.toFixed(4)} ` +
    `(the table: ${out.raw_scores[j].toFixed(3)}); its weight w = ${w.toFixed(4)}, and w·v_i is its share of z_i`));
  const table = document.createElement("table");
  table.className = "detail-table";
  const head = table.createTHead().insertRow();
  for (const name of ["i", "q_i", "k_i", "q_i·k_i", "v_i", "w·v_i", "z_i"]) head.appendChild(cell("th", name));
  const body = table.createTBody();
  out.q.forEach((x, i) => {
    const row = body.insertRow();
    for (const value of [i, fmt(x, 4), fmt(out.keys[j][i], 4), fmt(products[i], 4), fmt(out.values[j][i], 4),
      fmt(w * out.values[j][i], 4), fmt(out.z[i], 4)]) row.appendChild(cell("td", String(value)));
  });
  const foot = table.createTFoot().insertRow();
  for (const value of ["Σ", "", "", sum.toFixed(4), "", "", ""]) foot.appendChild(cell("td", value));
  const frame = document.createElement("div");
  frame.className = "detail-scroll";
  frame.appendChild(table);
  div.appendChild(frame);
  return div;
}

// A vector as a strip of cells, red for positive and blue for negative, shaded by |x| ÷ max.
export function strip(values, max, cellPixels) {
  const canvas = document.createElement("canvas");
  canvas.width = values.length;
  canvas.height = 1;
  canvas.className = "strip";
  if (cellPixels) canvas.style.width = `${cellPixels * values.length}px`;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(values.length, 1);
  values.forEach((v, i) => {
    const [r, g, b] = v >= 0 ? [234, 88, 12] : [37, 99, 235];
    image.data.set([r, g, b, Math.round(255 * Math.min(1, Math.abs(v) / max))], 4 * i);
  });
  ctx.putImageData(image, 0, 0);
  canvas.title = values.map((v) => v.toFixed(3)).join(" ");
  return canvas;
}

function stripCell(values, max, stage) {
  const td = cell("td", "", stage);
  td.className = "op";
  td.appendChild(strip(values, max, CELL));
  return td;
}

export function cell(tag, text, stage) {
  const el = Object.assign(document.createElement(tag), { textContent: text });
  if (stage) el.dataset.stage = stage;
  return el;
}

export function line(cls, text, stage) {
  const el = Object.assign(document.createElement("div"), { className: cls, textContent: text });
  if (stage) el.dataset.stage = stage;
  return el;
}

function fmt(x, digits) {
  return x.toFixed(digits);
}
