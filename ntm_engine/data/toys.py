"""2-D toy distributions: ``[n, 2]`` float32 samples drawn from an explicit ``torch.Generator``."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
from torch import Tensor


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
