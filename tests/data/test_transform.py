import numpy as np
import pytest
import torch
from PIL import Image

from ntm_engine.data import DataError
from ntm_engine.data.transform import (check_options, convert_channels, pil_to_codes,
                                       resize_codes, to_codes)


def _nhwc(n=2, h=4, w=5):
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_layouts_give_the_same_codes():
    a = _nhwc()
    nchw = to_codes(a.transpose(0, 3, 1, 2).copy())
    assert nchw.shape == (2, 3, 4, 5) and nchw.dtype == torch.uint8
    assert torch.equal(to_codes(a), nchw)
    assert torch.equal(to_codes(torch.from_numpy(a)), nchw)
    grey = to_codes(a[..., 0])
    assert grey.shape == (2, 1, 4, 5) and torch.equal(grey[:, 0], nchw[:, 0])


def test_float_images_in_unit_range_are_quantised_to_256_levels():
    a = _nhwc()
    assert torch.equal(to_codes(a.astype(np.float32) / 255), to_codes(a))
    assert torch.equal(to_codes(a.astype(np.int64)), to_codes(a))
    between = np.array([[[0.4, 0.6], [254.4, 254.6]]]) / 255  # rounded to the nearest level
    assert to_codes(between).flatten().tolist() == [0, 1, 254, 255]


@pytest.mark.parametrize("array, match", [
    (np.zeros((2, 3, 4, 4, 1), np.uint8),
     r"expected images \[N, H, W\], .* got shape \(2, 3, 4, 4, 1\)"),
    (np.zeros((2, 4, 4, 5), np.uint8), r"expected 1 or 3 channels .* got shape \(2, 4, 4, 5\)"),
    (np.zeros((2, 3, 4, 3), np.uint8), r"ambiguous layout for shape \(2, 3, 4, 3\)"),
    (np.full((1, 4, 4), 1.5, np.float32),
     r"expected float images in \[0, 1\], got values in \[1.5, 1.5\]"),
    (np.full((1, 4, 4), np.nan, np.float32), r"expected float images in \[0, 1\]"),
    (np.full((1, 4, 4), 300, np.int32),
     r"expected integer images in 0..255, got values in \[300, 300\]"),
    (np.zeros((1, 4, 4), bool), "expected uint8, integer or float images, got dtype torch.bool"),
])
def test_bad_arrays_are_errors_naming_the_argument(array, match):
    with pytest.raises(DataError, match=match) as e:
        to_codes(array, what="x.npz[images]")
    assert str(e.value).startswith("x.npz[images]:")


def test_channel_conversion_uses_the_luma_weights_and_repeats_grey():
    rgb = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=torch.uint8)
    codes = rgb.T.reshape(1, 3, 1, 4)
    grey = convert_channels(codes, 1)
    assert grey.shape == (1, 1, 1, 4)
    assert grey.flatten().tolist() == [76, 150, 29, 18]  # round(.299 R + .587 G + .114 B)
    assert torch.equal(convert_channels(grey, 3), grey.expand(1, 3, 1, 4))
    assert convert_channels(codes, None) is codes


def test_resize_scales_the_shorter_side_and_crops_the_centre():
    cols = torch.arange(8, dtype=torch.uint8).expand(1, 1, 4, 8)  # 4 high, 8 wide
    out = resize_codes(cols, 4)  # shorter side already 4: a pure centre crop
    assert torch.equal(out, cols[..., 2:6])
    blocks = torch.tensor([[10, 30], [50, 70]], dtype=torch.uint8)
    big = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1).reshape(1, 1, 8, 8)
    assert torch.equal(resize_codes(big, 2), blocks.reshape(1, 1, 2, 2))  # area means


def test_pil_images_crop_like_arrays_and_take_the_requested_mode():
    cols = np.tile(np.arange(8, dtype=np.uint8) * 20, (4, 1))  # 4 high, 8 wide
    img = Image.fromarray(cols)
    grey = pil_to_codes(img, image_size=4, channels=None)
    assert grey.shape == (1, 4, 4) and torch.equal(grey[0], torch.from_numpy(cols[:, 2:6]))
    rgb = pil_to_codes(img, image_size=None, channels=3)
    assert rgb.shape == (3, 4, 8) and torch.equal(rgb[1], torch.from_numpy(cols))
    colour = Image.fromarray(np.zeros((2, 2, 3), np.uint8))
    assert pil_to_codes(colour, image_size=None, channels=None).shape == (3, 2, 2)


@pytest.mark.parametrize("image_size, channels, match", [
    (0, None, "image_size: expected a positive integer or None, got 0"),
    (16.0, None, "image_size: expected a positive integer or None, got 16.0"),
    (None, 4, r"channels: expected 1 \(greyscale\) or 3 \(RGB\), got 4"),
])
def test_options_are_checked(image_size, channels, match):
    with pytest.raises(DataError, match=match):
        check_options(image_size, channels)
