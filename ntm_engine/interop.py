"""Zero-copy exchange of arrays with other frameworks (CuPy, NumPy, JAX, ...) via DLPack.

The ntm ops take ``torch.Tensor`` arguments.  Frameworks that hold their data in another
array type convert without copying::

    from ntm_engine import interop, ops
    y, logdet = ops.affine_coupling(interop.as_torch(x_cp), interop.as_torch(b_cp),
                                    interop.as_torch(l_cp), 2.0)
    y_cp = interop.to_cupy(y)          # shares y's memory

Both directions share memory: writing through one view is visible through the other, and
the memory stays alive while either view does.  Synchronisation across streams is handled
by the DLPack protocol (the producer is asked to make its data ready on the consumer's
current stream).  Autograd history does not travel: :func:`to_cupy` exports a detached view.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["as_torch", "to_cupy"]


def as_torch(array: Any) -> torch.Tensor:
    """A ``torch.Tensor`` viewing ``array``'s memory, without a copy.

    Accepts a ``torch.Tensor`` (returned as is), anything implementing the DLPack protocol
    (``__dlpack__``: CuPy, NumPy >= 1.22, JAX, ...), and, as a fallback, objects exposing
    ``__cuda_array_interface__`` (e.g. Numba device arrays).  Raises ``TypeError`` for
    anything else, and ``BufferError`` (from the producer) for arrays that cannot be exported
    without a copy, such as read-only NumPy arrays.
    """
    if isinstance(array, torch.Tensor):
        return array
    if hasattr(array, "__dlpack__"):
        return torch.from_dlpack(array)
    if hasattr(array, "__cuda_array_interface__"):
        return torch.as_tensor(array, device="cuda")
    raise TypeError(
        "as_torch: expected a torch.Tensor or an array implementing __dlpack__ or "
        f"__cuda_array_interface__, got {type(array).__module__}.{type(array).__qualname__}")


def to_cupy(tensor: torch.Tensor):
    """A ``cupy.ndarray`` viewing ``tensor``'s memory (a CUDA tensor), without a copy.

    The tensor is detached first (DLPack cannot carry autograd history).  Raises
    ``ImportError`` if CuPy is not installed and ``ValueError`` for a CPU tensor.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"to_cupy: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_cuda:
        raise ValueError(f"to_cupy: expected a CUDA tensor, got one on {tensor.device}; "
                         "use tensor.numpy() for CPU data")
    try:
        import cupy
    except ImportError as err:
        raise ImportError("to_cupy needs CuPy (pip install cupy-cuda12x or cupy-cuda13x)") from err
    return cupy.from_dlpack(tensor.detach())
