"""The fused ntm ops: thin Python wrappers, fake (meta) kernels and autograd.

The kernels are registered in C++ under ``torch.ops.ntm`` (CPU in ``csrc/cpu``, CUDA in
``csrc/cuda``).  Each op has a pure-PyTorch twin in :mod:`ntm_engine.reference`, which is the
specification.  Shapes: every per-element argument is ``[B, ...]`` (all the same shape, dtype
and device); per-sample results are ``[B]`` in the accumulation dtype (float64 for float64
inputs, float32 otherwise).  Inputs may be non-contiguous: a tensor whose dims after the first
form one contiguous block (a column slice ``x[:, a:b]`` of a matrix, a batch-expanded tensor)
is read in place through its row stride, any other layout is copied first (and counted: see
:func:`input_copy_count`).  Outputs are contiguous.  The CPU kernels split their work over
``torch.get_num_threads()`` threads; results do not depend on the thread count, bit for bit.

The CPU kernels are compiled for several instruction sets and chosen at run time (see
:func:`set_cpu_capability`, ``build_info()['cpu_capability']``; docs/design.md, sections 2 and 5).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _extension  # (importing it registers torch.ops.ntm)
from .reference import accumulation_dtype, soft_clamp

__all__ = [
    "affine_coupling",
    "affine_coupling_inverse",
    "affine_coupling_backward",
    "gaussian_nll",
    "gaussian_nll_backward",
    "autoregressive_decode",
    "set_cpu_capability",
    "input_copy_count",
    "reset_input_copy_count",
    "last_cpu_parallel_chunks",
]

_ops = torch.ops.ntm


def affine_coupling(
    x: Tensor, shift: Tensor, scale_logits: Tensor, clamp: Optional[float] = None
) -> Tuple[Tensor, Tensor]:
    """``y = x * exp(s) + shift`` with ``s = clamp*tanh(scale_logits/clamp)``.

    Returns ``(y [B, ...], logdet [B])``; differentiable in all three tensors, and the backward
    runs the fused :func:`affine_coupling_backward` from the saved output ``y``.
    """
    return _ops.affine_coupling(x, shift, scale_logits, _as_clamp(clamp))


def affine_coupling_inverse(
    y: Tensor, shift: Tensor, scale_logits: Tensor, clamp: Optional[float] = None
) -> Tuple[Tensor, Tensor]:
    """``x = (y - shift) * exp(-s)``; returns ``(x [B, ...], -sum s [B])``."""
    return _ops.affine_coupling_inverse(y, shift, scale_logits, _as_clamp(clamp))


def affine_coupling_backward(
    y: Tensor,
    shift: Tensor,
    scale_logits: Tensor,
    grad_y: Tensor,
    grad_logdet: Optional[Tensor] = None,
    clamp: Optional[float] = None,
    *,
    need_x: bool = True,
) -> Tuple[Optional[Tensor], Tensor, Tensor, Tensor]:
    """From the *output* ``y`` of :func:`affine_coupling`: ``(x, grad_x, grad_shift,
    grad_scale_logits)`` in one pass (``grad_logdet`` is ``[B]`` or None).

    ``grad_shift`` *is* ``grad_y`` (the gradient passes through unchanged; no copy is made).
    With ``need_x=False`` the kernel does not rebuild ``x`` and the first result is None.
    """
    x, grad_x, _, grad_logits = _ops.affine_coupling_backward(
        y, shift, scale_logits, grad_y, grad_logdet, _as_clamp(clamp), need_x=need_x,
        need_grad_shift=False)
    return (x if need_x else None), grad_x, grad_y, grad_logits


def set_cpu_capability(name: str) -> None:
    """Run the CPU kernels compiled for ``name``: ``"default"``, ``"avx2"`` or ``"avx512"``.

    The choice is process-wide and made at load time from the CPU (the best level it supports),
    or from the environment variable ``NTM_CPU_CAPABILITY``; this call overrides it (tests use
    it to check every level against the twin).  Raises ``ValueError`` when ``name`` is unknown,
    was not compiled, or this CPU cannot run it; ``build_info()`` lists the compiled and the
    supported levels.
    """
    _extension.set_cpu_capability(name)


def input_copy_count() -> int:
    """How many per-element inputs the ops (CPU and CUDA) have copied since the last
    :func:`reset_input_copy_count` because their rows were not contiguous (a transposed or
    step-sliced tensor, say).  Column slices ``t[:, a:b]`` and batch-expanded tensors are read in
    place and never count; a copy is an extra pass over the input that a benchmark should see."""
    return int(_extension.compiled("input_copy_count").input_copy_count())


def reset_input_copy_count() -> None:
    """Set :func:`input_copy_count` back to 0."""
    _extension.compiled("reset_input_copy_count").reset_input_copy_count()


def last_cpu_parallel_chunks() -> int:
    """How many chunks the last CPU op call split its work into: one per thread that took part
    (at most ``torch.get_num_threads()``), 1 for shapes too small to share (under 32768
    elements a thread).  A diagnostic, racy when ops run concurrently."""
    return int(_extension.compiled("last_cpu_parallel_chunks").last_parallel_chunks())


def gaussian_nll(u: Tensor, mean: Tensor, log_sigma: Tensor) -> Tensor:
    """Per-sample ``sum[1/2 ((u-mean) exp(-log_sigma))^2 + log_sigma]``, ``[B, ...] -> [B]``."""
    return _ops.gaussian_nll(u, mean, log_sigma)


def gaussian_nll_backward(
    u: Tensor, mean: Tensor, log_sigma: Tensor, grad: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_u, grad_mean, grad_log_sigma)`` of :func:`gaussian_nll` for upstream ``grad [B]``."""
    return _ops.gaussian_nll_backward(u, mean, log_sigma, grad)


def autoregressive_decode(y: Tensor, params: Sequence[Tensor], modulation: Optional[Tensor],
                          heads: int, clamp: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """Exact inverse of one autoregressive flow block in one call: ``y [B, L, P]`` (scan order)
    -> ``(x [B, L, P], logdet of the inverse [B])``; ``params``/``modulation`` as in
    :func:`ntm_engine.reference.autoregressive_decode`, its twin.

    CPU only, float32/float64, no gradient (a sampler's and a reversible backward's inverse);
    :meth:`~ntm_engine.nn.AutoregressiveFlowBlock.inverse` falls back to the twin elsewhere.
    The batch is split over ``torch.get_num_threads()`` threads, one chunk of samples each.
    """
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (y, modulation, *params)):
        raise RuntimeError("ntm.ops.autoregressive_decode has no gradient: call it under "
                           "torch.no_grad(), or use ntm_engine.reference.autoregressive_decode "
                           "(differentiable)")
    return _ops.autoregressive_decode(y, list(params), modulation, heads, _as_clamp(clamp))


def _as_clamp(clamp):
    if clamp is None:
        return None
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)):
        raise TypeError(f"argument 'clamp' must be None or a number > 0, got {type(clamp).__name__}")
    return float(clamp)


# ----------------------------------------------------------------------------- fake kernels


def _same_device(op: str, ref_name: str, ref: Tensor, **others: Tensor) -> None:
    """The kernels' device check and message (csrc/include/ntm/checks.h), so that mixed
    devices fail the same way whichever backend the dispatcher picked."""
    for name, t in others.items():
        torch._check_value(
            t.device == ref.device,
            lambda: f"{op}: argument '{name}' must be on the device of '{ref_name}' "
            f"({ref.device}), got {t.device}",
        )


def _fake_check(op: str, ref_name: str, ref: Tensor, **others: Tensor) -> None:
    _same_device(op, ref_name, ref, **others)
    for name, t in others.items():
        torch._check(
            t.shape == ref.shape,
            lambda: f"{op}: argument '{name}' must have the shape of '{ref_name}' "
            f"{list(ref.shape)}, got {list(t.shape)}",
        )
        torch._check(
            t.dtype == ref.dtype,
            lambda: f"{op}: argument '{name}' must have the dtype of '{ref_name}' "
            f"({ref.dtype}), got {t.dtype}",
        )


def _per_sample_like(t: Tensor) -> Tensor:
    return t.new_empty((t.shape[0],), dtype=accumulation_dtype(t.dtype))


@torch.library.register_fake("ntm::affine_coupling")
def _(x, shift, scale_logits, clamp=None):
    _fake_check("ntm::affine_coupling", "x", x, shift=shift, scale_logits=scale_logits)
    return x.new_empty(x.shape), _per_sample_like(x)


@torch.library.register_fake("ntm::affine_coupling_inverse")
def _(y, shift, scale_logits, clamp=None):
    _fake_check("ntm::affine_coupling_inverse", "y", y, shift=shift, scale_logits=scale_logits)
    return y.new_empty(y.shape), _per_sample_like(y)


@torch.library.register_fake("ntm::affine_coupling_backward")
def _(y, shift, scale_logits, grad_y, grad_logdet, clamp=None, *, need_x=True,
      need_grad_shift=True):
    op = "ntm::affine_coupling_backward"
    _fake_check(op, "y", y, shift=shift, scale_logits=scale_logits, grad_y=grad_y)
    if grad_logdet is not None:
        _same_device(op, "y", y, grad_logdet=grad_logdet)

    def full(needed):
        return y.new_empty(y.shape if needed else (0,))

    return full(need_x), full(True), full(need_grad_shift), full(True)


@torch.library.register_fake("ntm::gaussian_nll")
def _(u, mean, log_sigma):
    _fake_check("ntm::gaussian_nll", "u", u, mean=mean, log_sigma=log_sigma)
    return _per_sample_like(u)


@torch.library.register_fake("ntm::gaussian_nll_backward")
def _(u, mean, log_sigma, grad):
    _fake_check("ntm::gaussian_nll_backward", "u", u, mean=mean, log_sigma=log_sigma)
    _same_device("ntm::gaussian_nll_backward", "u", u, grad=grad)
    return tuple(u.new_empty(u.shape) for _ in range(3))


@torch.library.register_fake("ntm::autoregressive_decode")
def _(y, params, modulation, heads, clamp=None):
    _same_device("ntm::autoregressive_decode", "y", y,
                 **{f"params[{i}]": p for i, p in enumerate(params)})
    return y.new_empty(y.shape), _per_sample_like(y)


# ----------------------------------------------------------------------------- autograd


def _coupling_setup(ctx, inputs, output):
    _, shift, scale_logits, clamp = inputs
    ctx.clamp = clamp
    ctx.save_for_backward(output[0], shift, scale_logits)


def _coupling_backward(ctx, grad_y, grad_logdet):
    y, shift, scale_logits = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(y)
    _, grad_x, _, grad_logits = _ops.affine_coupling_backward(
        y, shift, scale_logits, grad_y, grad_logdet, ctx.clamp, need_x=False,
        need_grad_shift=False)
    return grad_x, grad_y, grad_logits, None


torch.library.register_autograd(
    "ntm::affine_coupling", _coupling_backward, setup_context=_coupling_setup)


def _inverse_backward(ctx, grad_x, grad_logdet):
    # x = (y - shift) e^{-s}, logdet = -sum s: composite in eager ops (the inverse is used for
    # sampling; its gradient is rarely on a hot path).
    x, scale_logits = ctx.saved_tensors
    acc = accumulation_dtype(x.dtype)
    s = soft_clamp(scale_logits.to(acc), ctx.clamp)
    gx = torch.zeros_like(x, dtype=acc) if grad_x is None else grad_x.to(acc)
    grad_y = gx * torch.exp(-s)
    grad_s = -gx * x.to(acc)
    if grad_logdet is not None:
        grad_s = grad_s - grad_logdet.to(acc).reshape((-1,) + (1,) * (x.dim() - 1))
    if ctx.clamp is not None:
        grad_s = grad_s * (1 - (s / ctx.clamp) ** 2)
    return grad_y.to(x.dtype), (-grad_y).to(x.dtype), grad_s.to(x.dtype), None


def _inverse_setup(ctx, inputs, output):
    ctx.clamp = inputs[3]
    ctx.save_for_backward(output[0], inputs[2])


torch.library.register_autograd(
    "ntm::affine_coupling_inverse", _inverse_backward, setup_context=_inverse_setup)


def _nll_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _nll_backward(ctx, grad):
    u, mean, log_sigma = ctx.saved_tensors
    return tuple(_ops.gaussian_nll_backward(u, mean, log_sigma, grad))


torch.library.register_autograd("ntm::gaussian_nll", _nll_backward, setup_context=_nll_setup)
