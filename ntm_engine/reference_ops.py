"""The ``torch.ops.ntm`` library made of the reference twins, for an install without the
compiled extension (``build_info()["backend"] == "reference"``).

The schemas are those of ``csrc/ops.cpp`` (``tests/test_reference_backend.py`` compares them
with the compiled library's); the implementations are :mod:`ntm_engine.reference`, registered
for every device (``CompositeExplicitAutograd``), so :mod:`ntm_engine.ops` -- its fake kernels
and autograd formulas included -- works unchanged on either backend.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference

__all__ = ["SCHEMAS", "register"]

SCHEMAS = {
    "affine_coupling": "affine_coupling(Tensor x, Tensor shift, Tensor scale_logits, "
                       "float? clamp=None) -> (Tensor, Tensor)",
    "affine_coupling_inverse": "affine_coupling_inverse(Tensor y, Tensor shift, "
                               "Tensor scale_logits, float? clamp=None) -> (Tensor, Tensor)",
    "affine_coupling_backward": "affine_coupling_backward(Tensor y, Tensor shift, "
                                "Tensor scale_logits, Tensor grad_y, Tensor? grad_logdet, "
                                "float? clamp=None, *, bool need_x=True, "
                                "bool need_grad_shift=True) -> (Tensor, Tensor, Tensor, Tensor)",
    "gaussian_nll": "gaussian_nll(Tensor u, Tensor mean, Tensor log_sigma) -> Tensor",
    "gaussian_nll_backward": "gaussian_nll_backward(Tensor u, Tensor mean, Tensor log_sigma, "
                             "Tensor grad) -> (Tensor, Tensor, Tensor)",
    "autoregressive_decode": "autoregressive_decode(Tensor y, Tensor[] params, "
                             "Tensor? modulation, int heads, float? clamp=None) "
                             "-> (Tensor, Tensor)",
}

_library: Optional[torch.library.Library] = None


def _fresh(out: Tensor, *inputs: Tensor) -> Tensor:
    """``out``, cloned when it is one of ``inputs`` (an op's outputs never alias its inputs)."""
    return out.clone() if any(out is t for t in inputs) else out


def _backward(y, shift, scale_logits, grad_y, grad_logdet, clamp=None, *, need_x=True,
              need_grad_shift=True):
    x, grad_x, grad_shift, grad_logits = reference.affine_coupling_backward(
        y, shift, scale_logits, grad_y, grad_logdet, clamp)
    empty = y.new_empty((0,))
    return (x if need_x else empty, grad_x,
            _fresh(grad_shift, grad_y) if need_grad_shift else empty, grad_logits)


def _nll_backward(u, mean, log_sigma, grad):
    return reference.gaussian_nll_backward(u, mean, log_sigma, grad)


IMPLEMENTATIONS = {
    "affine_coupling": reference.affine_coupling,
    "affine_coupling_inverse": reference.affine_coupling_inverse,
    "affine_coupling_backward": _backward,
    "gaussian_nll": reference.gaussian_nll,
    "gaussian_nll_backward": _nll_backward,
    "autoregressive_decode": reference.autoregressive_decode,
}


def register() -> None:
    """Define ``torch.ops.ntm`` from :data:`SCHEMAS` with the reference implementations (once
    per process; only where the compiled extension did not define it)."""
    global _library
    if _library is not None:
        return
    lib = torch.library.Library("ntm", "DEF")
    for name, schema in SCHEMAS.items():
        lib.define(schema)
        lib.impl(name, IMPLEMENTATIONS[name], "CompositeExplicitAutograd")
    _library = lib
