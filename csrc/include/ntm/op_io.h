// The backend-independent part of every op call: validate the arguments, take each input as a
// [rows, n] matrix with contiguous rows (a view when its layout allows, a copy otherwise) and
// allocate the outputs (contiguous).  Each backend then only launches its kernel.
#pragma once

#include "ntm/element_math.h"
#include "ntm/input_copies.h"
#include "ntm/op_checks.h"

#include <ATen/ops/empty.h>

namespace ntm {

// A per-element argument seen as [rows, n]: row r holds the n elements starting at
// data + r * stride (in elements).  Column slices of a wider matrix and batch-expanded tensors
// (stride 0) are used in place; any layout whose rows are not contiguous is copied, and the
// copy is counted (ntm/input_copies.h).
struct RowView {
  at::Tensor t;
  int64_t stride;

  template <typename scalar_t>
  const scalar_t* row_data(int64_t row) const {
    return t.const_data_ptr<scalar_t>() + row * stride;
  }
};

// Whether dims 1.. of t are laid out as one contiguous block (dims of size 1 do not count).
inline bool rows_are_contiguous(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

inline RowView row_view(const at::Tensor& t) {
  const bool in_place = rows_are_contiguous(t);
  if (!in_place) input_copy_counter().fetch_add(1, std::memory_order_relaxed);
  const at::Tensor v = in_place ? t : t.contiguous();
  const int64_t stride = v.size(0) > 1 ? v.stride(0) : row_length(v);
  return {v, stride};
}

// The soft clamp's constants in the accumulation type (clamped == false: unused ones).
template <typename acc_t>
ClampParams<acc_t> clamp_params(const std::optional<double>& clamp) {
  return {static_cast<acc_t>(clamp.value_or(1.0)), static_cast<acc_t>(1.0 / clamp.value_or(1.0)),
          clamp.has_value()};
}

// affine_coupling / affine_coupling_inverse: in, shift, logits -> out, logdet [rows]
struct CouplingMapIO {
  RowView in, shift, logits;
  at::Tensor out, logdet;
  int64_t rows, n;
};

inline CouplingMapIO prepare_coupling_map(const char* op, const char* in_name,
                                          const at::Tensor& in, const at::Tensor& shift,
                                          const at::Tensor& logits,
                                          const std::optional<double>& clamp) {
  check_affine_coupling(op, in_name, in, shift, logits, clamp);
  CouplingMapIO io{row_view(in), row_view(shift), row_view(logits), {}, {},
                   in.size(0), row_length(in)};
  io.out = at::empty(in.sizes(), in.options());
  io.logdet = at::empty({io.rows}, in.options().dtype(acc_dtype(in.scalar_type())));
  return io;
}

// affine_coupling_backward: y, shift, logits, grad_y, grad_logdet (undefined when absent,
// else [rows] in the accumulation dtype) -> x, grad_x, grad_shift, grad_logits.  `x` and
// `grad_shift` are allocated only when asked for (need_x, need_grad_shift); otherwise they are
// empty [0] tensors and the kernels must not write them.
struct CouplingBackwardIO {
  RowView y, shift, logits, grad_y;
  at::Tensor grad_logdet, x, grad_x, grad_shift, grad_logits;
  int64_t rows, n;
  bool need_x, need_grad_shift;
};

inline CouplingBackwardIO prepare_coupling_backward(const at::Tensor& y, const at::Tensor& shift,
                                                    const at::Tensor& logits,
                                                    const at::Tensor& grad_y,
                                                    const std::optional<at::Tensor>& grad_logdet,
                                                    const std::optional<double>& clamp,
                                                    bool need_x, bool need_grad_shift) {
  check_affine_coupling_backward(y, shift, logits, grad_y, grad_logdet, clamp);
  const bool has_gld = grad_logdet.has_value() && grad_logdet->defined();
  CouplingBackwardIO io{row_view(y), row_view(shift), row_view(logits), row_view(grad_y),
                        has_gld ? grad_logdet->to(acc_dtype(y.scalar_type())).contiguous()
                                : at::Tensor(),
                        {}, {}, {}, {}, y.size(0), row_length(y), need_x, need_grad_shift};
  const auto full = [&](bool needed) {
    return at::empty(needed ? y.sizes() : at::IntArrayRef{0}, y.options());
  };
  io.x = full(need_x);
  io.grad_x = full(true);
  io.grad_shift = full(need_grad_shift);
  io.grad_logits = full(true);
  return io;
}

// gaussian_nll: u, mean, log_sigma -> nll [rows];
// gaussian_nll_backward: u, mean, log_sigma, grad [rows] -> grad_u, grad_mean, grad_log_sigma
struct NllIO {
  RowView u, mean, log_sigma;
  at::Tensor grad, nll, grad_u, grad_mean, grad_log_sigma;
  int64_t rows, n;
};

inline NllIO prepare_nll(const char* op, const at::Tensor& u, const at::Tensor& mean,
                         const at::Tensor& log_sigma, const at::Tensor* grad) {
  check_gaussian_nll(op, u, mean, log_sigma);
  if (grad != nullptr) check_per_sample(op, "grad", *grad, "u", u);
  NllIO io{row_view(u), row_view(mean), row_view(log_sigma), {}, {}, {}, {}, {},
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
