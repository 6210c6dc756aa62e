// Argument validation and unpacking of ntm::autoregressive_decode (CPU kernel in
// csrc/cpu/kernels/autoregressive_decode.cpp, Python twin ntm_engine/reference.py).
//
// `params`, in this order (the AutoregressiveFlowBlock's tensors; W = width, P = patch_dim,
// H = MLP hidden width, N >= L positions):
//   embed.weight [W, P], embed.bias [W], start [W], pos [N, W],
//   per layer: qkv.weight [3W, W], qkv.bias [3W], proj.weight [W, W], proj.bias [W],
//              mlp.0.weight [H, W], mlp.0.bias [H], mlp.2.weight [W, H], mlp.2.bias [W],
//   out.weight [2P, W], out.bias [2P].
// `modulation` [depth, 4, B, W]: each layer's adaLN (shift1, scale1, shift2, scale2), or None.
#pragma once

#include "ntm/checks.h"

#include <ATen/core/TensorBody.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <optional>
#include <string>

namespace ntm {

constexpr int64_t kDecodeHeadParams = 4, kDecodeLayerParams = 8, kDecodeTailParams = 2;

struct DecodeIO {
  at::Tensor y, x, logdet, embed_w, embed_b, start, pos, out_w, out_b, modulation;
  int64_t tokens, patch, width, hidden, heads, depth;
  std::optional<double> clamp;
};

inline void check_decode_param(const at::Tensor& t, int64_t index, const char* what,
                               std::initializer_list<int64_t> shape, const at::Tensor& y) {
  const char* op = "ntm::autoregressive_decode";
  const std::string name = "params[" + std::to_string(index) + "] (" + what + ")";
  TORCH_CHECK_TYPE(t.scalar_type() == y.scalar_type(), op, ": argument '", name,
                   "' must have the dtype of 'y' (", y.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == y.device(), op, ": argument '", name,
                    "' must be on the device of 'y' (", y.device(), "), got ", t.device());
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), op, ": argument '", name,
                    "' must have shape ", shape_str(at::empty(shape, at::kMeta)), ", got ",
                    shape_str(t));
}

inline DecodeIO prepare_decode(const at::Tensor& y, at::TensorList params,
                               const std::optional<at::Tensor>& modulation, int64_t heads,
                               const std::optional<double>& clamp) {
  const char* op = "ntm::autoregressive_decode";
  check_reference(op, "y", y);
  TORCH_CHECK_TYPE(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble, op,
                   ": argument 'y' must be float32 or float64, got ", y.scalar_type());
  TORCH_CHECK_VALUE(y.dim() == 3, op, ": argument 'y' must have shape [B, L, P], got ",
                    shape_str(y));
  check_clamp(op, clamp);
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK_VALUE(n >= kDecodeHeadParams + kDecodeLayerParams + kDecodeTailParams &&
                        (n - kDecodeHeadParams - kDecodeTailParams) % kDecodeLayerParams == 0,
                    op, ": argument 'params' must hold ", kDecodeHeadParams, " + ",
                    kDecodeLayerParams, " x depth + ", kDecodeTailParams,
                    " tensors (depth >= 1), got ", n);
  const int64_t depth = (n - kDecodeHeadParams - kDecodeTailParams) / kDecodeLayerParams;
  const int64_t B = y.size(0), L = y.size(1), P = y.size(2);
  TORCH_CHECK_VALUE(params[0].dim() == 2 && params[3].dim() == 2 &&
                        params[kDecodeHeadParams + 4].dim() == 2, op,
                    ": arguments 'params[0]' (embed.weight), 'params[3]' (pos) and 'params[8]' "
                    "(mlp.0.weight) must be matrices");
  const int64_t W = params[0].size(0), H = params[kDecodeHeadParams + 4].size(0);
  TORCH_CHECK_VALUE(heads >= 1 && W % heads == 0, op, ": argument 'heads' must divide the width ",
                    W, ", got ", heads);
  TORCH_CHECK_VALUE(params[3].size(0) >= L, op, ": argument 'y' has ", L,
                    " tokens, more than the block's ", params[3].size(0), " positions");
  check_decode_param(params[0], 0, "embed.weight", {W, P}, y);
  check_decode_param(params[1], 1, "embed.bias", {W}, y);
  check_decode_param(params[2], 2, "start", {W}, y);
  check_decode_param(params[3], 3, "pos", {params[3].size(0), W}, y);
  for (int64_t l = 0; l < depth; ++l) {
    const int64_t b = kDecodeHeadParams + l * kDecodeLayerParams;
    check_decode_param(params[b], b, "qkv.weight", {3 * W, W}, y);
    check_decode_param(params[b + 1], b + 1, "qkv.bias", {3 * W}, y);
    check_decode_param(params[b + 2], b + 2, "proj.weight", {W, W}, y);
    check_decode_param(params[b + 3], b + 3, "proj.bias", {W}, y);
    check_decode_param(params[b + 4], b + 4, "mlp.0.weight", {H, W}, y);
    check_decode_param(params[b + 5], b + 5, "mlp.0.bias", {H}, y);
    check_decode_param(params[b + 6], b + 6, "mlp.2.weight", {W, H}, y);
    check_decode_param(params[b + 7], b + 7, "mlp.2.bias", {W}, y);
  }
  check_decode_param(params[n - 2], n - 2, "out.weight", {2 * P, W}, y);
  check_decode_param(params[n - 1], n - 1, "out.bias", {2 * P}, y);
  at::Tensor mod;
  if (modulation.has_value() && modulation->defined()) {
    mod = modulation->contiguous();
    TORCH_CHECK_TYPE(mod.scalar_type() == y.scalar_type(), op,
                     ": argument 'modulation' must have the dtype of 'y' (", y.scalar_type(),
                     "), got ", mod.scalar_type());
    TORCH_CHECK_VALUE(mod.device() == y.device(), op,
                      ": argument 'modulation' must be on the device of 'y'");
    TORCH_CHECK_VALUE(mod.sizes() == at::IntArrayRef({depth, 4, B, W}), op,
                      ": argument 'modulation' must have shape [", depth, ", 4, ", B, ", ", W,
                      "], got ", shape_str(mod));
  }
  const at::Tensor yc = y.contiguous();
  return DecodeIO{yc,
                  at::empty_like(yc),
                  at::empty({B}, y.options().dtype(acc_dtype(y.scalar_type()))),
                  params[0].contiguous(),
                  params[1].contiguous(),
                  params[2].contiguous(),
                  params[3].contiguous(),
                  params[n - 2].contiguous(),
                  params[n - 1].contiguous(),
                  mod,
                  L, P, W, H, heads, depth, clamp};
}

}  // namespace ntm
