// The accumulation type of the ntm kernels, shared by the CPU and CUDA code: element maths and
// per-sample sums run in float for float/half/bfloat16 and in double for double.
#pragma once

#include <type_traits>

namespace ntm {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace ntm
