// CUDA kernels of affine_coupling, affine_coupling_inverse and affine_coupling_backward:
// one pass over memory each (row_map.cuh), the per-sample log-det reduced in the same pass,
// element operations in row_map_ops.h.
#include "cuda_ops.h"
#include "row_map.cuh"
#include "row_map_ops.h"

#include "ntm/acc_type.h"
#include "ntm/op_io.h"

#include <ATen/Dispatch.h>

namespace ntm::cuda {
namespace {

using row_map::CouplingBackwardOp;
using row_map::CouplingMapOp;

template <bool kInverse>
std::tuple<at::Tensor, at::Tensor> coupling_map(const char* op, const char* in_name,
                                                const at::Tensor& in_, const at::Tensor& shift_,
                                                const at::Tensor& logits_,
                                                const std::optional<double>& clamp) {
  // The shared checks first: mixed devices get the message the CPU kernels give.
  const CouplingMapIO io = prepare_coupling_map(op, in_name, in_, shift_, logits_, clamp);
  check_on_cuda(op, in_name, in_);
  const DeviceScope scope(in_);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, io.out.scalar_type(), "ntm::coupling_map",
                                  [&] {
    using acc_t = acc_type<scalar_t>;
    RowMapLaunch<scalar_t, CouplingMapOp<acc_t, kInverse>> l;
    l.name = op;
    l.op.c = clamp_params<acc_t>(clamp);
    l.set_input(0, io.in);
    l.set_input(1, io.shift);
    l.set_input(2, io.logits);
    l.out[0] = io.out.mutable_data_ptr<scalar_t>();
    l.row_sum = io.logdet.mutable_data_ptr<acc_t>();
    l.negate = kInverse;
    l.rows = io.rows;
    l.n = io.n;
    l.byte_options = io.logdet.options();
    l.stream = scope.stream();
    launch_row_map(l);
  });
  return {io.out, io.logdet};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> affine_coupling(const at::Tensor& x, const at::Tensor& shift,
                                                   const at::Tensor& scale_logits,
                                                   std::optional<double> clamp) {
  return coupling_map<false>("ntm::affine_coupling", "x", x, shift, scale_logits, clamp);
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_inverse(const at::Tensor& y,
                                                           const at::Tensor& shift,
                                                           const at::Tensor& scale_logits,
                                                           std::optional<double> clamp) {
  return coupling_map<true>("ntm::affine_coupling_inverse", "y", y, shift, scale_logits, clamp);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> affine_coupling_backward(
    const at::Tensor& y_, const at::Tensor& shift_, const at::Tensor& logits_,
    const at::Tensor& grad_y_, const std::optional<at::Tensor>& grad_logdet,
    std::optional<double> clamp, bool need_x, bool need_grad_shift) {
  const char* op = "ntm::affine_coupling_backward";
  const CouplingBackwardIO io = prepare_coupling_backward(y_, shift_, logits_, grad_y_,
                                                          grad_logdet, clamp, need_x,
                                                          need_grad_shift);
  check_on_cuda(op, "y", y_);
  const DeviceScope scope(y_);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, io.grad_x.scalar_type(),
                                  "ntm::affine_coupling_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    RowMapLaunch<scalar_t, CouplingBackwardOp<acc_t>> l;
    l.name = op;
    l.op.c = clamp_params<acc_t>(clamp);
    l.set_input(0, io.y);
    l.set_input(1, io.shift);
    l.set_input(2, io.logits);
    l.set_input(3, io.grad_y);
    l.out = {need_x ? io.x.mutable_data_ptr<scalar_t>() : nullptr,
             io.grad_x.mutable_data_ptr<scalar_t>(),
             need_grad_shift ? io.grad_shift.mutable_data_ptr<scalar_t>() : nullptr,
             io.grad_logits.mutable_data_ptr<scalar_t>()};
    l.row_scalar = io.grad_logdet.defined() ? io.grad_logdet.const_data_ptr<acc_t>() : nullptr;
    l.rows = io.rows;
    l.n = io.n;
    l.byte_options = io.grad_x.options();
    l.stream = scope.stream();
    launch_row_map(l);
  });
  return {io.x, io.grad_x, io.grad_shift, io.grad_logits};
}

}  // namespace ntm::cuda
