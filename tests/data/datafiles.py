"""Tiny generated image files, CIFAR folders and Datasets for the data tests."""
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


def constant_image(value, *, size=(6, 4), mode="RGB") -> np.ndarray:
    """A ``[h, w, 3]`` (RGB) or ``[h, w]`` (L) uint8 array of one ``value`` (w x h = size)."""
    w, h = size
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return np.full(shape, value, dtype=np.uint8)


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8 ``[h, w]`` or ``[h, w, 3]``) as the image file ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_constants(folder: Path, values, *, size=(6, 4), mode="RGB", ext=".png"):
    """One constant image per value: ``folder/img{i}{ext}``; returns the paths."""
    return [write_image(folder / f"img{i}{ext}", constant_image(v, size=size, mode=mode))
            for i, v in enumerate(values)]


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut the file ``path`` to a fraction ``keep`` of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)]}


def fake_cifar(root, sizes=(3, 2), n_test=4):
    """A CIFAR-10 python folder with ``len(sizes)`` train batches and one test batch."""
    root.mkdir(parents=True, exist_ok=True)
    batches = [_batch(n, i) for i, n in enumerate(sizes)]
    for i, b in enumerate(batches):
        write_pickle(root / f"data_batch_{i + 1}", b)
    test = _batch(n_test, 99)
    write_pickle(root / "test_batch", test)
    write_pickle(root / "batches.meta", {b"label_names": [f"c{k}".encode() for k in range(10)]})
    return batches, test


class Items(Dataset):
    """A list of items as a Dataset, with optional torchvision-style ``classes``."""

    def __init__(self, items, classes=None):
        self.items = items
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]
