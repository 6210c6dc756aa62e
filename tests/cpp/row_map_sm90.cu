// The row-map kernels of the five ntm ops in every dtype, alone (no torch), for
// tests/test_cuda_sass.py: compiled for sm_90 with `nvcc -cubin -Xptxas -v` in seconds; the same
// template instantiations as the extension's AT_DISPATCH over double, float, half, bfloat16.
#include "../../csrc/cuda/device_exec.cuh"
#include "../../csrc/cuda/row_map_ops.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace ntm::row_map {

template <typename A>
using Forward = CouplingMapOp<A, false>;
template <typename A>
using Inverse = CouplingMapOp<A, true>;

#define NTM_INSTANCE(S, Op) \
  template __global__ void row_map_kernel<S, Op>(const RowMapArgs<S, Op>, const Op);
#define NTM_OPS(S, A)                                                               \
  NTM_INSTANCE(S, Forward<A>) NTM_INSTANCE(S, Inverse<A>)                           \
  NTM_INSTANCE(S, CouplingBackwardOp<A>) NTM_INSTANCE(S, NllOp<A>) NTM_INSTANCE(S, NllBackwardOp<A>)

NTM_OPS(double, double)
NTM_OPS(float, float)
NTM_OPS(c10::Half, float)
NTM_OPS(c10::BFloat16, float)

}  // namespace ntm::row_map
