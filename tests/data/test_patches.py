import pytest
import torch

from ntm_engine.data import DataError, colour_patches
from ntm_engine.data.patches import BOUNDARY, sample_photos, split_corners


def _codes(x):
    return torch.round((x + 1) / 2 * 256 - 0.5).to(torch.uint8)


@pytest.mark.parametrize("size", [16, 32])
def test_patches_are_deterministic_crops_of_the_photos(size):
    data = colour_patches(image_size=size, n_train=64, n_test=16)
    again = colour_patches(image_size=size, n_train=64, n_test=16)
    assert data.shape == (3, size, size) and data.bins == 256 and data.num_classes == 0
    photos = sample_photos()
    corners = split_corners(size, n_train=64, n_test=16, height=photos.shape[2],
                            width=photos.shape[3])
    for split, cs in zip(("train", "test"), corners):
        x, y = data.tensors(split)
        assert y is None and torch.equal(x, again.tensors(split)[0])
        for i in (0, 1, len(cs) - 1):
            k, top, left = cs[i].tolist()
            assert torch.equal(_codes(x[i]), photos[k, :, top:top + size, left:left + size])


@pytest.mark.parametrize("size", [16, 32, 128])
def test_train_and_test_patches_come_from_disjoint_columns(size):
    train, test = split_corners(size, n_train=2000, n_test=500, height=427, width=640)
    assert int((train[:, 2] + size).max()) <= BOUNDARY and int(test[:, 2].min()) >= BOUNDARY
    assert int((test[:, 2] + size).max()) <= 640 and int((train[:, 1] + size).max()) <= 427
    assert set(train[:, 0].tolist()) == {0, 1} == set(test[:, 0].tolist())


def test_grey_patches_and_default_size():
    data = colour_patches(channels=1, n_train=4, n_test=2)
    assert data.shape == (1, 16, 16) and data.name == "colour-patches16"


@pytest.mark.parametrize("kw, match", [
    (dict(image_size=1), "image_size: expected an integer in 2..128 for colour-patches, got 1"),
    (dict(image_size=200), "got 200"),
    (dict(channels=2), "channels: expected 1"),
    (dict(n_train=0), "n_train: expected a positive integer, got 0"),
])
def test_bad_patch_options(kw, match):
    with pytest.raises(DataError, match=match):
        colour_patches(**kw)
