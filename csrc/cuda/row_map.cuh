// The one kernel shape behind every ntm CUDA op: a [rows, n] problem (every row contiguous,
// inputs at any row stride, outputs contiguous) mapped element by element in one pass over memory, with an optional per-row scalar input
// (grad_logdet, the NLL's upstream gradient) and an optional per-row sum (logdet, NLL)
// reduced in the same pass.
//
// Work is cut into *segments*: a segment is a whole row (short rows) or a chunk of a row
// (long rows).  A segment is handled by a group of G threads:
//   * short rows (<= 256 vectors): G is a power of two <= 32 (a sub-warp), several rows per
//     block, the row sum is a butterfly within the group;
//   * long rows: G = the whole block (kThreads), a chunk of 1 to kChunkVectors vectors per
//     thread, the chunk length chosen so that the grid has at least kMinBlocksPerSM blocks per
//     SM whenever the rows are long enough; the block writes its chunk's partial sum, and a
//     second tiny kernel adds each row's partials in a fixed order.
// Grids loop over rows (1-D for short rows, chunks x rows for long ones, rows looping past
// gridDim.y's limit), so any number of rows and any row length work (64-bit indices).
// Every addition happens in an order fixed by (rows, n, dtype, pointer alignment, the device's
// SM count): no atomics, so the output is bit-identical from run to run.
//
// Memory: 16-byte vector loads/stores when every row of every tensor starts at the same offset
// from a 16-byte boundary (same address phase and row strides of equal phase; a scalar head
// brings each segment to a vector boundary, a scalar tail finishes it); plain scalar accesses,
// still coalesced, otherwise.  Element maths run in acc_type<scalar_t> (float or double).
#pragma once

#include "launch_utils.cuh"

#include "ntm/op_io.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <array>

namespace ntm::cuda {

// Most vectors per thread per chunk in the long-row path: a chunk is at most kThreads *
// kChunkVectors vectors (16384 float32 elements, 64 KiB per input, as in the CPU tiles).
constexpr int kChunkVectors = 16;
// The long-row path shortens its chunks (down to one vector per thread) until the grid has
// this many blocks per SM.
constexpr int kMinBlocksPerSM = 4;
// Rows of at most this many vectors take the sub-warp path...
constexpr int64_t kShortRowVectors = kWarp * 8;
// ...unless that grid would have fewer than kMinBlocksPerSM blocks per SM and the rows have at
// least this many vectors (a quarter of a block busy): then one block per row (long-row path).
constexpr int64_t kBlockRowMinVectors = kThreads / 4;

// An Op provides:
//   static constexpr int kIn, kOut;     per-element inputs / outputs (kOut may be 0)
//   static constexpr bool kReduce;      whether operator() returns a term of the row sum
//   __device__ acc_t operator()(const acc_t (&in)[kIn], acc_t row_scalar,
//                               acc_t (&out)[kOutSlots]) const;
template <typename Op>
constexpr int out_slots() {
  return Op::kOut > 0 ? Op::kOut : 1;
}

template <typename scalar_t, typename Op>
struct RowMapArgs {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* in[Op::kIn];
  int64_t in_stride[Op::kIn];  // elements between rows
  scalar_t* out[out_slots<Op>()];  // contiguous [rows, n]; nullptr: not written
  const acc_t* row_scalar;  // [rows] or nullptr (reads as 0)
  acc_t* row_sum;           // [rows * chunks]: the row sums (chunks == 1) or chunk partials
  int64_t rows;
  int64_t n;                // elements per row
  int64_t chunk;            // elements per segment (the last segment of a row may be shorter)
  int64_t chunks;           // segments per row
  int group;                // threads per segment: 1, 2, ..., 32, or kThreads
  bool vectorized;          // every row of every tensor has the same 16-byte phase
  bool negate;              // write -sum (only with chunks == 1; else the finaliser negates)
};

// One segment's tensors: row pointers of the inputs and outputs.
template <typename scalar_t, typename Op>
struct RowPtrs {
  const scalar_t* in[Op::kIn];
  scalar_t* out[out_slots<Op>()];
};

// One element at offset i of the row.
template <typename scalar_t, typename Op>
__device__ __forceinline__ void map_one(const RowPtrs<scalar_t, Op>& p, const Op& op, int64_t i,
                                        acc_type<scalar_t> rs, acc_type<scalar_t>& sum) {
  using acc_t = acc_type<scalar_t>;
  acc_t in[Op::kIn];
#pragma unroll
  for (int j = 0; j < Op::kIn; ++j) in[j] = static_cast<acc_t>(p.in[j][i]);
  acc_t out[out_slots<Op>()];
  const acc_t term = op(in, rs, out);
#pragma unroll
  for (int j = 0; j < Op::kOut; ++j)
    if (p.out[j] != nullptr) p.out[j][i] = static_cast<scalar_t>(out[j]);
  if constexpr (Op::kReduce) sum += term;
}

// One 16-byte vector of elements starting at offset i of the row (every p.in[j] + i and
// p.out[j] + i is 16-byte aligned).  Terms are added in element order.
//
// One vector per step: a variant that issued two vectors' loads first doubled the registers
// (so about halved the occupancy, leaving the bytes in flight per SM about the same) and made
// ptxas spill in several instantiations; it was dropped (not timed on a GPU).
template <typename scalar_t, typename Op>
__device__ __forceinline__ void map_pack(const RowPtrs<scalar_t, Op>& p, const Op& op,
                                         int64_t i, acc_type<scalar_t> rs,
                                         acc_type<scalar_t>& sum) {
  using acc_t = acc_type<scalar_t>;
  constexpr int V = vec_width<scalar_t>();
  Pack<scalar_t> in[Op::kIn];
#pragma unroll
  for (int j = 0; j < Op::kIn; ++j) in[j] = load_pack(p.in[j] + i);
  Pack<scalar_t> out[out_slots<Op>()];
#pragma unroll
  for (int e = 0; e < V; ++e) {
    acc_t x[Op::kIn];
#pragma unroll
    for (int j = 0; j < Op::kIn; ++j) x[j] = static_cast<acc_t>(in[j].v[e]);
    acc_t y[out_slots<Op>()];
    const acc_t term = op(x, rs, y);
#pragma unroll
    for (int j = 0; j < Op::kOut; ++j) out[j].v[e] = static_cast<scalar_t>(y[j]);
    if constexpr (Op::kReduce) sum += term;
  }
#pragma unroll
  for (int j = 0; j < Op::kOut; ++j)
    if (p.out[j] != nullptr) store_pack(p.out[j] + i, out[j]);
}

// The elements [begin, end) of one row, shared by `group` threads (this one is `lane`).
template <typename scalar_t, typename Op>
__device__ __forceinline__ acc_type<scalar_t> map_segment(const RowMapArgs<scalar_t, Op>& a,
                                                          const RowPtrs<scalar_t, Op>& p,
                                                          const Op& op, int64_t begin,
                                                          int64_t end, int lane, int group,
                                                          acc_type<scalar_t> rs) {
  using acc_t = acc_type<scalar_t>;
  constexpr int V = vec_width<scalar_t>();
  acc_t sum = acc_t(0);
  if (a.vectorized) {
    // every tensor's row has the phase of p.in[0]'s
    const auto phase = reinterpret_cast<std::uintptr_t>(p.in[0] + begin) & 15u;
    int64_t head = static_cast<int64_t>(((16u - phase) & 15u) / sizeof(scalar_t));
    if (head > end - begin) head = end - begin;
    for (int64_t i = begin + lane; i < begin + head; i += group) map_one(p, op, i, rs, sum);
    const int64_t vbegin = begin + head;
    const int64_t nvec = (end - vbegin) / V;
    for (int64_t k = lane; k < nvec; k += group) map_pack(p, op, vbegin + k * V, rs, sum);
    for (int64_t i = vbegin + nvec * V + lane; i < end; i += group) map_one(p, op, i, rs, sum);
  } else {
    for (int64_t i = begin + lane; i < end; i += group) map_one(p, op, i, rs, sum);
  }
  return sum;
}

// One segment: row `row`, chunk `chunk` (elements [chunk * a.chunk, ...) of the row).
template <typename scalar_t, typename Op>
__device__ __forceinline__ acc_type<scalar_t> map_row_chunk(const RowMapArgs<scalar_t, Op>& a,
                                                            const Op& op, int64_t row,
                                                            int64_t chunk, int lane) {
  using acc_t = acc_type<scalar_t>;
  RowPtrs<scalar_t, Op> p;
#pragma unroll
  for (int j = 0; j < Op::kIn; ++j) p.in[j] = a.in[j] + row * a.in_stride[j];
#pragma unroll
  for (int j = 0; j < out_slots<Op>(); ++j)
    p.out[j] = a.out[j] != nullptr ? a.out[j] + row * a.n : nullptr;
  const int64_t begin = chunk * a.chunk;
  const int64_t len = a.n - begin < a.chunk ? a.n - begin : a.chunk;
  const acc_t rs = a.row_scalar != nullptr ? a.row_scalar[row] : acc_t(0);
  return map_segment(a, p, op, begin, begin + len, lane, a.group, rs);
}

// Short rows (a.group <= 32, one segment per row): a 1-D grid over groups of rows.
// Long rows (a.group == kThreads): blockIdx.x is the chunk, blockIdx.y strides over rows.
// Every loop below is block-uniform, so the reductions inside are reached by all threads.
template <typename scalar_t, typename Op>
__global__ void __launch_bounds__(kThreads)
    row_map_kernel(const RowMapArgs<scalar_t, Op> a, const Op op) {
  using acc_t = acc_type<scalar_t>;
  if (a.group == kThreads) {
    __shared__ acc_t shared[kThreads / kWarp];
    const int64_t chunk = blockIdx.x;
    for (int64_t row = blockIdx.y; row < a.rows; row += gridDim.y) {
      acc_t sum = map_row_chunk(a, op, row, chunk, static_cast<int>(threadIdx.x));
      if constexpr (Op::kReduce) {
        sum = block_sum(sum, shared);
        if (threadIdx.x == 0) a.row_sum[row * a.chunks + chunk] = a.negate ? -sum : sum;
      }
    }
  } else {
    const int group = a.group;
    const int lane = static_cast<int>(threadIdx.x) % group;
    const int64_t per_block = kThreads / group;
    for (int64_t first = static_cast<int64_t>(blockIdx.x) * per_block; first < a.rows;
         first += static_cast<int64_t>(gridDim.x) * per_block) {
      const int64_t row = first + static_cast<int64_t>(threadIdx.x) / group;
      acc_t sum = row < a.rows ? map_row_chunk(a, op, row, 0, lane) : acc_t(0);
      if constexpr (Op::kReduce) {
        sum = group_sum(sum, group);
        if (lane == 0 && row < a.rows) a.row_sum[row] = a.negate ? -sum : sum;
      }
    }
  }
}

// out[row] = (+/-) sum_k partial[row * chunks + k], k ascending per lane, one warp per row.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_chunks_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ out, int64_t rows,
                      int64_t chunks, bool negate) {
  constexpr int64_t kWarpsPerBlock = kThreads / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  // `row` is warp-uniform, so every lane of a warp runs the same iterations.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       row < rows; row += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    acc_t s = acc_t(0);
    for (int64_t k = lane; k < chunks; k += kWarp) s += partial[row * chunks + k];
    s = group_sum(s, kWarp);
    if (lane == 0) out[row] = negate ? -s : s;
  }
}

// One launch of launch_row_map: `op` over a [rows, n] problem on `stream`.
template <typename scalar_t, typename Op>
struct RowMapLaunch {
  using acc_t = acc_type<scalar_t>;
  const char* name = "";                     // the op, for errors
  Op op{};
  std::array<const scalar_t*, Op::kIn> in{};  // row r of input j: in[j] + r * in_stride[j]
  std::array<int64_t, Op::kIn> in_stride{};
  std::array<scalar_t*, out_slots<Op>()> out{};  // contiguous [rows, n]; nullptr: not written
  const acc_t* row_scalar = nullptr;         // [rows] or nullptr (reads as 0)
  acc_t* row_sum = nullptr;                  // [rows], written when Op::kReduce
  bool negate = false;                       // write -sum
  int64_t rows = 0, n = 0;
  at::TensorOptions acc_options;             // for the chunk partials
  cudaStream_t stream = nullptr;

  void set_input(int j, const RowView& v) {
    in[j] = v.t.const_data_ptr<scalar_t>();
    in_stride[j] = v.stride;
  }
};

// Whether every row of every tensor starts at the same offset from a 16-byte boundary.
template <typename scalar_t, typename Op>
bool same_phase(const RowMapLaunch<scalar_t, Op>& l) {
  const auto phase = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) & 15u; };
  const auto stride_phase = [&](int64_t stride) {
    return l.rows > 1 ? static_cast<std::uintptr_t>(stride * sizeof(scalar_t)) & 15u : 0u;
  };
  const std::uintptr_t p0 = phase(l.in[0]), s0 = stride_phase(l.n);
  bool same = true;
  for (int j = 0; j < Op::kIn; ++j)
    same = same && phase(l.in[j]) == p0 && stride_phase(l.in_stride[j]) == s0;
  for (int j = 0; j < Op::kOut; ++j)
    if (l.out[j] != nullptr) same = same && phase(l.out[j]) == p0;
  return same;
}

// Streaming multiprocessors of the current device (DeviceScope made it the tensors' device).
inline int64_t sm_count() {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount,
                                        c10::cuda::current_device()));
  return count;
}

// Elements per chunk of a long row: at most kChunkVectors vectors per thread, at least one,
// short enough that rows * chunks reaches kMinBlocksPerSM blocks per SM when it can.
inline int64_t long_row_chunk(int64_t rows, int64_t n, int vec, int64_t sms) {
  const int64_t max_chunk = static_cast<int64_t>(kThreads) * kChunkVectors * vec;
  const int64_t min_chunk = static_cast<int64_t>(kThreads) * vec;
  const int64_t want_chunks = (kMinBlocksPerSM * sms + rows - 1) / rows;
  int64_t chunk = (n + want_chunks - 1) / want_chunks;
  chunk = (chunk + vec - 1) / vec * vec;
  return chunk < min_chunk ? min_chunk : (chunk > max_chunk ? max_chunk : chunk);
}

template <typename scalar_t, typename Op>
void launch_row_map(const RowMapLaunch<scalar_t, Op>& l) {
  using acc_t = acc_type<scalar_t>;
  constexpr int V = vec_width<scalar_t>();
  if (l.rows == 0) return;
  if (l.n == 0) {
    if constexpr (Op::kReduce) {
      C10_CUDA_CHECK(cudaMemsetAsync(l.row_sum, 0, sizeof(acc_t) * l.rows, l.stream));
    }
    return;
  }
  RowMapArgs<scalar_t, Op> a;
  for (int j = 0; j < Op::kIn; ++j) {
    a.in[j] = l.in[j];
    a.in_stride[j] = l.in_stride[j];
  }
  for (int j = 0; j < out_slots<Op>(); ++j) a.out[j] = j < Op::kOut ? l.out[j] : nullptr;
  a.row_scalar = l.row_scalar;
  a.rows = l.rows;
  a.n = l.n;
  a.vectorized = same_phase(l);

  const int64_t nvec = (l.n + V - 1) / V;
  const int64_t sms = sm_count();
  int group = 1;  // short rows: about 4 vectors per thread, at most 8 when group == 32
  while (group < kWarp && static_cast<int64_t>(group) * 4 < nvec) group <<= 1;
  const int64_t short_blocks = (l.rows + kThreads / group - 1) / (kThreads / group);
  const bool few_blocks = short_blocks < kMinBlocksPerSM * sms && nvec >= kBlockRowMinVectors;
  if (nvec <= kShortRowVectors && !few_blocks) {
    a.group = group;
    a.chunk = l.n;
    a.chunks = 1;
  } else {
    a.group = kThreads;
    a.chunk = long_row_chunk(l.rows, l.n, V, sms);
    a.chunks = (l.n + a.chunk - 1) / a.chunk;
  }

  at::Tensor partial;
  const bool two_pass = Op::kReduce && a.chunks > 1;
  if (two_pass) {
    partial = at::empty({l.rows * a.chunks}, l.acc_options);
    a.row_sum = partial.mutable_data_ptr<acc_t>();
    a.negate = false;
  } else {
    a.row_sum = l.row_sum;
    a.negate = l.negate;
  }

  dim3 grid;
  if (a.group == kThreads) {
    // One block per chunk in x; rows past 65535 loop in y.
    TORCH_CHECK(a.chunks <= 0x7fffffff, l.name, ": rows of ", l.n, " elements are too long");
    grid = dim3(grid_size(a.chunks), static_cast<unsigned>(l.rows < 65535 ? l.rows : 65535));
  } else {
    const int64_t per_block = kThreads / a.group;
    grid = dim3(grid_size((l.rows + per_block - 1) / per_block));
  }
  row_map_kernel<scalar_t, Op><<<grid, kThreads, 0, l.stream>>>(a, l.op);
  NTM_CUDA_CHECK_LAUNCH(l.name);
  if (two_pass) {
    constexpr int64_t kWarpsPerBlock = kThreads / kWarp;
    sum_chunks_kernel<acc_t><<<grid_size((l.rows + kWarpsPerBlock - 1) / kWarpsPerBlock),
                               kThreads, 0, l.stream>>>(a.row_sum, l.row_sum, l.rows, a.chunks,
                                                        l.negate);
    NTM_CUDA_CHECK_LAUNCH(l.name);
  }
  // `partial` is released here; the caching allocator orders its reuse after the kernels
  // already queued on this stream.
}

}  // namespace ntm::cuda
