// CPU implementations of the ntm ops (registered in csrc/ops.cpp).  ntm::cpu::<op> forwards to
// the kernels of the chosen CPU capability (csrc/cpu/dispatch.cpp); the kernels themselves
// (csrc/cpu/kernels/*.cpp) are compiled once per capability into ntm::cpu::<CAPABILITY>.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace ntm::cpu {
#include "ntm/op_signatures.inc"
#include "ntm/cpu_only_signatures.inc"

// Capability names, lowest first: "default" (no SIMD beyond the baseline), "avx2", "avx512".
std::vector<std::string> compiled_capabilities();
// The compiled capabilities that this CPU can run.
std::vector<std::string> supported_capabilities();
// The capability whose kernels the ops run now: the best supported one, or the one named by
// the NTM_CPU_CAPABILITY environment variable (lowered to the best supported level below it).
std::string current_capability();
// Makes the ops run the kernels of `name`; raises ValueError if it is not compiled or not
// supported by this CPU.
void set_capability(const std::string& name);

// How many chunks (one per thread that took part) the last parallel section of a CPU kernel
// was split into: 1 when it ran on the calling thread alone.  A diagnostic for the tests
// (threads are really used) -- racy, by design, when several ops run at once.
std::atomic<int64_t>& last_parallel_chunks();
}  // namespace ntm::cpu
