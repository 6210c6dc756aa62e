"""Images in a NumPy ``.npy`` or ``.npz`` file as an :class:`ImageData` (8-bit, 256 bins).

Values and layouts are those of :func:`~ntm_engine.data.transform.to_codes`: uint8 or integer
images in 0..255, or floats in [0, 1]; ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]``.

``.npy``: one array of images, unlabelled.  ``.npz``: images under the key ``images`` (or
``x``; or the file's only array), class labels ``[N]`` (integers ``0..K-1``) under ``labels``
(or ``y``) when present.  A test split may come as ``test_images``/``x_test`` with
``test_labels``/``y_test``; otherwise a fixed ``test_fraction`` is held out.  Condition
tokens may come as ``cond`` ``[N, L, C]`` (with ``cond_mask``; ``test_cond`` for a given test
split; :mod:`~ntm_engine.data.cond`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .cond import read_cond
from .core import DataError, ImageData, check_labels, in_memory_data
from .transform import check_options, fit_codes, to_codes

IMAGE_KEYS = ("images", "x")
LABEL_KEYS = ("labels", "y")
TEST_IMAGE_KEYS = ("test_images", "x_test")
TEST_LABEL_KEYS = ("test_labels", "y_test")


def _pick(arrays, keys: Sequence[str], path: Path, what: str):
    found = [k for k in keys if k in arrays]
    if len(found) > 1:
        raise DataError(f"{path}: expected one {what} key of {list(keys)}, got {found}")
    return (found[0], arrays[found[0]]) if found else (None, None)


def _load(path: Path):
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"dataset {str(path)!r}: not a readable .npy/.npz file ({e})") from e
    if isinstance(loaded, np.ndarray):
        return {"images": loaded}
    with loaded:
        return {k: loaded[k] for k in loaded.files}


def open_arrays(path, *, image_size: Optional[int] = None, channels: Optional[int] = None,
                test_fraction: float = 0.1) -> ImageData:
    """The images (and labels) of the ``.npy`` / ``.npz`` file ``path`` (see module doc),
    resized and centre-cropped to ``image_size`` and converted to ``channels`` if given."""
    check_options(image_size, channels)
    path = Path(path)
    arrays = _load(path)
    key, images = _pick(arrays, IMAGE_KEYS, path, "image")
    if images is None:
        if len(arrays) != 1:
            raise DataError(f"{path}: expected images under one of {list(IMAGE_KEYS)}, got keys "
                            f"{sorted(arrays)}")
        key, images = next(iter(arrays.items()))
    codes = fit_codes(to_codes(images, what=f"{path}[{key}]"), image_size, channels)
    lkey, labels = _pick(arrays, LABEL_KEYS, path, "label")
    tkey, t_images = _pick(arrays, TEST_IMAGE_KEYS, path, "test image")
    tlkey, t_labels = _pick(arrays, TEST_LABEL_KEYS, path, "test label")
    if (labels is None) != (t_labels is None) and t_images is not None:
        raise DataError(f"{path}: expected labels for both splits or neither, got "
                        f"{lkey or 'no labels'} and {tlkey or 'no test labels'}")
    if t_labels is not None and t_images is None:
        raise DataError(f"{path}: got {tlkey} but no test images ({list(TEST_IMAGE_KEYS)})")
    num_classes = 0
    if labels is not None:
        labels, num_classes = check_labels(labels, len(codes), what=f"{path}[{lkey}]")
    test = None
    if t_images is not None:
        t_codes = fit_codes(to_codes(t_images, what=f"{path}[{tkey}]"), image_size,
                            channels or codes.shape[1])
        if t_codes.shape[1:] != codes.shape[1:]:
            raise DataError(f"{path}[{tkey}]: expected test images of shape "
                            f"{tuple(codes.shape[1:])} like {key}, got {tuple(t_codes.shape[1:])}")
        if t_labels is not None:
            t_labels, k = check_labels(t_labels, len(t_codes), what=f"{path}[{tlkey}]")
            num_classes = max(num_classes, k)
        test = (t_codes, t_labels)
    if len(codes) == 0:
        raise DataError(f"{path}[{key}]: expected at least one image, got 0")
    cond, test_cond = read_cond(arrays, path, len(codes), None if test is None else len(test[0]))
    return in_memory_data(str(path), codes, labels, num_classes=num_classes,
                          test_fraction=test_fraction, test=test, cond=cond,
                          test_cond=test_cond)
