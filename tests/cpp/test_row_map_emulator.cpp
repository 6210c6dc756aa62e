// The CUDA kernels' code run on the CPU: the emulator (row_map_emulator.h) with the five ops'
// real element operations (csrc/cuda/row_map_ops.h) on seeded data in bfloat16, float32 and
// float64, contiguous, column views and stride-0 rows, short and long rows (one and several
// chunks), against the reference maths: every element output equal, bit for bit, to the same
// element formula (ntm/element_math.h, itself checked against the Python twins in
// tests/test_ops_accuracy.py) evaluated element by element, and every per-sample sum within the
// rounding bound of its own addition tree, ((1 + u)^h - 1) sum |term| with h the tree's height
// (from the symbolic run of the same launch), of the long double sum of the same terms.
#include "row_map_emulator.h"
#include "sum_tree.h"

#include "../../csrc/cuda/row_map_ops.h"

#include <c10/util/BFloat16.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace ntm::row_map;

int failures = 0;
int runs = 0;

enum class Layout { kContiguous, kColumnView, kStrideZero };

template <typename scalar_t>
bool same_bits(scalar_t a, scalar_t b) {
  return std::memcmp(&a, &b, sizeof(scalar_t)) == 0;
}

// Inputs of one launch: `count` [rows, n] tensors in `layout`, seeded normal values (the third
// input scaled by 0.7, as logits), and a per-row scalar.
template <typename scalar_t>
struct Inputs {
  std::vector<std::vector<scalar_t>> storage;
  std::vector<const scalar_t*> data;
  int64_t stride;
  std::vector<typename std::conditional_t<sizeof(scalar_t) == 8, double, float>> row_scalar;
  Inputs(int count, int64_t rows, int64_t n, Layout layout, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<double> normal;
    const int64_t offset = layout == Layout::kColumnView ? 1 : 0;
    const int64_t in_rows = layout == Layout::kStrideZero ? 1 : rows;
    stride = layout == Layout::kStrideZero ? 0 : n + 2 * offset;
    for (int j = 0; j < count; ++j) {
      storage.emplace_back(in_rows * (n + 2 * offset) + 8);
      for (auto& v : storage.back()) v = static_cast<scalar_t>((j == 2 ? 0.7 : 1.0) * normal(gen));
      data.push_back(storage.back().data() + offset);
    }
    for (int64_t r = 0; r < rows; ++r) row_scalar.push_back(normal(gen));
  }
};

template <typename scalar_t, typename Op>
void check(const std::string& what, const Op& op, int64_t rows, int64_t n, Layout layout,
           bool negate) {
  using acc_t = typename Op::acc_t;
  ++runs;
  Inputs<scalar_t> in(Op::kIn, rows, n, layout, static_cast<unsigned>(rows * 7919 + n));
  std::vector<std::vector<scalar_t>> out(Op::kOut, std::vector<scalar_t>(rows * n));
  std::vector<acc_t> sums(rows);
  RowMapProblem<scalar_t, Op> p;
  for (int j = 0; j < Op::kIn; ++j) {
    p.in[j] = in.data[j];
    p.in_stride[j] = in.stride;
  }
  for (int j = 0; j < Op::kOut; ++j) p.out[j] = out[j].data();
  p.row_scalar = in.row_scalar.data();
  p.row_sum = sums.data();
  p.negate = negate;
  p.rows = rows;
  p.n = n;
  const auto a = plan_row_map(p, 132);
  ntm::emu::emulate(a, op);

  // The same launch with symbolic sums: the height of every row's addition tree.
  std::vector<ntm::emu::Tree> trees(rows);
  if constexpr (Op::kReduce) {
    using TreeOp = ntm::emu::TreeOp<Op::kIn, Op::kOut>;
    using Leaf = ntm::emu::Leaf<std::conditional_t<sizeof(scalar_t) == 2, uint16_t,
                                std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>>;
    RowMapProblem<Leaf, TreeOp> q;
    for (int j = 0; j < Op::kIn; ++j) {
      q.in[j] = reinterpret_cast<const Leaf*>(p.in[j]);
      q.in_stride[j] = p.in_stride[j];
    }
    for (int j = 0; j < Op::kOut; ++j) q.out[j] = reinterpret_cast<Leaf*>(p.out[j]);
    q.row_sum = trees.data();
    q.rows = rows;
    q.n = n;
    ntm::emu::emulate(plan_row_map(q, 132), TreeOp{}, nullptr, ntm::emu::BlockOrder::kForward,
                      false);
  }

  const double u = std::numeric_limits<acc_t>::epsilon() / 2;
  for (int64_t r = 0; r < rows; ++r) {
    long double exact = 0, abs_sum = 0;
    for (int64_t k = 0; k < n; ++k) {
      acc_t x[Op::kIn], y[out_slots<Op>()];
      for (int j = 0; j < Op::kIn; ++j) x[j] = static_cast<acc_t>(in.data[j][r * in.stride + k]);
      const acc_t term = op(x, static_cast<acc_t>(in.row_scalar[r]), y);
      exact += term;
      abs_sum += std::fabs(static_cast<long double>(term));
      for (int j = 0; j < Op::kOut; ++j)
        if (!same_bits(out[j][r * n + k], static_cast<scalar_t>(y[j]))) {
          if (++failures <= 20)
            std::printf("FAIL %s rows %lld n %lld: output %d element (%lld, %lld) differs\n",
                        what.c_str(), static_cast<long long>(rows), static_cast<long long>(n), j,
                        static_cast<long long>(r), static_cast<long long>(k));
          return;
        }
    }
    if constexpr (Op::kReduce) {
      // plus the long double reference's own rounding, (n - 1) u_ld sum |term|
      const long double u_ref = std::numeric_limits<long double>::epsilon() / 2;
      const long double bound =
          (std::expm1(trees[r].height * std::log1p(u)) + (n - 1) * u_ref) * abs_sum;
      const long double got = negate ? -static_cast<long double>(sums[r]) : sums[r];
      if (!(std::fabs(got - exact) <= bound) && ++failures <= 20)
        std::printf("FAIL %s rows %lld n %lld: row %lld sum %.17Lg vs %.17Lg (bound %.3Lg, h %llu)\n",
                    what.c_str(), static_cast<long long>(rows), static_cast<long long>(n),
                    static_cast<long long>(r), got, exact, bound,
                    static_cast<unsigned long long>(trees[r].height));
    }
  }
}

template <typename scalar_t>
void check_all_ops(const char* dtype, int64_t rows, int64_t n, Layout layout) {
  using A = std::conditional_t<sizeof(scalar_t) == 8, double, float>;
  const ntm::ClampParams<A> clamp{A(1.5), A(1) / A(1.5), true};
  const std::string at = std::string(dtype) + " layout " + std::to_string(static_cast<int>(layout));
  check<scalar_t>("affine_coupling " + at, CouplingMapOp<A, false>{clamp}, rows, n, layout, false);
  check<scalar_t>("affine_coupling_inverse " + at, CouplingMapOp<A, true>{clamp}, rows, n, layout,
                  true);
  check<scalar_t>("affine_coupling_backward " + at, CouplingBackwardOp<A>{clamp}, rows, n, layout,
                  false);
  check<scalar_t>("gaussian_nll " + at, NllOp<A>{}, rows, n, layout, false);
  check<scalar_t>("gaussian_nll_backward " + at, NllBackwardOp<A>{}, rows, n, layout, false);
}

}  // namespace

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t n : {1, 7, 33, 1023, 4097, 20001})
    for (int64_t rows : {1, 3, 130}) {
      if (rows * n > 200000) continue;
      for (Layout layout : {Layout::kContiguous, Layout::kColumnView, Layout::kStrideZero}) {
        check_all_ops<c10::BFloat16>("bfloat16", rows, n, layout);
        check_all_ops<float>("float32", rows, n, layout);
        check_all_ops<double>("float64", rows, n, layout);
      }
    }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s: %d emulated launches against the element formulas, %d failures, %.1f s\n",
              failures ? "FAIL" : "PASS", runs, failures, s);
  return failures ? 1 : 0;
}
