// The .npy body of POST /v1/attention {format: "npy"}: float32, or float16 (half the bytes).

let HALF = null;  // float16 bit pattern -> float32, built on first use

function halfTable() {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    t[h] = exp === 0 ? sign * frac * 2 ** -24
      : exp === 31 ? (frac ? NaN : sign * Infinity)
        : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return t;
}

export function parseNpy(buffer) {
  const head = new Uint8Array(buffer, 0, 12);
  if (head[0] !== 0x93 || String.fromCharCode(...head.subarray(1, 6)) !== "NUMPY") throw new Error("not a .npy body");
  const view = new DataView(buffer);
  const [start, length] = head[6] === 1 ? [10, view.getUint16(8, true)] : [12, view.getUint32(8, true)];
  const header = new TextDecoder().decode(new Uint8Array(buffer, start, length));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  if (/'fortran_order':\s*True/.test(header)) throw new Error("fortran-order .npy is not supported");
  const n = shape.reduce((a, b) => a * b, 1);
  const offset = start + length;  // numpy pads the header so the data is 64-byte aligned
  if (descr === "<f4") return { shape, data: new Float32Array(buffer, offset, n) };
  if (descr === "<f2" && typeof Float16Array === "function") return { shape, data: new Float16Array(buffer, offset, n) };
  if (descr === "<f2") {  // browsers without Float16Array: decode through a table
    HALF = HALF || halfTable();
    const src = new Uint16Array(buffer, offset, n);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = HALF[src[i]];
    return { shape, data };
  }
  throw new Error(`unexpected .npy dtype ${descr}`);
}
