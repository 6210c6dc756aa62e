"""An autoencoder's latents in an ``.npz`` file as continuous :class:`ImageData` (``bins = 0``).

The file holds ``latents`` ``[N, C, H, W]`` (float16/32/64, finite, any range, ``H == W``,
any number of channels ``C``), optionally ``labels`` ``[N]`` (integers ``0..K-1``; or ``y``)
and a test split ``test_latents`` with ``test_labels`` (or ``y_test``); without one a fixed
``test_fraction`` is held out, as for images (:mod:`.npz`).  Values are kept as float32 and
used as they are: no clamping, no quantisation, no dequantisation noise.  A model of them
normalises each channel by the training split's :func:`channel_mean_std` (docs/design.md
section 1, "Latent data").
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .core import CONTINUOUS, DataError, ImageData, ImageSet, in_memory_data
from .npz import read_splits

LATENTS_KEY = "latents"
TEST_LATENTS_KEYS = ("test_latents",)


def to_latents(array, what: str = "latents") -> Tensor:
    """A latent array -> float32 ``[N, C, H, W]`` (errors name ``what``: a float array of 4
    dimensions, square, every value finite)."""
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{what}: expected float latents (float16/32/64), got dtype {a.dtype}")
    if a.ndim != 4:
        raise DataError(f"{what}: expected latents [N, C, H, W], got shape {a.shape}")
    if a.shape[2] != a.shape[3]:
        raise DataError(f"{what}: expected square latents (H == W), got shape {a.shape}")
    with np.errstate(over="ignore"):   # beyond float32's range: inf, refused below
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    bad = ~torch.isfinite(t)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise DataError(f"{what}: expected finite latents (float32), got {int(bad.sum())} "
                        f"non-finite values, the first at index {first}")
    return t


def latents_data(path: Path, arrays: Dict[str, np.ndarray], *,
                 image_size: Optional[int] = None, channels: Optional[int] = None,
                 test_fraction: float = 0.1) -> ImageData:
    """The continuous :class:`ImageData` of the arrays of the latents file ``path`` (module
    docstring); ``image_size`` and ``channels`` must be None (latents are used as stored)."""
    if image_size is not None or channels is not None:
        raise DataError(f"{path}: latents are used as stored; image_size/channels apply to "
                        f"images, got image_size={image_size!r}, channels={channels!r}")
    splits = read_splits(arrays, path, keys=(LATENTS_KEY,), test_keys=TEST_LATENTS_KEYS,
                         what="latent", convert=lambda a, name: to_latents(a, name),
                         convert_test=lambda a, name, train: to_latents(a, name))
    return in_memory_data(str(path), splits.values, splits.labels, bins=CONTINUOUS,
                          num_classes=splits.num_classes, test_fraction=test_fraction,
                          test=splits.test)


def channel_mean_std(data: ImageData) -> Tuple[List[float], List[float]]:
    """Per-channel mean and standard deviation ``([C], [C])`` of the training split of
    continuous data (over every item and position; float64), the normalisation a model of it
    stores.  A constant channel (std 0) is an error: it has no density."""
    ds = data.train
    if not (data.continuous and isinstance(ds, ImageSet)):
        raise DataError(f"data {data.name!r}: per-channel statistics are taken of latents in "
                        f"memory, got {data.summary()}")
    v = ds.codes.double().transpose(0, 1).reshape(ds.codes.shape[1], -1)   # [C, N*H*W]
    mean = v.mean(dim=1)
    std = (v - mean.unsqueeze(1)).pow(2).mean(dim=1).sqrt()
    flat = [c for c in range(len(std)) if not std[c] > 0]
    if flat:
        raise DataError(f"{data.name}: latent channel(s) {flat} are constant over the training "
                        f"split (std 0); drop them, a constant has no density")
    return mean.tolist(), std.tolist()
