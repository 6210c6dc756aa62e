"""Step 3 of bench/device_check.sh: a GPU is visible, the extension was built with CUDA, every op
has its CUDA kernel, and one call runs.  Exits 1 at the first thing missing (the check stops)."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OPS = ("affine_coupling", "affine_coupling_inverse", "affine_coupling_backward",
       "gaussian_nll", "gaussian_nll_backward")


def main() -> int:
    if not torch.cuda.is_available():
        print("torch.cuda.is_available() is False: no GPU visible, nothing to check")
        return 1
    import ntm_engine

    info = ntm_engine.build_info()
    print("build_info:", info)
    missing = [op for op in OPS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"ntm::{op}", "CUDA")]
    print("CUDA kernels missing:", missing or "none")
    if not info["cuda"] or missing:
        return 1
    x = torch.randn(4, 1000, device="cuda")
    y, logdet = ntm_engine.ops.affine_coupling(x, x, x, 2.0)
    torch.cuda.synchronize()
    print("smoke:", tuple(y.shape), tuple(logdet.shape), bool(torch.isfinite(y).all()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
