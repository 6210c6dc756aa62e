// Float32 exp and tanh on CPU SIMD lanes, accurate to about 1 ulp, several times cheaper than
// the Sleef u10 routines behind at::vec::Vectorized<float>::exp()/tanh() on the AVX2 machines
// we measured (bench/results).  Cephes-style: exp by Cody-Waite reduction x = n ln2 + r and a
// degree-6 polynomial; tanh by an odd polynomial for |x| < 0.625 and 1 - 2/(exp(2|x|) + 1)
// above.  NaN propagates, exp overflows to +inf and underflows to 0 like the scalar versions.
//
// The algorithm is written once over a small set of lane operations (Avx2Lanes, Avx512Lanes);
// the capability being compiled (CPU_CAPABILITY_AVX2 / CPU_CAPABILITY_AVX512, see
// csrc/cpu/dispatch.cpp) picks the set.  Other capabilities use at::vec's own routines.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#define NTM_FAST_VEC_MATH 1
#endif

namespace ntm::cpu::CPU_CAPABILITY {

using VecF = at::vec::Vectorized<float>;

#ifdef NTM_FAST_VEC_MATH

#if defined(CPU_CAPABILITY_AVX512)
struct Lanes {
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  static F set1(float v) { return _mm512_set1_ps(v); }
  static I set1i(int v) { return _mm512_set1_epi32(v); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static F round(F a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static I to_int(F a) { return _mm512_cvtps_epi32(a); }
  static I half_of(I a) { return _mm512_srai_epi32(a, 1); }
  static I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm512_sub_epi32(a, b); }
  static F exponent_to_float(I biased) { return _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23)); }
  static M gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M is_nan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static F select(M m, F if_true, F if_false) { return _mm512_mask_blend_ps(m, if_false, if_true); }
  static F abs(F a) { return _mm512_abs_ps(a); }
  static F with_sign_of(F magnitude, F sign) {
    const __m512i mask = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    return _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(magnitude), _mm512_and_si512(_mm512_castps_si512(sign), mask)));
  }
};
#else
struct Lanes {
  using F = __m256;
  using I = __m256i;
  using M = __m256;
  static F set1(float v) { return _mm256_set1_ps(v); }
  static I set1i(int v) { return _mm256_set1_epi32(v); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static I to_int(F a) { return _mm256_cvtps_epi32(a); }
  static I half_of(I a) { return _mm256_srai_epi32(a, 1); }
  static I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm256_sub_epi32(a, b); }
  static F exponent_to_float(I biased) { return _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)); }
  static M gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M is_nan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static F select(M m, F if_true, F if_false) { return _mm256_blendv_ps(if_false, if_true, m); }
  static F abs(F a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static F with_sign_of(F magnitude, F sign) {
    return _mm256_or_ps(magnitude, _mm256_and_ps(sign, _mm256_set1_ps(-0.0f)));
  }
};
#endif

// exp(x) = y * 2^n with n = round(x / ln 2) and y = exp(x - n ln 2) (Cody-Waite reduction, a
// degree-6 polynomial); x must already be clamped to a finite range.
struct ExpParts {
  Lanes::F y, n;
};

inline ExpParts exp_parts(Lanes::F xc) {
  using L = Lanes;
  const L::F n = L::round(L::mul(xc, L::set1(1.44269504088896341f)));
  L::F r = L::fnmadd(n, L::set1(0.693359375f), xc);
  r = L::fnmadd(n, L::set1(-2.12194440e-4f), r);
  L::F p = L::set1(1.9875691500e-4f);
  p = L::fmadd(p, r, L::set1(1.3981999507e-3f));
  p = L::fmadd(p, r, L::set1(8.3334519073e-3f));
  p = L::fmadd(p, r, L::set1(4.1665795894e-2f));
  p = L::fmadd(p, r, L::set1(1.6666665459e-1f));
  p = L::fmadd(p, r, L::set1(5.0000001201e-1f));
  return {L::fmadd(p, L::mul(r, r), L::add(r, L::set1(1.0f))), n};
}

#if defined(CPU_CAPABILITY_AVX512)
// y * 2^n in one vscalefps, which overflows to +inf and underflows through the subnormals to 0
// by itself: the input is only clamped to where that has happened (exp(-104) rounds to 0,
// exp(89) to inf), and the clamp keeps NaN (vminps / vmaxps return their second operand when
// either is NaN).  Half the instructions of the version below; the same bits wherever the
// result is a normal float (below: 0 under exp(-87.34), here the subnormals).
inline Lanes::F exp_lanes(Lanes::F x) {
  const Lanes::F xc = _mm512_max_ps(Lanes::set1(-104.0f), _mm512_min_ps(Lanes::set1(89.0f), x));
  const ExpParts e = exp_parts(xc);
  return _mm512_scalef_ps(e.y, e.n);
}
#else
inline Lanes::F exp_lanes(Lanes::F x) {
  using L = Lanes;
  const L::F hi = L::set1(88.7228391116729996f), lo = L::set1(-87.3365447505531f);
  const ExpParts e = exp_parts(L::max(L::min(x, hi), lo));
  // y * 2^n in two halves so that n = 128 (x near the top of the range) does not overflow
  const L::I ni = L::to_int(e.n);
  const L::I n1 = L::half_of(ni), n2 = L::subi(ni, n1), bias = L::set1i(127);
  L::F y = L::mul(e.y, L::exponent_to_float(L::addi(n1, bias)));
  y = L::mul(y, L::exponent_to_float(L::addi(n2, bias)));
  y = L::select(L::gt(x, hi), L::set1(INFINITY), y);
  y = L::select(L::lt(x, lo), L::set1(0.0f), y);
  return L::select(L::is_nan(x), x, y);  // NaN in, NaN out
}
#endif

inline Lanes::F tanh_lanes(Lanes::F x) {
  using L = Lanes;
  const L::F a = L::abs(x);
  // |x| < 0.625: x + x^3 P(x^2)
  const L::F z = L::mul(x, x);
  L::F p = L::set1(-5.70498872745e-3f);
  p = L::fmadd(p, z, L::set1(2.06390887954e-2f));
  p = L::fmadd(p, z, L::set1(-5.37397155531e-2f));
  p = L::fmadd(p, z, L::set1(1.33314422036e-1f));
  p = L::fmadd(p, z, L::set1(-3.33332819422e-1f));
  const L::F small = L::fmadd(L::mul(p, z), x, x);
  // |x| >= 0.625: sign(x) (1 - 2 / (exp(2|x|) + 1))
  const L::F one = L::set1(1.0f);
  const L::F e = exp_lanes(L::add(a, a));
  const L::F large = L::with_sign_of(L::sub(one, L::div(L::set1(2.0f), L::add(e, one))), x);
  return L::select(L::lt(a, L::set1(0.625f)), small, large);
}

inline VecF fast_exp(const VecF& v) { return VecF(exp_lanes(v)); }
inline VecF fast_tanh(const VecF& v) { return VecF(tanh_lanes(v)); }

#else

inline VecF fast_exp(const VecF& v) { return v.exp(); }
inline VecF fast_tanh(const VecF& v) { return v.tanh(); }

#endif

}  // namespace ntm::cpu::CPU_CAPABILITY
