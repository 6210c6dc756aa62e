"""``open_dataset``: one entry point from a name, a path or a ``Dataset`` to an
:class:`~ntm_engine.data.core.ImageData`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from torch.utils.data import Dataset

from .arrays import open_arrays
from .cifar import cifar_root, open_cifar
from .core import DataError, ImageData
from .digits import DIGITS_SHAPE, digits_data
from .folder import open_folder
from .patches import NAME as PATCHES, colour_patches
from .toys import TOYS
from .torch_source import open_torch_dataset

BUILT_IN = ("digits", PATCHES)
ARRAY_SUFFIXES = (".npy", ".npz")


def _digits(image_size, channels) -> ImageData:
    if image_size not in (None, DIGITS_SHAPE[1]) or channels not in (None, DIGITS_SHAPE[0]):
        raise DataError(f"image_size/channels: the digits are fixed at {DIGITS_SHAPE[0]}x"
                        f"{DIGITS_SHAPE[1]}x{DIGITS_SHAPE[2]}, got image_size={image_size!r}, "
                        f"channels={channels!r}")
    return digits_data()


def open_dataset(source: Union[str, Path, Dataset, ImageData], *,
                 image_size: Optional[int] = None, channels: Optional[int] = None,
                 test_fraction: float = 0.1, num_workers: int = 0, on_error: str = "raise",
                 num_classes: Optional[int] = None, test: Optional[Dataset] = None,
                 in_memory: bool = False) -> ImageData:
    """Resolve ``source`` to an :class:`ImageData`.

    ``source`` is one of: ``"digits"`` (1x8x8, 17 bins); ``"colour-patches"`` (built-in
    3x16x16 photo patches, ``image_size=32`` for 3x32x32;
    :func:`~ntm_engine.data.patches.colour_patches`); a ``.npy`` / ``.npz`` file
    (:func:`~ntm_engine.data.arrays.open_arrays`; an ``.npz`` with ``latents``: an
    autoencoder's latents, continuous, :mod:`~ntm_engine.data.latents`); a CIFAR-10 python folder
    (:func:`~ntm_engine.data.cifar.open_cifar`); any other folder of images
    (:func:`~ntm_engine.data.folder.open_folder`; ``num_workers`` decode in parallel,
    ``on_error`` "raise" or "skip"); a ``torch.utils.data.Dataset`` of ``(image, label)``
    (:func:`~ntm_engine.data.torch_source.open_torch_dataset`; ``num_classes``, ``test``,
    ``in_memory``); or an :class:`ImageData` (returned as is).

    ``image_size`` (resize the shorter side and centre-crop) and ``channels`` (1 or 3)
    apply to every image source; ``test_fraction`` is held out (fixed seed) where the source
    has no test split of its own.  Everything but the digits and latents has 256 bins.
    """
    if isinstance(source, ImageData):
        return source
    if isinstance(source, Dataset):
        return open_torch_dataset(source, image_size=image_size, channels=channels,
                                  num_classes=num_classes, test=test, in_memory=in_memory,
                                  test_fraction=test_fraction, num_workers=num_workers)
    if not isinstance(source, (str, Path)):
        raise DataError(f"dataset: expected a name, a path or a torch Dataset, got "
                        f"{type(source).__name__}")
    if source == "digits":
        return _digits(image_size, channels)
    if source == PATCHES:
        return colour_patches(image_size=image_size, channels=channels)
    if source in TOYS:
        raise DataError(f"dataset: {source!r} is a 2-D toy set (points, not images); sample it "
                        f"with sample_toy")
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in ARRAY_SUFFIXES:
            raise DataError(f"dataset: expected a folder or a {'/'.join(ARRAY_SUFFIXES)} file, "
                            f"got {str(path)!r}")
        return open_arrays(path, image_size=image_size, channels=channels,
                           test_fraction=test_fraction)
    if path.is_dir():
        if cifar_root(path) is not None:
            return open_cifar(path, image_size=image_size, channels=channels)
        return open_folder(path, image_size=image_size, channels=channels,
                           test_fraction=test_fraction, num_workers=num_workers,
                           on_error=on_error)
    raise DataError(f"dataset: expected one of {list(BUILT_IN)}, a folder or a .npy/.npz file, "
                    f"got {str(source)!r} (no such file or folder)")
