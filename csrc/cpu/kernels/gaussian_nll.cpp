// CPU kernels of gaussian_nll and its backward: one pass, per-sample sum in the same pass.
// Inputs are read through their row strides (RowReader, cpu/row_tiles.h); outputs are contiguous.
// Compiled once per CPU capability (csrc/cpu/dispatch.cpp), into ntm::cpu::CPU_CAPABILITY.
#include "cpu/row_tiles.h"
#include "ntm/element_math.h"
#include "ntm/op_io.h"

#include <ATen/Dispatch.h>

namespace ntm::cpu::CPU_CAPABILITY {

#include "ntm/op_signatures.inc"

using at::vec::Vectorized;

at::Tensor gaussian_nll(const at::Tensor& u_, const at::Tensor& mean_,
                        const at::Tensor& log_sigma_) {
  const NllIO io = prepare_nll("ntm::gaussian_nll", u_, mean_, log_sigma_, nullptr);
  const int64_t B = io.rows, N = io.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, io.u.t.scalar_type(), "ntm::gaussian_nll",
                                  [&] {
    using acc = acc_type<scalar_t>;
    using Vec = Vectorized<acc>;
    const Vec half(acc(0.5)), zero(acc(0));
    run_row_tiles<acc>(B, N, io.nll.mutable_data_ptr<acc>(), [&](int64_t row, int64_t begin,
                                                            int64_t end) {
      const RowReader<scalar_t> u(io.u, row, B, N), mean(io.mean, row, B, N),
          log_sigma(io.log_sigma, row, B, N);
      BlockedSum<acc> sum;
      for_each_vector<acc>(begin, end, [&](int64_t i, int64_t n) {
        const Vec t = nll_element(u.load(i, n), mean.load(i, n), log_sigma.load(i, n), half);
        sum.add(n == Vec::size() ? t : Vec::set(zero, t, n));
      });
      return sum.total();
    });
  });
  return io.nll;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_nll_backward(
    const at::Tensor& u_, const at::Tensor& mean_, const at::Tensor& log_sigma_,
    const at::Tensor& grad_) {
  const NllIO io = prepare_nll("ntm::gaussian_nll_backward", u_, mean_, log_sigma_, &grad_);
  const int64_t B = io.rows, N = io.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, io.u.t.scalar_type(),
                                  "ntm::gaussian_nll_backward", [&] {
    using acc = acc_type<scalar_t>;
    using Vec = Vectorized<acc>;
    const acc* pg = io.grad.const_data_ptr<acc>();
    scalar_t *pgu = io.grad_u.mutable_data_ptr<scalar_t>(),
             *pgm = io.grad_mean.mutable_data_ptr<scalar_t>(),
             *pgs = io.grad_log_sigma.mutable_data_ptr<scalar_t>();
    const Vec one(acc(1)), zero(acc(0));
    run_row_tiles<acc>(B, N, nullptr, [&](int64_t row, int64_t begin, int64_t end) {
      const RowReader<scalar_t> u(io.u, row, B, N), mean(io.mean, row, B, N),
          log_sigma(io.log_sigma, row, B, N);
      const int64_t base = row * N;
      const Vec g(pg[row]);
      for_each_vector<acc>(begin, end, [&](int64_t i, int64_t n) {
        const auto r = nll_element_grads(u.load(i, n), mean.load(i, n), log_sigma.load(i, n),
                                         g, one);
        store(r.grad_u, pgu + base + i, n);
        store(zero - r.grad_u, pgm + base + i, n);
        store(r.grad_log_sigma, pgs + base + i, n);
      });
      return 0.0;
    });
  });
  return {io.grad_u, io.grad_mean, io.grad_log_sigma};
}

}  // namespace ntm::cpu::CPU_CAPABILITY
