// One vector of bfloat16 / float16 elements to and from Vectorized<float>, with the
// conversion instructions of the capability being compiled: on AVX2 and AVX-512 a 16- or
// 32-byte load plus a widening shift (bfloat16) or vcvtph2ps (float16), and the narrowing back
// (round to nearest even, NaN kept) without the temporary arrays that at::vec's two-vector
// helpers need for a single vector.  Other capabilities use at::vec's own conversions.
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

// Vectorized<float>::size() elements of scalar_t (bfloat16 or float16) as float.
template <typename scalar_t>
inline VecF load_as_float(const scalar_t* p) {
#ifdef NTM_NATIVE_REDUCED_CONVERT
  FloatBits out;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    at::vec::cvtbf16_fp32(load_bits(p), out);
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
    store_bits(p, at::vec::cvtfp32_bf16(v));
  } else {
    store_bits(p, at::vec::cvtfp32_fp16(v));
  }
#else
  at::vec::convert_from_float<scalar_t>(v, v).store(p, VecF::size());
#endif
}

}  // namespace ntm::cpu::CPU_CAPABILITY
