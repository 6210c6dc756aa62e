"""The CIFAR-10 python format as an :class:`ImageData` (3x32x32, 256 bins, 10 classes).

A folder (or its parent holding ``cifar-10-batches-py/``) with pickles ``data_batch_1`` ..
``data_batch_5`` (train) and ``test_batch`` (test); each holds ``data`` (uint8 ``[n, 3072]``,
channel-major rows of 32x32) and ``labels`` (``n`` ints), and ``batches.meta`` optionally holds
``label_names``.  The pickles are unpickled: open only files you trust.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from .core import DataError, ImageData, check_labels, in_memory_data
from .transform import check_options, fit_codes

SUBFOLDER = "cifar-10-batches-py"
TRAIN_GLOB = "data_batch_*"
TEST_FILE = "test_batch"
SIDE = 32


def cifar_root(path) -> Optional[Path]:
    """The folder holding the CIFAR pickles at or just below ``path``, else None."""
    for d in (Path(path), Path(path) / SUBFOLDER):
        if d.is_dir() and (d / TEST_FILE).is_file() and any(d.glob(TRAIN_GLOB)):
            return d
    return None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', got "
                        f"{type(raw).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _read_batch(path: Path, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(path)
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        raise DataError(f"{path}: expected keys 'data' and 'labels', missing {missing}")
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise DataError(f"{path}: expected 'data' uint8 [n, {3 * SIDE * SIDE}], got "
                        f"{data.dtype} {list(data.shape)}")
    labels, _ = check_labels(np.asarray(d["labels"]), len(data), num_classes=num_classes,
                             what=f"{path}['labels']")
    codes = torch.from_numpy(data.copy()).view(-1, 3, SIDE, SIDE)
    return codes, labels


def _class_names(root: Path) -> Tuple[str, ...]:
    meta = root / "batches.meta"
    if not meta.is_file():
        return ()
    names = _unpickle(meta).get("label_names", ())
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def open_cifar(path, *, image_size: Optional[int] = None,
               channels: Optional[int] = None) -> ImageData:
    """CIFAR-10 from the python-format folder ``path`` (see module doc); resized and
    converted to ``channels`` if asked."""
    check_options(image_size, channels)
    root = cifar_root(path)
    if root is None:
        raise DataError(f"dataset {str(path)!r}: expected a CIFAR-10 python folder with "
                        f"{TRAIN_GLOB} and {TEST_FILE} (or a {SUBFOLDER}/ inside)")
    classes = _class_names(root)
    num_classes = len(classes) or 10
    parts = [_read_batch(p, num_classes) for p in sorted(root.glob(TRAIN_GLOB))]
    codes = torch.cat([c for c, _ in parts])
    labels = torch.cat([y for _, y in parts])
    t_codes, t_labels = _read_batch(root / TEST_FILE, num_classes)
    codes = fit_codes(codes, image_size, channels)
    t_codes = fit_codes(t_codes, image_size, channels)
    return in_memory_data(str(root), codes, labels, num_classes=num_classes, test_fraction=0.0,
                          classes=classes, test=(t_codes, t_labels))
