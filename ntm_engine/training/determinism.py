"""Per-step seeds, RNG states for checkpoints, and the fingerprint of the model code.

A run resumed from the checkpoint of step ``s`` repeats, bit for bit on the same machine and
thread count, what an uninterrupted run does after ``s``, provided each iteration draws
everything random from seeds derived from ``(seed, step)`` (:func:`derive_seed`) -- unless a
``minutes`` budget shapes the learning rate (``docs/design.md`` section 4).
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def derive_seed(seed: int, step: int, stream: str) -> int:
    """A 63-bit seed from ``(seed, step, stream)`` (independent streams per use)."""
    h = hashlib.blake2b(f"{seed}/{stream}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def device_generator(device, seed: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and numpy's global generators from one seed."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def rng_states(data_generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, Python, numpy), as a checkpoint stores them."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch_cpu": torch.get_rng_state(),
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        out["torch_cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        out["data_generator"] = data_generator.get_state()
    return out


def set_rng_states(st: Dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA states only for the same device count)."""
    torch.set_rng_state(st["torch_cpu"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = st["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    if "torch_cuda" in st and torch.cuda.is_available():
        states = st["torch_cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def model_code_fingerprint() -> str:
    """sha256 of the model's source (``ntm_engine/models``, ``ntm_engine/nn``): a checkpoint
    loaded by other model code may not compute the same function."""
    h = hashlib.sha256()
    for sub in ("models", "nn"):
        for f in sorted((PACKAGE_ROOT / sub).glob("*.py")):
            h.update(f"{sub}/{f.name}".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def check_model_code(state: Dict[str, Any], where, log: Callable[[str], None]) -> None:
    """Warn if ``state`` (a checkpoint's) was written by different model code."""
    saved = state.get("model_code_sha256")
    if saved and saved != model_code_fingerprint():
        log(f"warning: {where} was written by different model code (ntm_engine/models or "
            "ntm_engine/nn changed since); it loads, but may not compute the same function")
