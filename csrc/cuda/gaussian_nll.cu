// CUDA kernels of gaussian_nll and gaussian_nll_backward: one pass over memory (row_map.cuh),
// the per-sample NLL reduced in the same pass, element operations in row_map_ops.h.
#include "cuda_ops.h"
#include "row_map.cuh"
#include "row_map_ops.h"

#include "ntm/acc_type.h"
#include "ntm/op_io.h"

#include <ATen/Dispatch.h>

namespace ntm::cuda {
namespace {

using row_map::NllBackwardOp;
using row_map::NllOp;

template <typename scalar_t, typename Op>
void set_nll_inputs(RowMapLaunch<scalar_t, Op>& l, const NllIO& io) {
  l.set_input(0, io.u);
  l.set_input(1, io.mean);
  l.set_input(2, io.log_sigma);
  l.rows = io.rows;
  l.n = io.n;
}

}  // namespace

at::Tensor gaussian_nll(const at::Tensor& u_, const at::Tensor& mean_,
                        const at::Tensor& log_sigma_) {
  const char* op = "ntm::gaussian_nll";
  // The shared checks first: mixed devices get the message the CPU kernels give.
  const NllIO io = prepare_nll(op, u_, mean_, log_sigma_, nullptr);
  check_on_cuda(op, "u", u_);
  const DeviceScope scope(u_);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u_.scalar_type(), "ntm::gaussian_nll",
                                  [&] {
    using acc_t = acc_type<scalar_t>;
    RowMapLaunch<scalar_t, NllOp<acc_t>> l;
    l.name = op;
    set_nll_inputs(l, io);
    l.row_sum = io.nll.mutable_data_ptr<acc_t>();
    l.byte_options = io.nll.options();
    l.stream = scope.stream();
    launch_row_map(l);
  });
  return io.nll;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_nll_backward(
    const at::Tensor& u_, const at::Tensor& mean_, const at::Tensor& log_sigma_,
    const at::Tensor& grad_) {
  const char* op = "ntm::gaussian_nll_backward";
  const NllIO io = prepare_nll(op, u_, mean_, log_sigma_, &grad_);
  check_on_cuda(op, "u", u_);
  const DeviceScope scope(u_);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u_.scalar_type(),
                                  "ntm::gaussian_nll_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    RowMapLaunch<scalar_t, NllBackwardOp<acc_t>> l;
    l.name = op;
    set_nll_inputs(l, io);
    l.out = {io.grad_u.mutable_data_ptr<scalar_t>(), io.grad_mean.mutable_data_ptr<scalar_t>(),
             io.grad_log_sigma.mutable_data_ptr<scalar_t>()};
    l.row_scalar = io.grad.const_data_ptr<acc_t>();
    l.byte_options = io.grad.options();
    l.stream = scope.stream();
    launch_row_map(l);
  });
  return {io.grad_u, io.grad_mean, io.grad_log_sigma};
}

}  // namespace ntm::cuda
