// Switching heads off: an "off" toggle on each cell of the layers × heads table. The heads switched off go with the
// step-by-step panel's requests (selection.headsOff), and POST /v1/ablate says what the model loses on the analysed
// text without them: its loss in bits per byte with every head, without those, and the change.
import { errorMessage, postJson } from "./api.js";
import { $, setStatus } from "./dom.js";

export class HeadsOff {
  // onChange(): the set changed (the step panel asks again).
  constructor(selection, onChange) {
    this.selection = selection;
    this.onChange = onChange;
    this.asked = 0;
    this.text = "";  // the analysed text the loss change is measured on
    selection.headsOff = [];  // [[layer, head], ...]
  }

  toggle(layer, head) {
    const list = this.selection.headsOff;
    const i = list.findIndex(([l, h]) => l === layer && h === head);
    if (i >= 0) list.splice(i, 1); else list.push([layer, head]);
    this.mark();
    this.measure();
    this.onChange();
  }

  clear() {  // another model: its heads are others
    this.selection.headsOff = [];
    this.mark();
    this.measure("");
  }

  // Each table cell's state, after a toggle or after the table was drawn again.
  mark() {
    const off = new Set(this.selection.headsOff.map(([l, h]) => `${l}.${h}`));
    for (const td of document.querySelectorAll("#summary td[data-head]")) {
      const on = off.has(`${td.dataset.layer}.${td.dataset.head}`);
      td.classList.toggle("off", on);
      td.querySelector(".off-toggle")?.setAttribute("aria-pressed", String(on));
    }
  }

  // The loss change on the analysed text (nothing to say without heads switched off or without a text).
  async measure(text = this.text) {
    this.text = text;
    const { model, headsOff } = this.selection;
    const id = ++this.asked;
    const result = $("ablate-result");
    delete result.dataset.change;
    if (!headsOff.length || !text) return setStatus(result, "");
    setStatus(result, "measuring…");
    const res = await postJson("/v1/ablate", { model, text, heads_off: headsOff });
    if (id !== this.asked) return;
    if (!res.ok) return setStatus(result, await errorMessage(res), true);
    const out = await res.json();
    if (id !== this.asked) return;
    const names = out.heads_off.map(([l, h]) => `${l}.${h}`).join(", ");
    const change = out.change_bits_per_byte;
    setStatus(result, `Without ${names} on the text above: ${out.bits_per_byte.toFixed(3)} → ` +
      `${out.bits_per_byte_ablated.toFixed(3)} bits/byte (${change >= 0 ? "+" : ""}${change.toFixed(3)})`);
    result.dataset.change = change;
  }
}
