"""The scikit-learn digits: 8x8 images with 17 grey bins (0..16), 10 classes.

Images are float tensors in [-1, 1] of shape ``[N, 1, 8, 8]`` (each grey level at the centre
of its bin, ready for :func:`~ntm_engine.data.core.dequantize`) with integer labels ``[N]``,
in a fixed 80/20 train/test split.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .core import DataError, ImageData, ImageSet, codes_to_unit

DIGITS_BINS = 17  # grey bins 0..16
DIGITS_SHAPE = (1, 8, 8)
_SPLIT_SEED = 20260508
_TEST_FRACTION = 0.2


def _digit_codes(split: str) -> Tuple[Tensor, Tensor]:
    """``(codes [N, 1, 8, 8] uint8 in 0..16, labels [N])`` of ``split``."""
    if split not in ("train", "test", "all"):
        raise DataError(f"split: expected 'train', 'test' or 'all', got {split!r}")
    from sklearn.datasets import load_digits as _sk_load  # deferred: scikit-learn imports slowly

    bunch = _sk_load()
    codes = torch.as_tensor(bunch.images).to(torch.uint8).unsqueeze(1)  # [1797, 1, 8, 8]
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    if split == "all":
        return codes, labels
    perm = torch.randperm(len(codes), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = int(round(len(codes) * _TEST_FRACTION))
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    return codes[idx], labels[idx]


def load_digits(split: str = "train") -> Tuple[Tensor, Tensor]:
    """The scikit-learn digits, fixed split: ``(images [N, 1, 8, 8] in [-1, 1], labels [N])``.

    Pixel value ``v in {0..16}`` maps to the centre of its bin, ``(v + 0.5) / 17 * 2 - 1``.
    ``split`` is ``"train"`` (80%), ``"test"`` (20%) or ``"all"``.
    """
    codes, labels = _digit_codes(split)
    return codes_to_unit(codes, DIGITS_BINS), labels


def digits_data() -> ImageData:
    """The digits as an :class:`ImageData` (the splits of :func:`load_digits`)."""
    sets = {s: ImageSet(*_digit_codes(s), DIGITS_BINS) for s in ("train", "test")}
    return ImageData(name="digits", shape=DIGITS_SHAPE, bins=DIGITS_BINS, num_classes=10,
                     train=sets["train"], test=sets["test"],
                     classes=tuple(str(d) for d in range(10)))
