// The attention atlas across the model's corpus (GET /v1/atlas, /v1/atlas/map, /v1/atlas/character,
// /v1/atlas/binding) and the head detectors (POST /v1/detectors). The atlas is computed by `tinyllm-atlas
// CHECKPOINT`; GET /v1/model says whether the model has one: without one the atlas controls are off and the server's
// note (which names the command) is shown, rather than asking routes that would answer 404.
import { errorMessage, getJson, postJson } from "./api.js";
import { $, setStatus, tableCell as cell } from "./dom.js";

const ATLAS_CONTROLS = ["atlas-go", "atlas-query", "atlas-key", "atlas-where"];
const CHARACTER_CONTROLS = ["atlas-char-input", "atlas-char-go"];
const fmt = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
const q = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined));

// A lift as a colour: white at 1 (the head's habit), blue above, grey below; log scale up to ×16.
function liftColour(lift) {
  if (lift === null) return "#f3f4f6";
  const t = Math.max(-1, Math.min(1, Math.log2(Math.max(lift, 1e-6)) / 4));
  if (t >= 0) return `rgba(37, 99, 235, ${t.toFixed(3)})`;
  return `rgba(100, 116, 139, ${(-t * 0.5).toFixed(3)})`;
}

export class AtlasPanel {
  constructor(selection, select) {
    this.selection = selection;
    this.select = select;
    this.map = null;
    $("atlas-go").addEventListener("click", () => this.load());
    $("atlas-where").addEventListener("click", () => this.where());
    $("atlas-char-go").addEventListener("click", () => this.character());
    $("detect-go").addEventListener("click", () => this.detect());
    $("atlas-map").addEventListener("click", (e) => this.pick(e));
  }

  // Another model (GET /v1/model's answer): nothing shown of the last one's atlas or scores (their heads may not
  // exist in this one), and the controls this model's atlas can answer.
  setModel({ atlas, atlas_note: note }) {
    this.map = null;
    const canvas = $("atlas-map");
    canvas.width = canvas.height = 0;
    for (const id of ["atlas-top", "atlas-readout", "atlas-where-out", "atlas-char", "detect-table"]) {
      $(id).textContent = "";
    }
    for (const id of ["atlas-status", "atlas-char-status", "detect-status"]) setStatus($(id), "");
    for (const id of ATLAS_CONTROLS) $(id).disabled = !atlas;
    const characters = !!atlas && atlas.characters > 0;
    for (const id of CHARACTER_CONTROLS) $(id).disabled = !characters;
    if (!atlas) setStatus($("atlas-status"), `This model has no atlas: ${note}`);
    else if (!characters) {
      setStatus($("atlas-char-status"), `the atlas's corpus (${atlas.corpus.bytes.toLocaleString()} bytes) has no ` +
        "multi-byte characters");
    }
  }

  // The selected head's map (grouped bytes) and top pairs.
  async load() {
    const { model, layer } = this.selection;
    const head = this.selection.head === "mean" ? 0 : this.selection.head;
    const status = $("atlas-status");
    setStatus(status, "loading the atlas…");
    try {
      const [map, top] = await Promise.all([
        getJson(`/v1/atlas/map?${q({ model, layer, head })}`),
        getJson(`/v1/atlas?${q({ model, layer, head, top: 12 })}`),
      ]);
      this.map = map;
      this.draw(map);
      this.showTop(top);
      const c = top.corpus;
      setStatus(status, `layer ${layer}, head ${head} · over ${c.bytes.toLocaleString()} bytes in ${c.windows} windows ` +
        `(sha256 ${c.data_sha256.slice(0, 12)}…)`);
    } catch (e) {
      setStatus(status, String(e.message || e), true);
    }
  }

  draw(map) {
    const canvas = $("atlas-map");
    const G = map.groups.length, size = 6;
    canvas.width = canvas.height = G * size;
    canvas.dataset.groups = String(G);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    for (let r = 0; r < G; r++) {
      for (let c = 0; c < G; c++) {
        ctx.fillStyle = liftColour(map.lift[r][c]);
        ctx.fillRect(c * size, r * size, size, size);
      }
    }
  }

  // A click on a cell: its numbers, and for two single bytes the pair's examples in the corpus.
  async pick(e) {
    if (!this.map) return;
    const canvas = $("atlas-map");
    const box = canvas.getBoundingClientRect();
    const G = this.map.groups.length;
    const r = Math.floor(((e.clientY - box.top) / box.height) * G), c = Math.floor(((e.clientX - box.left) / box.width) * G);
    if (r < 0 || c < 0 || r >= G || c >= G) return;
    await this.showPair(r, c);
  }

  async showPair(r, c) {
    const m = this.map, out = $("atlas-readout");
    const names = `${JSON.stringify(m.groups[r])} → ${JSON.stringify(m.groups[c])}`;
    out.textContent = `${names}: mean weight ${fmt(m.mean_weight[r][c])}, lift ×${fmt(m.lift[r][c], 2)}, ` +
      `${m.count[r][c].toLocaleString()} pairs`;
    if (m.group_bytes[r].length !== 1 || m.group_bytes[c].length !== 1) return;
    const hex = (b) => `0x${b.toString(16)}`;
    const pair = await getJson(`/v1/atlas?${q({ model: m.model, layer: m.layer, head: m.head,
      query: hex(m.group_bytes[r][0]), key: hex(m.group_bytes[c][0]) })}`);
    const list = document.createElement("ol");
    list.className = "atlas-examples";
    for (const ex of pair.examples) {
      const li = document.createElement("li");
      const bytes = Uint8Array.from(ex.text_bytes);
      const qi = ex.query_position - ex.text_start, ki = ex.key_position - ex.text_start;
      const dec = (a, b) => new TextDecoder().decode(bytes.slice(a, b));
      const mark = (text, cls) => Object.assign(document.createElement("mark"), { textContent: text, className: cls });
      if (ki >= 0) {
        li.append(dec(0, ki), mark(dec(ki, ki + 1), "atlas-key"), dec(ki + 1, qi));
      } else {
        li.append(`…[${ex.distance} bytes back] `, dec(0, qi));
      }
      li.append(mark(dec(qi, qi + 1), "atlas-query"), dec(qi + 1));
      li.title = `query at byte ${ex.query_position}, key at ${ex.key_position}: weight ${fmt(ex.weight)}`;
      li.prepend(`${fmt(ex.weight)}  `);
      list.append(li);
    }
    out.append(list);
  }

  showTop(top) {
    const table = $("atlas-top");
    table.textContent = "";
    const head = table.createTHead().insertRow();
    for (const h of ["query", "key", "lift", "mean weight", "pairs"]) cell(head, h);
    const body = table.createTBody();
    for (const p of top.top_pairs) {
      const tr = body.insertRow();
      cell(tr, p.query_text); cell(tr, p.key_text);
      cell(tr, `×${fmt(p.lift, 1)}`, "", liftColour(p.lift)); cell(tr, fmt(p.mean_weight)); cell(tr, String(p.count));
    }
  }

  // Where does this pair happen most: every head, by lift.
  async where() {
    const { model } = this.selection;
    const out = $("atlas-where-out");
    try {
      const ans = await getJson(`/v1/atlas?${q({ model, query: $("atlas-query").value, key: $("atlas-key").value })}`);
      out.textContent = `${ans.count.toLocaleString()} pairs. `;
      for (const h of ans.heads.slice(0, 6)) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "chip";
        b.textContent = `L${h.layer}.H${h.head} ×${fmt(h.lift, 1)} (${fmt(h.mean_weight)})`;
        b.addEventListener("click", () => { this.select(h.layer, h.head); this.load(); });
        out.append(b);
      }
    } catch (e) {
      setStatus(out, String(e.message || e), true);
    }
  }

  // A multi-byte character's bytes on each other, per layer × head, and every head's binding over the corpus.
  async character() {
    const { model } = this.selection;
    const table = $("atlas-char"), status = $("atlas-char-status");
    table.textContent = "";
    try {
      const [ch, bind] = await Promise.all([
        getJson(`/v1/atlas/character?${q({ model, char: $("atlas-char-input").value })}`),
        getJson(`/v1/atlas/binding?${q({ model })}`),
      ]);
      setStatus(status, `${ch.character} (${ch.bytes.map((b) => b.toString(16)).join(" ")}), seen ${ch.count} times; ` +
        `cells: weight of its last byte on all its earlier bytes; last column: every character, every head`);
      const n = ch.bytes.length, L = bind.binding.length, H = bind.binding[0].length;
      const head = table.createTHead().insertRow();
      cell(head, "layer");
      for (let h = 0; h < H; h++) cell(head, `head ${h}`);
      const body = table.createTBody();
      for (let l = 0; l < L; l++) {
        const tr = body.insertRow();
        cell(tr, String(l));
        for (let h = 0; h < H; h++) {
          const last = ch.pairs.filter((p) => p.query_byte === n - 1).reduce((s, p) => s + p.mean_weight[l][h], 0);
          cell(tr, `${fmt(last, 2)} · ${fmt(bind.binding[l][h], 2)}`, "this character · all characters",
            `rgba(37, 99, 235, ${Math.min(1, last).toFixed(3)})`);
        }
      }
    } catch (e) {
      setStatus(status, String(e.message || e), true);
    }
  }

  // The head detectors on the text above, on the probe, and over the corpus when there is an atlas.
  async detect() {
    const { model } = this.selection;
    const status = $("detect-status"), table = $("detect-table");
    setStatus(status, "scoring the heads…");
    const res = await postJson("/v1/detectors", { model, text: $("text").value });
    if (!res.ok) return setStatus(status, await errorMessage(res), true);
    const out = await res.json();
    const s = out.scores;
    table.textContent = "";
    const head = table.createTHead().insertRow();
    for (const h of ["head", "induction (probe)", "copying (OV)", "previous byte", "duplicate byte", "induction (text)",
      "same char", "same word", "start"]) cell(head, h);
    const body = table.createTBody();
    const isInduction = new Set(out.induction_heads.map(([l, h]) => `${l}.${h}`));
    s.induction_probe.forEach((row, l) => row.forEach((_, h) => {
      const tr = body.insertRow();
      if (isInduction.has(`${l}.${h}`)) tr.className = "induction";
      cell(tr, `L${l}.H${h}${isInduction.has(`${l}.${h}`) ? " induction head" : ""}`);
      for (const k of ["induction_probe", "copying", "previous_byte", "duplicate_byte", "induction", "same_character",
        "same_word", "start_of_text"]) {
        const v = s[k][l][h];
        cell(tr, fmt(v, 2), "", v === null ? "" : `rgba(37, 99, 235, ${Math.max(0, Math.min(1, v)).toFixed(3)})`);
      }
      tr.addEventListener("click", () => this.select(l, h));
    }));
    setStatus(status, `${out.induction_heads.length} induction head(s) (probe score ≥ ${out.induction_threshold})` +
      (out.corpus ? "" : ` · corpus scores: ${out.corpus_note}`));
  }
}
