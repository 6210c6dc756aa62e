// Which per-sample sums of the CUDA tests are bitwise equal between two launches, predicted by
// the CPU emulator with symbolic sums (sum_tree.h): two rows get the same bits for any data
// exactly when their addition trees match.  Writes tests/fixtures/cuda_sum_order.json, which
// tests/test_cuda_launch.py reads to assert equality on exactly those rows and closeness on the
// others; `--check FILE` (a ctest) fails when FILE is not what this program writes now, so a
// change of launch shapes cannot leave the fixture stale.
//
//   predict_sum_order > tests/fixtures/cuda_sum_order.json
//   predict_sum_order --check tests/fixtures/cuda_sum_order.json
//
// Tensors are assumed to start 16-byte aligned (torch's CUDA allocations are 512-byte aligned;
// the tests check it).
#include "row_map_emulator.h"
#include "sum_tree.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using ntm::emu::Leaf;
using ntm::emu::Tree;

// SM counts of current data-centre GPUs (H100 SXM / H200: 132, H100 PCIe: 114, A100: 108).
const int64_t kSmCounts[] = {108, 114, 132, 144};

// A [rows, n] operand at element `offset` of an aligned buffer, row stride `stride`.
template <typename U>
struct Operand {
  std::vector<Leaf<U>> storage;
  Leaf<U>* data;
  int64_t stride;
  Operand(int64_t rows, int64_t n, int64_t stride_, int64_t offset) : stride(stride_) {
    const int64_t span = (rows > 0 ? (rows - 1) * stride_ : 0) + n + offset;
    storage.resize(span + 64);
    auto base = reinterpret_cast<std::uintptr_t>(storage.data());
    Leaf<U>* aligned = storage.data() + (64 - base % 64) % 64 / sizeof(U);
    data = aligned + offset;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < n; ++k) data[r * stride_ + k].index = static_cast<U>(k);
  }
};

// Row sums' trees of one launch: kOut outputs (contiguous, aligned, not written) and three
// inputs `in`; only the row groups holding `rows_wanted` are run when it is given.
template <typename U, int kOut>
std::vector<Tree> sum_trees(int64_t rows, int64_t n, std::vector<Operand<U>*> in, int64_t sms,
                            const std::vector<int64_t>& rows_wanted = {}) {
  using Op = ntm::emu::TreeOp<3, kOut>;
  ntm::row_map::RowMapProblem<Leaf<U>, Op> p;
  for (int j = 0; j < 3; ++j) {
    p.in[j] = in[j]->data;
    p.in_stride[j] = in[j]->stride;
  }
  alignas(64) static Leaf<U> sink[64];
  for (int j = 0; j < kOut; ++j) p.out[j] = sink;
  std::vector<Tree> sums(rows);
  p.row_sum = sums.data();
  p.rows = rows;
  p.n = n;
  const auto a = ntm::row_map::plan_row_map(p, sms);
  std::vector<int64_t> groups;
  for (int64_t r : rows_wanted) groups.push_back(r / a.shape.rows_per_block());
  ntm::emu::emulate(a, Op{}, nullptr, ntm::emu::BlockOrder::kForward, false, groups);
  return sums;
}

std::string rows_json(const std::vector<int64_t>& rows) {
  std::string s = "[";
  for (size_t i = 0; i < rows.size(); ++i) s += (i ? ", " : "") + std::to_string(rows[i]);
  return s + "]";
}

struct Writer {
  std::ostringstream out;
  bool first = true;
  void add(const std::string& key, const std::vector<std::string>& per_sms) {
    out << (first ? "" : ",\n") << "    \"" << key << "\": {";
    for (size_t i = 0; i < per_sms.size(); ++i)
      out << (i ? ", " : "") << "\"" << kSmCounts[i] << "\": " << per_sms[i];
    out << "}";
    first = false;
  }
};

// tests/test_cuda_launch.py::test_column_views_are_read_in_place: [6, 20001] column views
// (offset, pad) of every 2-D argument against the contiguous arguments.
template <typename U, int kOut>
void column_views(Writer& w, const char* dtype, const char* op) {
  const int64_t rows = 6, n = 20001;
  for (auto [offset, pad] : {std::pair<int64_t, int64_t>{0, 64}, {8, 64}, {1, 7}}) {
    std::vector<std::string> per_sms;
    for (int64_t sms : kSmCounts) {
      Operand<U> c0(rows, n, n, 0), c1(rows, n, n, 0), c2(rows, n, n, 0);
      Operand<U> v0(rows, n, n + pad, offset), v1(rows, n, n + pad, offset),
          v2(rows, n, n + pad, offset);
      const auto want = sum_trees<U, kOut>(rows, n, {&c0, &c1, &c2}, sms);
      const auto got = sum_trees<U, kOut>(rows, n, {&v0, &v1, &v2}, sms);
      std::vector<int64_t> equal;
      for (int64_t r = 0; r < rows; ++r)
        if (got[r].same_order(want[r])) equal.push_back(r);
      per_sms.push_back(rows_json(equal));
    }
    w.add(std::string("column_views/") + std::to_string(offset) + "," + std::to_string(pad) +
              "/" + dtype + "/" + op,
          per_sms);
  }
}

// tests/test_cuda_launch.py::test_more_than_2_to_the_31_elements: bfloat16 rows of 2^16
// expanded (stride 0) to 2^31 / 2^16 + 3 rows, against one contiguous row; and the NLL of the
// contiguous output y against its first row (y's rows are whole vectors, so a stride-0 stand-in
// has the same phases).  Sampled rows: the first, the middle and the last.
void expanded_rows(Writer& w) {
  using U = uint16_t;
  const int64_t n = int64_t{1} << 16, rows = (int64_t{1} << 31) / n + 3;
  const std::vector<int64_t> sampled = {0, rows / 2, rows - 1};
  std::vector<std::string> vs_one_row, ld_within, nll_within;
  for (int64_t sms : kSmCounts) {
    Operand<U> e0(1, n, 0, 0), e1(1, n, 0, 0), e2(1, n, 0, 0);
    Operand<U> c0(1, n, n, 0), c1(1, n, n, 0), c2(1, n, n, 0);
    const auto big = sum_trees<U, 1>(rows, n, {&e0, &e1, &e2}, sms, sampled);
    const auto one = sum_trees<U, 1>(1, n, {&c0, &c1, &c2}, sms);
    const auto nll = sum_trees<U, 0>(rows, n, {&e0, &e1, &e2}, sms, sampled);
    std::vector<int64_t> eq_one, ld_first, nll_first;
    for (int64_t r : sampled) {
      if (big[r].same_order(one[0])) eq_one.push_back(r);
      if (big[r].same_order(big[0])) ld_first.push_back(r);
      if (nll[r].same_order(nll[0])) nll_first.push_back(r);
    }
    vs_one_row.push_back(rows_json(eq_one));
    ld_within.push_back(rows_json(ld_first));
    nll_within.push_back(rows_json(nll_first));
  }
  w.add("expanded_rows/bfloat16/affine_coupling_vs_one_row", vs_one_row);
  w.add("expanded_rows/bfloat16/affine_coupling_vs_first_row", ld_within);
  w.add("expanded_rows/bfloat16/gaussian_nll_vs_first_row", nll_within);
}

std::string predictions() {
  Writer w;
  for (const char* op : {"affine_coupling", "affine_coupling_inverse"}) {
    column_views<uint32_t, 1>(w, "float32", op);
    column_views<uint16_t, 1>(w, "bfloat16", op);
  }
  column_views<uint32_t, 0>(w, "float32", "gaussian_nll");
  column_views<uint16_t, 0>(w, "bfloat16", "gaussian_nll");
  expanded_rows(w);
  return "{\n  \"generated_by\": \"tests/cpp/predict_sum_order.cpp\",\n"
         "  \"meaning\": \"case -> SM count -> rows whose per-sample sums are bitwise equal "
         "between the case's two launches\",\n  \"cases\": {\n" +
         w.out.str() + "\n  }\n}\n";
}

}  // namespace

int main(int argc, char** argv) {
  const std::string now = predictions();
  if (argc == 3 && std::string(argv[1]) == "--check") {
    std::ifstream f(argv[2]);
    std::stringstream committed;
    committed << f.rdbuf();
    if (committed.str() == now) {
      std::printf("PASS: %s is current\n", argv[2]);
      return 0;
    }
    std::printf("FAIL: %s is stale; regenerate it with\n  predict_sum_order > %s\n", argv[2],
                argv[2]);
    return 1;
  }
  std::fputs(now.c_str(), stdout);
  return 0;
}
