"""Any ``torch.utils.data.Dataset`` of ``(image, label)`` as an :class:`ImageData`.

An image is a PIL image, or a tensor / array ``[C, H, W]``, ``[H, W, C]`` or ``[H, W]`` of
uint8 (0..255) or float in [0, 1] (e.g. torchvision's ``ToTensor``), quantised to 256 bins;
a 3-D image is channels-first when its first dim is 1 or 3, else channels-last.
Labels are ints ``0..K-1`` (``None`` or a bare image: unlabelled).  ``K`` comes from
``num_classes``, else the dataset's ``classes`` or ``targets`` (torchvision's convention);
a dataset that yields labels without either needs ``num_classes`` (0 ignores the labels).

The first item fixes the shape; every later item must match it after resizing (an error names
its index).  The set stays lazy (items converted as read, in ``DataLoader`` workers) unless
``in_memory=True``; a ``test`` dataset gives the test split, else a fixed ``test_fraction``
of indices is held out.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .core import NO_LABEL, DataError, ImageData, ImageSet, LazyImages, check_labels, split_indices
from .transform import check_options, fit_codes, pil_to_codes, to_codes

BINS = 256


class ConvertItem:
    """``(item, index) -> (codes uint8 [C, H, W], label or -1)``; picklable for workers."""

    def __init__(self, *, image_size, channels, shape=None, num_classes: int = 0):
        self.image_size, self.channels = image_size, channels
        self.shape, self.num_classes = shape, num_classes

    def __call__(self, item, j: int) -> Tuple[Tensor, int]:
        image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        what = f"dataset item {j}"
        if isinstance(image, Image.Image):
            codes = pil_to_codes(image, image_size=self.image_size, channels=self.channels)
        else:
            t = torch.as_tensor(np.asarray(image)) if not isinstance(image, Tensor) else image
            layout = "NHW" if t.dim() == 2 else "NCHW"
            if t.dim() == 3 and t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
                layout = "NHWC"
            elif t.dim() not in (2, 3):
                raise DataError(f"{what}: expected an image [C, H, W], [H, W, C] or [H, W], got "
                                f"shape {tuple(t.shape)}")
            codes = fit_codes(to_codes(t.unsqueeze(0), what=what, layout=layout),
                              self.image_size, self.channels)[0]
        if self.shape is not None and tuple(codes.shape) != self.shape:
            raise DataError(f"{what}: expected an image of shape {self.shape} (as item 0), got "
                            f"{tuple(codes.shape)}; pass image_size to resize")
        if self.num_classes == 0 or label is None:
            return codes, NO_LABEL
        return codes, _class_index(label, self.num_classes, f"{what} label")


def _class_index(label, num_classes: int, what: str) -> int:
    """``label`` (a Python, NumPy or one-element tensor integer) as an int in range."""
    if isinstance(label, (Tensor, np.ndarray)):
        if (label.size if isinstance(label, np.ndarray) else label.numel()) != 1:
            raise DataError(f"{what}: expected one integer, got shape {tuple(label.shape)}")
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise DataError(f"{what}: expected an integer class label, got {label!r}")
    if not 0 <= label < num_classes:
        raise DataError(f"{what}: expected labels in 0..{num_classes - 1}, got {label}")
    return int(label)


def _num_classes(ds: Dataset, first_label, num_classes: Optional[int]) -> int:
    if num_classes is not None:
        return int(num_classes)
    if getattr(ds, "classes", None) is not None:
        return len(ds.classes)
    if getattr(ds, "targets", None) is not None:
        return check_labels(torch.as_tensor(ds.targets), len(ds), what="dataset.targets")[1]
    if first_label is None:
        return 0
    raise DataError("num_classes: the dataset yields labels but has no .classes or .targets; "
                    "pass num_classes (0 ignores the labels)")


class _Codes(Dataset):
    def __init__(self, lazy: LazyImages):
        self.lazy = lazy

    def __len__(self) -> int:
        return len(self.lazy)

    def __getitem__(self, i: int):
        return self.lazy.codes(i)


def materialize(lazy: LazyImages, shape: Tuple[int, int, int], *,
                num_workers: int = 0) -> ImageSet:
    """Read a lazy split (images ``shape``) once into an in-memory :class:`ImageSet`."""
    xs, ys = [torch.empty(0, *shape, dtype=torch.uint8)], [torch.empty(0, dtype=torch.long)]
    for x, y in DataLoader(_Codes(lazy), batch_size=256, num_workers=num_workers):
        xs.append(x)
        ys.append(y)
    labels = torch.cat(ys)
    return ImageSet(torch.cat(xs), None if (labels == NO_LABEL).all() else labels, lazy.bins)


def open_torch_dataset(ds: Dataset, *, image_size: Optional[int] = None,
                       channels: Optional[int] = None, num_classes: Optional[int] = None,
                       test: Optional[Dataset] = None, test_fraction: float = 0.1,
                       in_memory: bool = False, num_workers: int = 0) -> ImageData:
    """``ds`` (and ``test``) as an :class:`ImageData` of 256 bins (see module doc)."""
    check_options(image_size, channels)
    if len(ds) == 0:
        raise DataError("dataset: expected a non-empty Dataset, got 0 items")
    first = ds[0]
    first_label = first[1] if isinstance(first, (tuple, list)) and len(first) > 1 else None
    k = _num_classes(ds, first_label, num_classes)
    probe = ConvertItem(image_size=image_size, channels=channels)(first, 0)[0]
    convert = ConvertItem(image_size=image_size, channels=channels or probe.shape[0],
                          shape=tuple(probe.shape), num_classes=k)
    if test is None:
        tr, te = split_indices(len(ds), test_fraction)
        train_set = LazyImages(ds, convert, BINS, tr)
        test_set = LazyImages(ds, convert, BINS, te)
    else:
        train_set, test_set = LazyImages(ds, convert, BINS), LazyImages(test, convert, BINS)
    if in_memory:
        train_set, test_set = (materialize(s, tuple(probe.shape), num_workers=num_workers)
                               for s in (train_set, test_set))
    classes = tuple(getattr(ds, "classes", ()) or ()) if k else ()
    return ImageData(name=type(ds).__name__, shape=tuple(probe.shape), bins=BINS,
                     num_classes=k, train=train_set, test=test_set, classes=classes)
