import numpy as np
import pytest
import torch

from datafiles import Items, fake_cifar, write_constants
from ntm_engine.data import DIGITS_BINS, DataError, load_digits, open_dataset


def test_digits_match_load_digits():
    data = open_dataset("digits")
    assert data.shape == (1, 8, 8) and data.bins == DIGITS_BINS and data.num_classes == 10
    for split in ("train", "test"):
        x, y = load_digits(split)
        xd, yd = data.tensors(split)
        assert torch.equal(x, xd) and torch.equal(y, yd)
    assert open_dataset("digits", image_size=8, channels=1).shape == (1, 8, 8)
    assert data.summary() == "digits: 1x8x8, 17 bins, 10 classes, 1438 train / 359 test"
    with pytest.raises(DataError, match="the digits are fixed at 1x8x8, got image_size=16"):
        open_dataset("digits", image_size=16)


def test_each_kind_of_source_resolves(tmp_path):
    assert open_dataset("colour-patches", image_size=32).shape == (3, 32, 32)
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 5, 5), np.uint8))
    assert open_dataset(str(tmp_path / "a.npz")).shape == (1, 5, 5)
    fake_cifar(tmp_path / "cifar")
    assert open_dataset(tmp_path / "cifar").num_classes == 10
    write_constants(tmp_path / "imgs", [1, 2])
    assert open_dataset(tmp_path / "imgs", image_size=2).shape == (3, 2, 2)
    ds = Items([torch.zeros(1, 3, 3, dtype=torch.uint8)] * 2)
    data = open_dataset(ds)
    assert data.shape == (1, 3, 3) and open_dataset(data) is data


@pytest.mark.parametrize("source, match", [
    ("two_moons", "'two_moons' is a 2-D toy set"),
    ("no/such/place", r"expected one of \['digits', 'colour-patches'\], a folder or a "
                      r".npy/.npz file, got 'no/such/place'"),
    (3, "expected a name, a path or a torch Dataset, got int"),
])
def test_unknown_sources_are_errors(source, match):
    with pytest.raises(DataError, match=match):
        open_dataset(source)


def test_a_file_of_another_kind_is_an_error(tmp_path):
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(DataError, match=r"expected a folder or a .npy/.npz file, got .*a.csv"):
        open_dataset(tmp_path / "a.csv")
