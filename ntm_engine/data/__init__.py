"""Data: built-in sets (digits, colour patches, 2-D toys) and user images (folders, arrays,
the CIFAR-10 python format, any ``torch.utils.data.Dataset``), all as :class:`ImageData`
(:func:`open_dataset`), with seeded training batches (:class:`ImageBatches`).

Conventions: images ``[N, C, H, W]`` float32 in [-1, 1], each value at the centre of one of
``bins`` bins (17 for the digits, 256 for 8-bit images) for :func:`dequantize`; labels
``[N]`` int64; an autoencoder's latents (an ``.npz`` with ``latents``) are continuous
(``bins = 0``, values as stored, :mod:`.latents`); optional condition tokens per split
(:class:`CondTokens`, :mod:`.cond`).  See ``docs/design.md`` section 9.
"""
from .batches import ImageBatches
from .core import (CONTINUOUS, CondTokens, DataError, ImageData, ImageSet, LazyImages,
                   check_cond, check_labels, codes_to_unit, dequantize, fingerprint,
                   pixel_mean_std, split_indices)
from .latents import channel_mean_std
from .digits import DIGITS_BINS, DIGITS_SHAPE, digits_data, load_digits
from .open import BUILT_IN, open_dataset
from .patches import colour_patches
from .toys import TOYS, checkerboard, eight_gaussian_modes, eight_gaussians, sample_toy, two_moons

__all__ = [
    "BUILT_IN", "CONTINUOUS", "CondTokens", "DIGITS_BINS", "DIGITS_SHAPE", "TOYS", "DataError",
    "ImageBatches", "ImageData", "ImageSet", "LazyImages", "channel_mean_std", "check_cond",
    "check_labels", "checkerboard", "codes_to_unit", "colour_patches", "dequantize",
    "digits_data", "eight_gaussian_modes", "eight_gaussians", "fingerprint", "load_digits",
    "open_dataset", "pixel_mean_std", "sample_toy", "split_indices", "two_moons",
]
