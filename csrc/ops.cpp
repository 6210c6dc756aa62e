// Schemas of the ntm operator library and the CPU registrations.  CUDA kernels register
// themselves for the CUDA key in csrc/cuda/register_cuda.cu.
#include "cpu/cpu_ops.h"

#include <torch/library.h>

TORCH_LIBRARY(ntm, m) {
  m.def("affine_coupling(Tensor x, Tensor shift, Tensor scale_logits, float? clamp=None)"
        " -> (Tensor, Tensor)");
  m.def("affine_coupling_inverse(Tensor y, Tensor shift, Tensor scale_logits,"
        " float? clamp=None) -> (Tensor, Tensor)");
  // need_x / need_grad_shift = False: that output is an empty [0] tensor (grad_shift equals
  // grad_y, which the caller may use as it is).
  m.def("affine_coupling_backward(Tensor y, Tensor shift, Tensor scale_logits, Tensor grad_y,"
        " Tensor? grad_logdet, float? clamp=None, *, bool need_x=True,"
        " bool need_grad_shift=True) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("gaussian_nll(Tensor u, Tensor mean, Tensor log_sigma) -> Tensor");
  m.def("gaussian_nll_backward(Tensor u, Tensor mean, Tensor log_sigma, Tensor grad)"
        " -> (Tensor, Tensor, Tensor)");
  // CPU only (csrc/include/ntm/cpu_only_signatures.inc; params: ntm/decode_checks.h).
  m.def("autoregressive_decode(Tensor y, Tensor[] params, Tensor? modulation, int heads,"
        " float? clamp=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ntm, CPU, m) {
  NTM_REGISTER_IMPLS(m, ntm::cpu);
  m.impl("autoregressive_decode", &ntm::cpu::autoregressive_decode);
}
