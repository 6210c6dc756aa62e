// The CPU emulator of the CUDA row-map kernel: csrc/cuda/row_map_kernel.h compiled as host
// code with HostExec, which runs the threads of one block as loops (each(f) is a loop over
// the block's threads, so a barrier is the end of that loop), keeps per-thread values and
// shared memory in arrays, and shuffles by indexing the array.  Blocks run one after another
// in a chosen order (the row sums must not depend on which block finishes a row last).
//
// Every access goes through a Monitor: element reads and writes are counted per address of
// the watched buffers, and a vector access that is not 16-byte aligned or an access outside
// the watched buffers is recorded as an error.
#pragma once

#include "../../csrc/cuda/row_map_kernel.h"
#include "../../csrc/cuda/row_map_plan.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace ntm::emu {

using row_map::Pack;
using row_map::RowMapArgs;

class Monitor {
 public:
  // Counts accesses to the `count` elements of `elem_size` bytes at `base`.
  void watch(const void* base, int64_t count, int elem_size) {
    buffers_.push_back({reinterpret_cast<std::uintptr_t>(base), count, elem_size,
                        std::vector<uint32_t>(count), std::vector<uint32_t>(count)});
  }
  void read(const void* p, int64_t elems, int elem_size) { touch(p, elems, elem_size, false); }
  void write(const void* p, int64_t elems, int elem_size) { touch(p, elems, elem_size, true); }
  void vector_access(const void* p) {
    if (reinterpret_cast<std::uintptr_t>(p) % launch::kVectorBytes != 0)
      error("misaligned vector access");
  }
  // Accesses of element i of watched buffer b.
  uint32_t reads(int b, int64_t i) const { return buffers_[b].reads[i]; }
  uint32_t writes(int b, int64_t i) const { return buffers_[b].writes[i]; }
  const std::vector<std::string>& errors() const { return errors_; }
  void error(const std::string& what) {
    if (errors_.size() < 8) errors_.push_back(what);
  }

 private:
  struct Buffer {
    std::uintptr_t base;
    int64_t count;
    int elem_size;
    std::vector<uint32_t> reads, writes;
  };
  void touch(const void* p, int64_t elems, int elem_size, bool is_write) {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    for (Buffer& b : buffers_) {
      if (a < b.base || a >= b.base + b.count * b.elem_size) continue;
      const int64_t i = static_cast<int64_t>(a - b.base) / b.elem_size;
      if (b.elem_size != elem_size || i + elems > b.count) break;
      auto& counts = is_write ? b.writes : b.reads;
      for (int64_t k = 0; k < elems; ++k) ++counts[i + k];
      return;
    }
    if (!buffers_.empty()) error(is_write ? "write outside the outputs" : "read outside the inputs");
  }
  std::vector<Buffer> buffers_;
  std::vector<std::string> errors_;
};

struct HostExec {
  int64_t bx = 0, by = 0, gx = 1, gy = 1;
  int block = launch::kWarp;
  Monitor* monitor = nullptr;
  bool write_outputs = true;  // false: stores are checked and counted, not done

  template <typename T>
  struct Lanes {
    using value_type = T;
    std::vector<T> v;
    explicit Lanes(const HostExec& x) : v(x.block) {}
    T& operator[](int t) { return v[t]; }
  };

  template <typename F>
  void each(F&& f) const {
    for (int t = 0; t < block; ++t) f(t);
  }
  void barrier() const {}
  template <typename T>
  T shfl_xor(Lanes<T>& lanes, int t, int offset) const {
    return lanes.v[t ^ offset];
  }
  template <typename T>
  T* shared() const {
    static std::vector<T> scratch(launch::kMaxBlock / launch::kWarp);
    return scratch.data();
  }
  int64_t block_x() const { return bx; }
  int64_t block_y() const { return by; }
  int64_t grid_x() const { return gx; }
  int64_t grid_y() const { return gy; }

  template <typename T>
  T load(const T* p) const {
    if (monitor) monitor->read(p, 1, sizeof(T));
    return *p;
  }
  template <typename T>
  void store(T* p, T v) const {
    if (monitor) monitor->write(p, 1, sizeof(T));
    if (write_outputs) *p = v;
  }
  template <typename scalar_t>
  Pack<scalar_t> load_pack(const scalar_t* p) const {
    if (monitor) {
      monitor->vector_access(p);
      monitor->read(p, row_map::vec_width<scalar_t>(), sizeof(scalar_t));
    }
    Pack<scalar_t> pack;
    std::memcpy(&pack, p, sizeof(pack));
    return pack;
  }
  template <typename scalar_t>
  void store_pack(scalar_t* p, const Pack<scalar_t>& pack) const {
    if (monitor) {
      monitor->vector_access(p);
      monitor->write(p, row_map::vec_width<scalar_t>(), sizeof(scalar_t));
    }
    if (write_outputs) std::memcpy(p, &pack, sizeof(pack));
  }
  template <typename T>
  T load_partial(const T* p) const {
    return *p;
  }
  unsigned arrive(unsigned* counter) const { return (*counter)++; }
};

enum class BlockOrder { kForward, kReverse };

// Runs the kernel of `a` (partials and counters provided here when needed) block by block.
// `only_row_groups`, when not empty, restricts the run to the blocks of those row groups.
template <typename scalar_t, typename Op>
void emulate(RowMapArgs<scalar_t, Op> a, const Op& op, Monitor* monitor = nullptr,
             BlockOrder order = BlockOrder::kForward, bool write_outputs = true,
             const std::vector<int64_t>& only_row_groups = {}) {
  using acc_t = typename Op::acc_t;
  std::vector<acc_t> partial;
  std::vector<unsigned> arrived;
  if (row_map::needs_partials(a)) {
    partial.resize(a.rows * a.shape.chunks);
    arrived.assign(a.rows, 0u);
    a.partial = partial.data();
    a.arrived = arrived.data();
  }
  const int64_t blocks = a.shape.grid_x * a.shape.grid_y;
  const auto run = [&](int64_t bx, int64_t by) {
    HostExec x{bx, by, a.shape.grid_x, a.shape.grid_y, a.shape.block, monitor, write_outputs};
    row_map::row_map_block(x, a, op);
  };
  if (!only_row_groups.empty()) {
    for (int64_t by = 0; by < a.shape.grid_y; ++by)
      for (int64_t rg : only_row_groups) run(rg % a.shape.grid_x, by);
    return;
  }
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t b = order == BlockOrder::kForward ? k : blocks - 1 - k;
    run(b % a.shape.grid_x, b / a.shape.grid_x);
  }
}

}  // namespace ntm::emu
