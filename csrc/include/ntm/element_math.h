// Element formulas of the ntm ops: the one source of truth shared by the CPU kernels
// (scalar and at::vec::Vectorized lanes) and the CUDA kernels.
//
// Every function is a template over the arithmetic type T, which is the accumulation type
// (float or double) or a CPU SIMD vector of it.  Transcendentals go through ntm_exp/ntm_tanh,
// overloaded below for scalars (host and device) and, on the CPU, for Vectorized lanes.
// The Python twins in ntm_engine/reference.py are the specification of these formulas.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NTM_HD __host__ __device__ __forceinline__
#else
#define NTM_HD inline
#endif

#if !defined(__CUDACC__) && !defined(__HIPCC__)
#include "ntm/vec_math_cpu.h"
#endif

namespace ntm {

NTM_HD float ntm_exp(float v) { return ::expf(v); }
NTM_HD double ntm_exp(double v) { return ::exp(v); }
NTM_HD float ntm_tanh(float v) { return ::tanhf(v); }
NTM_HD double ntm_tanh(double v) { return ::tanh(v); }

#if !defined(__CUDACC__) && !defined(__HIPCC__)
inline at::vec::Vectorized<double> ntm_exp(const at::vec::Vectorized<double>& v) { return v.exp(); }
inline at::vec::Vectorized<double> ntm_tanh(const at::vec::Vectorized<double>& v) { return v.tanh(); }
inline at::vec::Vectorized<float> ntm_exp(const at::vec::Vectorized<float>& v) { return cpu::CPU_CAPABILITY::fast_exp(v); }
inline at::vec::Vectorized<float> ntm_tanh(const at::vec::Vectorized<float>& v) { return cpu::CPU_CAPABILITY::fast_tanh(v); }
#endif

// The soft clamp's constants in the arithmetic type T (a scalar, or a CPU SIMD vector of
// broadcast values); `clamped` is uniform over a launch.  Built on the host by
// ntm::clamp_params (ntm/op_io.h).
template <typename T>
struct ClampParams {
  T clamp;
  T inv_clamp;
  bool clamped;
};

// Soft clamp of the scale: s = clamp * tanh(l / clamp), or s = l when unclamped.
// `clamp` and `inv_clamp` are broadcast constants; `clamped` is uniform over a launch.
template <typename T>
NTM_HD T soft_clamp(const T& l, const T& clamp, const T& inv_clamp, bool clamped) {
  return clamped ? clamp * ntm_tanh(l * inv_clamp) : l;
}

template <typename T>
NTM_HD T soft_clamp(const T& l, const ClampParams<T>& c) {
  return soft_clamp(l, c.clamp, c.inv_clamp, c.clamped);
}

// ds/dl expressed through s: 1 - (s / clamp)^2 = 1 - tanh^2(l / clamp); 1 when unclamped.
template <typename T>
NTM_HD T soft_clamp_grad(const T& s, const T& inv_clamp, const T& one, bool clamped) {
  if (!clamped) return one;
  const T r = s * inv_clamp;
  return one - r * r;
}

template <typename T>
NTM_HD T soft_clamp_grad(const T& s, const ClampParams<T>& c, const T& one) {
  return soft_clamp_grad(s, c.inv_clamp, one, c.clamped);
}

// y = x * exp(s) + shift
template <typename T>
NTM_HD T coupling_forward(const T& x, const T& shift, const T& s) {
  return x * ntm_exp(s) + shift;
}

// x = (y - shift) * exp(-s)
template <typename T>
NTM_HD T coupling_inverse(const T& y, const T& shift, const T& s) {
  return (y - shift) * ntm_exp(T(0) - s);
}

// Gradients of y = x exp(s) + shift, logdet = sum s, from the output y.
// grad_s is with respect to s (the caller multiplies by soft_clamp_grad for the logits).
template <typename T>
struct CouplingGrads {
  T x;
  T grad_x;
  T grad_s;
};

template <typename T>
NTM_HD CouplingGrads<T> coupling_backward(
    const T& y, const T& shift, const T& s, const T& grad_y, const T& grad_logdet) {
  const T centred = y - shift;  // = x * exp(s)
  const T e = ntm_exp(s);
  CouplingGrads<T> g;
  g.x = centred / e;
  g.grad_x = grad_y * e;
  g.grad_s = grad_y * centred + grad_logdet;
  return g;
}

// One element of the Gaussian NLL: 1/2 z^2 + log_sigma, z = (u - mean) exp(-log_sigma).
template <typename T>
NTM_HD T nll_element(const T& u, const T& mean, const T& log_sigma, const T& half) {
  const T z = (u - mean) * ntm_exp(T(0) - log_sigma);
  return half * z * z + log_sigma;
}

template <typename T>
struct NllGrads {
  T grad_u;      // grad_mean = -grad_u
  T grad_log_sigma;
};

// grad_u = g z exp(-log_sigma), grad_log_sigma = g (1 - z^2), for per-sample upstream g.
template <typename T>
NTM_HD NllGrads<T> nll_element_grads(
    const T& u, const T& mean, const T& log_sigma, const T& g, const T& one) {
  const T inv_sigma = ntm_exp(T(0) - log_sigma);
  const T z = (u - mean) * inv_sigma;
  NllGrads<T> r;
  r.grad_u = g * z * inv_sigma;
  r.grad_log_sigma = g * (one - z * z);
  return r;
}

}  // namespace ntm
