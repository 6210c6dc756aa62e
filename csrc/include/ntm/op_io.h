// The backend-independent part of every op call: validate the arguments, make the inputs
// contiguous and allocate the outputs.  Each backend then only launches its kernel on the
// returned tensors (contiguous, row-major [rows, n]).
#pragma once

#include "ntm/op_checks.h"

#include <ATen/ops/empty.h>

namespace ntm {

// affine_coupling / affine_coupling_inverse: in, shift, logits -> out, logdet [rows]
struct CouplingMapIO {
  at::Tensor in, shift, logits, out, logdet;
  int64_t rows, n;
};

inline CouplingMapIO prepare_coupling_map(const char* op, const char* in_name,
                                          const at::Tensor& in, const at::Tensor& shift,
                                          const at::Tensor& logits,
                                          const std::optional<double>& clamp) {
  check_affine_coupling(op, in_name, in, shift, logits, clamp);
  CouplingMapIO io{in.contiguous(), shift.contiguous(), logits.contiguous(), {}, {},
                   in.size(0), row_length(in)};
  io.out = at::empty(in.sizes(), in.options());
  io.logdet = at::empty({io.rows}, in.options().dtype(acc_dtype(in.scalar_type())));
  return io;
}

// affine_coupling_backward: y, shift, logits, grad_y, grad_logdet (undefined when absent,
// else [rows] in the accumulation dtype) -> x, grad_x, grad_shift, grad_logits
struct CouplingBackwardIO {
  at::Tensor y, shift, logits, grad_y, grad_logdet, x, grad_x, grad_shift, grad_logits;
  int64_t rows, n;
};

inline CouplingBackwardIO prepare_coupling_backward(const at::Tensor& y, const at::Tensor& shift,
                                                    const at::Tensor& logits,
                                                    const at::Tensor& grad_y,
                                                    const std::optional<at::Tensor>& grad_logdet,
                                                    const std::optional<double>& clamp) {
  check_affine_coupling_backward(y, shift, logits, grad_y, grad_logdet, clamp);
  const bool has_gld = grad_logdet.has_value() && grad_logdet->defined();
  CouplingBackwardIO io{y.contiguous(), shift.contiguous(), logits.contiguous(),
                        grad_y.contiguous(),
                        has_gld ? grad_logdet->to(acc_dtype(y.scalar_type())).contiguous()
                                : at::Tensor(),
                        {}, {}, {}, {}, y.size(0), row_length(y)};
  for (at::Tensor* t : {&io.x, &io.grad_x, &io.grad_shift, &io.grad_logits})
    *t = at::empty(y.sizes(), y.options());
  return io;
}

// gaussian_nll: u, mean, log_sigma -> nll [rows];
// gaussian_nll_backward: u, mean, log_sigma, grad [rows] -> grad_u, grad_mean, grad_log_sigma
struct NllIO {
  at::Tensor u, mean, log_sigma, grad, nll, grad_u, grad_mean, grad_log_sigma;
  int64_t rows, n;
};

inline NllIO prepare_nll(const char* op, const at::Tensor& u, const at::Tensor& mean,
                         const at::Tensor& log_sigma, const at::Tensor* grad) {
  check_gaussian_nll(op, u, mean, log_sigma);
  if (grad != nullptr) check_per_sample(op, "grad", *grad, "u", u);
  NllIO io{u.contiguous(), mean.contiguous(), log_sigma.contiguous(), {}, {}, {}, {}, {},
           u.size(0), row_length(u)};
  const auto acc_options = u.options().dtype(acc_dtype(u.scalar_type()));
  if (grad == nullptr) {
    io.nll = at::empty({io.rows}, acc_options);
  } else {
    io.grad = grad->to(acc_options.dtype()).contiguous();
    for (at::Tensor* t : {&io.grad_u, &io.grad_mean, &io.grad_log_sigma})
      *t = at::empty(u.sizes(), u.options());
  }
  return io;
}

}  // namespace ntm
