// CUDA implementations of the ntm ops (registered for the CUDA key in register_cuda.cu).
// Same contract as ntm::cpu (csrc/cpu/cpu_ops.h): same checks, dtypes, shapes and maths.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace ntm::cuda {
#include "ntm/op_signatures.inc"
}  // namespace ntm::cuda
