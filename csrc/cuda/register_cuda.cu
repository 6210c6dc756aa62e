// CUDA registrations of the ntm ops (schemas in csrc/ops.cpp).  Compiled only in CUDA builds
// (setup.py adds csrc/cuda/*.cu and -DNTM_WITH_CUDA), so build_info()['cuda'] is True exactly
// when these kernels exist.
#include "cuda_ops.h"

#include <torch/library.h>

TORCH_LIBRARY_IMPL(ntm, CUDA, m) { NTM_REGISTER_IMPLS(m, ntm::cuda); }
