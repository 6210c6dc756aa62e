// Per-op validation, one function per op schema, called by every backend.
#pragma once

#include "ntm/checks.h"

namespace ntm {

inline void check_affine_coupling(const char* op, const char* in_name, const at::Tensor& in,
                                  const at::Tensor& shift, const at::Tensor& scale_logits,
                                  const std::optional<double>& clamp) {
  check_reference(op, in_name, in);
  check_like(op, "shift", shift, in_name, in);
  check_like(op, "scale_logits", scale_logits, in_name, in);
  check_clamp(op, clamp);
}

inline void check_affine_coupling_backward(const at::Tensor& y, const at::Tensor& shift,
                                           const at::Tensor& scale_logits,
                                           const at::Tensor& grad_y,
                                           const std::optional<at::Tensor>& grad_logdet,
                                           const std::optional<double>& clamp) {
  const char* op = "ntm::affine_coupling_backward";
  check_affine_coupling(op, "y", y, shift, scale_logits, clamp);
  check_like(op, "grad_y", grad_y, "y", y);
  if (grad_logdet.has_value() && grad_logdet->defined())
    check_per_sample(op, "grad_logdet", *grad_logdet, "y", y);
}

inline void check_gaussian_nll(const char* op, const at::Tensor& u, const at::Tensor& mean,
                               const at::Tensor& log_sigma) {
  check_reference(op, "u", u);
  check_like(op, "mean", mean, "u", u);
  check_like(op, "log_sigma", log_sigma, "u", u);
}

}  // namespace ntm
