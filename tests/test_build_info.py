"""The build reports what it contains: CUDA kernels for every op exactly when built with CUDA.

Runs without a GPU (registration is visible to the dispatcher on any machine).
"""
import torch

import ntm_engine

OPS = ("affine_coupling", "affine_coupling_inverse", "affine_coupling_backward",
       "gaussian_nll", "gaussian_nll_backward")


def _has_kernel(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"ntm::{op}", key)


def test_every_op_has_a_cpu_kernel():
    assert all(_has_kernel(op, "CPU") for op in OPS)


def test_cuda_kernels_exist_exactly_when_built_with_cuda():
    built_with_cuda = ntm_engine.build_info()["cuda"]
    assert isinstance(built_with_cuda, bool)
    for op in OPS:
        assert _has_kernel(op, "CUDA") == built_with_cuda, (
            f"ntm::{op}: build_info()['cuda'] is {built_with_cuda} but a CUDA kernel is "
            f"{'missing' if built_with_cuda else 'registered'}")
