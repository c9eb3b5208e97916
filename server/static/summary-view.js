// What each head does: a layers × heads table from POST /v1/attention {format: "summary"}, computed by the
// server (model/heads.py) over the bytes of the text. A head is labelled ("previous byte", "same character",
// "start of text", ...) when one share of its attention reaches the server's threshold; each cell shows its
// label, its largest shares and how far back it looks; its title lists every number. Its "off" toggle switches the
// head off (heads-off.js).
import { errorMessage, postJson } from "./api.js";
import { $ } from "./dom.js";

// Each share: its name in a cell (short, as the hint above the table explains) and in the cell's title.
const SHARES = {
  previous_byte: ["prev", "the previous byte"], current_byte: ["self", "the byte itself"],
  same_character: ["char", "the same character"], same_word: ["word", "the same word"],
  first_position: ["first", "the first byte"],
};

export async function fetchSummary(text, model) {
  const res = await postJson("/v1/attention", { model, text, format: "summary" });
  if (!res.ok) throw new Error(await errorMessage(res));
  return res.json();
}

const percent = (x) => (x === null ? "–" : `${Math.round(x * 100)}%`);
const fixed = (x, digits) => (x === null ? "–" : x.toFixed(digits));  // null: no query qualified (a 1-byte text)

export class SummaryView {
  // select(layer, head): a cell was clicked; toggleOff(layer, head): its "off" toggle was.
  constructor(selection, select, toggleOff) {
    this.selection = selection;
    this.summary = null;
    $("summary").addEventListener("click", (e) => {
      const cell = e.target.closest("td[data-head]");
      if (!cell) return;
      if (e.target.closest(".off-toggle")) toggleOff(+cell.dataset.layer, +cell.dataset.head);
      else select(+cell.dataset.layer, +cell.dataset.head);
    });
  }

  show(summary) {
    this.summary = summary;
    const { layers, heads, tokens, label_threshold: threshold } = summary;
    $("summary-threshold").textContent = percent(threshold);
    $("summary-title").textContent = `${summary.model} · ${tokens.length} bytes`;
    const table = $("summary");
    table.textContent = "";
    const top = table.createTHead().insertRow();
    top.appendChild(header(""));
    for (const h of heads) top.appendChild(header(`head ${h}`));
    const body = table.createTBody();
    layers.forEach((layer, li) => {
      const row = body.insertRow();
      row.appendChild(header(`L${layer}`));
      heads.forEach((head, hi) => row.appendChild(this.cell(layer, head, li, hi)));
    });
    this.markSelected();
  }

  forget() {  // the last model's heads
    this.summary = null;
    $("summary").textContent = $("summary-title").textContent = "";
  }

  cell(layer, head, li, hi) {
    const value = (name) => this.summary.metrics[name][li][hi];
    const label = this.summary.labels[li][hi];
    const td = document.createElement("td");
    Object.assign(td.dataset, { layer, head, label: label ?? "" });
    const kind = document.createElement("div");
    kind.className = "kind";
    kind.textContent = label ?? "mixed";
    // the share that earned the label first (shares are means over different bytes: it need not be the largest)
    const earned = this.summary.label_metrics[label];
    const shares = Object.keys(SHARES).filter((m) => value(m) !== null)
      .sort((a, b) => (b === earned) - (a === earned) || value(b) - value(a));
    const line = document.createElement("div");
    line.className = "numbers";
    line.textContent = shares.slice(0, 2).map((m) => `${SHARES[m][0]} ${percent(value(m))}`).join(" · ");
    const reach = document.createElement("div");
    reach.className = "numbers";
    reach.textContent = `${fixed(value("mean_distance"), 1)} back · ${fixed(value("entropy_bits"), 2)} bits`;
    const off = Object.assign(document.createElement("button"), {
      type: "button", className: "off-toggle", textContent: "off", title: "switch this head off (or on again)",
    });
    off.setAttribute("aria-pressed", "false");
    td.append(off, kind, line, reach);
    td.title = [
      `layer ${layer}, head ${head}${label ? `: ${label}` : ""}`,
      ...Object.entries(SHARES).map(([m, [, name]]) => `on ${name}: ${percent(value(m))}`),
      `mean distance: ${fixed(value("mean_distance"), 2)} bytes`,
      `entropy: ${fixed(value("entropy_bits"), 2)} bits`,
    ].join("\n");
    return td;
  }

  markSelected() {
    const { layer, head } = this.selection;
    for (const td of document.querySelectorAll("#summary td[data-head]")) {
      td.classList.toggle("selected", +td.dataset.layer === layer && td.dataset.head === String(head));
    }
  }
}

function header(text) {
  return Object.assign(document.createElement("th"), { textContent: text });
}
