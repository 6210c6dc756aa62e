// Small CUDA helpers shared by the ntm kernels: launch error checks, 16-byte vector packs
// and deterministic warp / block sums (no atomics: the order of every
// addition is fixed by the launch shape, so the same input gives bit-identical output).
#pragma once

#include "ntm/acc_type.h"

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace ntm::cuda {

// Threads per block of every ntm kernel (8 warps).
constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Elements of scalar_t in one 16-byte vector access.
template <typename scalar_t>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(scalar_t));
}

// A 16-byte, 16-byte-aligned pack of elements: loaded and stored as one vector access.
template <typename scalar_t>
struct alignas(16) Pack {
  scalar_t v[vec_width<scalar_t>()];
};

// A 16-byte load through the read-only data path (the kernels never write their inputs).
template <typename scalar_t>
__device__ __forceinline__ Pack<scalar_t> load_pack(const scalar_t* p) {
  union {
    uint4 raw;
    Pack<scalar_t> pack;
  } cvt;
  cvt.raw = __ldg(reinterpret_cast<const uint4*>(p));
  return cvt.pack;
}

template <typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* p, const Pack<scalar_t>& pack) {
  *reinterpret_cast<Pack<scalar_t>*>(p) = pack;
}

inline bool is_aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

// Butterfly sum over groups of `width` consecutive lanes (width a power of two <= 32).
// Every lane of the warp must call it.  Addition is commutative in IEEE arithmetic, so every
// lane of a group ends with the same, order-fixed value.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, int width) {
  for (int offset = width >> 1; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum over the whole block (kThreads threads, all must call it; the call is block-uniform).
// Returns the total in thread 0 (other threads get unspecified values).  `shared` holds at
// least kThreads / kWarp values; the trailing __syncthreads makes it reusable at once.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = group_sum(v, kWarp);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / kWarp ? shared[lane] : acc_t(0);
    v = group_sum(v, kThreads / kWarp);
  }
  __syncthreads();
  return v;
}

// Host side of every entry point: the reference tensor must live on a CUDA device (the
// other arguments were already checked to be on its device); while alive, that device is
// current, and stream() is its current stream, on which every kernel is launched.
inline void check_on_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": argument '", name,
                    "' must be a CUDA tensor for the CUDA kernel, got device ", t.device());
}

class DeviceScope {
 public:
  explicit DeviceScope(const at::Tensor& t)
      : guard_(t.device()), stream_(c10::cuda::getCurrentCUDAStream(t.get_device())) {}
  cudaStream_t stream() const { return stream_.stream(); }

 private:
  c10::cuda::CUDAGuard guard_;
  c10::cuda::CUDAStream stream_;
};

inline unsigned grid_size(int64_t blocks) {
  constexpr int64_t kMaxGrid = 0x7fffffff;  // gridDim.x limit; kernels loop beyond it
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxGrid ? kMaxGrid : blocks));
}

}  // namespace ntm::cuda

// Checks the launch that just happened (configuration errors, no-kernel-image, ...) and names
// the kernel in the error.
#define NTM_CUDA_CHECK_LAUNCH(what)                                                         \
  do {                                                                                      \
    const cudaError_t ntm_err_ = cudaGetLastError();                                        \
    TORCH_CHECK(ntm_err_ == cudaSuccess, "ntm: CUDA kernel launch failed in ", (what), ": ", \
                cudaGetErrorName(ntm_err_), ": ", cudaGetErrorString(ntm_err_));            \
  } while (0)
