// CUDA implementations of the ntm ops (registered for the CUDA key in register_cuda.cu).
// Same contract as ntm::cpu (csrc/cpu/cpu_ops.h): same checks, dtypes, shapes and maths.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace ntm::cuda {

std::tuple<at::Tensor, at::Tensor> affine_coupling(const at::Tensor& x, const at::Tensor& shift,
                                                   const at::Tensor& scale_logits,
                                                   std::optional<double> clamp);

std::tuple<at::Tensor, at::Tensor> affine_coupling_inverse(const at::Tensor& y,
                                                           const at::Tensor& shift,
                                                           const at::Tensor& scale_logits,
                                                           std::optional<double> clamp);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> affine_coupling_backward(
    const at::Tensor& y, const at::Tensor& shift, const at::Tensor& scale_logits,
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_logdet,
    std::optional<double> clamp);

at::Tensor gaussian_nll(const at::Tensor& u, const at::Tensor& mean, const at::Tensor& log_sigma);

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_nll_backward(
    const at::Tensor& u, const at::Tensor& mean, const at::Tensor& log_sigma,
    const at::Tensor& grad);

}  // namespace ntm::cuda
