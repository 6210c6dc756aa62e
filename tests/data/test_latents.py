"""Latents in an ``.npz`` (data/latents.py): continuous data used as stored (no clamping, no
bins, no dequantisation), labels and test splits as for image files, per-channel statistics
of the training split, and bad files refused naming the file, the key and what was wrong."""
import numpy as np
import pytest
import torch

from ntm_engine.data import DataError, ImageBatches, channel_mean_std, dequantize, open_dataset
from ntm_engine.data.core import fingerprint


def _latents(n=20, c=4, s=4, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    scale = np.array([0.1, 5.0, 1.0, 40.0][:c]).reshape(1, c, 1, 1)
    shift = np.array([3.0, -7.0, 0.0, 100.0][:c]).reshape(1, c, 1, 1)
    return (shift + scale * rng.standard_normal((n, c, s, s))).astype(dtype)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_latents_are_used_as_stored_without_bins(tmp_path):
    z = _latents()
    data = open_dataset(_write(tmp_path / "z.npz", latents=z), test_fraction=0.25)
    assert data.continuous and data.bins == 0 and data.shape == (4, 4, 4)
    assert data.num_classes == 0 and len(data.train) == 15 and len(data.test) == 5
    assert "continuous" in data.summary()
    x = torch.cat([data.tensors("train")[0], data.tensors("test")[0]])
    assert x.dtype == torch.float32 and x.abs().max() > 100      # no clamping to [-1, 1]
    got = x[torch.argsort(x[:, 0, 0, 0])]
    want = torch.from_numpy(z)[torch.argsort(torch.from_numpy(z)[:, 0, 0, 0])]
    assert torch.equal(got, want)
    # items are the values too, and neither dequantisation nor batches add noise
    assert torch.equal(data.train[0][0], data.tensors("train")[0][0])
    assert dequantize(x, data.bins, torch.Generator().manual_seed(0)) is x
    b = ImageBatches(data, batch_size=6, seeds=lambda i, s: 7 * i + len(s))
    xb, _ = b.batch(3)
    assert torch.equal(xb, data.train.images(b.indices(3)))
    # a float64 file holds the same float32 values
    again = open_dataset(_write(tmp_path / "z64.npz", latents=z.astype(np.float64)),
                         test_fraction=0.25)
    assert fingerprint(again) == fingerprint(data)


def test_labels_and_a_test_split_as_for_image_files(tmp_path):
    z, t = _latents(12), _latents(5, seed=1)
    y, ty = np.arange(12) % 3, np.array([0, 1, 2, 3, 0])
    data = open_dataset(_write(tmp_path / "z.npz", latents=z, labels=y, test_latents=t,
                               test_labels=ty))
    assert data.num_classes == 4 and len(data.train) == 12 and len(data.test) == 5
    assert torch.equal(data.tensors("train")[0], torch.from_numpy(z))
    assert torch.equal(data.tensors("test")[0], torch.from_numpy(t))
    assert data.tensors("test")[1].tolist() == ty.tolist()
    # without a test split a fixed fraction is held out, pairs kept
    held = open_dataset(_write(tmp_path / "h.npz", latents=z, y=y), test_fraction=0.25)
    x, lab = held.tensors("train")
    for xi, yi in zip(x, lab):
        i = int(np.argmin(np.abs(z[:, 0, 0, 0] - xi[0, 0, 0].item())))
        assert yi.item() == y[i]


def test_channel_statistics_of_the_training_split(tmp_path):
    z = _latents(40)
    data = open_dataset(_write(tmp_path / "z.npz", latents=z, test_latents=_latents(4, seed=3)))
    mean, std = channel_mean_std(data)
    zt = torch.from_numpy(z).double()
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), zt.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64),
                               zt.std(dim=(0, 2, 3), unbiased=False))
    # scaling the data by 2 scales both exactly (powers of two are exact in floating point)
    twice = open_dataset(_write(tmp_path / "z2.npz", latents=2 * z,
                                test_latents=_latents(4, seed=3)))
    m2, s2 = channel_mean_std(twice)
    assert m2 == [2 * m for m in mean] and s2 == [2 * s for s in std]


def test_a_constant_channel_has_no_statistics(tmp_path):
    z = _latents()
    z[:, 2] = 1.5
    data = open_dataset(_write(tmp_path / "z.npz", latents=z))
    with pytest.raises(DataError, match=r"latent channel\(s\) \[2\] are constant"):
        channel_mean_std(data)


def _z(shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


Z = _latents(4)


@pytest.mark.parametrize("arrays, match", [
    (dict(latents=_z((4, 4, 4))), r"z.npz\[latents\]: expected latents \[N, C, H, W\], got "
     r"shape \(4, 4, 4\)"),
    (dict(latents=_z((4, 2, 4, 4, 1))), r"expected latents \[N, C, H, W\], got shape"),
    (dict(latents=_z((4, 2, 4, 3))), r"expected square latents \(H == W\), got shape"),
    (dict(latents=np.zeros((4, 2, 4, 4), np.int64)),
     r"z.npz\[latents\]: expected float latents \(float16/32/64\), got dtype int64"),
    (dict(latents=np.where(np.arange(4 * 64).reshape(Z.shape) == 70, np.nan, Z)),
     r"z.npz\[latents\]: expected finite latents \(float32\), got 1 non-finite values, "
     r"the first at index \(1, 0, 1, 2\)"),
    (dict(latents=np.full((4, 1, 2, 2), 1e300)), r"expected finite latents \(float32\), got 16"),
    (dict(latents=Z, labels=np.arange(3)),
     r"z.npz\[labels\]: expected one label per image \(4\), got 3"),
    (dict(latents=Z, labels=np.zeros(4)), r"z.npz\[labels\]: expected integer class labels"),
    (dict(latents=Z, test_latents=_z((2, 4, 2, 2))),
     r"z.npz\[test_latents\]: expected test latents of shape \(4, 4, 4\) like latents, got "
     r"\(4, 2, 2\)"),
    (dict(latents=Z, test_latents=np.full((2, 4, 4, 4), np.inf, np.float32)),
     r"z.npz\[test_latents\]: expected finite latents"),
    (dict(latents=Z, test_labels=np.arange(2)), "got test_labels but no test latents"),
    (dict(latents=Z, labels=np.arange(4), test_latents=Z),
     "expected labels for both splits or neither"),
    (dict(latents=_z((0, 4, 4, 4))), r"z.npz\[latents\]: expected at least one latent, got 0"),
])
def test_bad_latent_files_are_errors_naming_file_and_key(tmp_path, arrays, match):
    with pytest.raises(DataError, match=match):
        open_dataset(_write(tmp_path / "z.npz", **arrays))


def test_image_options_do_not_apply_to_latents(tmp_path):
    path = _write(tmp_path / "z.npz", latents=Z)
    for kw in (dict(image_size=8), dict(channels=3)):
        with pytest.raises(DataError, match="latents are used as stored; image_size/channels "
                           "apply to images"):
            open_dataset(path, **kw)
