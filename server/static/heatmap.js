// Drawing attention: a (T, T) map into a canvas holding one pixel per cell (scaled up by CSS, so 512 × 512
// cells are one putImageData), and the colour bar.
import { $ } from "./dom.js";

const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
                 "#b5de2b", "#fde725"];
const LUT = buildLut(VIRIDIS);  // 256 colours as packed RGBA (little-endian: 0xAABBGGRR)

function buildLut(stops) {
  const rgb = stops.map((h) => [1, 3, 5].map((o) => parseInt(h.slice(o, o + 2), 16)));
  const lut = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (rgb.length - 1);
    const a = Math.min(Math.floor(x), rgb.length - 2);
    const t = x - a;
    const [r, g, b] = [0, 1, 2].map((c) => Math.round(rgb[a][c] + (rgb[a + 1][c] - rgb[a][c]) * t));
    lut[i] = (255 << 24 | b << 16 | g << 8 | r) >>> 0;
  }
  return lut;
}

// Probability -> colour, through a table over p quantised to 1/65535 (so drawing a cell is one lookup); one
// table per scale ("sqrt" or "linear"), built on first use.
const colourTables = {};

function colourTable(scale) {
  if (!colourTables[scale]) {
    const table = new Uint32Array(65536);
    for (let i = 0; i < 65536; i++) {
      const p = i / 65535;
      table[i] = LUT[Math.round((scale === "sqrt" ? Math.sqrt(p) : p) * 255)];
    }
    colourTables[scale] = table;
  }
  return colourTables[scale];
}

// Queries down, keys across, the masked future (above the diagonal) left transparent.
export function drawMap(canvas, map, T, scale) {
  const colour = colourTable(scale);
  canvas.width = T;
  canvas.height = T;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(T, T);
  const px = new Uint32Array(img.data.buffer);
  for (let q = 0; q < T; q++) {
    const row = q * T;
    for (let k = 0; k <= q; k++) px[row + k] = colour[Math.min(65535, Math.max(0, map[row + k] * 65535 + 0.5 | 0))];
  }
  ctx.putImageData(img, 0, 0);
}

export function drawColorbar(scale) {
  const ctx = $("colorbar").getContext("2d");
  const img = ctx.createImageData(256, 1);
  new Uint32Array(img.data.buffer).set(LUT);
  ctx.putImageData(img, 0, 0);
  $("tick-mid").textContent = scale === "sqrt" ? "0.25" : "0.5";
}
