// CUDA registrations of the ntm ops (schemas in csrc/ops.cpp).  Compiled only in CUDA builds
// (setup.py adds csrc/cuda/*.cu and -DNTM_WITH_CUDA), so build_info()['cuda'] is True exactly
// when these kernels exist.
#include "cuda_ops.h"

#include <torch/library.h>

TORCH_LIBRARY_IMPL(ntm, CUDA, m) {
  m.impl("affine_coupling", &ntm::cuda::affine_coupling);
  m.impl("affine_coupling_inverse", &ntm::cuda::affine_coupling_inverse);
  m.impl("affine_coupling_backward", &ntm::cuda::affine_coupling_backward);
  m.impl("gaussian_nll", &ntm::cuda::gaussian_nll);
  m.impl("gaussian_nll_backward", &ntm::cuda::gaussian_nll_backward);
}
