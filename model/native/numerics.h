// Log-softmax, softmax, the sampler's probabilities and RoPE's tables, in a fixed order from + - * / and
// comparisons alone: the same bits on every x86-64 CPU. Torch picks its softmax and log kernels per CPU
// (ATEN_CPU_CAPABILITY: other vector widths, other sum orders, SLEEF or libm), so it cannot promise that.
//
// The contract (step.cpp's ARITHMETIC_VERSION covers it):
// - exp and log are fixed_math.h's (no libm call).
// - A row's sums run in double, in index order (top-p's in the order of its sort: probability down, index up).
// - Each entry point runs with denormals flushed (FlushDenormals), whatever the caller's floating-point state.

#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "fixed_math.h"
#include "kernels.h"

namespace tinyllm {

// ------------------------------------------------------------------ rows

// out = log_softmax(x): x - max - log(sum exp(x - max)), in double, rounded once. A NaN anywhere makes the row NaN
// (as torch's); so do an infinite maximum and a row of -inf.
inline void log_softmax_row(const float* x, int64_t n, float* out) {
  double top = -INFINITY;
  for (int64_t j = 0; j < n; j++) top = (x[j] != x[j] || top != top) ? NAN : std::max(top, double(x[j]));
  double total = 0.0;
  for (int64_t j = 0; j < n; j++) total += exp_fixed(double(x[j]) - top);
  const double log_total = log_fixed(total);
  for (int64_t j = 0; j < n; j++) out[j] = float((double(x[j]) - top) - log_total);
}

// e[j] = exp(x[j] - max x) in double; returns their sum (index order). NaN as log_softmax_row.
inline double exp_shifted(const float* x, int64_t n, double* e) {
  double top = -INFINITY;
  for (int64_t j = 0; j < n; j++) top = (x[j] != x[j] || top != top) ? NAN : std::max(top, double(x[j]));
  double total = 0.0;
  for (int64_t j = 0; j < n; j++) total += (e[j] = exp_fixed(double(x[j]) - top));
  return total;
}

inline void softmax_row(const float* x, int64_t n, float* out, std::vector<double>& e) {
  e.resize(n);
  const double total = exp_shifted(x, n, e.data());
  for (int64_t j = 0; j < n; j++) out[j] = float(e[j] / total);
}

// The sampler's probabilities from one row of logits (n): temperature, top-k, softmax, top-p (nucleus).
// Temperature as torch computed it, in float: z = (min(x, FLT_MAX) - max) / max(float(temperature), FLT_MIN)
// (the clamp: a penalty near 0 can overflow a logit; the shift first: a tiny temperature gives -inf, never
// inf - inf). top_k in (0, n): logits below the k-th largest become -inf. top_p < 1: the smallest prefix of
// the tokens sorted by probability (down; ties by index, up) whose mass reaches top_p, at least one token,
// renormalized. A NaN z makes the row NaN.
inline void sampling_probs_row(const float* x, int64_t n, double temperature, int64_t top_k, double top_p,
                               float* out, std::vector<float>& z, std::vector<double>& e, std::vector<int64_t>& order) {
  z.resize(n), e.resize(n);
  float top = -INFINITY;
  for (int64_t j = 0; j < n; j++) top = std::max(top, std::min(x[j], FLT_MAX));  // NaN: caught below
  const float t = std::max(float(temperature), FLT_MIN);
  bool nan = false;
  for (int64_t j = 0; j < n; j++) {
    z[j] = (std::min(x[j], FLT_MAX) - top) / t;
    nan |= z[j] != z[j];
  }
  if (nan) {
    std::fill(out, out + n, NAN);
    return;
  }
  if (top_k > 0 && top_k < n) {
    std::vector<float> sorted(z);
    std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<float>());
    const float kth = sorted[top_k - 1];
    for (int64_t j = 0; j < n; j++) z[j] = z[j] < kth ? -INFINITY : z[j];
  }
  double total = exp_shifted(z.data(), n, e.data());
  if (top_p < 1.0) {
    order.resize(n);
    std::iota(order.begin(), order.end(), int64_t(0));
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return e[a] > e[b] || (e[a] == e[b] && a < b); });
    double before = 0.0, kept = 0.0;  // the mass of the tokens before, in probability and in e
    int64_t cut = 0;
    while (cut < n && (cut == 0 || before < top_p)) before += e[order[cut]] / total, kept += e[order[cut]], cut++;
    for (int64_t i = cut; i < n; i++) e[order[i]] = 0.0;
    total = kept;
  }
  for (int64_t j = 0; j < n; j++) out[j] = float(e[j] / total);
}

// ------------------------------------------------------------------ tensors

inline void check_rows(const at::Tensor& t, at::ScalarType type, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == type && t.is_contiguous() && t.dim() >= 1, what,
              ": expected a contiguous CPU tensor of ", c10::toString(type), " with at least one dimension");
}

// log_softmax over the last dimension of float32 logits (..., n).
inline at::Tensor log_softmax_tensor(const at::Tensor& logits) {
  check_rows(logits, at::kFloat, "logits");
  const FlushDenormals flush;
  at::Tensor out = at::empty_like(logits);
  const int64_t n = logits.size(-1), rows = n ? logits.numel() / n : 0;
  const float* x = logits.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; r++) log_softmax_row(x + r * n, n, o + r * n);
  return out;
}

// softmax over the last dimension of float32 logits (..., n).
inline at::Tensor softmax_tensor(const at::Tensor& logits) {
  check_rows(logits, at::kFloat, "logits");
  const FlushDenormals flush;
  at::Tensor out = at::empty_like(logits);
  const int64_t n = logits.size(-1), rows = n ? logits.numel() / n : 0;
  std::vector<double> e;
  const float* x = logits.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; r++) softmax_row(x + r * n, n, o + r * n, e);
  return out;
}

// The sampler's probabilities (B, n) from float32 logits (B, n), with each row's temperature (> 0), top_k
// (0: off) and top_p (1: off).
inline at::Tensor sampling_probs_tensor(const at::Tensor& logits, const std::vector<double>& temperature,
                                        const std::vector<int64_t>& top_k, const std::vector<double>& top_p) {
  check_rows(logits, at::kFloat, "logits");
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, "logits: expected (rows, vocab) with vocab > 0");
  const int64_t B = logits.size(0), n = logits.size(1);
  TORCH_CHECK(int64_t(temperature.size()) == B && int64_t(top_k.size()) == B && int64_t(top_p.size()) == B,
              "one temperature, top_k and top_p per row");
  for (int64_t r = 0; r < B; r++)
    TORCH_CHECK(temperature[r] > 0 && top_p[r] > 0 && top_p[r] <= 1 && top_k[r] >= 0,
                "row ", r, ": temperature must be > 0, top_p in (0, 1], top_k >= 0");
  const FlushDenormals flush;
  at::Tensor out = at::empty_like(logits);
  std::vector<float> z;
  std::vector<double> e;
  std::vector<int64_t> order;
  for (int64_t r = 0; r < B; r++)
    sampling_probs_row(logits.data_ptr<float>() + r * n, n, temperature[r], top_k[r], top_p[r],
                       out.data_ptr<float>() + r * n, z, e, order);
  return out;
}

// log(x), element-wise, of float64 x.
inline at::Tensor log_tensor(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kDouble && x.is_contiguous(),
              "x: expected a contiguous CPU float64 tensor");
  const FlushDenormals flush;
  at::Tensor out = at::empty_like(x);
  const double* in = x.data_ptr<double>();
  double* o = out.data_ptr<double>();
  for (int64_t i = 0; i < x.numel(); i++) o[i] = log_fixed(in[i]);
  return out;
}

// RoPE's cos and sin tables (positions, head_dim), float32, in the arithmetic of model.model.rope_tables: per
// pair i, inv_freq = 1 / theta^(float(2i) / head_dim) (the power as exp(e ln theta) in double, rounded to float,
// the rest in float), angle = float(position) * inv_freq, each half of a row the same. torch computes its pow,
// cos and sin per CPU (SLEEF or libm); these do not.
inline std::tuple<at::Tensor, at::Tensor> rope_tables_tensor(int64_t positions, int64_t head_dim, double theta) {
  TORCH_CHECK(positions > 0 && positions < (int64_t(1) << 19), "positions must be in 1 .. 2^19 - 1");
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0, "head_dim must be positive and even");
  TORCH_CHECK(theta > 1 && std::isfinite(theta), "theta must be finite and above 1");
  const FlushDenormals flush;
  const int64_t half = head_dim / 2;
  at::Tensor cos = at::empty({positions, head_dim}, at::kFloat), sin = at::empty({positions, head_dim}, at::kFloat);
  float* c = cos.data_ptr<float>();
  float* s = sin.data_ptr<float>();
  const double log_theta = log_fixed(double(float(theta)));
  for (int64_t i = 0; i < half; i++) {
    const float exponent = float(2 * i) / float(head_dim);
    const float inv_freq = 1.0f / float(exp_fixed(double(exponent) * log_theta));
    for (int64_t p = 0; p < positions; p++) {
      double sn, cs;
      sincos_fixed(double(float(p) * inv_freq), &sn, &cs);
      c[p * head_dim + i] = c[p * head_dim + half + i] = float(cs);
      s[p * head_dim + i] = s[p * head_dim + half + i] = float(sn);
    }
  }
  return {cos, sin};
}

inline void bind_numerics(pybind11::module& m) {
  const auto no_gil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("log_softmax", &log_softmax_tensor, "log_softmax over the last dimension, fixed-order (numerics.h)", no_gil);
  m.def("softmax", &softmax_tensor, "softmax over the last dimension, fixed-order (numerics.h)", no_gil);
  m.def("sampling_probs", &sampling_probs_tensor, "the sampler's probabilities (numerics.h)", no_gil);
  m.def("log", &log_tensor, "log of float64, element-wise, fixed-order (numerics.h)", no_gil);
  m.def("rope_tables", &rope_tables_tensor, "RoPE's (cos, sin) tables, fixed-order (numerics.h)", no_gil);
}

}  // namespace tinyllm
