"""Image arrays and PIL images -> 8-bit codes ``[N, C, H, W]`` of a chosen size and channels.

Accepted values: uint8 (0..255), other integer dtypes within 0..255, and floats in [0, 1]
(quantised to 256 bins as ``round(x * 255)``).  Layouts: ``[N, H, W]`` (greyscale),
``[N, C, H, W]`` or ``[N, H, W, C]`` with ``C`` in {1, 3}.  Resizing scales the shorter side
to ``image_size`` and centre-crops the other (arrays: box means when shrinking, bilinear
when enlarging; PIL images: bicubic); channel conversion uses the ITU-R 601-2 luma (as
PIL's ``"L"``) or repeats grey.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .core import DataError

_LUMA = torch.tensor([0.299, 0.587, 0.114])
CHANNELS = (1, 3)
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # more than 8 bits per value


def check_options(image_size: Optional[int], channels: Optional[int]) -> None:
    """Errors for a bad ``image_size`` (positive int or None) or ``channels`` (1, 3 or None)."""
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size: expected a positive integer or None, got {image_size!r}")
    if channels is not None and channels not in CHANNELS:
        raise DataError(f"channels: expected 1 (greyscale) or 3 (RGB), got {channels!r}")


def _layout(shape: Tuple[int, ...], what: str) -> str:
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise DataError(f"{what}: expected images [N, H, W], [N, C, H, W] or [N, H, W, C], "
                        f"got shape {shape}")
    first, last = shape[1] in CHANNELS, shape[3] in CHANNELS
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    if first and last:
        raise DataError(f"{what}: ambiguous layout for shape {shape} (channels first or "
                        f"last?); expected one of dims 1, 3 to be 1 or 3")
    raise DataError(f"{what}: expected 1 or 3 channels in dim 1 ([N, C, H, W]) or dim 3 "
                    f"([N, H, W, C]), got shape {shape}")


def _values_to_uint8(t: Tensor, what: str) -> Tensor:
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool or t.dtype.is_complex:
        raise DataError(f"{what}: expected uint8, integer or float images, got dtype {t.dtype}")
    if t.numel() == 0:
        return t.to(torch.uint8)
    lo, hi = t.min().item(), t.max().item()
    if t.dtype.is_floating_point:
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise DataError(f"{what}: expected float images in [0, 1], got values in "
                            f"[{lo}, {hi}]; scale them to [0, 1] or pass uint8")
        return (t.double() * 255).round().to(torch.uint8)
    if lo < 0 or hi > 255:
        raise DataError(f"{what}: expected integer images in 0..255, got values in [{lo}, {hi}]")
    return t.to(torch.uint8)


def to_codes(images, *, what: str = "images", layout: Optional[str] = None) -> Tensor:
    """An image array (numpy or torch, any accepted dtype) -> uint8 ``[N, C, H, W]``;
    ``layout`` ("NHW", "NCHW", "NHWC") is inferred from the shape when None."""
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) \
        else torch.as_tensor(images)
    layout = layout or _layout(tuple(t.shape), what)
    t = _values_to_uint8(t, what)
    if layout == "NHW":
        t = t.unsqueeze(1)
    elif layout == "NHWC":
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def convert_channels(codes: Tensor, channels: Optional[int]) -> Tensor:
    """uint8 ``[N, C, H, W]`` with C in {1, 3} -> ``channels`` (None keeps them)."""
    c = codes.shape[1]
    if channels is None or channels == c:
        return codes
    if channels == 3:
        return codes.expand(-1, 3, -1, -1).contiguous()
    grey = torch.einsum("nchw,c->nhw", codes.float(), _LUMA)
    return grey.round().clamp(0, 255).to(torch.uint8).unsqueeze(1)


def crop_box(w: int, h: int, size: int) -> Tuple[int, int, Tuple[int, int, int, int]]:
    """Resized ``(w', h')`` with shorter side ``size`` and the centred ``size x size`` box."""
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (rw - size) // 2, (rh - size) // 2
    return rw, rh, (left, top, left + size, top + size)


def resize_codes(codes: Tensor, image_size: Optional[int]) -> Tensor:
    """uint8 ``[N, C, H, W]`` -> ``[N, C, S, S]``: shorter side to ``S``, centre crop."""
    n, c, h, w = codes.shape
    if image_size is None or (h == w == image_size):
        return codes
    rw, rh, (left, top, right, bottom) = crop_box(w, h, image_size)
    out = []
    for chunk in codes.split(1024):
        if rh <= h:
            x = F.interpolate(chunk.float(), size=(rh, rw), mode="area")
        else:
            x = F.interpolate(chunk.float(), size=(rh, rw), mode="bilinear", align_corners=False)
        out.append(x[:, :, top:bottom, left:right].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else codes.new_empty(0, c, image_size, image_size)


def fit_codes(codes: Tensor, image_size: Optional[int], channels: Optional[int]) -> Tensor:
    """:func:`convert_channels` then :func:`resize_codes`."""
    return resize_codes(convert_channels(codes, channels), image_size)


def pil_to_codes(img: Image.Image, *, image_size: Optional[int],
                 channels: Optional[int]) -> Tensor:
    """A PIL image -> uint8 ``[C, H, W]``: ``channels`` 1 (``"L"``), 3 (``"RGB"``) or None
    (greyscale modes stay grey, others become RGB); resized and centre-cropped when
    ``image_size`` is given.  16-bit and float images are an error (not clipped)."""
    if img.mode in WIDE_MODES:
        raise DataError(f"image: expected 8 bits per value, got PIL mode {img.mode!r} (16-bit "
                        f"or float); convert it to 8-bit first, nothing is clipped silently")
    grey = img.mode in ("1", "L", "LA")
    mode = "L" if channels == 1 or (channels is None and grey) else "RGB"
    img = img.convert(mode)
    if image_size is not None and img.size != (image_size, image_size):
        rw, rh, box = crop_box(img.width, img.height, image_size)
        img = img.resize((rw, rh), Image.BICUBIC, box=None).crop(box)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return arr.unsqueeze(0) if arr.dim() == 2 else arr.permute(2, 0, 1).contiguous()
