// An analysis of one text: every layer's and head's attention map, from POST /v1/attention as a float16 .npy
// array (L, H, T, T) (~19 MB at 512 bytes with 6 × 6 heads, where JSON would be over 100 MB and over the
// server's JSON cell cap), and the text's bytes and labels from POST /v1/tokenize.
import { errorMessage, postJson, tokenize } from "./api.js";
import { parseNpy } from "./npy.js";

export async function fetchAnalysis(text) {
  const [{ bytes, labels }, res] = await Promise.all([
    tokenize(text),
    postJson("/v1/attention", { text, layers: null, heads: null, format: "npy", dtype: "float16" }),
  ]);
  if (!res.ok) throw new Error(await errorMessage(res));
  const { shape, data } = parseNpy(await res.arrayBuffer());
  const [L, H, T] = shape;
  if (bytes.length !== T) throw new Error(`the answer has ${T} rows for ${bytes.length} bytes`);
  return { bytes, labels, T, L, H, maps: data, means: [] };  // means: per layer, the mean of its heads
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
