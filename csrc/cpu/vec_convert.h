// One vector of bfloat16 / float16 elements to and from Vectorized<float>, with the
// conversion instructions of the capability being compiled, in registers (no temporary arrays).
// AVX-512 bfloat16: widening is one masked vpermw (each 16-bit value moved to the high half of
// its 32-bit lane, the low half zeroed), narrowing is the integer round-to-nearest-even plus one
// masked vpermw that picks the high halves and puts 0xffff where the input was NaN (the bits of
// at::vec::cvtfp32_bf16, which needs a shift, a blend and a 2-uop vpmovusdw for that).  AVX2
// bfloat16: a 16-byte load, vpmovzxwd and a shift; at::vec::cvtfp32_bf16.  float16 uses
// vcvtph2ps / vcvtps2ph.  Other capabilities use at::vec's own conversions.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace ntm::cpu::CPU_CAPABILITY {

using VecF = at::vec::Vectorized<float>;

#if defined(CPU_CAPABILITY_AVX512)
using FloatBits = __m512;
using HalfVecBits = __m256i;  // Vectorized<float>::size() 16-bit elements
inline HalfVecBits load_bits(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline void store_bits(void* p, HalfVecBits v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
#define NTM_NATIVE_REDUCED_CONVERT 1
#elif defined(CPU_CAPABILITY_AVX2)
using FloatBits = __m256;
using HalfVecBits = __m128i;
inline HalfVecBits load_bits(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline void store_bits(void* p, HalfVecBits v) { _mm_storeu_si128(static_cast<__m128i*>(p), v); }
#define NTM_NATIVE_REDUCED_CONVERT 1
#endif

#if defined(CPU_CAPABILITY_AVX512)
// 16 bfloat16 (32 bytes at p) -> 16 float32: word j goes to word 2j+1 (the float's high half).
inline __m512 widen_bf16(const void* p) {
  const __m512i index = _mm512_set_epi32(15 << 16, 14 << 16, 13 << 16, 12 << 16, 11 << 16,
                                         10 << 16, 9 << 16, 8 << 16, 7 << 16, 6 << 16, 5 << 16,
                                         4 << 16, 3 << 16, 2 << 16, 1 << 16, 0);
  const __m512i bits = _mm512_castsi256_si512(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, index, bits));
}

// 16 float32 -> 16 bfloat16, rounded to nearest even; NaN -> 0xffff (as at::vec::cvtfp32_bf16).
inline __m256i narrow_to_bf16(__m512 v) {
  // word j of the result = word 2j+1 (the high half) of float j
  const __m512i high_halves = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0,
                                               (31 << 16) | 29, (27 << 16) | 25, (23 << 16) | 21,
                                               (19 << 16) | 17, (15 << 16) | 13, (11 << 16) | 9,
                                               (7 << 16) | 5, (3 << 16) | 1);
  const __m512i x = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb);
  const __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  return _mm512_castsi512_si256(
      _mm512_mask_permutexvar_epi16(_mm512_set1_epi32(-1), ordered, high_halves, rounded));
}
#endif

// Vectorized<float>::size() elements of scalar_t (bfloat16 or float16) as float.
template <typename scalar_t>
inline VecF load_as_float(const scalar_t* p) {
#ifdef NTM_NATIVE_REDUCED_CONVERT
  FloatBits out;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
#if defined(CPU_CAPABILITY_AVX512)
    out = widen_bf16(p);
#else
    at::vec::cvtbf16_fp32(load_bits(p), out);
#endif
  } else {
    at::vec::cvtfp16_fp32(load_bits(p), out);
  }
  return VecF(out);
#else
  VecF out;
  at::vec::load_to_float<scalar_t>(p, out);
  return out;
#endif
}

template <typename scalar_t>
inline void store_from_float(const VecF& v, scalar_t* p) {
#ifdef NTM_NATIVE_REDUCED_CONVERT
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
#if defined(CPU_CAPABILITY_AVX512)
    store_bits(p, narrow_to_bf16(v));
#else
    store_bits(p, at::vec::cvtfp32_bf16(v));
#endif
  } else {
    store_bits(p, at::vec::cvtfp32_fp16(v));
  }
#else
  at::vec::convert_from_float<scalar_t>(v, v).store(p, VecF::size());
#endif
}

}  // namespace ntm::cpu::CPU_CAPABILITY
