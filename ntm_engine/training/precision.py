"""Mixed precision of a training step (``--precision``).

``bf16``: the forward runs under ``torch.autocast`` with bfloat16 -- matmuls and attention in
bfloat16, the fused flow ops on bfloat16 inputs with float32 accumulation, the LU maths, the
losses and the log-determinants in float32 (the model keeps them there) -- while the weights,
their gradients, AdamW's state and the checkpoints stay float32 (the master weights).
``fp32``: no autocast.  Evaluation and sampling always run in float32.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device) -> ContextManager:
    """The context of a training forward pass under ``precision`` on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
