// CUDA kernels of affine_coupling, affine_coupling_inverse and affine_coupling_backward:
// one pass over memory each (row_map.cuh), the per-sample log-det reduced in the same pass,
// element maths from ntm/element_math.h (the formulas the CPU kernels use).
#include "cuda_ops.h"
#include "row_map.cuh"

#include "ntm/element_math.h"
#include "ntm/op_io.h"

#include <ATen/Dispatch.h>

namespace ntm::cuda {
namespace {

// forward: out = x exp(s) + shift; inverse: out = (y - shift) exp(-s).  Row sum: sum s.
template <typename acc_t, bool kInverse>
struct CouplingMapOp {
  static constexpr int kIn = 3;  // in, shift, scale_logits
  static constexpr int kOut = 1;
  static constexpr bool kReduce = true;
  ClampParams<acc_t> c;

  __device__ __forceinline__ acc_t operator()(const acc_t (&in)[3], acc_t /*row_scalar*/,
                                              acc_t (&out)[1]) const {
    const acc_t s = soft_clamp(in[2], c);
    out[0] = kInverse ? coupling_inverse(in[0], in[1], s) : coupling_forward(in[0], in[1], s);
    return s;
  }
};

// From the output y: (x, grad_x, grad_shift, grad_scale_logits); row scalar: grad_logdet.
// Outputs the caller did not ask for have null pointers and are not stored (row_map.cuh).
template <typename acc_t>
struct CouplingBackwardOp {
  static constexpr int kIn = 4;  // y, shift, scale_logits, grad_y
  static constexpr int kOut = 4;
  static constexpr bool kReduce = false;
  ClampParams<acc_t> c;

  __device__ __forceinline__ acc_t operator()(const acc_t (&in)[4], acc_t grad_logdet,
                                              acc_t (&out)[4]) const {
    const acc_t s = soft_clamp(in[2], c);
    const CouplingGrads<acc_t> g = coupling_backward(in[0], in[1], s, in[3], grad_logdet);
    out[0] = g.x;
    out[1] = g.grad_x;
    out[2] = in[3];
    out[3] = g.grad_s * soft_clamp_grad(s, c, acc_t(1));
    return acc_t(0);
  }
};

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
    l.acc_options = io.logdet.options();
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
    l.acc_options = io.grad_x.options().dtype(acc_dtype(io.grad_x.scalar_type()));
    l.stream = scope.stream();
    launch_row_map(l);
  });
  return {io.x, io.grad_x, io.grad_shift, io.grad_logits};
}

}  // namespace ntm::cuda
