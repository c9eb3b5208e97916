// An analysis of one text: every layer's and head's attention map, from POST /v1/attention as a float16 .npy
// array (L, H, T, T) (~19 MB at 512 bytes with 6 × 6 heads, where JSON would be over 100 MB and over the
// server's JSON cell cap), and the text's bytes and labels from POST /v1/tokenize.
//
// In the character view the server aggregates the maps to characters (granularity "character": a character's
// row is the mean of its bytes' rows, its column the sum of its bytes' columns); the positions are then the
// characters, grouped from the server's tokens by the character each byte belongs to.
import { errorMessage, postJson, tokenize } from "./api.js";
import { parseNpy } from "./npy.js";

export async function fetchAnalysis(text, { model, granularity }) {
  const [tokens, res] = await Promise.all([
    tokenize(text),
    postJson("/v1/attention", { model, text, layers: null, heads: null, format: "npy", dtype: "float16", granularity }),
  ]);
  if (!res.ok) throw new Error(await errorMessage(res));
  const { shape, data } = parseNpy(await res.arrayBuffer());
  const [L, H, T] = shape;
  const { bytes, labels } = granularity === "character" ? characters(tokens) : tokens;
  if (bytes.length !== T) throw new Error(`the answer has ${T} rows for ${bytes.length} ${granularity}s`);
  return { unit: granularity, bytes, labels, T, L, H, maps: data, means: [] };  // means: per layer, of its heads
}

// One position per character: its first byte (what a strip needs to break lines) and its label.
function characters({ bytes, labels, starts }) {
  const first = starts.map((s, i) => (i === 0 || s !== starts[i - 1] ? i : -1)).filter((i) => i >= 0);
  return { bytes: first.map((i) => bytes[i]), labels: first.map((i) => labels[i]) };
}

// The selected (T, T) map: a view into the array, or the mean of the layer's heads (computed once).
export function mapOf(an, { layer, head }) {
  const { T, H, maps, means } = an;
  if (head !== "mean") return maps.subarray((layer * H + head) * T * T, (layer * H + head + 1) * T * T);
  if (!means[layer]) {
    const mean = new Float32Array(T * T);
    for (let h = 0; h < H; h++) {
      const m = maps.subarray((layer * H + h) * T * T, (layer * H + h + 1) * T * T);
      for (let i = 0; i < mean.length; i++) mean[i] += m[i];
    }
    for (let i = 0; i < mean.length; i++) mean[i] /= H;
    means[layer] = mean;
  }
  return means[layer];
}
