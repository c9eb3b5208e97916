// Activation patching between two texts (POST /v1/patch): a layers × positions grid and a layers × heads grid,
// each cell the fraction of the clean-vs-corrupt logit difference restored; a click selects the layer (and head)
// and opens the step-by-step walkthrough on the clean text. And one byte in different contexts (POST
// /v1/contexts): the cosine of its residual stream between occurrences, per layer.
import { errorMessage, postJson } from "./api.js";
import { $, setStatus, tableCell as cell } from "./dom.js";

const fmt = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

// A fraction restored: blue towards 1, red below 0, white at 0.
function restoredColour(v) {
  if (v === null) return "#f3f4f6";
  const t = Math.max(-1, Math.min(1, v));
  return t >= 0 ? `rgba(37, 99, 235, ${t.toFixed(3)})` : `rgba(220, 38, 38, ${(-t).toFixed(3)})`;
}

export class PatchPanel {
  constructor(selection, select, walkthrough) {
    this.selection = selection;
    this.select = select;
    this.walkthrough = walkthrough;  // (text, byte index): opens the step-by-step panel on that byte
    $("patch-go").addEventListener("click", () => this.run());
    $("contexts-go").addEventListener("click", () => this.contexts());
  }

  clear() {  // another model: the grids' layers and heads were the last one's
    for (const id of ["patch-residual", "patch-heads", "contexts-strip"]) $(id).textContent = "";
    for (const id of ["patch-status", "contexts-status"]) setStatus($(id), "");
  }

  async run() {
    const { model } = this.selection;
    const status = $("patch-status");
    setStatus(status, "patching…");
    const body = { model, clean: $("patch-clean").value, corrupt: $("patch-corrupt").value };
    if ($("patch-target").value) body.target = $("patch-target").value;
    const t0 = performance.now();
    const res = await postJson("/v1/patch", body);
    if (!res.ok) return setStatus(status, await errorMessage(res), true);
    const out = await res.json();
    setStatus(status, `logit[${out.target_text}] − logit[${out.foil_text}] at the last byte: clean ` +
      `${fmt(out.clean_logit_diff)}, corrupt ${fmt(out.corrupt_logit_diff)} · ${Math.round(performance.now() - t0)} ms`);
    this.residualGrid(out);
    this.headsGrid(out);
  }

  // Rows: the stream entering each layer; columns: positions, labelled with the clean (and corrupt) byte.
  residualGrid(out) {
    const table = $("patch-residual");
    table.textContent = "";
    const head = table.createTHead().insertRow();
    cell(head, "layer \\ byte");
    out.clean_tokens.forEach((t, i) => {
      const other = out.corrupt_tokens[i].text;
      cell(head, t.text === other ? t.text : `${t.text}/${other}`, `position ${i}`);
    });
    const body = table.createTBody();
    out.residual.forEach((row, layer) => {
      const tr = body.insertRow();
      cell(tr, `into ${layer}`);
      row.forEach((v, pos) => {
        const td = cell(tr, "", `layer ${layer}, byte ${pos}: ${fmt(v, 3)} restored`, restoredColour(v));
        td.className = "patch-cell";
        td.addEventListener("click", () => this.walk(layer, this.selection.head === "mean" ? 0 : this.selection.head));
      });
    });
  }

  headsGrid(out) {
    const table = $("patch-heads");
    table.textContent = "";
    const head = table.createTHead().insertRow();
    cell(head, "layer \\ head");
    out.heads[0].forEach((_, h) => cell(head, String(h)));
    const body = table.createTBody();
    out.heads.forEach((row, layer) => {
      const tr = body.insertRow();
      cell(tr, String(layer));
      row.forEach((v, h) => {
        const td = cell(tr, fmt(v), `layer ${layer} head ${h}: ${fmt(v, 3)} restored`, restoredColour(v));
        td.addEventListener("click", () => this.walk(layer, h));
      });
    });
  }

  // Into the existing walkthrough: select the head, and walk through the clean text's last byte (where the logit
  // difference is measured).
  walk(layer, head) {
    this.select(layer, head);
    const clean = $("patch-clean").value;
    this.walkthrough(clean, new TextEncoder().encode(clean).length - 1);
  }

  async contexts() {
    const { model } = this.selection;
    const status = $("contexts-status"), table = $("contexts-strip");
    const body = { model, text: $("contexts-text").value, byte: $("contexts-byte").value };
    if ($("contexts-other").value) body.other_text = $("contexts-other").value;
    const res = await postJson("/v1/contexts", body);
    table.textContent = "";
    if (!res.ok) return setStatus(status, await errorMessage(res), true);
    const out = await res.json();
    const n = out.occurrences.length;
    setStatus(status, `${n} occurrences of byte ${out.byte}; cosine of each with the first, after each stage`);
    const head = table.createTHead().insertRow();
    cell(head, "stage");
    out.occurrences.slice(1).forEach((o) => cell(head, `${o.text ? "other" : "text"} @${o.position}`));
    const tbody = table.createTBody();
    out.stages.forEach((stage, s) => {
      const tr = tbody.insertRow();
      cell(tr, stage);
      for (let j = 1; j < n; j++) {
        const v = out.cosine[s][0][j];
        cell(tr, fmt(v, 3), "", `rgba(37, 99, 235, ${Math.max(0, v).toFixed(3)})`);
      }
    });
  }
}
