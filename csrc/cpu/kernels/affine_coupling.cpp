// CPU kernels of affine_coupling, affine_coupling_inverse and affine_coupling_backward:
// one pass over memory each, SIMD through at::vec, the per-sample log-det reduced in the pass.
// Inputs are read through their row strides (RowReader, cpu/row_tiles.h); outputs are contiguous.
// Compiled once per CPU capability (csrc/cpu/dispatch.cpp), into ntm::cpu::CPU_CAPABILITY.
#include "cpu/row_tiles.h"
#include "ntm/element_math.h"
#include "ntm/op_io.h"

#include <ATen/Dispatch.h>

#include <type_traits>

namespace ntm::cpu::CPU_CAPABILITY {

#include "ntm/op_signatures.inc"

namespace {

using at::vec::Vectorized;

template <typename acc>
ClampParams<Vectorized<acc>> broadcast(const ClampParams<acc>& c) {
  return {Vectorized<acc>(c.clamp), Vectorized<acc>(c.inv_clamp), c.clamped};
}

// forward (sign = +1) and inverse (sign = -1): out = f(in, shift, s), logdet = sign * sum s
template <bool kInverse>
std::tuple<at::Tensor, at::Tensor> coupling_map(const char* op, const char* in_name,
                                                const at::Tensor& in_, const at::Tensor& shift_,
                                                const at::Tensor& logits_,
                                                const std::optional<double>& clamp) {
  const CouplingMapIO io = prepare_coupling_map(op, in_name, in_, shift_, logits_, clamp);
  const int64_t B = io.rows, N = io.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, io.out.scalar_type(), "coupling_map", [&] {
    using acc = acc_type<scalar_t>;
    using Vec = Vectorized<acc>;
    const auto cp = broadcast(clamp_params<acc>(clamp));
    scalar_t* out = io.out.mutable_data_ptr<scalar_t>();
    const Vec zero(acc(0));
    run_row_tiles<acc>(B, N, io.logdet.mutable_data_ptr<acc>(), [&](int64_t row, int64_t begin,
                                                               int64_t end) {
      const RowReader<scalar_t> in(io.in, row, B, N), shift(io.shift, row, B, N),
          logits(io.logits, row, B, N);
      scalar_t* po = out + row * N;
      BlockedSum<acc> sum;
      for_each_vector<acc>(begin, end, [&](int64_t i, int64_t n) {
        const Vec s = soft_clamp(logits.load(i, n), cp);
        const Vec v = in.load(i, n), b = shift.load(i, n);
        store(kInverse ? coupling_inverse(v, b, s) : coupling_forward(v, b, s), po + i, n);
        sum.add(n == Vec::size() ? s : Vec::set(zero, s, n));
      });
      return kInverse ? -sum.total() : sum.total();
    });
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
  const CouplingBackwardIO io = prepare_coupling_backward(y_, shift_, logits_, grad_y_,
                                                          grad_logdet, clamp, need_x,
                                                          need_grad_shift);
  const int64_t B = io.rows, N = io.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, io.grad_x.scalar_type(),
                                  "ntm::affine_coupling_backward", [&] {
    using acc = acc_type<scalar_t>;
    using Vec = Vectorized<acc>;
    const auto cp = broadcast(clamp_params<acc>(clamp));
    const acc* pgld = io.grad_logdet.defined() ? io.grad_logdet.const_data_ptr<acc>() : nullptr;
    scalar_t *x = need_x ? io.x.mutable_data_ptr<scalar_t>() : nullptr,
             *gx = io.grad_x.mutable_data_ptr<scalar_t>(),
             *gb = need_grad_shift ? io.grad_shift.mutable_data_ptr<scalar_t>() : nullptr,
             *gl = io.grad_logits.mutable_data_ptr<scalar_t>();
    const Vec one(acc(1));
    // need_x as a compile-time constant, so that x = (y - shift) / exp(s) is not computed
    // when nobody reads it
    const auto run = [&](auto with_x) {
      run_row_tiles<acc>(B, N, nullptr, [&](int64_t row, int64_t begin, int64_t end) {
        const RowReader<scalar_t> y(io.y, row, B, N), shift(io.shift, row, B, N),
            logits(io.logits, row, B, N), grad_y(io.grad_y, row, B, N);
        const int64_t o = row * N;
        const Vec vgld(pgld ? pgld[row] : acc(0));
        for_each_vector<acc>(begin, end, [&](int64_t i, int64_t n) {
          const Vec s = soft_clamp(logits.load(i, n), cp);
          const Vec g = grad_y.load(i, n);
          const auto r = coupling_backward(y.load(i, n), shift.load(i, n), s, g, vgld);
          if constexpr (decltype(with_x)::value) store(r.x, x + o + i, n);
          store(r.grad_x, gx + o + i, n);
          if (gb) store(g, gb + o + i, n);
          store(r.grad_s * soft_clamp_grad(s, cp, one), gl + o + i, n);
        });
        return 0.0;
      });
    };
    if (need_x) run(std::true_type{}); else run(std::false_type{});
  });
  return {io.x, io.grad_x, io.grad_shift, io.grad_logits};
}

}  // namespace ntm::cpu::CPU_CAPABILITY
