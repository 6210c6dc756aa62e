// The body of the row-map kernel behind every ntm CUDA op, written once over an *execution
// model* X so that the same templates compile as the CUDA kernel (DeviceExec,
// csrc/cuda/device_exec.cuh: one thread each, warp shuffles, __shared__ arrays, __syncthreads)
// and as host code in the CPU emulator (tests/cpp/row_map_emulator.h: the threads of a block as
// loops, shuffles and shared memory as arrays, barriers as the ends of those loops).  Free of
// torch and of CUDA headers.
//
// A [rows, n] problem (every row contiguous, inputs at any row stride, outputs contiguous) is
// mapped element by element in one pass over memory, with an optional per-row scalar input
// (grad_logdet, the NLL's upstream gradient) and an optional per-row sum (logdet, NLL) reduced
// in the same pass.  The launch shape (segments, groups, blocks, grid) is ntm/launch_shape.h.
// A long row's chunks write partial sums; the block that finishes a row's last chunk (an atomic
// count per row) adds that row's partials in chunk order.  Every addition happens in an order
// fixed by the launch shape and the rows' 16-byte phases, never by timing: no float atomics,
// so the same input gives bit-identical output.
//
// X provides: each(f) (f(t) for every thread t of the block), barrier(), Lanes<T> (one T per
// thread, constructed from X), shfl_xor(lanes, t, offset), shared<T>() (kMaxBlock / kWarp
// values per block), block_x/y(), grid_x/y(), load/store of one element, load_pack/store_pack
// of 16 aligned bytes, load_partial (another block's write) and arrive(counter) (fence, then
// atomic increment, returning the old count).
#pragma once

#include "ntm/launch_shape.h"

#include <cstdint>

#if defined(__CUDACC__)
#define NTM_KERNEL_FN __device__ __forceinline__
#else
#define NTM_KERNEL_FN inline
#endif

namespace ntm::row_map {

using launch::kMaxBlock;
using launch::kWarp;

template <typename scalar_t>
constexpr int vec_width() {
  return launch::kVectorBytes / static_cast<int>(sizeof(scalar_t));
}

// A 16-byte, 16-byte-aligned pack of elements: loaded and stored as one vector access.
template <typename scalar_t>
struct alignas(16) Pack {
  scalar_t v[vec_width<scalar_t>()];
};

// An Op provides:
//   using acc_t;                        the accumulation type
//   static constexpr int kIn, kOut;     per-element inputs / outputs (kOut may be 0)
//   static constexpr bool kReduce;      whether operator() returns a term of the row sum
//   acc_t operator()(const acc_t (&in)[kIn], acc_t row_scalar, acc_t (&out)[out_slots]) const;
template <typename Op>
constexpr int out_slots() {
  return Op::kOut > 0 ? Op::kOut : 1;
}

template <typename scalar_t, typename Op>
struct RowMapArgs {
  using acc_t = typename Op::acc_t;
  const scalar_t* in[Op::kIn];
  int64_t in_stride[Op::kIn];      // elements between rows
  scalar_t* out[out_slots<Op>()];  // contiguous [rows, n]; nullptr: not written
  const acc_t* row_scalar;         // [rows] or nullptr (reads as 0)
  acc_t* row_sum;                  // [rows], written when Op::kReduce
  acc_t* partial;                  // [rows * chunks] when Op::kReduce and chunks > 1
  unsigned* arrived;               // [rows], zero before the launch: chunks of the row done
  int64_t rows;
  int64_t n;
  launch::Shape shape;
  bool vectorized;                 // every row of every tensor has the same 16-byte phase
  bool negate;                     // write -sum
};

// Pointers to one row of every tensor.
template <typename scalar_t, typename Op>
struct RowPtrs {
  const scalar_t* in[Op::kIn];
  scalar_t* out[out_slots<Op>()];
};

// One element at offset i of the row; its term is added to `sum`.
template <typename X, typename scalar_t, typename Op, typename acc_t>
NTM_KERNEL_FN void map_one(const X& x, const RowPtrs<scalar_t, Op>& p, const Op& op, int64_t i,
                           acc_t rs, acc_t& sum) {
  acc_t in[Op::kIn];
#pragma unroll
  for (int j = 0; j < Op::kIn; ++j) in[j] = static_cast<acc_t>(x.load(p.in[j] + i));
  acc_t out[out_slots<Op>()];
  const acc_t term = op(in, rs, out);
#pragma unroll
  for (int j = 0; j < Op::kOut; ++j)
    if (p.out[j] != nullptr) x.store(p.out[j] + i, static_cast<scalar_t>(out[j]));
  if constexpr (Op::kReduce) sum += term;
}

// One 16-byte vector starting at offset i of the row (every p.in[j] + i and p.out[j] + i is
// 16-byte aligned); terms are added in element order.
//
// One vector per step: a variant that issued two vectors' loads first doubled the registers
// (so about halved the occupancy, leaving the bytes in flight per SM about the same) and made
// ptxas spill in several instantiations; it was dropped (not timed on a GPU).
template <typename X, typename scalar_t, typename Op, typename acc_t>
NTM_KERNEL_FN void map_pack(const X& x, const RowPtrs<scalar_t, Op>& p, const Op& op,
                            int64_t i, acc_t rs, acc_t& sum) {
  constexpr int V = vec_width<scalar_t>();
  Pack<scalar_t> in[Op::kIn];
#pragma unroll
  for (int j = 0; j < Op::kIn; ++j) in[j] = x.load_pack(p.in[j] + i);
  Pack<scalar_t> out[out_slots<Op>()];
#pragma unroll
  for (int e = 0; e < V; ++e) {
    acc_t v[Op::kIn];
#pragma unroll
    for (int j = 0; j < Op::kIn; ++j) v[j] = static_cast<acc_t>(in[j].v[e]);
    acc_t y[out_slots<Op>()];
    const acc_t term = op(v, rs, y);
#pragma unroll
    for (int j = 0; j < Op::kOut; ++j) out[j].v[e] = static_cast<scalar_t>(y[j]);
    if constexpr (Op::kReduce) sum += term;
  }
#pragma unroll
  for (int j = 0; j < Op::kOut; ++j)
    if (p.out[j] != nullptr) x.store_pack(p.out[j] + i, out[j]);
}

// Thread `lane` of the group on segment (row, chunk): its share of the elements, and the sum
// of its terms (head, vectors, tail, each in element order).
template <typename X, typename scalar_t, typename Op>
NTM_KERNEL_FN typename Op::acc_t map_segment(const X& x, const RowMapArgs<scalar_t, Op>& a,
                                             const Op& op, int64_t row, int64_t chunk,
                                             int lane) {
  using acc_t = typename Op::acc_t;
  constexpr int V = vec_width<scalar_t>();
  RowPtrs<scalar_t, Op> p;
#pragma unroll
  for (int j = 0; j < Op::kIn; ++j) p.in[j] = a.in[j] + row * a.in_stride[j];
#pragma unroll
  for (int j = 0; j < out_slots<Op>(); ++j)
    p.out[j] = a.out[j] != nullptr ? a.out[j] + row * a.n : nullptr;
  const int64_t begin = chunk * a.shape.chunk;
  const int64_t end = a.n - begin < a.shape.chunk ? a.n : begin + a.shape.chunk;
  const acc_t rs = a.row_scalar != nullptr ? x.load(a.row_scalar + row) : acc_t(0);
  const int g = a.shape.group;
  acc_t sum = acc_t(0);
  if (a.vectorized) {
    const launch::Split s = launch::split_segment(
        reinterpret_cast<std::uintptr_t>(p.in[0] + begin), end - begin, sizeof(scalar_t));
    for (int64_t i = begin + lane; i < begin + s.head; i += g) map_one(x, p, op, i, rs, sum);
    const int64_t vbegin = begin + s.head;
    for (int64_t k = lane; k < s.vectors; k += g) map_pack(x, p, op, vbegin + k * V, rs, sum);
    for (int64_t i = vbegin + s.vectors * V + lane; i < end; i += g)
      map_one(x, p, op, i, rs, sum);
  } else {
    for (int64_t i = begin + lane; i < end; i += g) map_one(x, p, op, i, rs, sum);
  }
  return sum;
}

// v[t] += v[t ^ offset] for offset = width / 2, ..., 1: every thread of each aligned group of
// `width` threads (a power of two <= kWarp) ends with the group's sum, in one fixed order
// (IEEE addition is commutative, so both partners get the same bits).
template <typename X, typename Lanes>
NTM_KERNEL_FN void butterfly(X& x, Lanes& v, int width) {
  Lanes other(x);
  for (int offset = width >> 1; offset > 0; offset >>= 1) {
    x.each([&](int t) { other[t] = x.shfl_xor(v, t, offset); });
    x.each([&](int t) { v[t] += other[t]; });
  }
}

// Sum over each aligned group of `group` threads (a power of two <= kMaxBlock; every thread of
// the block calls it, with the same group): the group's first thread ends with the sum.
// Groups wider than a warp add their warps' sums through shared memory.
template <typename X, typename Lanes>
NTM_KERNEL_FN void group_sum(X& x, Lanes& v, int group) {
  using T = typename Lanes::value_type;
  butterfly(x, v, group < kWarp ? group : kWarp);
  if (group > kWarp) {
    T* warp_sums = x.template shared<T>();
    x.each([&](int t) {
      if (t % kWarp == 0) warp_sums[t / kWarp] = v[t];
    });
    x.barrier();
    const int warps = group / kWarp;
    x.each([&](int t) {
      const int lane = t % group;
      v[t] = lane < warps ? warp_sums[t / group * warps + lane] : T(0);
    });
    butterfly(x, v, warps);
    x.barrier();
  }
}

// A long row's chunk (group == block: one segment per block) after its block sum: thread 0
// stores the partial and counts the chunk in; the block that counts the row's last chunk adds
// the row's partials in chunk order (thread t takes chunks t, t + block, ...) and writes the
// row sum.
template <typename X, typename scalar_t, typename Op, typename Lanes>
NTM_KERNEL_FN void finish_chunk(X& x, const RowMapArgs<scalar_t, Op>& a, Lanes& sum,
                                int64_t row, int64_t chunk) {
  using acc_t = typename Op::acc_t;
  const int64_t chunks = a.shape.chunks;
  acc_t* partials = a.partial + row * chunks;
  int* last = x.template shared<int>();
  x.each([&](int t) {
    if (t == 0) {
      partials[chunk] = sum[t];
      last[0] = x.arrive(a.arrived + row) == static_cast<unsigned>(chunks - 1);
    }
  });
  x.barrier();
  if (last[0]) {
    x.each([&](int t) {
      acc_t s = acc_t(0);
      for (int64_t k = t; k < chunks; k += a.shape.block) s += x.load_partial(partials + k);
      sum[t] = s;
    });
    group_sum(x, sum, a.shape.block);
    x.each([&](int t) {
      if (t == 0) a.row_sum[row] = a.negate ? -sum[t] : sum[t];
    });
  }
  x.barrier();
}

// The whole kernel, for the block X stands for.  Every loop and branch around a group_sum or a
// barrier is uniform over the block.
template <typename X, typename scalar_t, typename Op>
NTM_KERNEL_FN void row_map_block(X& x, const RowMapArgs<scalar_t, Op>& a, const Op& op) {
  using acc_t = typename Op::acc_t;
  const launch::Shape& s = a.shape;
  const int64_t rows_per_block = s.block / s.group;
  typename X::template Lanes<acc_t> sum(x);
  for (int64_t chunk = x.block_y(); chunk < s.chunks; chunk += x.grid_y()) {
    for (int64_t rg = x.block_x(); rg < s.row_groups; rg += x.grid_x()) {
      const int64_t first = rg * rows_per_block;
      x.each([&](int t) {
        const int64_t row = first + t / s.group;
        sum[t] = row < a.rows ? map_segment(x, a, op, row, chunk, t % s.group) : acc_t(0);
      });
      if constexpr (Op::kReduce) {
        group_sum(x, sum, s.group);
        if (s.chunks > 1) {
          finish_chunk(x, a, sum, first, chunk);
        } else {
          x.each([&](int t) {
            const int64_t row = first + t / s.group;
            if (t % s.group == 0 && row < a.rows) a.row_sum[row] = a.negate ? -sum[t] : sum[t];
          });
        }
      }
    }
  }
}

}  // namespace ntm::row_map
