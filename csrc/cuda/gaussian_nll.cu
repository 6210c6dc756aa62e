// CUDA kernels of gaussian_nll and gaussian_nll_backward: one pass over memory (row_map.cuh),
// the per-sample NLL reduced in the same pass, element maths from ntm/element_math.h.
#include "cuda_ops.h"
#include "row_map.cuh"

#include "ntm/element_math.h"
#include "ntm/op_io.h"

#include <ATen/Dispatch.h>

namespace ntm::cuda {
namespace {

// Row sum of 1/2 ((u - mean) exp(-log_sigma))^2 + log_sigma; no per-element output.
template <typename acc_t>
struct NllOp {
  static constexpr int kIn = 3;  // u, mean, log_sigma
  static constexpr int kOut = 0;
  static constexpr bool kReduce = true;

  __device__ __forceinline__ acc_t operator()(const acc_t (&in)[3], acc_t /*row_scalar*/,
                                              acc_t (&/*out*/)[1]) const {
    return nll_element(in[0], in[1], in[2], acc_t(0.5));
  }
};

// (grad_u, grad_mean, grad_log_sigma) for the per-sample upstream gradient (row scalar).
template <typename acc_t>
struct NllBackwardOp {
  static constexpr int kIn = 3;
  static constexpr int kOut = 3;
  static constexpr bool kReduce = false;

  __device__ __forceinline__ acc_t operator()(const acc_t (&in)[3], acc_t grad,
                                              acc_t (&out)[3]) const {
    const NllGrads<acc_t> r = nll_element_grads(in[0], in[1], in[2], grad, acc_t(1));
    out[0] = r.grad_u;
    out[1] = acc_t(0) - r.grad_u;
    out[2] = r.grad_log_sigma;
    return acc_t(0);
  }
};

}  // namespace

namespace {

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
    l.acc_options = io.nll.options();
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
    l.acc_options = io.grad.options();
    l.stream = scope.stream();
    launch_row_map(l);
  });
  return {io.grad_u, io.grad_mean, io.grad_log_sigma};
}

}  // namespace ntm::cuda
