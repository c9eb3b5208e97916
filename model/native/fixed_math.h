// exp, log, sin and cos from + - * / and comparisons alone, in double: the same bits on every CPU. libm picks
// its functions per CPU (ifunc: an FMA variant where the CPU has FMA, whose roundings differ); torch's SLEEF
// ones differ per vector width.
//
// Each reduces its argument by powers of two (exp, log) or by pi/2 in three parts (sin, cos), then evaluates a
// fixed polynomial (Horner): a few units in the last place of a double, so rounded to float almost always the
// correctly rounded result. Compiled, as the whole extension, with -ffp-contract=off (no fused multiply-adds)
// and without -ffast-math (no reordering).

#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tinyllm {

inline double from_bits(uint64_t b) {
  double d;
  std::memcpy(&d, &b, sizeof d);
  return d;
}

inline uint64_t to_bits(double d) {
  uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

// 2^k for -1022 <= k <= 1023, from its exponent bits.
inline double pow2(int64_t k) { return from_bits(uint64_t(k + 1023) << 52); }

constexpr double LN2_HI = 0x1.62e42fee00000p-1;   // ln 2's leading 32 bits: k * LN2_HI is exact for |k| < 2^21
constexpr double LN2_LO = 0x1.a39ef35793c76p-33;  // ln 2 - LN2_HI
constexpr double INV_LN2 = 0x1.71547652b82fep+0;
constexpr double SQRT2 = 0x1.6a09e667f3bcdp+0;

constexpr double EXP_TAYLOR[] = {1.0, 1.0, 0x1.0000000000000p-1, 0x1.5555555555555p-3, 0x1.5555555555555p-5,
                                0x1.1111111111111p-7, 0x1.6c16c16c16c17p-10, 0x1.a01a01a01a01ap-13,
                                0x1.a01a01a01a01ap-16, 0x1.71de3a556c734p-19, 0x1.27e4fb7789f5cp-22,
                                0x1.ae64567f544e4p-26, 0x1.1eed8eff8d898p-29, 0x1.6124613a86d09p-33};  // 1 / n!

// exp(x): x = k ln 2 + r, |r| <= ln 2 / 2; exp(r) by its Taylor polynomial of degree 13 (the next term is below
// 1e-17); times 2^k, in two exact steps where 2^k alone would leave the normal range.
inline double exp_fixed(double x) {
  if (x != x) return x;
  if (x > 0x1.62e42fefa39efp+9) return INFINITY;  // above ln(DBL_MAX)
  if (x < -745.2) return 0.0;                     // below ln of half the smallest denormal
  const double k = (x * INV_LN2 + 0x1.8p52) - 0x1.8p52;  // nearest integer: adding 1.5 * 2^52 drops the fraction
  const double r = (x - k * LN2_HI) - k * LN2_LO;
  double p = EXP_TAYLOR[13];
  for (int n = 12; n >= 0; n--) p = p * r + EXP_TAYLOR[n];
  const int64_t n = int64_t(k);  // -1075..1024; in [-708, 708], -1022..1022 (kernels.h's exp_avx2 relies on it)
  if (n > 1023) return p * pow2(1023) * pow2(n - 1023);
  if (n < -1022) return p * pow2(-1022) * pow2(n + 1022);
  return p * pow2(n);
}

// log(x): x = 2^k m, m in (sqrt(2)/2, sqrt(2)]; log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, by its
// series to s^23 (the next term is below 1e-18 of the first).
inline double log_fixed(double x) {
  static constexpr double C[] = {0x1.5555555555555p-1, 0x1.999999999999ap-2, 0x1.2492492492492p-2,
                                 0x1.c71c71c71c71cp-3, 0x1.745d1745d1746p-3, 0x1.3b13b13b13b14p-3,
                                 0x1.1111111111111p-3, 0x1.e1e1e1e1e1e1ep-4, 0x1.af286bca1af28p-4,
                                 0x1.8618618618618p-4, 0x1.642c8590b2164p-4};  // 2 / (2n + 3)
  if (x != x || x < 0.0) return NAN;
  if (x == 0.0) return -INFINITY;
  if (x == INFINITY) return INFINITY;
  int64_t k = 0;
  if (x < DBL_MIN) x *= 0x1p54, k = -54;  // a denormal (when they are not flushed), made normal exactly
  const uint64_t b = to_bits(x);
  k += int64_t(b >> 52) - 1023;
  double m = from_bits((b & ((uint64_t(1) << 52) - 1)) | (uint64_t(1023) << 52));  // in [1, 2)
  if (m > SQRT2) m *= 0.5, k += 1;
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  double q = C[10];
  for (int n = 9; n >= 0; n--) q = q * s2 + C[n];
  const double kd = double(k);
  return kd * LN2_HI + (2.0 * s + (kd * LN2_LO + s * (s2 * q)));
}

constexpr double PIO2_1 = 0x1.921fb54400000p+0;   // pi/2's leading 33 bits: k * PIO2_1 is exact for |k| < 2^20
constexpr double PIO2_2 = 0x1.0b4611a600000p-34;  // its next 33 bits
constexpr double PIO2_3 = 0x1.3198a2e037073p-69;  // the rest (to 53 bits)
constexpr double INV_PIO2 = 0x1.45f306dc9c883p-1;

// sin(x) and cos(x) for |x| < 2^19 (rope angles: position times a frequency of at most 1): x = k pi/2 + r,
// |r| <= pi/4 (pi/2 in three parts, so r keeps its accuracy near multiples of pi/2), then Taylor polynomials of
// degree 17 and 18 in r and the quadrant k mod 4.
inline void sincos_fixed(double x, double* sin_out, double* cos_out) {
  static constexpr double S[] = {0x1.0000000000000p+0,  -0x1.5555555555555p-3, 0x1.1111111111111p-7,
                                 -0x1.a01a01a01a01ap-13, 0x1.71de3a556c734p-19, -0x1.ae64567f544e4p-26,
                                 0x1.6124613a86d09p-33,  -0x1.ae7f3e733b81fp-41,
                                 0x1.952c77030ad4ap-49};  // (-1)^n / (2n+1)!
  static constexpr double C[] = {0x1.0000000000000p+0,  -0x1.0000000000000p-1, 0x1.5555555555555p-5,
                                 -0x1.6c16c16c16c17p-10, 0x1.a01a01a01a01ap-16, -0x1.27e4fb7789f5cp-22,
                                 0x1.1eed8eff8d898p-29,  -0x1.93974a8c07c9dp-37, 0x1.ae7f3e733b81fp-45,
                                 -0x1.6827863b97d97p-53};  // (-1)^n/(2n)!
  const double k = (x * INV_PIO2 + 0x1.8p52) - 0x1.8p52;
  const double r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3, r2 = r * r;
  double s = S[8], c = C[9];
  for (int n = 7; n >= 0; n--) s = s * r2 + S[n];
  for (int n = 8; n >= 0; n--) c = c * r2 + C[n];
  s *= r;
  switch (int64_t(k) & 3) {
    case 0: *sin_out = s, *cos_out = c; break;
    case 1: *sin_out = c, *cos_out = -s; break;
    case 2: *sin_out = -s, *cos_out = -c; break;
    default: *sin_out = -c, *cos_out = s; break;
  }
}

// exp(x) rounded to float (the step's attention softmax and SiLU).
inline float expf_fixed(float x) { return float(exp_fixed(double(x))); }

}  // namespace tinyllm
