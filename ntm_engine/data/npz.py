"""The named arrays of a NumPy ``.npy`` / ``.npz`` file and their splits, for every kind of
array data (images, :mod:`.arrays`; latents, :mod:`.latents`).

An ``.npz`` holds the values of the training split under one of the kind's keys (e.g.
``images``/``x``), class labels ``[N]`` under ``labels``/``y`` when present, and optionally a
test split under the kind's test keys (e.g. ``test_images``/``x_test``) with
``test_labels``/``y_test``.  A ``.npy`` is one unlabelled array.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from .core import DataError, check_labels

LABEL_KEYS = ("labels", "y")
TEST_LABEL_KEYS = ("test_labels", "y_test")


@dataclass(frozen=True)
class Splits:
    """What a file holds: ``values [N, ...]`` of the training split (from key ``key``),
    ``labels [N]`` or None, ``num_classes`` (0: unlabelled) and the test split ``(values,
    labels)`` when the file has one (None: hold one out)."""
    key: str
    values: Tensor
    labels: Optional[Tensor]
    num_classes: int
    test: Optional[Tuple[Tensor, Optional[Tensor]]]


def pick(arrays: Dict[str, np.ndarray], keys: Sequence[str], path: Path, what: str):
    """``(key, array)`` of the one key of ``keys`` in ``arrays`` (``(None, None)`` if none;
    an error naming the file if several)."""
    found = [k for k in keys if k in arrays]
    if len(found) > 1:
        raise DataError(f"{path}: expected one {what} key of {list(keys)}, got {found}")
    return (found[0], arrays[found[0]]) if found else (None, None)


def load_arrays(path: Path, default_key: str = "images") -> Dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (under ``default_key``) or ``.npz`` file, read into memory."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"dataset {str(path)!r}: not a readable .npy/.npz file ({e})") from e
    if isinstance(loaded, np.ndarray):
        return {default_key: loaded}
    with loaded:
        return {k: loaded[k] for k in loaded.files}


def read_splits(arrays: Dict[str, np.ndarray], path: Path, *, keys: Sequence[str],
                test_keys: Sequence[str], what: str,
                convert: Callable[[np.ndarray, str], Tensor],
                convert_test: Callable[[np.ndarray, str, Tensor], Tensor],
                only_array: bool = False) -> Splits:
    """The :class:`Splits` of ``arrays`` (module docstring): values under one of ``keys``
    (or, with ``only_array``, the file's only array), ``convert(array, name) -> [N, ...]``;
    test values under one of ``test_keys``, ``convert_test(array, name, train values)``, of
    the training values' shape.  ``what`` names one item in errors ("image", "latent")."""
    key, values = pick(arrays, keys, path, what)
    if values is None:
        if not (only_array and len(arrays) == 1):
            raise DataError(f"{path}: expected {what}s under one of {list(keys)}, got keys "
                            f"{sorted(arrays)}")
        key, values = next(iter(arrays.items()))
    values = convert(values, f"{path}[{key}]")
    lkey, labels = pick(arrays, LABEL_KEYS, path, "label")
    tkey, t_values = pick(arrays, test_keys, path, f"test {what}")
    tlkey, t_labels = pick(arrays, TEST_LABEL_KEYS, path, "test label")
    if (labels is None) != (t_labels is None) and t_values is not None:
        raise DataError(f"{path}: expected labels for both splits or neither, got "
                        f"{lkey or 'no labels'} and {tlkey or 'no test labels'}")
    if t_labels is not None and t_values is None:
        raise DataError(f"{path}: got {tlkey} but no test {what}s ({list(test_keys)})")
    num_classes = 0
    if labels is not None:
        labels, num_classes = check_labels(labels, len(values), what=f"{path}[{lkey}]")
    test = None
    if t_values is not None:
        t_values = convert_test(t_values, f"{path}[{tkey}]", values)
        if t_values.shape[1:] != values.shape[1:]:
            raise DataError(f"{path}[{tkey}]: expected test {what}s of shape "
                            f"{tuple(values.shape[1:])} like {key}, got "
                            f"{tuple(t_values.shape[1:])}")
        if t_labels is not None:
            t_labels, k = check_labels(t_labels, len(t_values), what=f"{path}[{tlkey}]")
            num_classes = max(num_classes, k)
        test = (t_values, t_labels)
    if len(values) == 0:
        raise DataError(f"{path}[{key}]: expected at least one {what}, got 0")
    return Splits(key, values, labels, num_classes, test)
