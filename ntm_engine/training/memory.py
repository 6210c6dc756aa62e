"""What a training step holds for its backward pass: the bytes of the tensors autograd saves
(``torch.autograd.graph.saved_tensors_hooks``), a device-independent measure of activation
memory used by the tests and ``bench/bench_train_memory.py``."""
from __future__ import annotations

from typing import Any, Callable, Set

import torch
from torch import nn


class SavedTensorBytes:
    """While entered, counts the distinct storages autograd saves for the backward pass
    (parameters and the storages in ``exclude`` not counted): ``.bytes`` after the forward
    pass is what the graph holds at its peak (before the backward pass frees it)."""

    def __init__(self, *exclude: nn.Module):
        self._skip: Set[int] = {p.untyped_storage().data_ptr()
                                for m in exclude for p in m.parameters()}
        self._seen: Set[int] = set()
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        key = s.data_ptr()
        if key not in self._skip and key not in self._seen:
            self._seen.add(key)
            self.bytes += s.nbytes()
        return t

    def __enter__(self) -> "SavedTensorBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def saved_bytes(forward: Callable[[], torch.Tensor], *exclude: nn.Module) -> int:
    """Saved-tensor bytes of the graph that ``forward()`` builds (not run backward)."""
    with SavedTensorBytes(*exclude) as counter:
        forward()
    return counter.bytes
