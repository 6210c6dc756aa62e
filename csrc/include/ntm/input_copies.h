// How many per-element op inputs were copied before a kernel could read them (their rows were
// not contiguous: see ntm::row_view).  Column slices and batch-expanded tensors are read in
// place and do not count.  One relaxed atomic add per copied input, so it is always on;
// ntm_engine.ops.input_copy_count() / reset_input_copy_count() read and clear it.
#pragma once

#include <atomic>
#include <cstdint>

namespace ntm {

inline std::atomic<int64_t>& input_copy_counter() {
  static std::atomic<int64_t> copies{0};
  return copies;
}

}  // namespace ntm
