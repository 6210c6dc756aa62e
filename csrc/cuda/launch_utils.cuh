// Host helpers shared by the ntm CUDA entry points: device checks, the current device and
// stream, the SM count, and launch error checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ntm::cuda {

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

// Streaming multiprocessors of the current device, asked once per device.
int64_t sm_count();

}  // namespace ntm::cuda

// Checks the launch that just happened (configuration errors, no-kernel-image, ...) and names
// the kernel in the error.
#define NTM_CUDA_CHECK_LAUNCH(what)                                                         \
  do {                                                                                      \
    const cudaError_t ntm_err_ = cudaGetLastError();                                        \
    TORCH_CHECK(ntm_err_ == cudaSuccess, "ntm: CUDA kernel launch failed in ", (what), ": ", \
                cudaGetErrorName(ntm_err_), ": ", cudaGetErrorString(ntm_err_));            \
  } while (0)
