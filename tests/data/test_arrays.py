import numpy as np
import pytest
import torch

from ntm_engine.data import DataError
from ntm_engine.data.arrays import open_arrays


def _images(n=10, h=4, w=4):
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _all_codes(data):
    """Train and test images back to sorted uint8 codes ``[N, C, H, W]`` (order-free)."""
    x = torch.cat([data.tensors("train")[0], data.tensors("test")[0]])
    codes = torch.round((x + 1) / 2 * 256 - 0.5).to(torch.uint8)
    return codes[torch.argsort(codes.flatten(1).long().sum(1) * 1000 + codes[:, 0, 0, 0].long())]


def _sorted(a):
    t = torch.from_numpy(a).permute(0, 3, 1, 2)
    return t[torch.argsort(t.flatten(1).long().sum(1) * 1000 + t[:, 0, 0, 0].long())]


def test_npy_nhwc_uint8_is_unlabelled_256_levels(tmp_path):
    a = _images()
    np.save(tmp_path / "x.npy", a)
    data = open_arrays(tmp_path / "x.npy", test_fraction=0.2)
    assert data.shape == (3, 4, 4) and data.bins == 256 and data.num_classes == 0
    assert len(data.train) == 8 and len(data.test) == 2
    assert torch.equal(_all_codes(data), _sorted(a))


def test_npz_nchw_with_labels_keeps_image_label_pairs(tmp_path):
    a = _images()
    labels = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", images=a.transpose(0, 3, 1, 2), labels=labels)
    data = open_arrays(tmp_path / "d.npz", test_fraction=0.3)
    assert data.num_classes == 3
    x, y = data.tensors("train")
    codes = torch.round((x + 1) / 2 * 256 - 0.5).to(torch.uint8)
    full = torch.from_numpy(a).permute(0, 3, 1, 2)
    for c, label in zip(codes, y.tolist()):
        i = next(i for i in range(10) if torch.equal(full[i], c))
        assert labels[i] == label


def test_float_images_and_x_y_keys_match_uint8(tmp_path):
    a = _images()
    np.savez(tmp_path / "f.npz", x=a.astype(np.float32) / 255, y=np.zeros(10, np.int64))
    np.savez(tmp_path / "u.npz", images=a, labels=np.zeros(10, np.int64))
    f, u = open_arrays(tmp_path / "f.npz"), open_arrays(tmp_path / "u.npz")
    assert torch.equal(f.tensors("train")[0], u.tensors("train")[0])


def test_test_split_keys_give_the_test_set(tmp_path):
    a = _images()
    np.savez(tmp_path / "s.npz", images=a[:7], labels=np.arange(7) % 2,
             test_images=a[7:], test_labels=np.array([1, 0, 1]))
    data = open_arrays(tmp_path / "s.npz")
    assert len(data.train) == 7 and len(data.test) == 3 and data.num_classes == 2
    assert data.tensors("test")[1].tolist() == [1, 0, 1]


def test_resize_and_channels_apply(tmp_path):
    np.save(tmp_path / "x.npy", _images(h=8, w=12))
    data = open_arrays(tmp_path / "x.npy", image_size=4, channels=1)
    assert data.shape == (1, 4, 4)


def _z(shape, dtype=np.uint8):
    return np.zeros(shape, dtype)


IMG = _z((4, 4, 4, 3))


@pytest.mark.parametrize("arrays, match", [
    (dict(images=_z((4, 2, 4, 4, 3))),
     r"d.npz\[images\]: expected images .* got shape \(4, 2, 4, 4, 3\)"),
    (dict(images=_z((4, 4, 4, 3), np.float64) + 2),
     r"d.npz\[images\]: expected float images in \[0, 1\]"),
    (dict(images=_z((4, 4, 4, 3), bool)),
     r"d.npz\[images\]: expected uint8, integer or float images, got dtype torch.bool"),
    (dict(images=IMG, labels=_z(3, np.int64)),
     r"d.npz\[labels\]: expected one label per image \(4\), got 3"),
    (dict(images=IMG, labels=_z(4, np.float32)),
     r"d.npz\[labels\]: expected integer class labels, got dtype torch.float32"),
    (dict(images=IMG, y=np.array([0, 1, -2, 0])), r"d.npz\[y\]: expected labels >= 0, got -2"),
    (dict(images=IMG, x=IMG),
     r"expected one image key of \['images', 'x'\], got \['images', 'x'\]"),
    (dict(a=IMG, b=_z(4)),
     r"expected images under one of \['images', 'x'\], got keys \['a', 'b'\]"),
    (dict(images=IMG, test_labels=_z(2, np.int64)), "got test_labels but no test images"),
    (dict(images=IMG, test_images=_z((2, 5, 5, 3))),
     r"expected test images of shape \(3, 4, 4\) like images, got \(3, 5, 5\)"),
    (dict(images=IMG, labels=_z(4, np.int64), test_images=_z((2, 4, 4, 3))),
     "expected labels for both splits or neither"),
    (dict(images=_z((0, 4, 4, 3))), r"expected at least one image, got 0"),
])
def test_bad_arrays_are_errors_naming_file_and_key(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match) as e:
        open_arrays(tmp_path / "d.npz")
    assert "d.npz" in str(e.value)


def test_unreadable_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"bad.npy'?: not a readable .npy/.npz file"):
        open_arrays(tmp_path / "bad.npy")
