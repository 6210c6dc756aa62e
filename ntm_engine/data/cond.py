"""Condition tokens from ``.npz`` files: one token sequence ``[L, C]`` per image (e.g. a text
encoder's last hidden states for its caption), for models with ``cond_dim = C``.

Keys: ``cond`` ``[N, L, C]`` (float, finite; sequences of different lengths padded to one
``L``), ``cond_mask`` ``[N, L]`` (bool or 0/1, True = a real token; optional: all real), and
for a test split given as such ``test_cond`` / ``test_cond_mask``.

* An ``.npz`` data set (:func:`~ntm_engine.data.arrays.open_arrays`) carries them next to its
  images, row for row (``test_cond`` with ``test_images``; a held-out test split takes its
  tokens from the same rows as its images).
* A separate token file for any other data set (:func:`attach_cond`: the built-in digits, a
  folder, CIFAR-10, ...) holds ``cond`` with one row per training item and ``test_cond`` with
  one per test item, in the splits' item order (``ImageData.train`` / ``.test``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Optional, Tuple

import numpy as np

from .core import CondTokens, DataError, ImageData, check_cond

COND_KEY, COND_MASK_KEY = "cond", "cond_mask"
TEST_COND_KEY, TEST_COND_MASK_KEY = "test_cond", "test_cond_mask"
COND_KEYS = (COND_KEY, COND_MASK_KEY, TEST_COND_KEY, TEST_COND_MASK_KEY)


def read_cond(arrays: Mapping[str, np.ndarray], path, n: int, n_test: Optional[int]
              ) -> Tuple[Optional[CondTokens], Optional[CondTokens]]:
    """``(cond, test_cond)`` of the arrays of the file ``path`` (:data:`COND_KEYS`), checked
    against ``n`` items and ``n_test`` test items (None: no test split in the file, so no
    ``test_cond`` allowed).  ``(None, None)`` when the file has no ``cond``; errors name the
    file and key."""
    present = [k for k in COND_KEYS if k in arrays]
    if COND_KEY not in arrays:
        if present:
            raise DataError(f"{path}: got {present} but no condition tokens under "
                            f"{COND_KEY!r}")
        return None, None
    cond = check_cond(arrays[COND_KEY], arrays.get(COND_MASK_KEY), n,
                      what=f"{path}[{COND_KEY}]", mask_what=f"{path}[{COND_MASK_KEY}]")
    if n_test is None:
        extra = [k for k in (TEST_COND_KEY, TEST_COND_MASK_KEY) if k in arrays]
        if extra:
            raise DataError(f"{path}: got {extra} but no test images; the held-out test "
                            f"split takes its tokens from {COND_KEY!r}")
        return cond, None
    if TEST_COND_KEY not in arrays:
        raise DataError(f"{path}: expected test condition tokens under {TEST_COND_KEY!r} "
                        f"for the {n_test} test images, got keys {sorted(arrays)}")
    test = check_cond(arrays[TEST_COND_KEY], arrays.get(TEST_COND_MASK_KEY), n_test,
                      what=f"{path}[{TEST_COND_KEY}]",
                      mask_what=f"{path}[{TEST_COND_MASK_KEY}]")
    if test.tokens.shape[2] != cond.tokens.shape[2]:
        raise DataError(f"{path}[{TEST_COND_KEY}]: expected {cond.dim} features per token like "
                        f"{COND_KEY!r}, got {test.dim}")
    return cond, test


def load_npz(path) -> dict:
    """The arrays of the ``.npz`` file ``path`` (DataError naming it if unreadable)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise ValueError("a .npy array, not an .npz archive of named arrays")
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError) as e:
        raise DataError(f"condition tokens {str(path)!r}: not a readable .npz file ({e})") from e


def attach_cond(data: ImageData, path) -> ImageData:
    """``data`` with the condition tokens of the ``.npz`` file ``path`` (module docstring):
    ``cond`` for its ``len(data.train)`` training items, ``test_cond`` for its
    ``len(data.test)`` test items."""
    path = Path(path).expanduser()
    cond, test = read_cond(load_npz(path), path, len(data.train), len(data.test))
    if cond is None:
        raise DataError(f"{path}: expected condition tokens under {COND_KEY!r} (and "
                        f"{TEST_COND_KEY!r}), got none")
    return dataclasses.replace(data, train_cond=cond, test_cond=test)
