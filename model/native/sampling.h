// Choosing each sequence's next token from its logits, for a whole batch in one call: the arithmetic of
// model/sampling.py's sample_rows (with the extension's numerics), bit for bit, with no Python per row.
//
// Per row, in this order (sample_rows' order, each operation rounded as torch rounds it: one float32 rounding per
// element-wise operation, Python numbers as float32):
// - log-probabilities of the raw logits (numerics.h's log_softmax_row): the chosen token's, and the top ones asked
//   for (by value, down; NaN first; ties by token id, up);
// - the UTF-8 mask: x + 0 or x + -inf (model.utf8.MASKS' row, for rows with valid_utf8);
// - the repetition penalty over every token seen (x > 0 ? x / p : x * p), then presence and frequency over the
//   generated ones (x - presence * (count > 0) - frequency * count);
// - temperature 0: the first maximum (a NaN counts as the maximum, as torch's argmax);
// - else numerics.h's sampling_probs_row, and the exponential race: the first maximum of probs / q (numpy's argmax:
//   the first NaN wins), q = -log(u) from counter-based uniforms u of (seed, step) (model.sampling.exponential_noise).
//   A token of probability 0 never wins the race (its ratio is 0, the winner's above 0), so q is computed only for
//   the others.
// Rows are independent: threads split the batch by rows, and a row's bits never depend on the rest of its batch.

#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "fixed_math.h"
#include "numerics.h"

namespace tinyllm {

// One sequence's sampling parameters (model.sampling.SamplingParams, its seed) and the history its penalties read,
// kept with the sequence between steps: count() adds the tokens since the last step.
struct SamplingRow {
  double temperature, top_p, repetition, presence, frequency;
  int64_t top_k, top_logprobs, n_prompt;
  bool valid_utf8;
  uint64_t seed;
  std::vector<int32_t> seen, generated;  // per token id: how often in all the tokens, in the generated ones
  int64_t counted = 0;                   // tokens counted so far

  SamplingRow(double temperature_, int64_t top_k_, double top_p_, double repetition_, double presence_,
              double frequency_, bool valid_utf8_, uint64_t seed_, int64_t n_prompt_, int64_t top_logprobs_,
              int64_t vocab)
      : temperature(temperature_),
        top_p(top_p_),
        repetition(repetition_),
        presence(presence_),
        frequency(frequency_),
        top_k(top_k_),
        top_logprobs(top_logprobs_),
        n_prompt(n_prompt_),
        valid_utf8(valid_utf8_),
        seed(seed_) {
    TORCH_CHECK(temperature >= 0 && top_k >= 0 && top_p > 0 && top_p <= 1 && repetition > 0 &&
                    std::isfinite(presence) && std::isfinite(frequency) && n_prompt >= 0 && top_logprobs >= 0,
                "sampling parameters out of range (model.sampling.SamplingParams says which)");
    TORCH_CHECK(vocab > 0, "vocab must be positive");
    if (uses_history()) seen.assign(vocab, 0), generated.assign(vocab, 0);
  }

  bool uses_history() const { return repetition != 1.0 || presence != 0.0 || frequency != 0.0; }
  int64_t vocab() const { return int64_t(seen.size()); }

  // The sequence's tokens counted..counted + len - 1 (only with a penalty on; else only their number).
  void count(const std::vector<int64_t>& tokens) {
    for (const int64_t t : tokens) {
      if (uses_history()) {
        TORCH_CHECK(t >= 0 && t < vocab(), "token ", t, " out of range");
        seen[t]++;
        if (counted >= n_prompt) generated[t]++;
      }
      counted++;
    }
  }
};

using TopLogprobs = std::vector<std::pair<int64_t, double>>;

// What a batch's choice gives Python: each row's token (-1: no row to sample it with), its logprob, every
// log-probability (B, vocab) and the top ones asked for.
using Choices = std::tuple<std::vector<int64_t>, std::vector<double>, at::Tensor, std::vector<TopLogprobs>>;

// ------------------------------------------------------------------ the noise

// splitmix64's finalizer (model.sampling._mix), wrapping.
inline uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

constexpr uint64_t GOLDEN = 0x9E3779B97F4A7C15ull;

// Exp(1) draw j of a row whose key is mix64(seed + mix64(step + GOLDEN)) (model.sampling.exponential_noise).
inline double exponential_draw(uint64_t key, int64_t j) {
  const uint64_t bits = mix64(key + uint64_t(j + 1) * GOLDEN);
  const double uniform = (double(bits >> 11) + 0.5) * 0x1p-53;  // in (0, 1)
  return -log_fixed(uniform);
}

// ------------------------------------------------------------------ one row

// The first maximum, a NaN counting as the maximum (torch's argmax).
inline int64_t argmax_nan_first(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t j = 0; j < n; j++) {
    if (x[j] != x[j]) return j;
    if (x[j] > x[best]) best = j;
  }
  return best;
}

// The n most likely tokens of a row of log-probabilities: by value, down, a NaN first, ties by token id.
inline TopLogprobs top_logprobs(const float* logprobs, int64_t vocab, int64_t n, std::vector<int64_t>& order) {
  n = std::min(n, vocab);
  order.resize(vocab);
  for (int64_t j = 0; j < vocab; j++) order[j] = j;
  auto before = [&](int64_t a, int64_t b) {
    const float x = logprobs[a], y = logprobs[b];
    const bool x_nan = x != x, y_nan = y != y;
    if (x_nan || y_nan) return x_nan && (!y_nan || a < b);
    return x > y || (x == y && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + n, order.end(), before);
  TopLogprobs top(n);
  for (int64_t i = 0; i < n; i++) top[i] = {order[i], double(logprobs[order[i]])};
  return top;
}

// The logits the sampler reads: the UTF-8 mask's row `allowed` (nullptr: none), then the penalties.
inline void penalized(const float* x, int64_t n, const SamplingRow& row, const bool* allowed, float* z) {
  for (int64_t j = 0; j < n; j++) z[j] = allowed ? x[j] + (allowed[j] ? 0.0f : -INFINITY) : x[j];
  if (!row.uses_history()) return;
  if (row.repetition != 1.0 && row.counted > 0) {
    const float p = float(row.repetition);
    for (int64_t j = 0; j < n; j++)
      if (row.seen[j]) z[j] = z[j] > 0 ? z[j] / p : z[j] * p;
  }
  if ((row.presence != 0.0 || row.frequency != 0.0) && row.counted > row.n_prompt) {
    const float presence = float(row.presence), frequency = float(row.frequency);
    for (int64_t j = 0; j < n; j++) {
      const float c = float(row.generated[j]);
      z[j] = (z[j] - presence * (c > 0 ? 1.0f : 0.0f)) - frequency * c;
    }
  }
}

// Scratch space of one thread, reused from row to row.
struct SamplingScratch {
  std::vector<float> z, probs, zz;
  std::vector<double> e;
  std::vector<int64_t> order;
};

// Row `x` (vocab) at generation step `step`: its log-probabilities into `logprobs`; returns the chosen token.
inline int64_t choose_row(const float* x, int64_t n, const SamplingRow& row, int64_t step, const bool* allowed,
                          float* logprobs, SamplingScratch& s) {
  log_softmax_row(x, n, logprobs);
  s.z.resize(n);
  penalized(x, n, row, row.valid_utf8 ? allowed : nullptr, s.z.data());
  if (row.temperature == 0.0) return argmax_nan_first(s.z.data(), n);
  s.probs.resize(n);
  sampling_probs_row(s.z.data(), n, row.temperature, row.top_k, row.top_p, s.probs.data(), s.zz, s.e, s.order);
  const uint64_t key = mix64(row.seed + mix64(uint64_t(step) + GOLDEN));
  int64_t best = -1;
  double best_ratio = 0.0;
  for (int64_t j = 0; j < n; j++) {
    const float p = s.probs[j];
    if (p != p) return j;  // a NaN row: numpy's argmax takes its first NaN
    if (p == 0.0f) continue;
    const double ratio = double(p) / exponential_draw(key, j);
    if (best < 0 || ratio > best_ratio) best = j, best_ratio = ratio;
  }
  return best < 0 ? 0 : best;  // no token of probability above 0 (never for finite logits): numpy's first zero
}

// ------------------------------------------------------------------ a batch

// What a batch is sampled with: per row its SamplingRow (nullptr: it failed to build; that row gets -1), its
// generation step and its row of the UTF-8 masks `allowed` (masks, vocab) bool.
struct SamplingBatch {
  std::vector<SamplingRow*> rows;
  std::vector<int64_t> steps, masks;
  at::Tensor allowed;

  // Every check choose() relies on, for `n` rows of `vocab` logits: before a step runs, so a bad batch fails whole.
  void check(int64_t n, int64_t vocab) const {
    TORCH_CHECK(int64_t(rows.size()) == n && int64_t(steps.size()) == n && int64_t(masks.size()) == n,
                "one sampling row, step and UTF-8 mask per row of logits");
    TORCH_CHECK(allowed.device().is_cpu() && allowed.scalar_type() == at::kBool && allowed.is_contiguous() &&
                    allowed.dim() == 2 && allowed.size(1) == vocab,
                "UTF-8 masks: expected a contiguous CPU bool tensor (masks, vocab)");
    for (int64_t i = 0; i < n; i++) {
      TORCH_CHECK(steps[i] >= 0, "row ", i, ": the step must be >= 0");
      TORCH_CHECK(masks[i] >= 0 && masks[i] < allowed.size(0), "row ", i, ": UTF-8 mask out of range");
      TORCH_CHECK(!rows[i] || !rows[i]->uses_history() || rows[i]->vocab() == vocab, "row ", i, ": vocab differs");
    }
  }

  // Each row's choice from logits (B, vocab), float32; check() first.
  Choices choose(const at::Tensor& logits) const {
    check_rows(logits, at::kFloat, "logits");
    TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, "logits: expected (rows, vocab) with vocab > 0");
    const int64_t B = logits.size(0), n = logits.size(1);
    check(B, n);
    at::Tensor logprobs = at::empty({B, n}, at::kFloat);
    std::vector<int64_t> tokens(B, -1);
    std::vector<double> chosen(B, 0.0);
    std::vector<TopLogprobs> top(B);
    const float* x = logits.data_ptr<float>();
    float* lp = logprobs.data_ptr<float>();
    const bool* masks_at = allowed.data_ptr<bool>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      const FlushDenormals flush;  // in each thread that runs a part
      SamplingScratch scratch;
      for (int64_t i = begin; i < end; i++) {
        float* row_lp = lp + i * n;
        if (!rows[i]) {
          log_softmax_row(x + i * n, n, row_lp);
          continue;
        }
        tokens[i] = choose_row(x + i * n, n, *rows[i], steps[i], masks_at + masks[i] * n, row_lp, scratch);
        chosen[i] = double(row_lp[tokens[i]]);
        if (rows[i]->top_logprobs) top[i] = top_logprobs(row_lp, n, rows[i]->top_logprobs, scratch.order);
      }
    });
    return {tokens, chosen, logprobs, top};
  }
};

// sample(logits, rows, steps, masks, allowed): SamplingBatch::choose, for logits a step gave Python (the torch
// step's, a prefill's, the exact model's).
inline Choices sample_tensor(const at::Tensor& logits, std::vector<SamplingRow*> rows, std::vector<int64_t> steps,
                             std::vector<int64_t> masks, const at::Tensor& allowed) {
  const FlushDenormals flush;
  return SamplingBatch{std::move(rows), std::move(steps), std::move(masks), allowed}.choose(logits);
}

// The logits each row's choice reads (after the UTF-8 mask and the penalties), (B, vocab): for tests against
// model.sampling.sampler_logits.
inline at::Tensor sampler_logits_tensor(const at::Tensor& logits, std::vector<SamplingRow*> rows,
                                        std::vector<int64_t> steps, std::vector<int64_t> masks,
                                        const at::Tensor& allowed) {
  check_rows(logits, at::kFloat, "logits");
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, "logits: expected (rows, vocab) with vocab > 0");
  const int64_t B = logits.size(0), n = logits.size(1);
  const SamplingBatch batch{std::move(rows), std::move(steps), std::move(masks), allowed};
  batch.check(B, n);
  const FlushDenormals flush;
  at::Tensor out = at::empty_like(logits);
  for (int64_t i = 0; i < B; i++) {
    TORCH_CHECK(batch.rows[i], "row ", i, ": no sampling row");
    const bool* mask = batch.rows[i]->valid_utf8 ? allowed.data_ptr<bool>() + batch.masks[i] * n : nullptr;
    penalized(logits.data_ptr<float>() + i * n, n, *batch.rows[i], mask, out.data_ptr<float>() + i * n);
  }
  return out;
}

inline void bind_sampling(pybind11::module& m) {
  pybind11::class_<SamplingRow>(m, "SamplingRow")
      .def(pybind11::init<double, int64_t, double, double, double, double, bool, uint64_t, int64_t, int64_t,
                          int64_t>(),
           pybind11::arg("temperature"), pybind11::arg("top_k"), pybind11::arg("top_p"),
           pybind11::arg("repetition_penalty"), pybind11::arg("presence_penalty"), pybind11::arg("frequency_penalty"),
           pybind11::arg("valid_utf8"), pybind11::arg("seed"), pybind11::arg("n_prompt"),
           pybind11::arg("top_logprobs"), pybind11::arg("vocab"))
      .def_readonly("counted", &SamplingRow::counted)
      .def_property_readonly("uses_history", &SamplingRow::uses_history)
      .def("count", &SamplingRow::count, "add the sequence's next tokens to the history its penalties read");
  m.def("sample", &sample_tensor, "each row's token, logprob, log-probabilities and top logprobs (sampling.h)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("sampler_logits", &sampler_logits_tensor, "the logits after the UTF-8 mask and the penalties (for tests)");
}

}  // namespace tinyllm
