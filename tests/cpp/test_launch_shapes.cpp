// Sweep of the row-map kernel's launch shapes (csrc/include/ntm/launch_shape.h), run through
// the CPU emulator (row_map_emulator.h) with symbolic elements: for thousands of problems
// (element sizes 2/4/8, n from 1 to 33,000, few and many rows, column views at several
// offsets, stride-0 rows, inputs out of phase with the outputs, small and large SM counts, the
// real grid limits and tiny ones that make the kernel loop), every output element is written
// exactly once with its own input, every input element is read exactly once (stride-0 rows:
// once per row) and nothing else is touched, every vector access is 16-byte aligned, every row
// sum holds each element exactly once, the sums do not depend on the order of the blocks, and
// the grid is within the limits.  Then the shape arithmetic alone for problems too large to
// emulate.
#include "row_map_emulator.h"
#include "sum_tree.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using ntm::emu::Leaf;
using ntm::emu::Monitor;
using ntm::emu::Tree;
using ntm::launch::GridLimits;
using ntm::launch::Shape;

int failures = 0;
int64_t cases = 0;

enum class Layout { kContiguous, kColumnView, kStrideZero, kOutOfPhase };
const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kContiguous: return "contiguous";
    case Layout::kColumnView: return "column view";
    case Layout::kStrideZero: return "stride-0 rows";
    default: return "input out of phase";
  }
}

struct Case {
  int64_t rows, n;
  Layout layout;
  int64_t sms;
  GridLimits limits;
};

void fail(const Case& c, int elem, const std::string& what) {
  if (++failures <= 20)
    std::printf("FAIL rows %lld n %lld elem %d %s sms %lld grid limits %lldx%lld: %s\n",
                static_cast<long long>(c.rows), static_cast<long long>(c.n), elem,
                layout_name(c.layout), static_cast<long long>(c.sms),
                static_cast<long long>(c.limits.x), static_cast<long long>(c.limits.y),
                what.c_str());
}

// The invariants of a shape by itself.
std::string check_shape(const Shape& s, int64_t rows, int64_t n, int elem, int64_t sms,
                        const GridLimits& limits) {
  const auto pow2 = [](int64_t v) { return v > 0 && (v & (v - 1)) == 0; };
  const int64_t fill = ntm::launch::kFillThreadsPerSM * sms;
  if (!pow2(s.group) || !pow2(s.block) || s.group > s.block || s.block > 256 || s.block < 32)
    return "group/block not powers of two with group <= block <= 256";
  if (s.grid_x < 1 || s.grid_y < 1 || s.grid_x > limits.x || s.grid_y > limits.y)
    return "grid outside the limits";
  if (s.row_groups * s.rows_per_block() < rows || (s.row_groups - 1) * s.rows_per_block() >= rows)
    return "row groups do not cover the rows exactly";
  if (s.chunk * s.chunks < n || (s.chunks - 1) * s.chunk >= n) return "chunks do not cover n";
  if (s.chunks > 1 && (s.chunk % (16 / elem) != 0 || s.group != s.block))
    return "long-row chunks not whole vectors or not one block each";
  if (s.group >= 32 && s.block != s.group && rows * s.group < fill)
    return "an under-filled grid has blocks wider than their group (idle warps)";
  if (s.group < 32 && s.block > 32 && s.block / 2 >= rows * s.group)
    return "a block with whole idle warps";
  return "";
}

template <typename U>
void run_case(const Case& c) {
  using scalar_t = Leaf<U>;
  using Op = ntm::emu::TreeOp<3, 1>;
  const int elem = sizeof(U);
  ++cases;
  const int64_t rows = c.rows, n = c.n;
  const int64_t pad = c.layout == Layout::kColumnView ? 7 : 0;
  const int64_t offset = c.layout == Layout::kColumnView ? 1 + n % 5 : 0;
  const int64_t in_rows = c.layout == Layout::kStrideZero ? 1 : rows;
  const int64_t stride = c.layout == Layout::kStrideZero ? 0 : n + pad;
  std::vector<std::vector<scalar_t>> in(3);
  Monitor monitor;
  ntm::row_map::RowMapProblem<scalar_t, Op> p;
  for (int j = 0; j < 3; ++j) {
    const int64_t shift = c.layout == Layout::kOutOfPhase && j == 0 ? 1 : 0;
    in[j].assign(in_rows * (n + pad) + shift + 8, scalar_t{0});
    for (int64_t r = 0; r < in_rows; ++r)
      for (int64_t k = 0; k < n; ++k) in[j][shift + offset + r * (n + pad) + k].index = static_cast<U>(k);
    p.in[j] = in[j].data() + shift + offset;
    p.in_stride[j] = stride;
    monitor.watch(in[j].data(), static_cast<int64_t>(in[j].size()), elem);
  }
  std::vector<scalar_t> out(rows * n, scalar_t{static_cast<U>(-1)});
  std::vector<Tree> sums(rows), again(rows);
  monitor.watch(out.data(), rows * n, elem);
  p.out[0] = out.data();
  p.row_sum = sums.data();
  p.rows = rows;
  p.n = n;
  auto a = ntm::row_map::plan_row_map(p, c.sms, c.limits);
  const std::string shape_error = check_shape(a.shape, rows, n, elem, c.sms, c.limits);
  if (!shape_error.empty()) return fail(c, elem, shape_error);
  ntm::emu::emulate(a, Op{}, &monitor);
  for (const std::string& e : monitor.errors()) return fail(c, elem, e);
  for (int64_t i = 0; i < rows * n; ++i)
    if (monitor.writes(3, i) != 1 || out[i].index != static_cast<U>(i % n))
      return fail(c, elem, "output element " + std::to_string(i) + " written " +
                               std::to_string(monitor.writes(3, i)) + " times");
  for (int j = 0; j < 3; ++j) {
    const int64_t shift = c.layout == Layout::kOutOfPhase && j == 0 ? 1 : 0;
    for (int64_t i = 0; i < static_cast<int64_t>(in[j].size()); ++i) {
      const int64_t k = i - shift - offset;
      const bool inside = k >= 0 && k % (n + pad) < n && k / (n + pad) < in_rows;
      const uint32_t want = inside ? (c.layout == Layout::kStrideZero ? rows : 1) : 0;
      if (monitor.reads(j, i) != want)
        return fail(c, elem, "input " + std::to_string(j) + " element " + std::to_string(i) +
                                 " read " + std::to_string(monitor.reads(j, i)) + " times");
    }
  }
  const uint64_t un = static_cast<uint64_t>(n);
  uint64_t sq = 0;
  for (uint64_t k = 0; k < un; ++k) sq += k * k;
  for (int64_t r = 0; r < rows; ++r)
    if (sums[r].count != un || sums[r].index_sum != un * (un - 1) / 2 || sums[r].index_sq != sq)
      return fail(c, elem, "row " + std::to_string(r) + " sum does not hold every element once");
  a.row_sum = again.data();
  ntm::emu::emulate(a, Op{}, nullptr, ntm::emu::BlockOrder::kReverse);
  for (int64_t r = 0; r < rows; ++r)
    if (!again[r].same_order(sums[r]))
      return fail(c, elem, "row " + std::to_string(r) + " sum depends on the block order");
}

void run_case_any(const Case& c, int elem) {
  if (elem == 2) run_case<uint16_t>(c);
  else if (elem == 4) run_case<uint32_t>(c);
  else run_case<uint64_t>(c);
}

std::vector<int64_t> row_lengths() {
  std::vector<int64_t> ns;
  for (int64_t n = 1; n <= 40; ++n) ns.push_back(n);
  for (int64_t base : {64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768})
    for (int64_t d : {-1, 0, 1}) ns.push_back(base + d);
  for (int64_t n : {100, 259, 520, 1000, 3000, 5001, 20001, 33000}) ns.push_back(n);
  return ns;
}

// Shapes of problems too large to emulate: the grid within the hardware limits, the rows
// and elements covered.
void sweep_large_shapes() {
  for (int elem : {2, 4, 8})
    for (int64_t rows : {int64_t{1}, int64_t{65535}, int64_t{65536}, int64_t{1} << 31,
                         (int64_t{1} << 31) + 5, int64_t{1} << 40})
      for (int64_t n : {int64_t{1}, int64_t{2049}, int64_t{1} << 20, int64_t{1} << 31,
                        (int64_t{1} << 34) + 3})
        for (int64_t sms : {1, 132, 1024}) {
          ++cases;
          const GridLimits limits;
          const Shape s = ntm::launch::choose_shape(rows, n, elem, sms, limits);
          const std::string e = check_shape(s, rows, n, elem, sms, limits);
          if (!e.empty()) fail({rows, n, Layout::kContiguous, sms, limits}, elem, e);
        }
}

}  // namespace

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  const GridLimits real{}, tiny{3, 2};
  for (int elem : {2, 4, 8})
    for (int64_t n : row_lengths())
      for (int64_t rows : {1, 3, 130, 1000}) {
        if (rows * n > 300000) continue;  // many rows only for short and medium rows
        for (Layout layout : {Layout::kContiguous, Layout::kColumnView, Layout::kStrideZero,
                              Layout::kOutOfPhase}) {
          run_case_any({rows, n, layout, 132, real}, elem);
          if (rows * n <= 40000) {
            run_case_any({rows, n, layout, 2, real}, elem);
            run_case_any({rows, n, layout, 132, tiny}, elem);
          }
        }
      }
  sweep_large_shapes();
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s: %lld launch shapes, %d failures, %.1f s\n", failures ? "FAIL" : "PASS",
              static_cast<long long>(cases), failures, s);
  return failures ? 1 : 0;
}
