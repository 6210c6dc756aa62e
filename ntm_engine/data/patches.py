"""Built-in colour images without a download: square patches of scikit-learn's two sample
photographs (``sklearn.datasets.load_sample_images``: china.jpg, flower.jpg, 427x640 RGB).

Deterministic: patch corners come from a fixed seed.  The split is by region: train patches
lie in the left 80% of the columns of each photo (``x < 512``), test patches in the right 20%,
so no test pixel is seen in training.  Half the patches of each split come from each photo.
8-bit, 256 levels, unlabelled.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .core import DataError, ImageData, ImageSet
from .transform import convert_channels

NAME = "colour-patches"
BOUNDARY = 512  # first test column
_SEED = 20260509


def _photos() -> torch.Tensor:
    from sklearn.datasets import load_sample_images  # deferred: scikit-learn imports slowly

    images = load_sample_images().images
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # [2,3,427,640]


def _cut(photos: torch.Tensor, n: int, size: int, x0: int, x1: int,
         g: torch.Generator) -> torch.Tensor:
    """``n`` patches ``[n, 3, size, size]`` with columns inside ``[x0, x1)``."""
    h = photos.shape[2]
    which = torch.arange(n) % len(photos)
    ys = torch.randint(0, h - size + 1, (n,), generator=g)
    xs = torch.randint(x0, x1 - size + 1, (n,), generator=g)
    return torch.stack([photos[k, :, y:y + size, x:x + size]
                        for k, y, x in zip(which.tolist(), ys.tolist(), xs.tolist())])


def colour_patches(*, image_size: Optional[int] = None, channels: Optional[int] = None,
                   n_train: int = 8192, n_test: int = 1024) -> ImageData:
    """``n_train`` / ``n_test`` patches ``[3, S, S]`` (``S = image_size``, default 16; 32 is
    the other usual choice; at most 128) in [-1, 1], 256 levels; ``channels=1`` gives grey."""
    size = 16 if image_size is None else image_size
    if not isinstance(size, int) or not 2 <= size <= 640 - BOUNDARY:
        raise DataError(f"image_size: expected an integer in 2..{640 - BOUNDARY} for "
                        f"{NAME}, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels: expected 1 (greyscale) or 3 (RGB), got {channels!r}")
    for arg, v in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(v, int) or v < 1:
            raise DataError(f"{arg}: expected a positive integer, got {v!r}")
    photos = _photos()
    g = torch.Generator().manual_seed(_SEED)
    train = _cut(photos, n_train, size, 0, BOUNDARY, g)
    test = _cut(photos, n_test, size, BOUNDARY, photos.shape[3], g)
    train, test = convert_channels(train, channels), convert_channels(test, channels)
    return ImageData(name=f"{NAME}{size}", shape=tuple(train.shape[1:]), levels=256,
                     num_classes=0, train=ImageSet(train, None, 256),
                     test=ImageSet(test, None, 256))
