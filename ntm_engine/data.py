"""Built-in data: the scikit-learn digits (8x8, 17 grey levels) and 2-D toy distributions.

Digits are returned as float tensors in [-1, 1] of shape ``[N, 1, 8, 8]`` with integer labels
``[N]``; :func:`dequantize` adds the uniform noise of one grey level.  The toys sample
``[n, 2]`` float32 tensors from an explicit ``torch.Generator``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

DIGITS_LEVELS = 17  # grey levels 0..16
DIGITS_SHAPE = (1, 8, 8)
_SPLIT_SEED = 20260508
_TEST_FRACTION = 0.2


def load_digits(split: str = "train") -> Tuple[Tensor, Tensor]:
    """The scikit-learn digits, fixed split: ``(images [N, 1, 8, 8] in [-1, 1], labels [N])``.

    Pixel value ``v in {0..16}`` maps to the centre of its bin, ``(v + 0.5) / 17 * 2 - 1``.
    ``split`` is ``"train"`` (80%), ``"test"`` (20%) or ``"all"``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    from sklearn.datasets import load_digits as _sk_load

    bunch = _sk_load()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)  # [1797, 8, 8], 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    x = ((images + 0.5) / DIGITS_LEVELS * 2 - 1).unsqueeze(1)
    if split == "all":
        return x, labels
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = int(round(len(x) * _TEST_FRACTION))
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    return x[idx], labels[idx]


def dequantize(x: Tensor, levels: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Uniform dequantisation of bin-centred data in [-1, 1] with ``levels`` bins (width 2/levels)."""
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
    return x + noise * (2.0 / levels)


def checkerboard(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """A 4x4 checkerboard on [-2, 2]^2 (8 filled squares): ``[n, 2]``."""
    u = torch.rand(n, 2, generator=generator)
    cell = torch.randint(0, 8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)
    return torch.stack([col + u[:, 0], row + u[:, 1]], dim=1) - 2.0


def eight_gaussians(n: int, generator: Optional[torch.Generator] = None,
                    radius: float = 2.0, std: float = 0.1) -> Tensor:
    """Eight Gaussians of std ``std`` on a circle of ``radius``: ``[n, 2]``."""
    k = torch.randint(0, 8, (n,), generator=generator).float()
    angle = k * (2 * math.pi / 8)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + std * torch.randn(n, 2, generator=generator)


def eight_gaussian_modes(radius: float = 2.0) -> Tensor:
    """The eight centres of :func:`eight_gaussians`: ``[8, 2]``."""
    angle = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    return radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def two_moons(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05) -> Tensor:
    """Two interleaved half circles, centred and scaled to about [-2, 2]: ``[n, 2]``."""
    t = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.6
    return pts + noise * torch.randn(n, 2, generator=generator)


TOYS: Dict[str, Callable[..., Tensor]] = {
    "checkerboard": checkerboard,
    "eight_gaussians": eight_gaussians,
    "two_moons": two_moons,
}


def sample_toy(name: str, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Sample ``n`` points of the toy set ``name`` (one of :data:`TOYS`)."""
    if name not in TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; expected one of {sorted(TOYS)}")
    return TOYS[name](n, generator=generator)
