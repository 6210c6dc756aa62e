"""The build reports what it contains: CUDA kernels for every op exactly when built with CUDA.

Runs without a GPU (registration is visible to the dispatcher on any machine).
"""
import os
import shutil

import pytest
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


def _nvcc_found():
    from torch.utils import cpp_extension

    home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME
    return shutil.which("nvcc") is not None or (
        home is not None and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK))


def test_a_cuda_capable_build_contains_the_cuda_kernels():
    """setup.py compiles the CUDA kernels whenever torch is a CUDA build and nvcc is found: a
    build that silently dropped them fails here, on any machine, GPU or not.  FORCE_CUDA=0 in
    the environment states that a CPU-only build was wanted."""
    if torch.version.cuda is None or not _nvcc_found():
        pytest.skip("torch is not a CUDA build or nvcc is absent: a CPU-only build is right")
    if os.environ.get("FORCE_CUDA", "").strip() in ("0", "false", "False"):
        pytest.skip("FORCE_CUDA=0: a CPU-only build was asked for")
    missing = [op for op in OPS if not _has_kernel(op, "CUDA")]
    assert ntm_engine.build_info()["cuda"] and not missing, (
        f"torch {torch.__version__} is a CUDA {torch.version.cuda} build and nvcc is present, "
        f"but the extension has no CUDA kernel for {missing or list(OPS)}: rebuild with "
        "FORCE_CUDA=1 (python setup.py build_ext --inplace)")
