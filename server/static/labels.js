// How the server's byte labels read on the page. A label is what /v1/tokenize or a stream event gave: a
// character on its first byte, "" on the bytes that continue it, an escape like \x9f for a byte that is no
// character of its own.

const SYMBOLS = { "\\n": "↵", "\\t": "⇥", "\\r": "␍" };

export function shown(label) {  // inside a strip of bytes
  return SYMBOLS[label] ?? label;
}

export function isEscape(label) {
  return label.length > 1 && label.startsWith("\\") && shown(label) === label;
}

export function axisLabel(label) {  // on a map's axis, where an escape is too wide
  return label === " " ? "␣" : isEscape(label) ? "·" : shown(label);
}

export function describe(i, labels, bytes) {
  const label = labels[i] === "" ? "…" : labels[i] === " " ? "␣" : shown(labels[i]);
  return `‹${label}› #${i}` + (labels[i] === "" ? ` (0x${bytes[i].toString(16)})` : "");
}

// A line of a readout: the n largest weights, each with its byte and a bar. indexOf maps a weight's place to
// its byte; kind ("to" or "from") colours the bars.
export function topLine(title, weights, indexOf, labels, bytes, kind, n = 5) {
  const line = document.createElement("div");
  line.className = "line";
  line.append(`${title}: `);
  const order = weights.map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, n);
  for (const [w, j] of order) {
    const pair = document.createElement("span");
    pair.className = "pair";
    const bar = document.createElement("span");
    bar.className = `bar ${kind}`;
    bar.style.width = `${Math.max(1, Math.round(w * 40))}px`;
    pair.append(`${describe(indexOf(j), labels, bytes)} ${w.toFixed(3)}`, bar);
    line.appendChild(pair);
  }
  return line;
}
