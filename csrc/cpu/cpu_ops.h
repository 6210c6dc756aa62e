// CPU implementations of the ntm ops (registered in csrc/ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace ntm::cpu {
#include "ntm/op_signatures.inc"
}  // namespace ntm::cpu
