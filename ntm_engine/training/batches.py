"""Training batches as a pure function of ``(seed, step)``, and the held-out evaluation set."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..data import DIGITS_LEVELS, dequantize, load_digits, sample_toy
from .determinism import derive_seed
from .sections import DataConfig


class DataSource:
    """Batches of a run config ``cfg`` (anything with ``.data`` and ``.optim`` sections).

    Digits: epoch ``e`` visits the train split in the order ``randperm`` seeded by
    ``(seed, e)``; batch ``step`` is positions ``[step*B, (step+1)*B)`` of the concatenated
    epochs, dequantised with noise seeded by ``(seed, step)``.  Toys: fresh samples seeded by
    ``(seed, step)``.  Batches are ``x [B, *shape]`` and labels ``y [B]`` (or None).
    """

    def __init__(self, cfg, device=None):
        self.dataset, self.seed = cfg.data.dataset, int(cfg.optim.seed)
        self.batch_size = int(cfg.optim.batch_size)
        self.conditional = bool(cfg.data.class_conditional)
        self.device = torch.device(device or "cpu")
        if self.dataset == "digits":
            self.x, self.y = load_digits("train")
        self._perm_cache: Dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, "epoch"))
            self._perm_cache[epoch] = torch.randperm(len(self.x), generator=g)
        return self._perm_cache[epoch]

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, step, "data"))

    def batch(self, step: int, n: Optional[int] = None) -> Tuple[Tensor, Optional[Tensor]]:
        n = n or self.batch_size
        g = self.generator(step)
        if self.dataset != "digits":
            return sample_toy(self.dataset, n, generator=g).to(self.device), None
        idx = self._gather(step * self.batch_size, n)
        x = dequantize(self.x[idx], DIGITS_LEVELS, generator=g).to(self.device)
        y = self.y[idx].to(self.device) if self.conditional else None
        return x, y

    def _gather(self, start: int, n: int) -> Tensor:
        N = len(self.x)
        parts, p = [], start
        while p < start + n:
            e, off = divmod(p, N)
            take = min(N - off, start + n - p)
            parts.append(self._perm(e)[off:off + take])
            p += take
        return torch.cat(parts)


def test_data(data: DataConfig) -> Tuple[Tensor, Optional[Tensor]]:
    """The evaluation set: the digits test split, or 5000 fixed toy samples."""
    if data.dataset == "digits":
        x, y = load_digits("test")
        return x, (y if data.class_conditional else None)
    g = torch.Generator().manual_seed(2**31 - 1)
    return sample_toy(data.dataset, 5000, generator=g), None


test_data.__test__ = False   # (not a pytest test, whatever imports it)


def eval_levels(data: DataConfig) -> int:
    """Grey levels for bits/dim: 17 for digits; toys are continuous (levels=2 makes the
    ``log2(levels/2)`` term vanish, so the number is the continuous bits/dim bound)."""
    return DIGITS_LEVELS if data.dataset == "digits" else 2


def sample_labels(data: DataConfig, n: int) -> Optional[Tensor]:
    """Labels ``0..9`` cycled over ``n`` samples of a class-conditional run, else None."""
    return torch.arange(n) % 10 if data.class_conditional else None
