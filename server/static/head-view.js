// The head view: the analysed bytes, one in focus; what it attends to (its row of the map, shaded blue) and
// what attends to it (its column, underlined orange), each scaled by the largest weight in that row or column.
import { mapOf } from "./analysis.js";
import { $ } from "./dom.js";
import { describe, topLine } from "./labels.js";
import { byteAt, renderStrip } from "./strip.js";

export class HeadView {
  // onPin(i): a byte was pinned (clicked here or on the map, or moved to with the arrow keys).
  constructor(selection, mapView, onPin) {
    this.selection = selection;
    this.map = mapView;
    this.onPin = onPin;
    this.an = null;
    this.chips = [];
    this.focus = null;    // the byte in focus
    this.pinned = false;  // whether a click holds it there
    const strip = $("bytes");
    strip.addEventListener("mouseover", (e) => {
      const i = byteAt(e, strip);
      if (i !== null) this.hover(i);
    });
    strip.addEventListener("mouseleave", () => this.leave());
    strip.addEventListener("click", (e) => {
      const i = byteAt(e, strip);
      if (i === null || !this.an) return;
      if (this.pinned && this.focus === i) return this.clear();
      this.pin(i);
    });
    strip.addEventListener("keydown", (e) => {
      if (!this.an || this.focus === null || !["ArrowLeft", "ArrowRight"].includes(e.key)) return;
      this.pin(Math.max(0, Math.min(this.an.T - 1, this.focus + (e.key === "ArrowLeft" ? -1 : 1))));
      e.preventDefault();
    });
  }

  show(an) {
    this.an = an;
    this.chips = renderStrip($("bytes"), an.bytes, an.labels, [], an.unit);
    this.clear();
  }

  forget() {  // nothing analysed (map-view.js forget)
    this.an = null;
    this.chips = [];
    $("bytes").textContent = "";
    this.clear();
  }

  hover(i) {
    if (this.an && !this.pinned) this.focusOn(i);
  }

  leave() {
    if (this.an && !this.pinned) this.clear();
  }

  pin(i) {
    this.focusOn(i);
    this.pinned = true;
    this.onPin(i);
  }

  refresh() {  // after the selected layer or head changed
    if (this.an && this.focus !== null) this.focusOn(this.focus);
  }

  focusOn(i) {
    const { T, labels, bytes } = this.an;
    const map = mapOf(this.an, this.selection);
    this.focus = i;
    let rowMax = 0, colMax = 0;
    for (let k = 0; k <= i; k++) rowMax = Math.max(rowMax, map[i * T + k]);
    for (let q = i; q < T; q++) colMax = Math.max(colMax, map[q * T + i]);
    this.chips.forEach((chip, j) => {
      const to = j <= i ? map[i * T + j] : null;    // what byte i attends to: row i
      const from = j >= i ? map[j * T + i] : null;  // what attends to byte i: column i
      chip.style.backgroundColor = to === null ? "" : `rgba(var(--to), ${(to / (rowMax || 1)).toFixed(3)})`;
      chip.style.boxShadow = from === null ? "" : `inset 0 -3px 0 rgba(var(--from), ${(from / (colMax || 1)).toFixed(3)})`;
      if (to === null) delete chip.dataset.to; else chip.dataset.to = to;
      if (from === null) delete chip.dataset.from; else chip.dataset.from = from;
      chip.classList.toggle("focus", j === i);
    });
    this.map.highlight(i);
    const row = Array.from(map.subarray(i * T, i * T + i + 1));
    const col = Array.from({ length: T - i }, (_, d) => map[(i + d) * T + i]);
    $("readout").replaceChildren(
      topLine(`${describe(i, labels, bytes)} attends to`, row, (k) => k, labels, bytes, "to"),
      topLine("attended to most by", col, (d) => i + d, labels, bytes, "from"));
  }

  clear() {
    this.focus = null;
    this.pinned = false;
    for (const chip of this.chips) {
      chip.style.backgroundColor = chip.style.boxShadow = "";
      delete chip.dataset.to;
      delete chip.dataset.from;
      chip.classList.remove("focus");
    }
    this.map.highlight(null);
    $("readout").textContent = this.an ? "Hover a byte above, or a cell of the map." : "";
  }
}
