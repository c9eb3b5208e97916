// The native forward step: the whole model for a set of entries (token, cache row, position) in one call.
//
// A decode step is one entry per sequence; a prefill chunk is the chunk's tokens of one sequence, at
// consecutive positions of one row. Per layer, every entry's key and value are written into the KV cache
// before any entry attends, so an entry attends to the positions of its row up to its own, whether those
// were written by an earlier call or by this one.
//
// Every number an entry produces is computed from that entry's inputs alone, by one thread, in an order that is
// fixed by the shapes of the model: work is split between threads by output rows (blocks of 4) and, in
// attention, by entry and head; never along a reduction. So a request's bytes do not depend on its neighbours
// or on the thread count; kernels.h states how its loops also give the same bits on every CPU.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"
#include "numerics.h"
#include "sampling.h"

using namespace tinyllm;

namespace {

// Bumped whenever the arithmetic changes: it is part of the server's system_fingerprint. 2: exp from
// fixed_math.h (not libm's), NaN activations quantize alike on every path, int8 -128 read as -127, and
// numerics.h: the fixed-order log-softmax, sampling probabilities and RoPE tables. 3: the choice of the next
// token in sampling.h (the same tokens and logprobs as 2), whose top logprobs break ties by token id (torch's
// topk left tied values in an order of its own).
constexpr int ARITHMETIC_VERSION = 3;

// sha256 of the sources this binary is built from (setup.py defines it, model/native/sources.py computes it):
// model/native/step.py refuses a binary whose hash is not that of the sources on disk. Empty when built otherwise.
#ifndef TINYLLM_SOURCE_HASH
#define TINYLLM_SOURCE_HASH ""
#endif

// ------------------------------------------------------------------ activations and weights

// Activations of `rows` entries, quantized per group of `group` values (Kernels::quantize).
struct QuantizedRows {
  std::vector<int8_t> q;
  std::vector<uint8_t> abs, plus;
  std::vector<float> scale;

  Q8Activations quantize(const Kernels& kern, const float* x, int64_t rows, int64_t k, int64_t group) {
    const int64_t groups = k / group;
    q.resize(rows * k), abs.resize(rows * k), plus.resize(rows * k), scale.resize(rows * groups);
    for (int64_t r = 0; r < rows; r++)
      for (int64_t g = 0; g < groups; g++) {
        const int64_t at = r * k + g * group;
        scale[r * groups + g] = kern.quantize(x + at, group, q.data() + at, abs.data() + at, plus.data() + at);
      }
    return {q.data(), abs.data(), plus.data(), scale.data(), k, group};
  }
};

// Bytes in memory backed by 2 MB pages where the kernel allows it (transparent huge pages on request): the int8
// weights are read whole every step, and with 4 kB pages their 11 MB would not fit the TLB. One for all of a
// step's matrices.
class HugeBuffer {
 public:
  explicit HugeBuffer(size_t bytes = 0) { resize(bytes); }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer(HugeBuffer&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr, o.size_ = 0; }
  ~HugeBuffer() { std::free(data_); }

  void resize(size_t bytes) {
    std::free(data_);
    constexpr size_t huge = size_t(2) << 20;
    size_ = (bytes + huge - 1) / huge * huge;
    data_ = size_ ? static_cast<int8_t*>(std::aligned_alloc(huge, size_)) : nullptr;
    TORCH_CHECK(!size_ || data_, "out of memory for ", size_, " bytes of weights");
#ifdef MADV_HUGEPAGE
    if (data_) madvise(data_, size_, MADV_HUGEPAGE);
#endif
    if (data_) std::memset(data_, 0, size_);
  }
  int8_t* data() const { return data_; }

 private:
  int8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One weight matrix (out, in) in the step's form: float32, or int8 with a float32 scale per group of inputs,
// repacked for the kernels (Q8Weights).
struct Linear {
  int64_t out = 0, in = 0;
  at::Tensor weight;  // float32 (out, in)
  // int8 (Q8Weights): rows in blocks of R (zero rows pad the last), laid out as the kernels read them
  int64_t group = 0, blocks = 0, R = 0;
  int8_t* q = nullptr;  // blocks * R * in bytes, in the step's HugeBuffer
  std::vector<float> scale;
  std::vector<int32_t> sum;

  static int64_t bytes(const at::Tensor& q8, const Kernels& kern) {
    return (q8.size(0) + kern.rows - 1) / kern.rows * kern.rows * q8.size(1);
  }

  // into: bytes(q8, kern) zeroed bytes
  void pack_int8(const at::Tensor& q8, const at::Tensor& scales, int64_t group_, const Kernels& kern, int8_t* into) {
    out = q8.size(0), in = q8.size(1), group = group_, R = kern.rows, blocks = (out + R - 1) / R, q = into;
    const int64_t groups = in / group;
    scale.assign(blocks * groups * R, 0.0f), sum.assign(blocks * groups * R, 0);
    const int8_t* src = q8.data_ptr<int8_t>();
    const float* sc = scales.data_ptr<float>();
    // symmetric int8: a -128 is read as -127 on every path (AVX2's vpsignb cannot negate -128)
    auto weight = [&](int64_t n, int64_t k) { return std::max<int8_t>(src[n * in + k], -127); };
    for (int64_t n = 0; n < out; n++) {
      const int64_t block = n / R, r = n % R;
      for (int64_t k = 0; k < in; k++) {
        const int64_t at = kern.interleaved ? ((k / 4) * R + r) * 4 + k % 4 : r * in + k;
        q[block * R * in + at] = weight(n, k);
      }
      for (int64_t g = 0; g < groups; g++) {
        const int64_t at = (block * groups + g) * R + r;
        scale[at] = sc[n * groups + g];
        for (int64_t k = g * group; k < (g + 1) * group; k++) sum[at] += weight(n, k);
      }
    }
  }

  Q8Weights int8() const { return {q, scale.data(), sum.data(), in, group}; }
};

int64_t grain(int64_t per_item_work) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, per_item_work)); }

// out[e, n] = x[e] . W[n] for `rows` entries. Threads split the output rows, in blocks (of kern.rows rows); each
// block of weights is read once for all entries, in tiles of up to kern.entries entries (kernels.h).
void matmul(const Linear& L, const Kernels& kern, const float* x, int64_t rows, float* out, QuantizedRows& xq) {
  if (L.group) {
    const Q8Activations xa = xq.quantize(kern, x, rows, L.in, L.group);
    const Q8Weights w = L.int8();
    at::parallel_for(0, L.blocks, grain(L.R * L.in * rows), [&](int64_t begin, int64_t end) {
      const FlushDenormals flush;  // in each thread that runs a part
      float tile[MAX_TILE];  // entries x rows of one tile
      for (int64_t block = begin; block < end; block++) {
        const int64_t n0 = L.R * block, nn = std::min<int64_t>(L.R, L.out - n0);
        for (int64_t e0 = 0; e0 < rows; e0 += kern.entries) {
          const int64_t ne = std::min<int64_t>(kern.entries, rows - e0);
          kern.q8[ne - 1][L.group / 32 - 1](w, xa, block, e0, tile);
          for (int64_t c = 0; c < ne; c++)
            std::copy(tile + L.R * c, tile + L.R * c + nn, out + (e0 + c) * L.out + n0);
        }
      }
    });
  } else {
    const float* w = L.weight.data_ptr<float>();
    at::parallel_for(0, L.out, grain(L.in * rows), [&](int64_t begin, int64_t end) {
      const FlushDenormals flush;  // in each thread that runs a part
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
        hs_(head_dim(d_model, n_head)),
        eps_(float(norm_eps)),
        form_(form),
        kern_(kernels_named(kernels)),
        embed_(embed.contiguous()),
        cos_(rope_cos.contiguous()),
        sin_(rope_sin.contiguous()) {
    TORCH_CHECK(form == "float32" || form == "int8", "unknown form ", form);
    const bool q8 = form == "int8";
    check_inputs(norm_eps, q8, group, norms, weights, scales);
    norms_ = norms;
    int64_t packed = 0;
    for (auto& w : weights) packed += q8 ? Linear::bytes(w, kern_) : 0;
    arena_.resize(packed);
    packed = 0;
    for (size_t i = 0; i < weights.size(); i++) {
      Linear L;
      if (q8) {
        L.pack_int8(weights[i], scales[i], group, kern_, arena_.data() + packed);
        packed += Linear::bytes(weights[i], kern_);
      } else {
        L.weight = weights[i], L.out = L.weight.size(0), L.in = L.weight.size(1);
      }
      linears_.push_back(std::move(L));
    }
  }

  // A decode step and the choice of each sequence's next token, in one call (the GIL released throughout):
  // sequence i is entry i, in cache row i, at positions[i]; its logits go through sampling.h. The sampling
  // inputs are checked before the step runs. attention_for, attention_out: as forward().
  Choices decode(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions,
                 std::vector<at::Tensor> k_cache, std::vector<at::Tensor> v_cache, at::Tensor attention_for,
                 at::Tensor attention_out, const SamplingBatch& sampling) {
    const int64_t n = int64_t(tokens.size()), vocab = embed_.size(0);
    sampling.check(n, vocab);
    at::Tensor entries = at::arange(n, at::kLong), logits = at::empty({n, vocab}, at::kFloat);
    forward(at::tensor(tokens, at::kLong), entries, at::tensor(positions, at::kLong), std::move(k_cache),
            std::move(v_cache), entries, logits, std::move(attention_for), std::move(attention_out));
    const FlushDenormals flush;
    return sampling.choose(logits);
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
    const FlushDenormals flush;  // for the serial parts; each parallel part sets it in its own thread
    const int64_t E = tokens.numel();
    TORCH_CHECK(rows.numel() == E && positions.numel() == E, "tokens, rows and positions differ in length");
    TORCH_CHECK(int64_t(k_cache.size()) == n_layer_ && int64_t(v_cache.size()) == n_layer_, "one cache per layer");
    const int64_t* tok = check(tokens, at::kLong, "tokens").data_ptr<int64_t>();
    const int64_t* row = check(rows, at::kLong, "rows").data_ptr<int64_t>();
    const int64_t* pos = check(positions, at::kLong, "positions").data_ptr<int64_t>();
    TORCH_CHECK(k_cache[0].dim() == 4, "k cache: expected (rows, n_head, max_len, head_dim)");
    const int64_t cache_rows = k_cache[0].size(0), max_len = k_cache[0].size(2);
    for (int64_t i = 0; i < n_layer_; i++) {
      check_shape(k_cache[i], at::kFloat, {cache_rows, n_head_, max_len, hs_}, "k cache");
      check_shape(v_cache[i], at::kFloat, {cache_rows, n_head_, max_len, hs_}, "v cache");
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
        TORCH_CHECK(attn_slot[attn_idx[m]] < 0, "attention_for names entry ", attn_idx[m], " twice");
        attn_slot[attn_idx[m]] = m;
      }
    }
    std::vector<bool> has_logits(E, false);
    for (int64_t m = 0; m < n_logits; m++) {
      TORCH_CHECK(logit_idx[m] >= 0 && logit_idx[m] < E, "logits_for index out of range");
      TORCH_CHECK(!has_logits[logit_idx[m]], "logits_for names entry ", logit_idx[m], " twice");
      has_logits[logit_idx[m]] = true;
    }

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
      const FlushDenormals flush;  // in each thread that runs a part
        std::vector<float> scores(max_len);
        for (int64_t item = begin; item < end; item++) {
          const int64_t e = item / H, head = item % H, n_keys = pos[e] + 1;
          const int64_t at = (row[e] * H + head) * max_len * hs;  // cache[row, head, 0, :]
          kern_.attend(qkv.data() + e * 3 * d + head * hs, kc + at, vc + at, n_keys, hs, inv_sqrt_hs, scores.data(),
                       att.data() + e * d + head * hs);
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
      for (int64_t e = 0; e < E; e++) {  // gate / (1 + exp(-gate)) * up
        const float* gate = gate_up.data() + e * 2 * hidden_;
        const float* up = gate + hidden_;
        float* a = act.data() + e * hidden_;
        for (int64_t i = 0; i < hidden_; i++) a[i] = -gate[i];
        kern_.exp(a, a, hidden_);
        for (int64_t i = 0; i < hidden_; i++) a[i] = gate[i] / (1.0f + a[i]) * up[i];
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

  // t: a contiguous CPU tensor of `type` and exactly `shape`.
  static void check_shape(const at::Tensor& t, at::ScalarType type, at::IntArrayRef shape, const char* what) {
    check(t, type, what);
    TORCH_CHECK(t.sizes() == shape, what, ": expected shape ", shape, ", got ", t.sizes());
  }

  static int64_t head_dim(int64_t d_model, int64_t n_head) {
    TORCH_CHECK(n_head > 0 && d_model > 0 && d_model % n_head == 0, "d_model (", d_model,
                ") must be a positive multiple of n_head (", n_head, ")");
    const int64_t hs = d_model / n_head;
    TORCH_CHECK(hs <= 512 && hs % 2 == 0, "head_dim must be even and at most 512, got ", hs);
    return hs;
  }

  // Every shape, type and range forward() and the kernels rely on: the dimensions, the embedding (vocab, d), the
  // rope tables (positions, head_dim), the norms (d,), per layer Q/K/V (3d, d), O (d, d), gate/up (2 hidden, d),
  // down (d, hidden), the unembedding (vocab, d); int8: groups of 32 or 64 dividing d and hidden, and scales
  // (out, in / group).
  void check_inputs(double norm_eps, bool q8, int64_t group, const std::vector<at::Tensor>& norms,
                    const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& scales) const {
    const int64_t d = d_, h = hidden_;
    TORCH_CHECK(n_layer_ >= 1 && h >= 1, "n_layer and mlp_hidden must be positive");
    TORCH_CHECK(std::isfinite(norm_eps) && norm_eps >= 0, "norm_eps must be finite and >= 0");
    TORCH_CHECK(embed_.dim() == 2 && embed_.size(0) >= 1, "embedding: expected (vocab, d_model)");
    const int64_t vocab = embed_.size(0);
    check_shape(embed_, at::kFloat, {vocab, d}, "embedding");
    TORCH_CHECK(cos_.dim() == 2 && cos_.size(0) >= 1, "rope cos: expected (positions, head_dim)");
    check_shape(cos_, at::kFloat, {cos_.size(0), hs_}, "rope cos");
    check_shape(sin_, at::kFloat, cos_.sizes(), "rope sin");
    TORCH_CHECK(int64_t(norms.size()) == 2 * n_layer_ + 1, "expected ", 2 * n_layer_ + 1, " norm weights");
    for (auto& t : norms) check_shape(t, at::kFloat, {d}, "norm weight");
    TORCH_CHECK(int64_t(weights.size()) == 4 * n_layer_ + 1, "expected ", 4 * n_layer_ + 1, " weight matrices");
    TORCH_CHECK(!q8 || scales.size() == weights.size(), "int8 needs a scale tensor per weight matrix");
    TORCH_CHECK(!q8 || ((group == 32 || group == 64) && d % group == 0 && h % group == 0),
                "int8 groups must be 32 or 64 and divide d_model and mlp_hidden");
    for (size_t i = 0; i < weights.size(); i++) {
      const int64_t kind = i == weights.size() - 1 ? 4 : int64_t(i % 4);
      const std::vector<int64_t> shape = std::vector<std::vector<int64_t>>{
          {3 * d, d}, {d, d}, {2 * h, d}, {d, h}, {vocab, d}}[kind];
      check_shape(weights[i], q8 ? at::kChar : at::kFloat, shape, "weight matrix");
      if (q8) check_shape(scales[i], at::kFloat, {shape[0], shape[1] / group}, "int8 scales");
    }
  }

  int64_t n_layer_, n_head_, d_, hidden_, hs_;
  float eps_;
  std::string form_;
  Kernels kern_;
  at::Tensor embed_, cos_, sin_;
  std::vector<at::Tensor> norms_;
  std::vector<Linear> linears_;
  HugeBuffer arena_;  // the int8 weights of every matrix
};

// One group of activations (a multiple of 32 floats) quantized by the kernels named: (q, scale). For tests of the
// kernels' contract.
std::tuple<at::Tensor, double> quantize_group(const at::Tensor& x, const std::string& kernels) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 1 &&
                  x.numel() > 0 && x.numel() % 32 == 0,
              "x: expected a contiguous CPU float32 vector of a positive multiple of 32 values");
  const Kernels kern = kernels_named(kernels);
  const FlushDenormals flush;
  const int64_t n = x.numel();
  at::Tensor q = at::empty({n}, at::kChar);
  std::vector<uint8_t> abs(n), plus(n);
  const float d = kern.quantize(x.data_ptr<float>(), n, q.data_ptr<int8_t>(), abs.data(), plus.data());
  return {q, d};
}


// The calling thread's CPU time in seconds.
double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// x (E, in) float32 times an int8 matrix q8 (out, in) with scales (out, in / group), by the kernels named, as the
// step multiplies: (out (E, out), seconds per product: the median of `repeats` after one untimed, in the calling
// thread's CPU time, which a shared machine's other work does not inflate; time it with one thread). For tests of
// the tiles against the scalar reference, and for bench/kernel.py.
std::tuple<at::Tensor, double> q8_matmul(const at::Tensor& x, const at::Tensor& q8, const at::Tensor& scales,
                                         int64_t group, const std::string& kernels, int64_t repeats) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 2,
              "x: expected a contiguous CPU float32 matrix");
  TORCH_CHECK(q8.scalar_type() == at::kChar && q8.is_contiguous() && q8.dim() == 2 && q8.size(1) == x.size(1),
              "q8: expected a contiguous int8 matrix (out, in) with x's in");
  TORCH_CHECK((group == 32 || group == 64) && q8.size(1) % group == 0, "group must be 32 or 64 and divide in");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.sizes() == at::IntArrayRef({q8.size(0), q8.size(1) / group}),
              "scales: expected (out, in / group) float32");
  TORCH_CHECK(repeats >= 1, "repeats must be >= 1");
  const Kernels kern = kernels_named(kernels);
  HugeBuffer arena(Linear::bytes(q8, kern));
  Linear L;
  L.pack_int8(q8, scales, group, kern, arena.data());
  at::Tensor out = at::empty({x.size(0), q8.size(0)}, at::kFloat);
  QuantizedRows xq;
  const FlushDenormals flush;
  std::vector<double> times;
  for (int64_t i = 0; i <= repeats; i++) {
    const double start = thread_seconds();
    matmul(L, kern, x.data_ptr<float>(), x.size(0), out.data_ptr<float>(), xq);
    times.push_back(thread_seconds() - start);
  }
  std::sort(times.begin() + 1, times.end());
  return {out, times[1 + repeats / 2]};
}

// The int8 multiply-adds per second of the kernels' dot-product instruction sequence on data in L1, one thread,
// over about `seconds` of its CPU time (kernels.h: int8_peak_avx2, int8_peak_vnni). For bench/kernel.py.
double int8_peak(const std::string& kernels, double seconds) {
  const Kernels kern = kernels_named(kernels);
  TORCH_CHECK(kern.name != "scalar", "the scalar kernels have no instruction sequence to measure");
  int32_t sink[8];
  int64_t done = 0, steps = 1 << 16;
  const double start = thread_seconds();
  double elapsed = 0.0;
  while (elapsed < seconds) {
#ifdef TINYLLM_X86
    done += kern.name == "vnni" ? int8_peak_vnni(steps, sink) : int8_peak_avx2(steps, sink);
#endif
    elapsed = thread_seconds() - start;
    steps *= 2;
  }
  TORCH_CHECK(sink[0] != 0x7fffffff || done > 0, "");  // the sums are used: the loops cannot be dropped
  return double(done) / elapsed;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "TinyLLM's native forward step (model/native/step.cpp)";
  m.attr("ARITHMETIC_VERSION") = ARITHMETIC_VERSION;
  m.attr("SOURCE_HASH") = TINYLLM_SOURCE_HASH;
  m.def("cpu_has", &cpu_has, "whether this CPU runs the kernels named (scalar, avx2, vnni)");
  pybind11::class_<Step>(m, "Step")
      .def(pybind11::init<int64_t, int64_t, int64_t, int64_t, double, const std::string&, int64_t, const std::string&,
                          at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<at::Tensor>>())
      .def_property_readonly("kernels", &Step::kernels)
      .def_property_readonly("form", &Step::form)
      .def("forward", &Step::forward, pybind11::call_guard<pybind11::gil_scoped_release>())
      .def(
          "decode",
          [](Step& step, const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions,
             std::vector<at::Tensor> k_cache, std::vector<at::Tensor> v_cache, at::Tensor attention_for,
             at::Tensor attention_out, std::vector<SamplingRow*> rows, std::vector<int64_t> steps,
             std::vector<int64_t> masks, at::Tensor allowed) {
            const SamplingBatch sampling{std::move(rows), std::move(steps), std::move(masks), std::move(allowed)};
            return step.decode(tokens, positions, std::move(k_cache), std::move(v_cache), std::move(attention_for),
                               std::move(attention_out), sampling);
          },
          pybind11::call_guard<pybind11::gil_scoped_release>());
  bind_numerics(m);
  bind_sampling(m);
  m.def("quantize_group", &quantize_group, "one group of activations quantized by the kernels named (for tests)");
  m.def("q8_matmul", &q8_matmul, "x times an int8 matrix as the step multiplies, and its time (for tests and bench)",
        pybind11::arg("x"), pybind11::arg("q8"), pybind11::arg("scales"), pybind11::arg("group"),
        pybind11::arg("kernels"), pybind11::arg("repeats") = 1, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("int8_peak", &int8_peak, "int8 multiply-adds per second of the kernels' instruction sequence in L1 (bench)",
        pybind11::arg("kernels"), pybind11::arg("seconds") = 0.2, pybind11::call_guard<pybind11::gil_scoped_release>());
}
