"""A folder of images (PNG, JPEG, BMP, GIF, TIFF, WebP via Pillow) as an :class:`ImageData`.

Layout: images directly in ``root`` (one unlabelled set), or in class subfolders
``root/<class>/...`` (any depth below the class folder; with two or more class folders the
sorted folder names are the classes, with one the set is unlabelled).  Images directly in
``root`` next to class folders are an error.  If ``root`` holds ``train/`` and ``test/``
folders, they are the splits (the same class folders in both); otherwise a fixed
``test_fraction`` is held out.  Files with other extensions and hidden files are ignored.

Every image is decoded once, when the folder is opened, into uint8 codes in memory, in
parallel over ``num_workers`` processes.  Bad files: an unreadable, truncated or 16-bit image
is an **error** (:class:`~ntm_engine.data.core.DataError`) that lists every bad file and why, so
nothing is dropped silently; ``on_error="skip"`` instead skips them with one warning that
lists them.  Mixed sizes are resized when ``image_size`` is given and an error (naming two
files and their sizes) when it is not.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from PIL import Image
import torch
from torch.utils.data import DataLoader, Dataset

from .core import DataError, ImageData, in_memory_data
from .transform import check_options, convert_channels, pil_to_codes

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SHOWN = 10  # bad files listed in full in one message


def _is_image(p: Path) -> bool:
    """An image file by its name (a broken link counts: reading it fails, naming it)."""
    return (p.is_file() or p.is_symlink()) and not p.name.startswith(".") and \
        p.suffix.lower() in EXTENSIONS


def _images_under(d: Path) -> List[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if _is_image(Path(dirpath) / f)]
    return out


def scan_folder(root: Path) -> Tuple[List[Path], List[int], List[str]]:
    """``(files, class index per file, class names)`` of one split folder (see module doc)."""
    if not root.is_dir():
        raise DataError(f"dataset: expected a folder of images, got {str(root)!r} (not a folder)")
    direct = [p for p in sorted(root.iterdir()) if _is_image(p)]
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    groups = [(d.name, _images_under(d)) for d in subdirs]
    groups = [(name, files) for name, files in groups if files]
    if direct and groups:
        raise DataError(f"dataset {str(root)!r}: expected images either directly in the folder or "
                        f"in class subfolders, got both ({direct[0].name} and "
                        f"{groups[0][0]}/...)")
    if not direct and not groups:
        raise DataError(f"dataset {str(root)!r}: expected image files ({', '.join(EXTENSIONS)}), "
                        f"found none")
    if direct:
        return direct, [0] * len(direct), []
    files = [f for _, fs in groups for f in fs]
    labels = [k for k, (_, fs) in enumerate(groups) for _ in fs]
    return files, labels, [name for name, _ in groups]


class _Decode(Dataset):
    """Item ``i``: ``(index, codes [C, H, W] or None, error text or None)``."""

    def __init__(self, files: Sequence[Path], image_size: Optional[int], channels: Optional[int]):
        self.files, self.image_size, self.channels = files, image_size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.files[i]) as img:
                img.load()  # decodes the whole file: a truncated image fails here
                return i, pil_to_codes(img, image_size=self.image_size,
                                       channels=self.channels), None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return i, None, f"{type(e).__name__}: {e}"


def _decode_all(files: Sequence[Path], *, image_size, channels, num_workers: int, on_error: str):
    codes: List[Optional[torch.Tensor]] = [None] * len(files)
    bad = []
    loader = DataLoader(_Decode(files, image_size, channels), batch_size=64,
                        num_workers=num_workers, collate_fn=list)
    for batch in loader:
        for i, c, err in batch:
            codes[i] = c
            if err is not None:
                bad.append(f"{files[i]} ({err})")
    if bad:
        listing = "; ".join(bad[:_SHOWN]) + (f"; ... and {len(bad) - _SHOWN} more"
                                             if len(bad) > _SHOWN else "")
        if on_error == "raise":
            raise DataError(f"dataset: {len(bad)} of {len(files)} image files could not be read "
                            f"(expected images PIL can decode; remove or repair them, or pass "
                            f"on_error='skip' in Python): {listing}")
        warnings.warn(f"dataset: skipped {len(bad)} of {len(files)} unreadable image files: "
                      f"{listing}", stacklevel=3)
    keep = [i for i, c in enumerate(codes) if c is not None]
    if not keep:
        raise DataError(f"dataset: none of the {len(files)} image files could be read")
    return [codes[i] for i in keep], keep


def _stack(codes: List[torch.Tensor], files: Sequence[Path], channels: Optional[int]):
    c = channels or max(t.shape[0] for t in codes)
    codes = [convert_channels(t.unsqueeze(0), c)[0] for t in codes]
    sizes = {tuple(t.shape[1:]) for t in codes}
    if len(sizes) > 1:
        first = codes[0].shape[1:]
        j = next(j for j, t in enumerate(codes) if t.shape[1:] != first)
        raise DataError(f"dataset: images of different sizes without image_size: {files[0]} is "
                        f"{first[1]}x{first[0]}, {files[j]} is {codes[j].shape[2]}x"
                        f"{codes[j].shape[1]}; pass image_size (--image-size) to resize them")
    return torch.stack(codes)


def _load_split(root: Path, *, image_size, channels, num_workers, on_error):
    files, labels, classes = scan_folder(root)
    codes, keep = _decode_all(files, image_size=image_size, channels=channels,
                              num_workers=num_workers, on_error=on_error)
    files = [files[i] for i in keep]
    return codes, files, torch.tensor([labels[i] for i in keep], dtype=torch.long), classes


def open_folder(root, *, image_size: Optional[int] = None, channels: Optional[int] = None,
                test_fraction: float = 0.1, num_workers: int = 0,
                on_error: str = "raise") -> ImageData:
    """The images under ``root`` (see module doc) as 8-bit (256-level) data
    ``[N, channels, image_size, image_size]``; ``channels=None`` gives 3 if any image is in
    colour, else 1; ``image_size=None`` keeps the (common) size."""
    check_options(image_size, channels)
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
    root = Path(root)
    opts = dict(image_size=image_size, channels=channels, num_workers=num_workers,
                on_error=on_error)
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    codes, files, labels, classes = _load_split(root / "train" if has_splits else root, **opts)
    test = None
    if has_splits:
        t_codes, t_files, t_labels, t_classes = _load_split(root / "test", **opts)
        if t_classes != classes:
            raise DataError(f"dataset {str(root)!r}: expected the same class folders in train/ "
                            f"and test/, got {classes} and {t_classes}")
        c = channels or max(t.shape[0] for t in codes + t_codes)
        x, tx = _stack(codes + t_codes, files + t_files, c).split([len(codes), len(t_codes)])
        test = (tx.contiguous(), t_labels)
    else:
        x = _stack(codes, files, channels)
    num_classes = len(classes) if len(classes) >= 2 else 0
    return in_memory_data(str(root), x.contiguous(), labels, num_classes=num_classes,
                          test_fraction=test_fraction,
                          classes=tuple(classes) if num_classes else (), test=test)
