// One row-map launch described without torch or CUDA, and the kernel arguments it gives on a
// device with `sms` SMs: shared by the CUDA launcher (row_map.cuh) and the CPU emulator
// (tests/cpp/row_map_emulator.h), so both run exactly the same shapes.
#pragma once

#include "row_map_kernel.h"

#include "ntm/launch_shape.h"

#include <array>
#include <cstdint>

namespace ntm::row_map {

template <typename scalar_t, typename Op>
struct RowMapProblem {
  using acc_t = typename Op::acc_t;
  std::array<const scalar_t*, Op::kIn> in{};  // row r of input j: in[j] + r * in_stride[j]
  std::array<int64_t, Op::kIn> in_stride{};
  std::array<scalar_t*, out_slots<Op>()> out{};  // contiguous [rows, n]; nullptr: not written
  const acc_t* row_scalar = nullptr;             // [rows] or nullptr (reads as 0)
  acc_t* row_sum = nullptr;                      // [rows], written when Op::kReduce
  bool negate = false;                           // write -sum
  int64_t rows = 0, n = 0;
};

// Whether every row of every tensor of `p` has the same 16-byte phase.
template <typename scalar_t, typename Op>
bool problem_same_phase(const RowMapProblem<scalar_t, Op>& p) {
  launch::Operand operands[Op::kIn + out_slots<Op>()];
  int count = 0;
  for (int j = 0; j < Op::kIn; ++j)
    operands[count++] = {reinterpret_cast<std::uintptr_t>(p.in[j]), p.in_stride[j]};
  for (int j = 0; j < Op::kOut; ++j)
    if (p.out[j] != nullptr) operands[count++] = {reinterpret_cast<std::uintptr_t>(p.out[j]), p.n};
  return launch::same_phase(operands, count, p.rows, sizeof(scalar_t));
}

// The kernel arguments; `partial` and `arrived` are left null for the caller to provide when
// needs_partials() (rows * chunks acc_t and rows zeroed counters).
template <typename scalar_t, typename Op>
RowMapArgs<scalar_t, Op> plan_row_map(const RowMapProblem<scalar_t, Op>& p, int64_t sms,
                                      launch::GridLimits limits = {}) {
  RowMapArgs<scalar_t, Op> a{};
  for (int j = 0; j < Op::kIn; ++j) {
    a.in[j] = p.in[j];
    a.in_stride[j] = p.in_stride[j];
  }
  for (int j = 0; j < out_slots<Op>(); ++j) a.out[j] = j < Op::kOut ? p.out[j] : nullptr;
  a.row_scalar = p.row_scalar;
  a.row_sum = p.row_sum;
  a.rows = p.rows;
  a.n = p.n;
  a.negate = p.negate;
  a.vectorized = problem_same_phase(p);
  a.shape = launch::choose_shape(p.rows, p.n, sizeof(scalar_t), sms, limits);
  return a;
}

template <typename scalar_t, typename Op>
bool needs_partials(const RowMapArgs<scalar_t, Op>& a) {
  return Op::kReduce && a.shape.chunks > 1;
}

}  // namespace ntm::row_map
