// Launch shape of the CUDA row-map kernel (csrc/cuda/row_map_kernel.h): host-only arithmetic,
// free of CUDA and torch, so that ctest sweeps it on any machine
// (tests/cpp/test_launch_shapes.cpp) and the CPU emulator runs the kernel with it.
//
// A [rows, n] problem is cut into *segments*: a whole row (chunks == 1) or a chunk of a long
// row.  `group` threads share a segment; a block of `block` threads holds block / group
// segments of consecutive rows (a *row group*).  The grid is row groups in x and chunks in y;
// the kernel loops over both past the grid limits.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define NTM_LAUNCH_HD __host__ __device__ __forceinline__
#else
#define NTM_LAUNCH_HD inline
#endif

namespace ntm::launch {

constexpr int kMaxBlock = 256;  // threads per block, at most (8 warps)
constexpr int kWarp = 32;
constexpr int kVectorBytes = 16;
// Rows of at most this many vectors are one segment each; longer rows take whole blocks.
constexpr int64_t kShortRowVectors = kWarp * 8;
// A long-row chunk has at most this many vectors per thread...
constexpr int64_t kChunkVectors = 16;
// ...and is shortened (down to one vector per thread) until the grid has this many full
// blocks' worth of threads per SM, when the rows are long enough.
constexpr int64_t kFillThreadsPerSM = 4 * kMaxBlock;

struct GridLimits {
  int64_t x = 0x7fffffff;  // gridDim.x
  int64_t y = 65535;       // gridDim.y
};

struct Shape {
  int group = 1;            // threads per segment: a power of two, 1 to kMaxBlock
  int block = kWarp;        // threads per block: a power of two, kWarp to kMaxBlock, >= group
  int64_t chunk = 0;        // elements per segment (a row's last one may be shorter)
  int64_t chunks = 1;       // segments per row
  int64_t row_groups = 0;   // blocks' worth of rows: ceil(rows / (block / group))
  int64_t grid_x = 1, grid_y = 1;
  int64_t rows_per_block() const { return block / group; }
};

// Elements in one 16-byte vector.
NTM_LAUNCH_HD int vector_elems(int elem_size) { return kVectorBytes / elem_size; }

// How the elements [begin, begin + len) of a row whose element `begin` sits at byte address
// `addr` split into a scalar head up to a 16-byte boundary, whole vectors, and a scalar tail.
struct Split {
  int64_t head, vectors, tail;
};

NTM_LAUNCH_HD Split split_segment(std::uintptr_t addr, int64_t len, int elem_size) {
  const int64_t to_boundary =
      static_cast<int64_t>((kVectorBytes - (addr % kVectorBytes)) % kVectorBytes) / elem_size;
  const int64_t head = to_boundary < len ? to_boundary : len;
  const int v = vector_elems(elem_size);
  const int64_t vectors = (len - head) / v;
  return {head, vectors, len - head - vectors * v};
}

// One tensor of a launch: its address and its row stride in elements.
struct Operand {
  std::uintptr_t address;
  int64_t row_stride;
};

// Whether every row of every operand starts at the same offset from a 16-byte boundary (then
// one head length serves them all and the vector accesses of all of them are aligned).
inline bool same_phase(const Operand* operands, int count, int64_t rows, int elem_size) {
  const auto phase = [&](const Operand& o) { return o.address % kVectorBytes; };
  const auto stride_phase = [&](const Operand& o) {
    return rows > 1 ? static_cast<std::uintptr_t>(o.row_stride * elem_size) % kVectorBytes
                    : std::uintptr_t{0};
  };
  for (int j = 1; j < count; ++j)
    if (phase(operands[j]) != phase(operands[0]) ||
        stride_phase(operands[j]) != stride_phase(operands[0]))
      return false;
  return true;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements per chunk of a long row: kMaxBlock threads with 1 to kChunkVectors vectors each,
// short enough that rows * chunks blocks reach the fill target when the rows are long enough.
inline int64_t long_row_chunk(int64_t rows, int64_t n, int vec, int64_t sms) {
  const int64_t max_chunk = kMaxBlock * kChunkVectors * vec;
  const int64_t min_chunk = static_cast<int64_t>(kMaxBlock) * vec;
  const int64_t want_chunks = ceil_div(ceil_div(kFillThreadsPerSM * sms, kMaxBlock), rows);
  const int64_t chunk = ceil_div(ceil_div(n, want_chunks), vec) * vec;
  return chunk < min_chunk ? min_chunk : (chunk > max_chunk ? max_chunk : chunk);
}

// The shape for `rows` rows of `n` elements of `elem_size` bytes on a device with `sms` SMs.
//
// Short rows: about 4 vectors per thread (group <= a warp); while the whole grid would not
// fill the device, the group doubles (down to one vector per thread), and a group of warps is
// then a block of its own, so no warp of a block idles.  Blocks of sub-warp groups hold as
// many rows as fit in kMaxBlock threads, fewer when there are fewer rows.
inline Shape choose_shape(int64_t rows, int64_t n, int elem_size, int64_t sms,
                          GridLimits limits = {}) {
  const int vec = vector_elems(elem_size);
  const int64_t nvec = ceil_div(n, vec);
  const int64_t fill = kFillThreadsPerSM * sms;
  Shape s;
  if (nvec <= kShortRowVectors) {
    int g = 1;
    while (g < kWarp && g * 4 < nvec) g <<= 1;
    while (g < kMaxBlock && rows * g < fill && 2 * g <= nvec) g <<= 1;
    s.group = g;
    if (g >= kWarp) {
      s.block = rows * g < fill ? g : kMaxBlock;
    } else {
      int64_t b = kWarp;
      while (b < kMaxBlock && b < rows * g) b <<= 1;
      s.block = static_cast<int>(b);
    }
    s.chunk = n;
    s.chunks = 1;
  } else {
    s.group = s.block = kMaxBlock;
    s.chunk = long_row_chunk(rows, n, vec, sms);
    s.chunks = ceil_div(n, s.chunk);
  }
  s.row_groups = ceil_div(rows, s.rows_per_block());
  s.grid_x = s.row_groups < limits.x ? s.row_groups : limits.x;
  s.grid_y = s.chunks < limits.y ? s.chunks : limits.y;
  return s;
}

}  // namespace ntm::launch
