// The GPU execution model of row_map_kernel.h: each thread runs each(f) once for itself, a
// Lanes<T> is that thread's register, shuffles are warp shuffles, barriers __syncthreads.
// Free of torch (tests/cpp/row_map_sm90.cu compiles the kernels alone for ptxas).
#pragma once

#include "row_map_kernel.h"

#include <cuda_runtime.h>

#include <cstdint>

namespace ntm::row_map {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T* block_scratch() {
  __shared__ T scratch[kMaxBlock / kWarp];
  return scratch;
}

struct DeviceExec {
  template <typename T>
  struct Lanes {
    using value_type = T;
    T v;
    __device__ explicit Lanes(const DeviceExec&) {}
    // Thread t's value is this thread's own register: every thread only ever asks for its own.
    __device__ T& operator[](int) { return v; }
  };

  template <typename F>
  __device__ void each(F&& f) const {
    f(static_cast<int>(threadIdx.x));
  }
  __device__ void barrier() const { __syncthreads(); }
  template <typename T>
  __device__ T shfl_xor(Lanes<T>& lanes, int, int offset) const {
    return __shfl_xor_sync(kFullMask, lanes.v, offset);
  }
  template <typename T>
  __device__ T* shared() const {
    return block_scratch<T>();
  }

  __device__ int64_t block_x() const { return blockIdx.x; }
  __device__ int64_t block_y() const { return blockIdx.y; }
  __device__ int64_t grid_x() const { return gridDim.x; }
  __device__ int64_t grid_y() const { return gridDim.y; }

  template <typename T>
  __device__ T load(const T* p) const {
    return *p;
  }
  template <typename T>
  __device__ void store(T* p, T v) const {
    *p = v;
  }
  // 16 bytes through the read-only data path (the kernels never write their inputs).
  template <typename scalar_t>
  __device__ Pack<scalar_t> load_pack(const scalar_t* p) const {
    union {
      uint4 raw;
      Pack<scalar_t> pack;
    } cvt;
    cvt.raw = __ldg(reinterpret_cast<const uint4*>(p));
    return cvt.pack;
  }
  // One 16-byte store through the store intrinsic: a plain assignment of the pack (or of a
  // uint4 read from it) compiles to element-sized stores (tests/test_cuda_sass.py).
  template <typename scalar_t>
  __device__ void store_pack(scalar_t* p, const Pack<scalar_t>& pack) const {
    union {
      Pack<scalar_t> pack;
      uint4 raw;
    } cvt;
    cvt.pack = pack;
    __stwb(reinterpret_cast<uint4*>(p), cvt.raw);
  }
  // Another block's write, made visible by its arrive(): read from L2, past this SM's L1.
  template <typename T>
  __device__ T load_partial(const T* p) const {
    return __ldcg(p);
  }
  __device__ unsigned arrive(unsigned* counter) const {
    __threadfence();
    return atomicAdd(counter, 1u);
  }
};

// Blocks of kMaxBlock threads that must fit on an SM at once (65536 registers): 4 (at most
// 64 registers a thread, 32 of the SM's 64 warps resident); 3 (80 registers, 24 warps) for the
// coupling backward's 8 tensors; 2 (128 registers, 16 warps) for double.  Tighter bounds make
// ptxas spill (tests/test_cuda_sass.py holds these figures).
template <typename scalar_t, typename Op>
constexpr int min_blocks_per_sm() {
  return sizeof(scalar_t) == 8 ? 2 : (Op::kIn + Op::kOut > 6 ? 3 : 4);
}

template <typename scalar_t, typename Op>
__global__ void __launch_bounds__(kMaxBlock, min_blocks_per_sm<scalar_t, Op>())
    row_map_kernel(const RowMapArgs<scalar_t, Op> a, const Op op) {
  DeviceExec x;
  row_map_block(x, a, op);
}

}  // namespace ntm::row_map
