// A strip of chips: one .b element per byte, or per character in the character view (data-i its index); a
// newline also breaks the line. `bytes` holds each position's byte (a character's first byte).
import { isEscape, shown } from "./labels.js";

export function renderStrip(el, bytes, labels, cls, unit = "byte") {
  el.textContent = "";
  const frag = document.createDocumentFragment();
  const chips = bytes.map((_, i) => appendChip(frag, i, bytes, labels, cls, unit));
  el.appendChild(frag);
  return chips;
}

export function appendChip(parent, i, bytes, labels, cls, unit = "byte") {
  const chip = document.createElement("span");
  chip.dataset.i = i;
  setChipLabel(chip, i, bytes, labels, unit);
  chip.classList.add(...cls);
  parent.appendChild(chip);
  if (bytes[i] === 10) parent.appendChild(document.createElement("br"));
  return chip;
}

// The index of the byte chip an event happened on, if it is in the container.
export function byteAt(event, container) {
  const chip = event.target.closest?.(".b");
  return chip && container.contains(chip) ? +chip.dataset.i : null;
}

// Give the chips from byte `start` on new labels; a chip whose label is unchanged is left alone.
export function relabel(chips, bytes, labels, start, newLabels) {
  newLabels.forEach((label, k) => {
    const i = start + k;
    if (labels[i] === label) return;
    labels[i] = label;
    setChipLabel(chips[i], i, bytes, labels);
  });
}

function setChipLabel(chip, i, bytes, labels, unit = "byte") {
  const label = labels[i];
  chip.classList.remove("cont", "esc");
  chip.classList.add("b");
  if (label === "") chip.classList.add("cont");
  else if (isEscape(label)) chip.classList.add("esc");
  chip.textContent = shown(label);
  chip.title = unit === "character" ? `character ${i}`
    : `byte ${i} · 0x${bytes[i].toString(16).padStart(2, "0")}` + (label === "" ? " (continues a character)" : "");
}
