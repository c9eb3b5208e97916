// The native step's inner loops, for every CPU: scalar code (the reference, any CPU), AVX2, and AVX-512 VNNI.
//
// The arithmetic contract: every kernel path computes the same bits, so a request's bytes do not depend on the
// CPU's vector unit (tests compare the paths bitwise).
// - A float dot product of length n sums its first n - n % 32 terms in 32 lanes (lane i % 32), reduces the
//   lanes in the fixed tree of reduce32(), then adds the rest in order. Products and sums are separate
//   roundings: the extension is compiled with -ffp-contract=off and no kernel uses a fused multiply-add.
// - Attention, one query over its keys: each score q.k sums in 8 lanes (lane i % 8), reduced as
//   ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), the rest in order, times 1/sqrt(head_dim); the softmax is
//   scalar (expf, sums in key order); each output element sums probability * value in key order.
// - Every other element-wise loop rounds each element once per operation, as scalar code.
// - Attention's softmax and the MLP's SiLU take exp from fixed_math.h (not libm's, which differs per CPU).
// - Denormal inputs and results are zero (FlushDenormals, around all of it): attention's tiny probabilities
//   would otherwise cost a microcode assist per multiplication. The same on every x86 path.
// - Activations quantize per group (quantize_scalar): NaN or infinite activations make every output that reads
//   their group NaN, on every path (a NaN makes the group's scale NaN; x / scale NaN quantizes to 0).
// - int8 weights are symmetric, in [-127, 127] (AVX2's vpsignb cannot negate -128): the step reads a -128 as
//   -127 on every path.
// - An int8 dot product sums the int8 x int8 products of each group of inputs exactly, in int32 (any order
//   gives the same integer), then, group after group: acc = acc + float(sum) * (activation scale * weight scale).
//   AVX2 multiplies |x| by w with x's sign (vpmaddubsw); VNNI multiplies x + 128 by w (vpdpbusd) and subtracts
//   128 * sum(w): both are the exact integer of the scalar loop.
// - A matrix product runs in tiles: a block of weight rows (AVX2 16, VNNI 32, scalar 4) by up to 4 entries, each
//   weight vector loaded once for the tile's entries and each entry's activations once for its rows; a vector
//   lane holds one (row, entry)'s sum. The tiling decides only which entries share loads: each entry's integer
//   sums are exact and its float steps run per (entry, row), group after group, so no bit depends on the tile
//   an entry falls in (tests/test_native_tiles.py). The VNNI tile is compiled but was not run on the AMD (AVX2)
//   machine it was written on: tests/test_native_step.py and test_native_tiles.py compare it where a CPU has it.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include <c10/util/Exception.h>

#include "fixed_math.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TINYLLM_X86 1
#endif

namespace tinyllm {

// Activations of some entries quantized per group, in the forms the kernels read.
struct Q8Activations {
  const int8_t* q;       // (entries, n): round(x / scale)
  const uint8_t* abs;    // |q|, for AVX2
  const uint8_t* plus;   // q + 128, for VNNI
  const float* scale;    // (entries, n / group)
  int64_t n, group;
};

// An int8 weight matrix in blocks of R output rows (the last block padded with zero rows): per block, the R rows
// one after the other, or (VNNI) interleaved by 4 inputs, [n / 4][R][4]; per block and group the R rows' scales
// side by side, and the sums of their weights (for VNNI's offset).
struct Q8Weights {
  const int8_t* q;      // (blocks, R * n)
  const float* scale;   // (blocks, n / group, R)
  const int32_t* sum;   // (blocks, n / group, R)
  int64_t n, group;
};

// out[c * R + r] = x[e0 + c] . w[R * block + r] for r < R, c < C: one tile of a matrix product.
using Q8Block = void (*)(const Q8Weights&, const Q8Activations&, int64_t block, int64_t e0, float* out);
using DotF32 = float (*)(const float*, const float*, int64_t);
// One query's attention over n keys and values ((n, hs) rows); probs and out get n and hs floats.
using Attend = void (*)(const float* q, const float* keys, const float* values, int64_t n, int64_t hs, float scale,
                        float* probs, float* out);
using Quantize = float (*)(const float*, int64_t, int8_t*, uint8_t*, uint8_t*);
// out[i] = expf_fixed(x[i]) for n floats (out may be x).
using ExpF32 = void (*)(const float* x, float* out, int64_t n);

// ------------------------------------------------------------------ scalar: the reference orders

inline float reduce8(const float* l) {
  float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
  return (a0 + a2) + (a1 + a3);
}

inline float reduce32(const float* l) {
  float l8[8];
  for (int j = 0; j < 8; j++) l8[j] = (l[j] + l[8 + j]) + (l[16 + j] + l[24 + j]);
  return reduce8(l8);
}

inline float dot_f32_scalar(const float* a, const float* b, int64_t n) {
  const int64_t body = n - n % 32;
  float lanes[32] = {0};
  for (int64_t i = 0; i < body; i += 32)
    for (int j = 0; j < 32; j++) lanes[j] += a[i + j] * b[i + j];
  float s = reduce32(lanes);
  for (int64_t i = body; i < n; i++) s += a[i] * b[i];
  return s;
}

inline float score_scalar(const float* q, const float* k, int64_t hs) {
  const int64_t body = hs - hs % 8;
  float l[8] = {0};
  for (int64_t i = 0; i < body; i += 8)
    for (int j = 0; j < 8; j++) l[j] += q[i + j] * k[i + j];
  float s = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
  for (int64_t i = body; i < hs; i++) s += q[i] * k[i];
  return s;
}

inline void exp_scalar(const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = expf_fixed(x[i]);
}

// probs[j] = softmax_j(scores), in place: the maximum, exp (the path's: the same bits), the sum in key order.
inline void softmax(float* probs, int64_t n, ExpF32 exp) {
  float top = -INFINITY;
  for (int64_t j = 0; j < n; j++) top = std::max(top, probs[j]);
  for (int64_t j = 0; j < n; j++) probs[j] -= top;
  exp(probs, probs, n);
  float total = 0.0f;
  for (int64_t j = 0; j < n; j++) total += probs[j];
  const float inv = 1.0f / total;
  for (int64_t j = 0; j < n; j++) probs[j] *= inv;
}

inline void attend_scalar(const float* q, const float* keys, const float* values, int64_t n, int64_t hs, float scale,
                          float* probs, float* out) {
  for (int64_t j = 0; j < n; j++) probs[j] = score_scalar(q, keys + j * hs, hs) * scale;
  softmax(probs, n, exp_scalar);
  std::fill(out, out + hs, 0.0f);
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < hs; i++) out[i] += probs[j] * values[j * hs + i];
}

// One group of n activations (a multiple of 32) to int8: q = round(x / d) (half to even, as torch.round: adding
// and taking away 1.5 * 2^23 leaves no fraction), d = max|x| / 127; also |q| and q + 128. Returns d.
// NaN and infinity (the contract's rule): a NaN in the group makes d NaN; a value whose x / d is NaN (x NaN, or
// d NaN or infinite) quantizes to 0. So every output that reads such a group is NaN, on every path.
inline float quantize_scalar(const float* x, int64_t n, int8_t* q, uint8_t* abs, uint8_t* plus) {
  float amax = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; i++) amax = std::max(amax, std::fabs(x[i])), nan |= x[i] != x[i];
  const float d = nan ? NAN : amax / 127.0f;
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  for (int64_t i = 0; i < n; i++) {
    const float r = (x[i] * inv + 12582912.0f) - 12582912.0f;
    const float rounded = r != r ? 0.0f : std::min(127.0f, std::max(-127.0f, r));
    q[i] = int8_t(rounded), abs[i] = uint8_t(q[i] < 0 ? -q[i] : q[i]), plus[i] = uint8_t(q[i] + 128);
  }
  return d;
}

template <int C, int CHUNKS>
void q8_block_scalar(const Q8Weights& w, const Q8Activations& x, int64_t block, int64_t e0, float* out) {
  const int64_t groups = w.n / w.group;  // w.group == 32 * CHUNKS
  for (int c = 0; c < C; c++) {
    for (int r = 0; r < 4; r++) {
      const int8_t* wr = w.q + (4 * block + r) * w.n;
      const int8_t* xc = x.q + (e0 + c) * w.n;
      float acc = 0.0f;
      for (int64_t g = 0; g < groups; g++) {
        int32_t sum = 0;
        for (int64_t k = g * w.group; k < (g + 1) * w.group; k++) sum += int32_t(xc[k]) * int32_t(wr[k]);
        const float scale = x.scale[(e0 + c) * groups + g] * w.scale[(block * groups + g) * 4 + r];
        acc = acc + float(sum) * scale;
      }
      out[c * 4 + r] = acc;
    }
  }
}

// ------------------------------------------------------------------ AVX2

#ifdef TINYLLM_X86
__attribute__((target("avx2"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // l0+l4, l1+l5, l2+l6, l3+l7
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                           // (l0+l4)+(l2+l6), (l1+l5)+(l3+l7)
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2"))) inline float dot_f32_avx2(const float* a, const float* b, int64_t n) {
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

// exp_fixed of 4 doubles in [-708, 708]: exp_fixed's operations lane by lane, so its bits.
__attribute__((target("avx2"))) inline __m256d exp4_avx2(__m256d x) {
  const __m256d magic = _mm256_set1_pd(0x1.8p52);
  const __m256d kd = _mm256_add_pd(_mm256_mul_pd(x, _mm256_set1_pd(INV_LN2)), magic);  // 1.5 * 2^52 + k, exactly
  const __m256d k = _mm256_sub_pd(kd, magic);
  const __m256d r = _mm256_sub_pd(_mm256_sub_pd(x, _mm256_mul_pd(k, _mm256_set1_pd(LN2_HI))),
                                  _mm256_mul_pd(k, _mm256_set1_pd(LN2_LO)));
  __m256d p = _mm256_set1_pd(EXP_TAYLOR[13]);
  for (int n = 12; n >= 0; n--) p = _mm256_add_pd(_mm256_mul_pd(p, r), _mm256_set1_pd(EXP_TAYLOR[n]));
  const __m256i n = _mm256_sub_epi64(_mm256_castpd_si256(kd), _mm256_castpd_si256(magic));  // k, from kd's bits
  const __m256i two_to_n = _mm256_slli_epi64(_mm256_add_epi64(n, _mm256_set1_epi64x(1023)), 52);
  return _mm256_mul_pd(p, _mm256_castsi256_pd(two_to_n));
}

// exp_scalar's bits, 4 at a time where all 4 lie in [-708, 708] (else, and for the rest, exp_scalar's code).
__attribute__((target("avx2"))) inline void exp_avx2(const float* x, float* out, int64_t n) {
  const __m256d lo = _mm256_set1_pd(-708.0), hi = _mm256_set1_pd(708.0);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
    const __m256d inside = _mm256_and_pd(_mm256_cmp_pd(v, lo, _CMP_GE_OQ), _mm256_cmp_pd(v, hi, _CMP_LE_OQ));
    if (_mm256_movemask_pd(inside) == 0xF)
      _mm_storeu_ps(out + i, _mm256_cvtpd_ps(exp4_avx2(v)));
    else
      exp_scalar(x + i, out + i, 4);
  }
  exp_scalar(x + i, out + i, n - i);
}

// Eight keys' scores at once: each key's 8 lanes, then a transposing pairwise sum in the contract's tree.
__attribute__((target("avx2"))) inline __m256 scores8(const float* q, const float* k, int64_t hs) {
  __m256 acc[8];
  for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < hs; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
    for (int j = 0; j < 8; j++) acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(qv, _mm256_loadu_ps(k + j * hs + i)));
  }
  // hadd pairs lanes (l0+l1, l2+l3) within halves; twice more gives (l0+l1)+(l2+l3) per key and half
  const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
  const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
  const __m128 s0 = _mm_add_ps(_mm256_castps256_ps128(h0), _mm256_extractf128_ps(h0, 1));  // keys 0..3
  const __m128 s1 = _mm_add_ps(_mm256_castps256_ps128(h1), _mm256_extractf128_ps(h1, 1));  // keys 4..7
  return _mm256_set_m128(s1, s0);
}

// out[0 .. 8M) = sum over keys k in order of probs[k] * values[k * hs + i]: M vectors held in registers (a
// count fixed at compile time, so the compiler does not keep them in memory).
template <int M>
__attribute__((target("avx2"))) inline void weighted_sum_avx2(const float* probs, const float* values, int64_t n,
                                                             int64_t hs, float* out) {
  __m256 acc[M];
  for (int c = 0; c < M; c++) acc[c] = _mm256_setzero_ps();
  for (int64_t k = 0; k < n; k++) {
    const __m256 p = _mm256_set1_ps(probs[k]);
    for (int c = 0; c < M; c++) acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(p, _mm256_loadu_ps(values + k * hs + 8 * c)));
  }
  for (int c = 0; c < M; c++) _mm256_storeu_ps(out + 8 * c, acc[c]);
}

__attribute__((target("avx2"))) inline void attend_avx2(const float* q, const float* keys, const float* values,
                                                       int64_t n, int64_t hs, float scale, float* probs, float* out) {
  int64_t j = 0;
  if (hs % 8 == 0)
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(probs + j, _mm256_mul_ps(scores8(q, keys + j * hs, hs), _mm256_set1_ps(scale)));
  for (; j < n; j++) probs[j] = score_scalar(q, keys + j * hs, hs) * scale;
  softmax(probs, n, exp_avx2);
  // out, 64 floats at a time in registers, summed over the keys in order
  const int64_t body = hs - hs % 8;
  int64_t i0 = 0;
  for (; i0 + 64 <= body; i0 += 64) weighted_sum_avx2<8>(probs, values + i0, n, hs, out + i0);
  if (body - i0 > 0) {
    __m256 acc[8];
    const int m = int((body - i0) / 8);
    for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < n; k++) {
      const __m256 p = _mm256_set1_ps(probs[k]);
      const float* v = values + k * hs + i0;
      for (int c = 0; c < m; c++) acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(p, _mm256_loadu_ps(v + 8 * c)));
    }
    for (int c = 0; c < m; c++) _mm256_storeu_ps(out + i0 + 8 * c, acc[c]);
  }
  for (int64_t i = body; i < hs; i++) {
    float s = 0.0f;
    for (int64_t k = 0; k < n; k++) s += probs[k] * values[k * hs + i];
    out[i] = s;
  }
}

__attribute__((target("avx2"))) inline float quantize_avx2(const float* x, int64_t n, int8_t* q, uint8_t* abs,
                                                           uint8_t* plus) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  __m256 vmax = _mm256_setzero_ps(), vnan = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    vmax = _mm256_max_ps(_mm256_andnot_ps(sign_bit, v), vmax);  // a NaN |x| gives vmax back: skipped, as scalar
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  float amax = 0.0f;
  for (float l : lanes) amax = std::max(amax, l);  // a maximum is the same in any order
  const float d = _mm256_movemask_ps(vnan) ? NAN : amax / 127.0f;
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  const __m256 vinv = _mm256_set1_ps(inv), magic = _mm256_set1_ps(12582912.0f);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (int64_t i = 0; i < n; i += 32) {
    __m256i part[4];
    for (int j = 0; j < 4; j++) {
      const __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), vinv);
      const __m256 rounded = _mm256_sub_ps(_mm256_add_ps(scaled, magic), magic);
      const __m256 clamped = _mm256_min_ps(hi, _mm256_max_ps(lo, rounded));
      const __m256 ordered = _mm256_cmp_ps(rounded, rounded, _CMP_ORD_Q);  // NaN lanes: 0, as scalar
      part[j] = _mm256_cvtps_epi32(_mm256_and_ps(ordered, clamped));  // exact: already integers
    }
    // int32 -> int8 keeping the order (the packs work within 128-bit lanes; the permute puts them back)
    __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(part[0], part[1]), _mm256_packs_epi32(part[2], part[3]));
    packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), packed);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(abs + i), _mm256_abs_epi8(packed));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(plus + i), _mm256_xor_si256(packed, _mm256_set1_epi8(-128)));
  }
  return d;
}

// A tile of a block of 16 weight rows (interleaved by 4 inputs: [n / 4][16][4]) by C entries: at each 4 inputs,
// two weight vectors (rows 0-7 and 8-15, 4 bytes each) are loaded once for the C entries, and each entry's 4
// activation bytes (broadcast) serve the 16 rows. Each lane is one row's sum (no horizontal sums): |x| * (w with
// x's sign) = x * w (vpmaddubsw; pairs fit int16: 127 * 127 * 2 < 32767), quads in int32 (vpmaddwd by ones).
// The float accumulators live in `out` (in L1): 4 C int sums and the weights take the 16 registers.
template <int C, int CHUNKS>
__attribute__((target("avx2"))) void q8_tile16_avx2(const Q8Weights& w, const Q8Activations& x, int64_t block,
                                                    int64_t e0, float* out) {
  const int64_t groups = w.n / w.group;  // w.group == 32 * CHUNKS
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* wq = w.q + 16 * block * w.n;
  for (int i = 0; i < 16 * C; i += 8) _mm256_storeu_ps(out + i, _mm256_setzero_ps());  // (a loop: rep stos, slow)
  for (int64_t g = 0; g < groups; g++) {
    __m256i sum[2][C];
    for (int c = 0; c < C; c++) sum[0][c] = _mm256_setzero_si256(), sum[1][c] = _mm256_setzero_si256();
    for (int64_t k = g * w.group; k < g * w.group + 32 * CHUNKS; k += 4) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + 16 * k));      // rows 0-7
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + 16 * k + 32)); // rows 8-15
      for (int c = 0; c < C; c++) {
        int32_t four_abs, four_q;
        std::memcpy(&four_abs, x.abs + (e0 + c) * w.n + k, 4);
        std::memcpy(&four_q, x.q + (e0 + c) * w.n + k, 4);
        const __m256i xa = _mm256_set1_epi32(four_abs), xq = _mm256_set1_epi32(four_q);
        sum[0][c] = _mm256_add_epi32(sum[0][c], _mm256_madd_epi16(_mm256_maddubs_epi16(xa, _mm256_sign_epi8(w0, xq)), ones));
        sum[1][c] = _mm256_add_epi32(sum[1][c], _mm256_madd_epi16(_mm256_maddubs_epi16(xa, _mm256_sign_epi8(w1, xq)), ones));
      }
    }
    // acc + float(sum) * (entry's scale * row's scale), per lane: the contract's step, 8 rows at once
    const float* wscale = w.scale + (block * groups + g) * 16;
    for (int c = 0; c < C; c++) {
      const __m256 xscale = _mm256_set1_ps(x.scale[(e0 + c) * groups + g]);
      for (int h = 0; h < 2; h++) {
        const __m256 scale = _mm256_mul_ps(xscale, _mm256_loadu_ps(wscale + 8 * h));
        const __m256 acc = _mm256_loadu_ps(out + 16 * c + 8 * h);
        _mm256_storeu_ps(out + 16 * c + 8 * h, _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sum[h][c]), scale)));
      }
    }
  }
}

// The peak of the AVX2 int8 dot product on data in L1: the tile's four instructions per 32 products (vpsignb,
// vpmaddubsw, vpmaddwd, vpaddd) on 4 independent sums (their adds take one cycle: 4 keep every pipe busy, and 4 weight
// vectors and 4 sums stay in registers), `steps` times (the empty asm makes the activations new to
// the compiler at every step, so nothing is hoisted). Returns the products done; sink gets the sums. For bench use:
// a measured ceiling to set the step's rate against.
__attribute__((target("avx2"))) inline int64_t int8_peak_avx2(int64_t steps, int32_t* sink) {
  alignas(32) int8_t weights[4][32];
  for (int j = 0; j < 4; j++)
    for (int i = 0; i < 32; i++) weights[j][i] = int8_t((i * 7 + j * 13) % 255 - 127);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i xq = _mm256_set1_epi32(0x05fb7f81), xa = _mm256_abs_epi8(xq), sum[4];
  for (auto& s : sum) s = _mm256_setzero_si256();
  for (int64_t step = 0; step < steps; step++) {
    asm volatile("" : "+x"(xq), "+x"(xa));
    for (int j = 0; j < 4; j++) {
      const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(weights[j]));
      sum[j] = _mm256_add_epi32(sum[j], _mm256_madd_epi16(_mm256_maddubs_epi16(xa, _mm256_sign_epi8(wv, xq)), ones));
    }
  }
  __m256i total = _mm256_setzero_si256();
  for (auto& s : sum) total = _mm256_add_epi32(total, s);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(sink), total);
  return steps * 4 * 32;
}

// ------------------------------------------------------------------ AVX-512 VNNI

// The AVX2 tile's structure with 512-bit vectors: a block of 32 rows interleaved by 4 inputs ([n / 4][32][4]); at
// each 4 inputs two weight vectors (rows 0-15 and 16-31) serve the C entries, and one vpdpbusd multiplies an
// entry's 4 activation bytes (broadcast, as x + 128) by 4 bytes of 16 rows: each lane is one row's sum, less
// 128 * sum(w) at the group's end. The float accumulators live in `out`, as in the AVX2 tile.
template <int C, int CHUNKS>
__attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni"))) void q8_tile32_vnni(
    const Q8Weights& w, const Q8Activations& x, int64_t block, int64_t e0, float* out) {
  const int64_t groups = w.n / w.group;  // w.group == 32 * CHUNKS
  const int8_t* wq = w.q + 32 * block * w.n;
  for (int i = 0; i < 32 * C; i += 16) _mm512_storeu_ps(out + i, _mm512_setzero_ps());
  for (int64_t g = 0; g < groups; g++) {
    __m512i sum[2][C];
    for (int c = 0; c < C; c++) sum[0][c] = _mm512_setzero_si512(), sum[1][c] = _mm512_setzero_si512();
    for (int64_t k = g * w.group; k < g * w.group + 32 * CHUNKS; k += 4) {
      const __m512i w0 = _mm512_loadu_si512(wq + 32 * k);       // rows 0-15 x 4 bytes
      const __m512i w1 = _mm512_loadu_si512(wq + 32 * k + 64);  // rows 16-31
      for (int c = 0; c < C; c++) {
        int32_t four;
        std::memcpy(&four, x.plus + (e0 + c) * w.n + k, 4);
        const __m512i xp = _mm512_set1_epi32(four);
        sum[0][c] = _mm512_dpbusd_epi32(sum[0][c], xp, w0);  // (x + 128) * w
        sum[1][c] = _mm512_dpbusd_epi32(sum[1][c], xp, w1);
      }
    }
    const int64_t at = (block * groups + g) * 32;
    for (int h = 0; h < 2; h++) {
      const __m512i offset = _mm512_slli_epi32(_mm512_loadu_si512(w.sum + at + 16 * h), 7);  // 128 * sum(w)
      const __m512 wscale = _mm512_loadu_ps(w.scale + at + 16 * h);
      for (int c = 0; c < C; c++) {
        const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(x.scale[(e0 + c) * groups + g]), wscale);
        const __m512 sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum[h][c], offset));
        const __m512 acc = _mm512_loadu_ps(out + 32 * c + 16 * h);
        _mm512_storeu_ps(out + 32 * c + 16 * h, _mm512_add_ps(acc, _mm512_mul_ps(sums, scale)));
      }
    }
  }
}

// int8_peak_avx2's measure for VNNI: one vpdpbusd per 64 products, 12 independent sums (its
// result takes some 5 cycles to feed the next, on up to 2 ports).
__attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni"))) inline int64_t int8_peak_vnni(int64_t steps,
                                                                                                   int32_t* sink) {
  alignas(64) int8_t weights[12][64];
  for (int j = 0; j < 12; j++)
    for (int i = 0; i < 64; i++) weights[j][i] = int8_t((i * 7 + j * 13) % 255 - 127);
  __m512i xp = _mm512_set1_epi32(0x05fb7f81), sum[12];
  for (auto& s : sum) s = _mm512_setzero_si512();
  for (int64_t step = 0; step < steps; step++) {
    asm volatile("" : "+v"(xp));
    for (int j = 0; j < 12; j++) sum[j] = _mm512_dpbusd_epi32(sum[j], xp, _mm512_load_si512(weights[j]));
  }
  __m512i total = _mm512_setzero_si512();
  for (auto& s : sum) total = _mm512_add_epi32(total, s);
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, total);
  std::memcpy(sink, lanes, 8 * sizeof(int32_t));
  return steps * 12 * 64;
}
#endif

// ------------------------------------------------------------------ denormals

// Flush-to-zero and denormals-are-zero for the calling thread while it lives (x86; elsewhere nothing).
class FlushDenormals {
 public:
#ifdef TINYLLM_X86
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ (bit 15) | DAZ (bit 6)
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

// ------------------------------------------------------------------ choosing a path

// The kernels of one path: float dot products; one query's attention; quantizing activations; exp; int8 tiles of a
// block of `rows` weight rows (interleaved by 4 inputs or not) by 1 to `entries` entries (MAX_TILE_ENTRIES at
// most), for groups of 32 and 64 inputs (q8[entries - 1][group/32 - 1]). A tile's float outputs fit in
// MAX_TILE floats.
constexpr int MAX_TILE_ENTRIES = 4, MAX_TILE = 4 * 32;

struct Kernels {
  std::string name;
  DotF32 dot_f32;
  Attend attend;
  Quantize quantize;
  ExpF32 exp;
  int rows;
  bool interleaved;
  int entries;
  Q8Block q8[MAX_TILE_ENTRIES][2];
};

inline bool cpu_has(const std::string& name) {
#ifdef TINYLLM_X86
  if (name == "avx2") return __builtin_cpu_supports("avx2");
  if (name == "vnni")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
#endif
  return name == "scalar";
}

// "auto" is the fastest path this CPU runs: vnni, avx2, else scalar.
inline Kernels kernels_named(const std::string& name) {
  std::string chosen = name;
  if (name == "auto") chosen = cpu_has("vnni") ? "vnni" : cpu_has("avx2") ? "avx2" : "scalar";
  TORCH_CHECK(chosen == "scalar" || chosen == "avx2" || chosen == "vnni", "unknown kernels '", name,
              "' (auto, vnni, avx2 or scalar)");
  TORCH_CHECK(cpu_has(chosen), "this CPU cannot run the ", chosen, " kernels");
#ifdef TINYLLM_X86
  if (chosen == "vnni")
    return {"vnni", dot_f32_avx2, attend_avx2, quantize_avx2, exp_avx2, 32, true, 4,
            {{q8_tile32_vnni<1, 1>, q8_tile32_vnni<1, 2>},
             {q8_tile32_vnni<2, 1>, q8_tile32_vnni<2, 2>},
             {q8_tile32_vnni<3, 1>, q8_tile32_vnni<3, 2>},
             {q8_tile32_vnni<4, 1>, q8_tile32_vnni<4, 2>}}};
  if (chosen == "avx2")
    return {"avx2", dot_f32_avx2, attend_avx2, quantize_avx2, exp_avx2, 16, true, 4,
            {{q8_tile16_avx2<1, 1>, q8_tile16_avx2<1, 2>},
             {q8_tile16_avx2<2, 1>, q8_tile16_avx2<2, 2>},
             {q8_tile16_avx2<3, 1>, q8_tile16_avx2<3, 2>},
             {q8_tile16_avx2<4, 1>, q8_tile16_avx2<4, 2>}}};
#endif
  return {"scalar", dot_f32_scalar, attend_scalar, quantize_scalar, exp_scalar, 4, false, 2,
          {{q8_block_scalar<1, 1>, q8_block_scalar<1, 2>}, {q8_block_scalar<2, 1>, q8_block_scalar<2, 2>}}};
}

}  // namespace tinyllm
