// The native forward step: the whole model for a set of entries (token, cache row, position) in one call.
//
// A decode step is one entry per sequence; a prefill chunk is the chunk's tokens of one sequence, at
// consecutive positions of one row. Per layer, every entry's key and value are written into the KV cache
// before any entry attends, so an entry attends to the positions of its row up to its own, whether those
// were written by an earlier call or by this one.
//
// The arithmetic contract (why a request's bytes never depend on its neighbours, the thread count or the CPU):
// - Every number an entry produces is computed from that entry's inputs alone, by one thread, in an order that
//   is fixed by the shapes of the model: work is split between threads by output rows (and by entry and head
//   in attention), never along a reduction.
// - A float dot product of length n sums its first n - n % 32 terms in 32 lanes (lane i % 32), reduces the
//   lanes in the fixed tree of reduce32(), then adds the rest in order. Products and sums are separate
//   roundings: the file is compiled with -ffp-contract=off and no kernel uses a fused multiply-add.
// - An int8 dot product sums int8 x int8 products per group in int32 (exact in any order), 8 lanes of it
//   (lane j holds the products at offsets 4j..4j+3 of every 32 bytes), converts each lane to float, scales
//   it by (activation scale x weight scale) and adds it to that lane's float sum, group after group; the
//   lanes are then reduced by reduce8().
// - Everything else (norms, RoPE, softmax, SiLU, quantizing activations) is plain scalar code.
// The AVX2 kernels follow the same orders as the scalar ones, so both give the same bits (tests check it).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TINYLLM_X86 1
#endif

namespace {

// Bumped whenever the arithmetic above changes: it is part of the server's system_fingerprint.
constexpr int ARITHMETIC_VERSION = 1;

// ------------------------------------------------------------------ scalar kernels (the reference orders)

inline float reduce8(const float* l) {
  float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
  return (a0 + a2) + (a1 + a3);
}

inline float reduce32(const float* l) {
  float l8[8];
  for (int j = 0; j < 8; j++) l8[j] = (l[j] + l[8 + j]) + (l[16 + j] + l[24 + j]);
  return reduce8(l8);
}

float dot_f32_scalar(const float* a, const float* b, int64_t n) {
  const int64_t body = n - n % 32;
  float lanes[32] = {0};
  for (int64_t i = 0; i < body; i += 32)
    for (int j = 0; j < 32; j++) lanes[j] += a[i + j] * b[i + j];
  float s = reduce32(lanes);
  for (int64_t i = body; i < n; i++) s += a[i] * b[i];
  return s;
}

// Activations quantized per group (QuantizedRows) and one int8 weight matrix with a scale per group.
struct Q8Operands {
  const int8_t* x;    // (entries, n) int8 activations
  const uint8_t* ax;  // their absolute values
  const float* xd;    // (entries, n / group) activation scales
  const int8_t* w;    // (rows, n) int8 weights
  const float* wd;    // (rows, n / group) weight scales
  int64_t n, group;
};

// out[r * C + c] = x[e0 + c] . w[n0 + r] for an R x C tile: each output alone, in the order the contract fixes.
template <int R, int C>
void q8_tile_scalar(const Q8Operands& op, int64_t n0, int64_t e0, float* out) {
  const int64_t groups = op.n / op.group;
  for (int r = 0; r < R; r++) {
    for (int c = 0; c < C; c++) {
      const int8_t* x = op.x + (e0 + c) * op.n;
      const int8_t* w = op.w + (n0 + r) * op.n;
      float lanes[8] = {0};
      for (int64_t g = 0; g < groups; g++) {
        int32_t isum[8] = {0};
        for (int64_t k = g * op.group; k < (g + 1) * op.group; k += 32)
          for (int j = 0; j < 8; j++)
            for (int t = 0; t < 4; t++) isum[j] += int32_t(x[k + 4 * j + t]) * int32_t(w[k + 4 * j + t]);
        const float s = op.xd[(e0 + c) * groups + g] * op.wd[(n0 + r) * groups + g];
        for (int j = 0; j < 8; j++) lanes[j] += float(isum[j]) * s;
      }
      out[r * C + c] = reduce8(lanes);
    }
  }
}

// ------------------------------------------------------------------ AVX2 kernels (same orders, same bits)

#ifdef TINYLLM_X86
__attribute__((target("avx2"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // l0+l4, l1+l5, l2+l6, l3+l7
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                           // (l0+l4)+(l2+l6), (l1+l5)+(l3+l7)
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2"))) float dot_f32_avx2(const float* a, const float* b, int64_t n) {
  const int64_t body = n - n % 32;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
         acc3 = _mm256_setzero_ps();
  for (int64_t i = 0; i < body; i += 32) {
    acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8)));
    acc2 = _mm256_add_ps(acc2, _mm256_mul_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16)));
    acc3 = _mm256_add_ps(acc3, _mm256_mul_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24)));
  }
  float s = hsum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (int64_t i = body; i < n; i++) s += a[i] * b[i];
  return s;
}

// The same tile with AVX2: each weight and activation vector is loaded once for the whole tile.
template <int R, int C>
__attribute__((target("avx2"))) void q8_tile_avx2(const Q8Operands& op, int64_t n0, int64_t e0, float* out) {
  const int64_t groups = op.n / op.group;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 lanes[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) lanes[r][c] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; g++) {
    __m256i isum[R][C];
    for (int r = 0; r < R; r++)
      for (int c = 0; c < C; c++) isum[r][c] = _mm256_setzero_si256();
    for (int64_t k = g * op.group; k < (g + 1) * op.group; k += 32) {
      __m256i xv[C], av[C];
      for (int c = 0; c < C; c++) {
        xv[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.x + (e0 + c) * op.n + k));
        av[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.ax + (e0 + c) * op.n + k));
      }
      for (int r = 0; r < R; r++) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(op.w + (n0 + r) * op.n + k));
        for (int c = 0; c < C; c++) {
          // |x| * (w with x's sign) = x * w; pairs of them fit int16 (127 * 127 * 2 < 32767), quads int32.
          const __m256i pairs = _mm256_maddubs_epi16(av[c], _mm256_sign_epi8(wv, xv[c]));
          isum[r][c] = _mm256_add_epi32(isum[r][c], _mm256_madd_epi16(pairs, ones));
        }
      }
    }
    for (int r = 0; r < R; r++)
      for (int c = 0; c < C; c++) {
        const float s = op.xd[(e0 + c) * groups + g] * op.wd[(n0 + r) * groups + g];
        lanes[r][c] = _mm256_add_ps(lanes[r][c], _mm256_mul_ps(_mm256_cvtepi32_ps(isum[r][c]), _mm256_set1_ps(s)));
      }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) out[r * C + c] = hsum8(lanes[r][c]);
}
#endif

using DotF32 = float (*)(const float*, const float*, int64_t);
using Q8Tile = void (*)(const Q8Operands&, int64_t, int64_t, float*);

// The tiles int8 products are computed in: 4 weight rows x 1 entry (a step of one sequence), 2 x 2 (batches),
// and 1 x 1 for what is left at the edges. All give the same bits for the same (row, entry).
struct Kernels {
  std::string name;
  DotF32 dot_f32;
  Q8Tile q8_4x1, q8_2x2, q8_1x1;
};

bool has_avx2() {
#ifdef TINYLLM_X86
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

Kernels kernels_named(const std::string& name) {
  const std::string chosen = name == "auto" ? (has_avx2() ? "avx2" : "scalar") : name;
#ifdef TINYLLM_X86
  if (chosen == "avx2") {
    TORCH_CHECK(has_avx2(), "this CPU has no AVX2: use the scalar kernels");
    return {"avx2", dot_f32_avx2, q8_tile_avx2<4, 1>, q8_tile_avx2<2, 2>, q8_tile_avx2<1, 1>};
  }
#endif
  TORCH_CHECK(chosen == "scalar", "unknown kernels '", name, "' (auto, avx2 or scalar)");
  return {"scalar", dot_f32_scalar, q8_tile_scalar<4, 1>, q8_tile_scalar<2, 2>, q8_tile_scalar<1, 1>};
}

// ------------------------------------------------------------------ activations and weights

// Activations of `rows` entries, quantized per group of `group` values: q = round(x / d), d = max|x| / 127.
struct QuantizedRows {
  std::vector<int8_t> q;
  std::vector<uint8_t> abs;
  std::vector<float> scale;
  int64_t k = 0, groups = 0;

  void quantize(const float* x, int64_t rows, int64_t k_, int64_t group) {
    k = k_, groups = k_ / group;
    q.resize(rows * k), abs.resize(rows * k), scale.resize(rows * groups);
    for (int64_t r = 0; r < rows; r++) {
      for (int64_t g = 0; g < groups; g++) {
        const float* v = x + r * k + g * group;
        float amax = 0.0f;
        for (int64_t i = 0; i < group; i++) amax = std::max(amax, std::fabs(v[i]));
        const float d = amax / 127.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        scale[r * groups + g] = d;
        for (int64_t i = 0; i < group; i++) {
          const float rounded = std::nearbyint(v[i] * inv);  // ties to even, as torch.round
          const int8_t qi = int8_t(std::min(127.0f, std::max(-127.0f, rounded)));
          q[r * k + g * group + i] = qi;
          abs[r * k + g * group + i] = uint8_t(qi < 0 ? -qi : qi);
        }
      }
    }
  }
};

// One weight matrix (out, in) in the step's form: float32, or int8 with a float32 scale per group of inputs.
struct Linear {
  int64_t out = 0, in = 0, group = 0;
  at::Tensor weight;  // float32 (out, in), or int8 (out, in)
  at::Tensor scale;   // int8 only: float32 (out, in / group)
};

int64_t grain(int64_t per_item_work) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, per_item_work)); }

// out[e, n] = x[e] . W[n] for `rows` entries. Threads split the output rows n; each weight row is read once for
// all entries.
void matmul(const Linear& L, const Kernels& kern, const float* x, int64_t rows, float* out, QuantizedRows& xq) {
  if (L.scale.defined()) {
    xq.quantize(x, rows, L.in, L.group);
    const Q8Operands op{xq.q.data(), xq.abs.data(),         xq.scale.data(), L.weight.data_ptr<int8_t>(),
                        L.scale.data_ptr<float>(), L.in, L.group};
    // Threads take blocks of 4 output rows, so that the tiles are the same however the rows are split.
    at::parallel_for(0, (L.out + 3) / 4, grain(4 * L.in * rows), [&](int64_t begin, int64_t end) {
      float tile[4];
      for (int64_t n0 = 4 * begin; n0 < std::min(4 * end, L.out); n0 += 4) {
        const int64_t nn = std::min<int64_t>(4, L.out - n0);
        if (rows == 1 && nn == 4) {
          kern.q8_4x1(op, n0, 0, tile);
          for (int r = 0; r < 4; r++) out[n0 + r] = tile[r];
          continue;
        }
        for (int64_t e0 = 0; e0 < rows; e0 += 2) {
          for (int64_t n = n0; n < n0 + nn; n += 2) {
            if (e0 + 1 < rows && n + 1 < n0 + nn) {
              kern.q8_2x2(op, n, e0, tile);
              out[e0 * L.out + n] = tile[0], out[(e0 + 1) * L.out + n] = tile[1];
              out[e0 * L.out + n + 1] = tile[2], out[(e0 + 1) * L.out + n + 1] = tile[3];
            } else {
              for (int64_t e = e0; e < std::min(e0 + 2, rows); e++)
                for (int64_t m = n; m < std::min(n + 2, n0 + nn); m++) kern.q8_1x1(op, m, e, &out[e * L.out + m]);
            }
          }
        }
      }
    });
  } else {
    const float* w = L.weight.data_ptr<float>();
    at::parallel_for(0, L.out, grain(L.in * rows), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; n++)
        for (int64_t e = 0; e < rows; e++) out[e * L.out + n] = kern.dot_f32(x + e * L.in, w + n * L.in, L.in);
    });
  }
}

// Hugging Face's LlamaRMSNorm in float32: weight * (x * rsqrt(mean(x^2) + eps)).
void rms_norm(const float* x, const float* weight, float* out, int64_t rows, int64_t d, float eps) {
  for (int64_t r = 0; r < rows; r++) {
    const float* v = x + r * d;
    float ss = 0.0f;
    for (int64_t i = 0; i < d; i++) ss += v[i] * v[i];
    const float inv = 1.0f / std::sqrt(ss / float(d) + eps);
    for (int64_t i = 0; i < d; i++) out[r * d + i] = weight[i] * (v[i] * inv);
  }
}

// Rotate-half RoPE of one head's vector in place: x * cos + rotate_half(x) * sin.
void rope(float* x, const float* cos, const float* sin, int64_t hs) {
  const int64_t half = hs / 2;
  float rotated[512];
  for (int64_t i = 0; i < half; i++) rotated[i] = -x[half + i], rotated[half + i] = x[i];
  for (int64_t i = 0; i < hs; i++) x[i] = x[i] * cos[i] + rotated[i] * sin[i];
}

// ------------------------------------------------------------------ the model

class Step {
 public:
  Step(int64_t n_layer, int64_t n_head, int64_t d_model, int64_t mlp_hidden, double norm_eps, const std::string& form,
       int64_t group, const std::string& kernels, at::Tensor embed, at::Tensor rope_cos, at::Tensor rope_sin,
       std::vector<at::Tensor> norms, std::vector<at::Tensor> weights, std::vector<at::Tensor> scales)
      : n_layer_(n_layer),
        n_head_(n_head),
        d_(d_model),
        hidden_(mlp_hidden),
        hs_(d_model / n_head),
        eps_(float(norm_eps)),
        form_(form),
        kern_(kernels_named(kernels)),
        embed_(embed.contiguous()),
        cos_(rope_cos.contiguous()),
        sin_(rope_sin.contiguous()) {
    TORCH_CHECK(form == "float32" || form == "int8", "unknown form ", form);
    TORCH_CHECK(hs_ <= 512 && hs_ % 2 == 0, "head_dim must be even and at most 512");
    TORCH_CHECK(int64_t(norms.size()) == 2 * n_layer + 1, "expected ", 2 * n_layer + 1, " norm weights");
    TORCH_CHECK(int64_t(weights.size()) == 4 * n_layer + 1, "expected ", 4 * n_layer + 1, " weight matrices");
    const bool q8 = form == "int8";
    TORCH_CHECK(!q8 || scales.size() == weights.size(), "int8 needs a scale tensor per weight matrix");
    for (auto& t : norms) norms_.push_back(check(t, at::kFloat, "norm weight"));
    for (size_t i = 0; i < weights.size(); i++) {
      Linear L;
      L.weight = check(weights[i], q8 ? at::kChar : at::kFloat, "weight");
      L.out = L.weight.size(0), L.in = L.weight.size(1);
      if (q8) {
        L.group = group;
        TORCH_CHECK(group % 32 == 0 && L.in % group == 0, "int8 groups must be a multiple of 32 dividing ", L.in);
        L.scale = check(scales[i], at::kFloat, "scale");
        TORCH_CHECK(L.scale.size(0) == L.out && L.scale.size(1) == L.in / group, "scale shape");
      }
      linears_.push_back(L);
    }
    check(embed_, at::kFloat, "embedding");
    check(cos_, at::kFloat, "rope cos");
    check(sin_, at::kFloat, "rope sin");
  }

  std::string kernels() const { return kern_.name; }
  std::string form() const { return form_; }

  // tokens, rows, positions: (E,) int64. k_cache, v_cache: per layer (rows, n_head, max_len, head_dim) float32,
  // written in place. logits_for: (n,) int64 entry indices whose logits go to logits_out (n, vocab).
  // attention_for: (m,) entry indices whose attention probabilities (every layer and head) go to
  // attention_out (m, n_layer, n_head, keys) (zero beyond each entry's position); may be empty.
  void forward(at::Tensor tokens, at::Tensor rows, at::Tensor positions, std::vector<at::Tensor> k_cache,
               std::vector<at::Tensor> v_cache, at::Tensor logits_for, at::Tensor logits_out,
               at::Tensor attention_for, at::Tensor attention_out) {
    const int64_t E = tokens.numel();
    TORCH_CHECK(rows.numel() == E && positions.numel() == E, "tokens, rows and positions differ in length");
    TORCH_CHECK(int64_t(k_cache.size()) == n_layer_ && int64_t(v_cache.size()) == n_layer_, "one cache per layer");
    const int64_t* tok = check(tokens, at::kLong, "tokens").data_ptr<int64_t>();
    const int64_t* row = check(rows, at::kLong, "rows").data_ptr<int64_t>();
    const int64_t* pos = check(positions, at::kLong, "positions").data_ptr<int64_t>();
    const int64_t cache_rows = k_cache[0].size(0), max_len = k_cache[0].size(2);
    for (int64_t i = 0; i < n_layer_; i++) {
      check(k_cache[i], at::kFloat, "k cache");
      check(v_cache[i], at::kFloat, "v cache");
      TORCH_CHECK(k_cache[i].sizes() == v_cache[i].sizes() && k_cache[i].size(0) == cache_rows &&
                      k_cache[i].size(1) == n_head_ && k_cache[i].size(2) == max_len && k_cache[i].size(3) == hs_,
                  "cache shape");
    }
    const int64_t vocab = embed_.size(0);
    for (int64_t e = 0; e < E; e++) {
      TORCH_CHECK(tok[e] >= 0 && tok[e] < vocab, "token out of range");
      TORCH_CHECK(row[e] >= 0 && row[e] < cache_rows, "cache row out of range");
      TORCH_CHECK(pos[e] >= 0 && pos[e] < max_len && pos[e] < cos_.size(0), "position out of range");
    }
    const int64_t n_logits = logits_for.numel(), n_attn = attention_for.numel();
    const int64_t* logit_idx = check(logits_for, at::kLong, "logits_for").data_ptr<int64_t>();
    const int64_t* attn_idx = check(attention_for, at::kLong, "attention_for").data_ptr<int64_t>();
    TORCH_CHECK(logits_out.dim() == 2 && logits_out.size(0) == n_logits && logits_out.size(1) == vocab,
                "logits_out shape");
    check(logits_out, at::kFloat, "logits_out");
    float* attn_out = nullptr;
    std::vector<int64_t> attn_slot(E, -1);
    if (n_attn) {
      check(attention_out, at::kFloat, "attention_out");
      TORCH_CHECK(attention_out.dim() == 4 && attention_out.size(0) == n_attn && attention_out.size(1) == n_layer_ &&
                      attention_out.size(2) == n_head_ && attention_out.size(3) >= 1,
                  "attention_out shape");
      attn_out = attention_out.data_ptr<float>();
      for (int64_t m = 0; m < n_attn; m++) {
        TORCH_CHECK(attn_idx[m] >= 0 && attn_idx[m] < E, "attention_for index out of range");
        TORCH_CHECK(pos[attn_idx[m]] < attention_out.size(3), "attention_out has too few keys");
        attn_slot[attn_idx[m]] = m;
      }
    }
    for (int64_t m = 0; m < n_logits; m++) TORCH_CHECK(logit_idx[m] >= 0 && logit_idx[m] < E, "logits_for index");

    const int64_t d = d_, hs = hs_, H = n_head_;
    std::vector<float> x(E * d), h(E * d), qkv(E * 3 * d), att(E * d), proj(E * d), gate_up(E * 2 * hidden_),
        act(E * hidden_);
    QuantizedRows xq;
    const float* emb = embed_.data_ptr<float>();
    for (int64_t e = 0; e < E; e++) std::copy(emb + tok[e] * d, emb + (tok[e] + 1) * d, x.begin() + e * d);
    const float* cos = cos_.data_ptr<float>();
    const float* sin = sin_.data_ptr<float>();
    const float inv_sqrt_hs = 1.0f / std::sqrt(float(hs));

    for (int64_t l = 0; l < n_layer_; l++) {
      // attention
      rms_norm(x.data(), norms_[2 * l].data_ptr<float>(), h.data(), E, d, eps_);
      matmul(linears_[4 * l], kern_, h.data(), E, qkv.data(), xq);  // (E, 3d): q, k, v
      float* kc = k_cache[l].data_ptr<float>();
      float* vc = v_cache[l].data_ptr<float>();
      for (int64_t e = 0; e < E; e++) {
        float* q = qkv.data() + e * 3 * d;
        float* k = q + d;
        const float* v = q + 2 * d;
        for (int64_t head = 0; head < H; head++) {
          rope(q + head * hs, cos + pos[e] * hs, sin + pos[e] * hs, hs);
          rope(k + head * hs, cos + pos[e] * hs, sin + pos[e] * hs, hs);
          const int64_t at = ((row[e] * H + head) * max_len + pos[e]) * hs;  // cache[row, head, pos, :]
          std::copy(k + head * hs, k + (head + 1) * hs, kc + at);
          std::copy(v + head * hs, v + (head + 1) * hs, vc + at);
        }
      }
      at::parallel_for(0, E * H, grain(8 * hs * 64), [&](int64_t begin, int64_t end) {
        std::vector<float> scores(max_len);
        for (int64_t item = begin; item < end; item++) {
          const int64_t e = item / H, head = item % H, n_keys = pos[e] + 1;
          const float* q = qkv.data() + e * 3 * d + head * hs;
          const float* keys = kc + (row[e] * H + head) * max_len * hs;
          const float* values = vc + (row[e] * H + head) * max_len * hs;
          float top = -INFINITY;
          for (int64_t j = 0; j < n_keys; j++) {
            scores[j] = kern_.dot_f32(q, keys + j * hs, hs) * inv_sqrt_hs;
            top = std::max(top, scores[j]);
          }
          float total = 0.0f;
          for (int64_t j = 0; j < n_keys; j++) total += (scores[j] = std::exp(scores[j] - top));
          const float inv_total = 1.0f / total;
          float* out = att.data() + e * d + head * hs;
          std::fill(out, out + hs, 0.0f);
          for (int64_t j = 0; j < n_keys; j++) {
            const float p = scores[j] * inv_total;
            scores[j] = p;
            for (int64_t i = 0; i < hs; i++) out[i] += p * values[j * hs + i];
          }
          if (attn_slot[e] >= 0) {
            const int64_t keys_out = attention_out.size(3);
            float* dst = attn_out + ((attn_slot[e] * n_layer_ + l) * H + head) * keys_out;
            std::copy(scores.begin(), scores.begin() + n_keys, dst);
            std::fill(dst + n_keys, dst + keys_out, 0.0f);
          }
        }
      });
      matmul(linears_[4 * l + 1], kern_, att.data(), E, proj.data(), xq);
      for (int64_t i = 0; i < E * d; i++) x[i] += proj[i];
      // SwiGLU MLP
      rms_norm(x.data(), norms_[2 * l + 1].data_ptr<float>(), h.data(), E, d, eps_);
      matmul(linears_[4 * l + 2], kern_, h.data(), E, gate_up.data(), xq);  // (E, 2 hidden): gate, up
      for (int64_t e = 0; e < E; e++) {
        const float* gate = gate_up.data() + e * 2 * hidden_;
        const float* up = gate + hidden_;
        for (int64_t i = 0; i < hidden_; i++) act[e * hidden_ + i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
      }
      matmul(linears_[4 * l + 3], kern_, act.data(), E, proj.data(), xq);
      for (int64_t i = 0; i < E * d; i++) x[i] += proj[i];
    }
    if (n_logits) {
      std::vector<float> last(n_logits * d);
      for (int64_t m = 0; m < n_logits; m++)
        std::copy(x.begin() + logit_idx[m] * d, x.begin() + (logit_idx[m] + 1) * d, last.begin() + m * d);
      rms_norm(last.data(), norms_[2 * n_layer_].data_ptr<float>(), h.data(), n_logits, d, eps_);
      matmul(linears_[4 * n_layer_], kern_, h.data(), n_logits, logits_out.data_ptr<float>(), xq);
    }
  }

 private:
  static at::Tensor check(const at::Tensor& t, at::ScalarType type, const char* what) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == type && t.is_contiguous(), what,
                ": expected a contiguous CPU tensor of ", c10::toString(type));
    return t;
  }

  int64_t n_layer_, n_head_, d_, hidden_, hs_;
  float eps_;
  std::string form_;
  Kernels kern_;
  at::Tensor embed_, cos_, sin_;
  std::vector<at::Tensor> norms_;
  std::vector<Linear> linears_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "TinyLLM's native forward step (model/native/step.cpp)";
  m.attr("ARITHMETIC_VERSION") = ARITHMETIC_VERSION;
  m.def("has_avx2", &has_avx2, "whether this CPU runs the AVX2 kernels");
  pybind11::class_<Step>(m, "Step")
      .def(pybind11::init<int64_t, int64_t, int64_t, int64_t, double, const std::string&, int64_t, const std::string&,
                          at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<at::Tensor>>())
      .def_property_readonly("kernels", &Step::kernels)
      .def_property_readonly("form", &Step::form)
      .def("forward", &Step::forward, pybind11::call_guard<pybind11::gil_scoped_release>());
}
