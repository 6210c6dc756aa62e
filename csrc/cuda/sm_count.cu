// The SM count of each device, asked of the driver once (the launch shape depends on it).
#include "launch_utils.cuh"

#include <c10/cuda/CUDAFunctions.h>

#include <array>
#include <atomic>

namespace ntm::cuda {

int64_t sm_count() {
  constexpr int kMaxDevices = 64;
  static std::array<std::atomic<int>, kMaxDevices> cache{};  // 0: not asked yet
  const int device = c10::cuda::current_device();
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "ntm: CUDA device index ", device,
              " is out of range (at most ", kMaxDevices, " devices)");
  int count = cache[device].load(std::memory_order_relaxed);
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

}  // namespace ntm::cuda
