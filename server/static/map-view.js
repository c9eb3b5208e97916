// The map of the selected layer and head with its axes and the highlighted row and column, and the grid of
// every layer's and head's map.
import { mapOf } from "./analysis.js";
import { $ } from "./dom.js";
import { drawMap } from "./heatmap.js";
import { axisLabel, describe } from "./labels.js";

export class MapView {
  // on: hover(q) and pick(q) for a query row under the pointer, leave(), select(layer, head) from the grid.
  constructor(selection, on) {
    this.selection = selection;
    this.an = null;
    this.cell = 0;    // CSS pixels per cell
    this.row = null;  // the highlighted byte
    const canvas = $("heatmap");
    canvas.addEventListener("mousemove", (e) => {
      if (!this.an) return;
      const { T, labels, bytes } = this.an;
      const q = this.cellAt(e.offsetY), k = this.cellAt(e.offsetX);
      const p = k <= q ? mapOf(this.an, this.selection)[q * T + k] : null;
      $("cell-readout").textContent = `query ${describe(q, labels, bytes)} → key ${describe(k, labels, bytes)}: ` +
        (p === null ? "masked (the future)" : p.toFixed(4));
      on.hover(q);
    });
    canvas.addEventListener("mouseleave", () => {
      $("cell-readout").textContent = "";
      if (this.an) on.leave();
    });
    canvas.addEventListener("click", (e) => { if (this.an) on.pick(this.cellAt(e.offsetY)); });
    $("grid").addEventListener("click", (e) => {
      const c = e.target.closest("canvas.mini");
      if (c) on.select(+c.dataset.layer, +c.dataset.head);
    });
  }

  cellAt(offset) {
    return Math.min(this.an.T - 1, Math.floor(offset / this.cell));
  }

  show(an) {
    this.an = an;
    this.row = null;
    this.layout();
    this.draw();
    this.drawGrid();
  }

  forget() {  // nothing analysed: the last model's maps are no longer this page's to show
    this.an = null;
    this.highlight(null);
    const canvas = $("heatmap");
    canvas.width = canvas.height = 0;
    canvas.dataset.t = "0";
    for (const id of ["key-labels", "query-labels", "grid", "map-title", "cell-readout"]) $(id).textContent = "";
  }

  // Size the map to its card and label both axes, one element per byte.
  layout() {
    const { T, labels } = this.an;
    const frame = $("heatmap-frame");
    const room = frame.parentElement.clientWidth - 40;
    const size = Math.max(240, Math.min(640, room));
    this.cell = size / T;
    frame.style.setProperty("--size", `${size}px`);
    frame.style.setProperty("--cell", `${this.cell}px`);
    frame.classList.toggle("dense", this.cell < 7);  // too small to read: the readout names the bytes instead
    for (const id of ["key-labels", "query-labels"]) {
      const axis = $(id);
      axis.textContent = "";
      labels.forEach((label, i) => {
        const span = document.createElement("span");
        span.textContent = axisLabel(label);
        span.dataset.i = i;
        axis.appendChild(span);
      });
    }
    this.highlight(this.row);
  }

  draw() {
    const { T } = this.an;
    const { layer, head, scale } = this.selection;
    const canvas = $("heatmap");
    drawMap(canvas, mapOf(this.an, this.selection), T, scale);
    canvas.dataset.t = T;
    canvas.dataset.layer = layer;
    canvas.dataset.head = head;
    canvas.dataset.unit = this.an.unit;
    $("map-title").textContent = `layer ${layer}, ${head === "mean" ? "mean of heads" : `head ${head}`} · ` +
      `${T} × ${T} ${this.an.unit}s`;
  }

  drawGrid() {
    const { L, H, T, maps } = this.an;
    const grid = $("grid");
    const label = (text) => Object.assign(document.createElement("div"), { className: "label", textContent: text });
    grid.textContent = "";
    grid.style.gridTemplateColumns = `28px repeat(${H}, auto)`;
    grid.style.setProperty("--heads", H);  // the maps shrink to fit a narrow card (style.css)
    grid.appendChild(label(""));
    for (let h = 0; h < H; h++) grid.appendChild(label(`head ${h}`));
    for (let l = 0; l < L; l++) {
      grid.appendChild(label(`L${l}`));
      for (let h = 0; h < H; h++) {
        const canvas = document.createElement("canvas");
        canvas.className = "mini";
        canvas.dataset.layer = l;
        canvas.dataset.head = h;
        canvas.title = `layer ${l}, head ${h}`;
        drawMap(canvas, maps.subarray((l * H + h) * T * T, (l * H + h + 1) * T * T), T, this.selection.scale);
        grid.appendChild(canvas);
      }
    }
    this.markSelected();
  }

  markSelected() {
    const { layer, head } = this.selection;
    for (const c of document.querySelectorAll("#grid canvas.mini")) {
      c.classList.toggle("selected", +c.dataset.layer === layer && c.dataset.head === String(head));
    }
  }

  // The row (blue) and column (orange) of byte i on the map, and its labels on both axes; null hides them.
  highlight(i) {
    this.row = i;
    const rowEl = $("row-highlight"), colEl = $("col-highlight");
    for (const span of document.querySelectorAll(".axis span.on")) span.classList.remove("on");
    if (i === null || !this.an) {
      rowEl.hidden = colEl.hidden = true;
      delete rowEl.dataset.row;
      return;
    }
    const { cell } = this, { T } = this.an;
    Object.assign(rowEl.style, { top: `${i * cell}px`, left: "0px", width: `${(i + 1) * cell}px`, height: `${cell}px` });
    Object.assign(colEl.style, { top: `${i * cell}px`, left: `${i * cell}px`, width: `${cell}px`, height: `${(T - i) * cell}px` });
    rowEl.dataset.row = i;
    rowEl.hidden = colEl.hidden = false;
    $("query-labels").children[i].classList.add("on");
    $("key-labels").children[i].classList.add("on");
  }
}
