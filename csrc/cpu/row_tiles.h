// CPU scaffolding shared by the ntm kernels: a [B, N] problem is cut into tiles that never
// cross a row, and the tiles run in parallel on torch's threads (cpu/parallel.h, so
// torch.set_num_threads applies): a thread takes whole rows when rows are short and parts of a
// row when rows are long; a problem under kMinElemsPerThread elements stays on one thread.
// Per-row partial sums are combined in a fixed order afterwards.  Tile boundaries depend only
// on N, never on the thread count, so every reduction is bit-reproducible.
//
// Compiled once per CPU capability (csrc/cpu/dispatch.cpp): everything here lives in
// ntm::cpu::CPU_CAPABILITY, like at::vec, so the variants never share a symbol.
#pragma once

#include "cpu/parallel.h"
#include "cpu/vec_convert.h"
#include "ntm/acc_type.h"
#include "ntm/op_io.h"

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace ntm::cpu::CPU_CAPABILITY {

constexpr int64_t kTileElems = 16384;  // 64 KiB of float32 per input per tile
// Elements below which a second thread costs more than it saves (waking a thread: ~10 us).
constexpr int64_t kMinElemsPerThread = 32768;

// Runs body(row, begin, end) -> double over every tile of a B x N problem and writes the
// per-row sum of the returned partials (added in double) to row_out (if non-null).
template <typename acc, typename Body>
void run_row_tiles(int64_t B, int64_t N, acc* row_out, const Body& body) {
  if (B == 0) return;
  if (N == 0) {
    if (row_out) std::fill(row_out, row_out + B, acc(0));
    return;
  }
  const int64_t tiles_per_row = (N + kTileElems - 1) / kTileElems;
  const int64_t tiles = B * tiles_per_row;
  const int64_t tile_len = std::min(N, kTileElems);
  const int64_t grain = std::max<int64_t>(1, kMinElemsPerThread / tile_len);
  std::vector<double> partial(row_out ? tiles : 0);
  parallel_for(0, tiles, grain, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t row = t / tiles_per_row;
      const int64_t begin = (t % tiles_per_row) * kTileElems;
      const int64_t end = std::min(N, begin + kTileElems);
      const double p = body(row, begin, end);
      if (row_out) partial[t] = p;
    }
  });
  if (!row_out) return;
  for (int64_t b = 0; b < B; ++b) {
    double total = 0;
    for (int64_t k = 0; k < tiles_per_row; ++k) total += partial[b * tiles_per_row + k];
    row_out[b] = static_cast<acc>(total);
  }
}

// Loads `count` (<= Vec::size()) elements of scalar_t as a vector of the accumulation type.
template <typename scalar_t>
inline at::vec::Vectorized<acc_type<scalar_t>> load(const scalar_t* p, int64_t count) {
  using Vec = at::vec::Vectorized<acc_type<scalar_t>>;
  if constexpr (std::is_same_v<scalar_t, acc_type<scalar_t>>) {
    return count == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, count);
  } else {
    if (count == Vec::size()) return load_as_float(p);
    alignas(64) float buf[Vec::size()] = {};
    for (int64_t i = 0; i < count; ++i) buf[i] = static_cast<float>(p[i]);
    return Vec::loadu(buf);
  }
}

template <typename scalar_t>
inline void store(const at::vec::Vectorized<acc_type<scalar_t>>& v, scalar_t* p, int64_t count) {
  using Vec = at::vec::Vectorized<acc_type<scalar_t>>;
  if constexpr (std::is_same_v<scalar_t, acc_type<scalar_t>>) {
    if (count == Vec::size()) v.store(p); else v.store(p, count);
  } else {
    if (count == Vec::size()) {
      store_from_float(v, p);
      return;
    }
    alignas(64) float buf[Vec::size()];
    v.store(buf);
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<scalar_t>(buf[i]);
  }
}

// How far (in elements) an input's loads prefetch ahead of themselves: ~0.5 us of work at
// 1 ns per element, a few DRAM latencies (4096 bytes ahead measured slower than 512 elements).
constexpr int64_t kPrefetchElems = 512;

// One row of an input, for the kernels' loads: load(i, count) reads elements [i, i + count) and
// prefetches the element kPrefetchElems further on in the row-major traversal (past the row
// end, into the next row).  The hardware prefetchers restart at every 4 KiB page and every row
// end of a column view; measured on the 2-core AVX-512 VM (bench/results/
// 2026-12-05-cpu-ops-threads.md), this software prefetch makes column views of a 2x wider
// matrix as fast as contiguous inputs and contiguous inputs up to 1.4x faster.  Batch-expanded
// inputs (row stride 0) stay in cache and are not prefetched.
template <typename scalar_t>
class RowReader {
 public:
  RowReader(const RowView& v, int64_t row, int64_t rows, int64_t n)
      : data_(v.row_data<scalar_t>(row)),
        next_(v.stride != 0 && row + 1 < rows ? v.row_data<scalar_t>(row + 1) : nullptr),
        n_(n),
        prefetch_(v.stride != 0) {}

  at::vec::Vectorized<acc_type<scalar_t>> load(int64_t i, int64_t count) const {
    if (prefetch_) prefetch(i + kPrefetchElems);
    return CPU_CAPABILITY::load(data_ + i, count);
  }

 private:
  void prefetch(int64_t j) const {
    const scalar_t* p = j < n_ ? data_ + j
                        : next_ != nullptr && j - n_ < n_ ? next_ + (j - n_) : nullptr;
    if (p != nullptr) __builtin_prefetch(p, /*rw=*/0, /*locality=*/3);
  }

  const scalar_t* data_;
  const scalar_t* next_;
  int64_t n_;
  bool prefetch_;
};

// A tile's running sum: SIMD lanes accumulate blocks of kBlock vectors in the accumulation
// type, and each block is added to a double total, so the error stays near float rounding of
// the result instead of growing with the row length.
template <typename T>
class BlockedSum {
 public:
  static constexpr int kBlock = 16;
  void add(const at::vec::Vectorized<T>& v) {
    lanes_ += v;
    if (++count_ == kBlock) flush();
  }
  double total() {
    flush();
    return total_;
  }

 private:
  void flush() {
    alignas(64) T buf[at::vec::Vectorized<T>::size()];
    lanes_.store(buf);
    for (int64_t i = 0; i < at::vec::Vectorized<T>::size(); ++i) total_ += buf[i];
    lanes_ = at::vec::Vectorized<T>(T(0));
    count_ = 0;
  }
  at::vec::Vectorized<T> lanes_{T(0)};
  int count_ = 0;
  double total_ = 0;
};

// Iterates [begin, end) in vector steps; the last step may be partial.  fn(offset, count).
template <typename T, typename Fn>
inline void for_each_vector(int64_t begin, int64_t end, const Fn& fn) {
  constexpr int64_t W = at::vec::Vectorized<T>::size();
  for (int64_t i = begin; i < end; i += W) fn(i, std::min(W, end - i));
}

}  // namespace ntm::cpu::CPU_CAPABILITY
