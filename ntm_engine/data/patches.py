"""Built-in colour images without a download: square patches of scikit-learn's two sample
photographs (``sklearn.datasets.load_sample_images``: china.jpg, flower.jpg, 427x640 RGB).

Deterministic: patch corners come from a fixed seed.  The split is by region: train patches
lie in the left 80% of the columns of each photo (``x < 512``), test patches in the right 20%,
so no test pixel is seen in training.  Half the patches of each split come from each photo.
8-bit, 256 bins, unlabelled.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .core import DataError, ImageData, ImageSet
from .transform import check_options, convert_channels

NAME = "colour-patches"
BOUNDARY = 512  # first test column
_SEED = 20260509


def sample_photos() -> torch.Tensor:
    """The two photographs as uint8 ``[2, 3, 427, 640]``."""
    from sklearn.datasets import load_sample_images  # deferred: scikit-learn imports slowly

    images = load_sample_images().images
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # [2,3,427,640]


def patch_corners(n: int, size: int, x0: int, x1: int, *, height: int, num_photos: int,
                  generator: torch.Generator) -> torch.Tensor:
    """``[n, 3]`` int64 rows ``(photo, top, left)`` of ``size x size`` patches whose columns
    lie in ``[x0, x1)``; photos alternate ``0, 1, 0, ...``."""
    which = torch.arange(n) % num_photos
    ys = torch.randint(0, height - size + 1, (n,), generator=generator)
    xs = torch.randint(x0, x1 - size + 1, (n,), generator=generator)
    return torch.stack([which, ys, xs], dim=1)


def _cut(photos: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    return torch.stack([photos[k, :, y:y + size, x:x + size] for k, y, x in corners.tolist()])


def split_corners(size: int, *, n_train: int, n_test: int, height: int, width: int,
                  num_photos: int = 2) -> tuple:
    """The fixed ``(train, test)`` patch corners (:func:`patch_corners`) of both splits."""
    g = torch.Generator().manual_seed(_SEED)
    opts = dict(height=height, num_photos=num_photos, generator=g)
    return (patch_corners(n_train, size, 0, BOUNDARY, **opts),
            patch_corners(n_test, size, BOUNDARY, width, **opts))


def colour_patches(*, image_size: Optional[int] = None, channels: Optional[int] = None,
                   n_train: int = 8192, n_test: int = 1024) -> ImageData:
    """``n_train`` / ``n_test`` patches ``[3, S, S]`` (``S = image_size``, default 16; 32 is
    the other usual choice; at most 128) in [-1, 1], 256 bins; ``channels=1`` gives grey."""
    size = 16 if image_size is None else image_size
    if not isinstance(size, int) or not 2 <= size <= 640 - BOUNDARY:
        raise DataError(f"image_size: expected an integer in 2..{640 - BOUNDARY} for "
                        f"{NAME}, got {image_size!r}")
    check_options(None, channels)
    for arg, v in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(v, int) or v < 1:
            raise DataError(f"{arg}: expected a positive integer, got {v!r}")
    photos = sample_photos()
    corners = split_corners(size, n_train=n_train, n_test=n_test, height=photos.shape[2],
                            width=photos.shape[3], num_photos=len(photos))
    train, test = (_cut(photos, c, size) for c in corners)
    train, test = convert_channels(train, channels), convert_channels(test, channels)
    return ImageData(name=f"{NAME}{size}", shape=tuple(train.shape[1:]), bins=256,
                     num_classes=0, train=ImageSet(train, None, 256),
                     test=ImageSet(test, None, 256))
