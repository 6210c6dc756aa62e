// The element operations of the five ntm CUDA ops for the row-map kernel (row_map_kernel.h):
// formulas from ntm/element_math.h, the ones the CPU kernels use.  Host and device code, so
// the CPU emulator (tests/cpp/) runs the very same operations.
#pragma once

#include "ntm/element_math.h"

namespace ntm::row_map {

// forward: out = x exp(s) + shift; inverse: out = (y - shift) exp(-s).  Row sum: sum s.
template <typename A, bool kInverse>
struct CouplingMapOp {
  using acc_t = A;
  static constexpr int kIn = 3;  // in, shift, scale_logits
  static constexpr int kOut = 1;
  static constexpr bool kReduce = true;
  ClampParams<A> c;

  NTM_HD A operator()(const A (&in)[3], A /*row_scalar*/, A (&out)[1]) const {
    const A s = soft_clamp(in[2], c);
    out[0] = kInverse ? coupling_inverse(in[0], in[1], s) : coupling_forward(in[0], in[1], s);
    return s;
  }
};

// From the output y: (x, grad_x, grad_shift, grad_scale_logits); row scalar: grad_logdet.
// Outputs the caller did not ask for have null pointers and are not stored.
template <typename A>
struct CouplingBackwardOp {
  using acc_t = A;
  static constexpr int kIn = 4;  // y, shift, scale_logits, grad_y
  static constexpr int kOut = 4;
  static constexpr bool kReduce = false;
  ClampParams<A> c;

  NTM_HD A operator()(const A (&in)[4], A grad_logdet, A (&out)[4]) const {
    const A s = soft_clamp(in[2], c);
    const CouplingGrads<A> g = coupling_backward(in[0], in[1], s, in[3], grad_logdet);
    out[0] = g.x;
    out[1] = g.grad_x;
    out[2] = in[3];
    out[3] = g.grad_s * soft_clamp_grad(s, c, A(1));
    return A(0);
  }
};

// Row sum of 1/2 ((u - mean) exp(-log_sigma))^2 + log_sigma; no per-element output.
template <typename A>
struct NllOp {
  using acc_t = A;
  static constexpr int kIn = 3;  // u, mean, log_sigma
  static constexpr int kOut = 0;
  static constexpr bool kReduce = true;

  NTM_HD A operator()(const A (&in)[3], A /*row_scalar*/, A (& /*out*/)[1]) const {
    return nll_element(in[0], in[1], in[2], A(0.5));
  }
};

// (grad_u, grad_mean, grad_log_sigma) for the per-sample upstream gradient (row scalar).
template <typename A>
struct NllBackwardOp {
  using acc_t = A;
  static constexpr int kIn = 3;
  static constexpr int kOut = 3;
  static constexpr bool kReduce = false;

  NTM_HD A operator()(const A (&in)[3], A grad, A (&out)[3]) const {
    const NllGrads<A> r = nll_element_grads(in[0], in[1], in[2], grad, A(1));
    out[0] = r.grad_u;
    out[1] = A(0) - r.grad_u;
    out[2] = r.grad_log_sigma;
    return A(0);
  }
};

}  // namespace ntm::row_map
