// Launches the row-map kernel (row_map_kernel.h, device_exec.cuh) for one ntm op on torch
// tensors: the launch shape from ntm/launch_shape.h via plan_row_map, and for long rows with a
// per-row sum a scratch of chunk partials and per-row counters (zeroed on the stream; the
// partials are added by the block that finishes each row, no second kernel).
#pragma once

#include "device_exec.cuh"
#include "launch_utils.cuh"
#include "row_map_plan.h"

#include "ntm/op_io.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

namespace ntm::cuda {

using row_map::RowMapProblem;

template <typename scalar_t, typename Op>
struct RowMapLaunch : RowMapProblem<scalar_t, Op> {
  const char* name = "";           // the op, for errors
  Op op{};
  at::TensorOptions byte_options;  // any tensor of the op's device, for the scratch
  cudaStream_t stream = nullptr;

  void set_input(int j, const RowView& v) {
    this->in[j] = v.t.template const_data_ptr<scalar_t>();
    this->in_stride[j] = v.stride;
  }
};

template <typename scalar_t, typename Op>
void launch_row_map(const RowMapLaunch<scalar_t, Op>& l) {
  using acc_t = typename Op::acc_t;
  if (l.rows == 0) return;
  if (l.n == 0) {
    if constexpr (Op::kReduce) {
      C10_CUDA_CHECK(cudaMemsetAsync(l.row_sum, 0, sizeof(acc_t) * l.rows, l.stream));
    }
    return;
  }
  row_map::RowMapArgs<scalar_t, Op> a = row_map::plan_row_map(l, sm_count());
  at::Tensor scratch;
  if (row_map::needs_partials(a)) {
    // [rows * chunks] partials, then [rows] counters (acc_t's alignment covers unsigned).
    const int64_t partial_bytes = l.rows * a.shape.chunks * static_cast<int64_t>(sizeof(acc_t));
    const int64_t counter_bytes = l.rows * static_cast<int64_t>(sizeof(unsigned));
    scratch = at::empty({partial_bytes + counter_bytes}, l.byte_options.dtype(at::kByte));
    a.partial = reinterpret_cast<acc_t*>(scratch.mutable_data_ptr<uint8_t>());
    a.arrived = reinterpret_cast<unsigned*>(scratch.mutable_data_ptr<uint8_t>() + partial_bytes);
    C10_CUDA_CHECK(cudaMemsetAsync(a.arrived, 0, counter_bytes, l.stream));
  }
  const dim3 grid(static_cast<unsigned>(a.shape.grid_x), static_cast<unsigned>(a.shape.grid_y));
  row_map::row_map_kernel<scalar_t, Op><<<grid, a.shape.block, 0, l.stream>>>(a, l.op);
  NTM_CUDA_CHECK_LAUNCH(l.name);
  // `scratch` is released here; the caching allocator orders its reuse after the kernel
  // already queued on this stream.
}

}  // namespace ntm::cuda
