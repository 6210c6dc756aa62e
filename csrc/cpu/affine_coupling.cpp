// CPU kernels of affine_coupling, affine_coupling_inverse and affine_coupling_backward:
// one pass over memory each, SIMD through at::vec, the per-sample log-det reduced in the pass.
#include "cpu/cpu_ops.h"
#include "cpu/row_tiles.h"
#include "ntm/element_math.h"
#include "ntm/op_io.h"

#include <ATen/Dispatch.h>

namespace ntm::cpu {
namespace {

using at::vec::Vectorized;

struct ClampConsts {
  bool clamped;
  double clamp;
  double inv_clamp;
  explicit ClampConsts(const std::optional<double>& c)
      : clamped(c.has_value()), clamp(c.value_or(1.0)), inv_clamp(1.0 / c.value_or(1.0)) {}
};

// forward (sign = +1) and inverse (sign = -1): out = f(in, shift, s), logdet = sign * sum s
template <bool kInverse>
std::tuple<at::Tensor, at::Tensor> coupling_map(const char* op, const char* in_name,
                                                const at::Tensor& in_, const at::Tensor& shift_,
                                                const at::Tensor& logits_,
                                                const std::optional<double>& clamp) {
  const CouplingMapIO io = prepare_coupling_map(op, in_name, in_, shift_, logits_, clamp);
  const int64_t B = io.rows, N = io.n;
  const ClampConsts cc(clamp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, io.in.scalar_type(), "coupling_map", [&] {
    using acc = acc_t<scalar_t>;
    using Vec = Vectorized<acc>;
    const scalar_t* pi = io.in.const_data_ptr<scalar_t>();
    const scalar_t* pb = io.shift.const_data_ptr<scalar_t>();
    const scalar_t* pl = io.logits.const_data_ptr<scalar_t>();
    scalar_t* po = io.out.mutable_data_ptr<scalar_t>();
    const Vec vc(static_cast<acc>(cc.clamp)), vic(static_cast<acc>(cc.inv_clamp)), zero(acc(0));
    run_row_tiles<acc>(B, N, io.logdet.mutable_data_ptr<acc>(), [&](int64_t row, int64_t begin,
                                                               int64_t end) {
      const int64_t base = row * N;
      BlockedSum<acc> sum;
      for_each_vector<acc>(base + begin, base + end, [&](int64_t i, int64_t n) {
        const Vec s = soft_clamp(load(pl + i, n), vc, vic, cc.clamped);
        const Vec v = load(pi + i, n), b = load(pb + i, n);
        store(kInverse ? coupling_inverse(v, b, s) : coupling_forward(v, b, s), po + i, n);
        sum.add(Vec::set(zero, s, n));
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
    std::optional<double> clamp) {
  const CouplingBackwardIO io =
      prepare_coupling_backward(y_, shift_, logits_, grad_y_, grad_logdet, clamp);
  const int64_t B = io.rows, N = io.n;
  const ClampConsts cc(clamp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, io.y.scalar_type(),
                                  "ntm::affine_coupling_backward", [&] {
    using acc = acc_t<scalar_t>;
    using Vec = Vectorized<acc>;
    const scalar_t *py = io.y.const_data_ptr<scalar_t>(),
                   *pb = io.shift.const_data_ptr<scalar_t>(),
                   *pl = io.logits.const_data_ptr<scalar_t>(),
                   *pg = io.grad_y.const_data_ptr<scalar_t>();
    const acc* pgld = io.grad_logdet.defined() ? io.grad_logdet.const_data_ptr<acc>() : nullptr;
    scalar_t *px = io.x.mutable_data_ptr<scalar_t>(), *pgx = io.grad_x.mutable_data_ptr<scalar_t>(),
             *pgb = io.grad_shift.mutable_data_ptr<scalar_t>(),
             *pgl = io.grad_logits.mutable_data_ptr<scalar_t>();
    const Vec vc(static_cast<acc>(cc.clamp)), vic(static_cast<acc>(cc.inv_clamp)), one(acc(1));
    run_row_tiles<acc>(B, N, nullptr, [&](int64_t row, int64_t begin, int64_t end) {
      const int64_t base = row * N;
      const Vec vgld(pgld ? pgld[row] : acc(0));
      for_each_vector<acc>(base + begin, base + end, [&](int64_t i, int64_t n) {
        const Vec s = soft_clamp(load(pl + i, n), vc, vic, cc.clamped);
        const Vec g = load(pg + i, n);
        const auto r = coupling_backward(load(py + i, n), load(pb + i, n), s, g, vgld);
        store(r.x, px + i, n);
        store(r.grad_x, pgx + i, n);
        store(g, pgb + i, n);
        store(r.grad_s * soft_clamp_grad(s, vic, one, cc.clamped), pgl + i, n);
      });
      return 0.0;
    });
  });
  return {io.x, io.grad_x, io.grad_shift, io.grad_logits};
}

}  // namespace ntm::cpu
