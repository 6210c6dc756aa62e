"""Tiny generated image files for the data tests."""
from pathlib import Path

import numpy as np
from PIL import Image


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
