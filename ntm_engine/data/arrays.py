"""Images in a NumPy ``.npy`` or ``.npz`` file as an :class:`ImageData` (8-bit, 256 bins).

Values and layouts are those of :func:`~ntm_engine.data.transform.to_codes`: uint8 or integer
images in 0..255, or floats in [0, 1]; ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]``.

``.npy``: one array of images, unlabelled.  ``.npz``: images under the key ``images`` (or
``x``; or the file's only array), class labels ``[N]`` (integers ``0..K-1``) under ``labels``
(or ``y``) when present.  A test split may come as ``test_images``/``x_test`` with
``test_labels``/``y_test``; otherwise a fixed ``test_fraction`` is held out (:mod:`.npz`).
An ``.npz`` with the key ``latents`` holds an autoencoder's latents (:mod:`.latents`).
Condition tokens may come as ``cond`` ``[N, L, C]`` (with ``cond_mask``; ``test_cond`` for a
given test split; :mod:`~ntm_engine.data.cond`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .cond import read_cond
from .core import ImageData, in_memory_data
from .latents import LATENTS_KEY, latents_data
from .npz import load_arrays, read_splits
from .transform import check_options, fit_codes, to_codes

IMAGE_KEYS = ("images", "x")
TEST_IMAGE_KEYS = ("test_images", "x_test")


def open_arrays(path, *, image_size: Optional[int] = None, channels: Optional[int] = None,
                test_fraction: float = 0.1) -> ImageData:
    """The images (and labels) of the ``.npy`` / ``.npz`` file ``path`` (see module doc),
    resized and centre-cropped to ``image_size`` and converted to ``channels`` if given.
    An ``.npz`` with a ``latents`` array holds latents instead
    (:func:`~ntm_engine.data.latents.latents_data`)."""
    check_options(image_size, channels)
    path = Path(path)
    arrays = load_arrays(path)
    if LATENTS_KEY in arrays:
        return latents_data(path, arrays, image_size=image_size, channels=channels,
                            test_fraction=test_fraction)
    splits = read_splits(
        arrays, path, keys=IMAGE_KEYS, test_keys=TEST_IMAGE_KEYS, what="image",
        only_array=True,
        convert=lambda a, name: fit_codes(to_codes(a, what=name), image_size, channels),
        convert_test=lambda a, name, train: fit_codes(to_codes(a, what=name), image_size,
                                                      channels or train.shape[1]))
    cond, test_cond = read_cond(arrays, path, len(splits.values),
                                None if splits.test is None else len(splits.test[0]))
    return in_memory_data(str(path), splits.values, splits.labels,
                          num_classes=splits.num_classes, test_fraction=test_fraction,
                          test=splits.test, cond=cond, test_cond=test_cond)
