// Intra-op parallelism for the CPU kernels, on torch's own thread pool (torch.set_num_threads
// applies, nested calls run serially, like at::parallel_for).
//
// Why not at::parallel_for itself: it is a header template, and with torch's OpenMP backend
// (ATen/Config.h: AT_PARALLEL_OPENMP) its body is parallel only where the *including* file is
// compiled with OpenMP (ATen/ParallelOpenMP.h defines INTRA_OP_PARALLEL under _OPENMP).
// The extension is compiled without -fopenmp, so there at::parallel_for(b, e, g, f) is just
// f(b, e) on the calling thread -- which is why the kernels used one core.  torch_parallel_for
// (the stable C shim, torch >= 2.10) is at::parallel_for compiled inside libtorch, so it runs on
// torch's threads whatever flags this file is compiled with.
#pragma once

#include "cpu/cpu_ops.h"

#include <c10/util/Exception.h>
#include <torch/csrc/stable/c/shim.h>

#include <cstdint>

namespace ntm::cpu::CPU_CAPABILITY {

// Calls f(first, last) on disjoint chunks covering [begin, end), in parallel when the range
// exceeds `grain` and torch has more than one thread (at most one chunk per thread); counts
// the chunks in last_parallel_chunks().  f must not throw.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  last_parallel_chunks().store(0, std::memory_order_relaxed);
  const ParallelFunc call = [](int64_t first, int64_t last, void* ctx) {
    last_parallel_chunks().fetch_add(1, std::memory_order_relaxed);
    (*static_cast<const F*>(ctx))(first, last);
  };
  const AOTITorchError err =
      torch_parallel_for(begin, end, grain, call, const_cast<void*>(static_cast<const void*>(&f)));
  TORCH_CHECK(err == AOTI_TORCH_SUCCESS, "ntm: torch_parallel_for failed (error ", err, ")");
}

}  // namespace ntm::cpu::CPU_CAPABILITY
