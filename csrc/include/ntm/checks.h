// Argument validation shared by the CPU and CUDA entry points.  Every failure names the op,
// the argument, what was expected and what was given.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

namespace ntm {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

// `ref` is the first per-element argument: floating, rank >= 1.
inline void check_reference(const char* op, const char* name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(ref.defined(), op, ": argument '", name, "' must be a tensor, got None");
  TORCH_CHECK_TYPE(at::isFloatingType(ref.scalar_type()), op, ": argument '", name,
                   "' must be float32, float64, bfloat16 or float16, got ", ref.scalar_type());
  TORCH_CHECK_VALUE(ref.dim() >= 1, op, ": argument '", name,
                    "' must have a batch dimension (rank >= 1), got a 0-d tensor");
}

// Another per-element argument: same shape, dtype and device as `ref`.
inline void check_like(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.defined(), op, ": argument '", name, "' must be a tensor, got None");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": argument '", name,
                   "' must have the dtype of '", ref_name, "' (", ref.scalar_type(), "), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", name,
                    "' must be on the device of '", ref_name, "' (", ref.device(), "), got ",
                    t.device());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": argument '", name,
                    "' must have the shape of '", ref_name, "' ", shape_str(ref), ", got ",
                    shape_str(t));
}

// A per-sample argument: shape [B], floating, on the device of `ref` (any floating dtype).
inline void check_per_sample(const char* op, const char* name, const at::Tensor& t,
                             const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": argument '", name,
                   "' must be a floating tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", name,
                    "' must be on the device of '", ref_name, "' (", ref.device(), "), got ",
                    t.device());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == ref.size(0), op, ": argument '", name,
                    "' must have shape [", ref.size(0), "] (one value per sample of '", ref_name,
                    "'), got ", shape_str(t));
}

inline void check_clamp(const char* op, const std::optional<double>& clamp) {
  TORCH_CHECK_VALUE(!clamp.has_value() || (*clamp > 0.0 && std::isfinite(*clamp)), op,
                    ": argument 'clamp' must be None or a finite number > 0, got ",
                    clamp.has_value() ? std::to_string(*clamp) : std::string("None"));
}

// Accumulation dtype of the per-sample outputs: float64 for float64, else float32.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Number of elements per sample of a [B, ...] tensor (0 when B == 0 is fine: callers guard).
inline int64_t row_length(const at::Tensor& t) {
  return t.size(0) == 0 ? 0 : t.numel() / t.size(0);
}

}  // namespace ntm
