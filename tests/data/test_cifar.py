import numpy as np
import pytest
import torch

from datafiles import fake_cifar, write_pickle
from ntm_engine.data import DataError
from ntm_engine.data.cifar import open_cifar


def _codes(x):
    return torch.round((x + 1) / 2 * 256 - 0.5).to(torch.uint8)


def test_fake_cifar_reads_rows_channel_major_with_labels_and_names(tmp_path):
    batches, test = fake_cifar(tmp_path / "cifar-10-batches-py")
    data = open_cifar(tmp_path)  # the parent folder works too
    assert data.shape == (3, 32, 32) and data.bins == 256 and data.num_classes == 10
    assert data.classes == tuple(f"c{k}" for k in range(10))
    x, y = data.tensors("train")
    rows = np.concatenate([b[b"data"] for b in batches])
    assert len(x) == 5 and y.tolist() == sum((b[b"labels"] for b in batches), [])
    assert torch.equal(_codes(x).flatten(1), torch.from_numpy(rows))
    assert int(_codes(x)[1, 2, 0, 5]) == rows[1, 2 * 1024 + 5]  # channel 2, row 0, col 5
    xt, yt = data.tensors("test")
    assert torch.equal(_codes(xt).flatten(1), torch.from_numpy(test[b"data"]))
    assert yt.tolist() == test[b"labels"]


def test_resize_and_grey(tmp_path):
    fake_cifar(tmp_path)
    data = open_cifar(tmp_path, image_size=16, channels=1)
    assert data.shape == (1, 16, 16) and data.tensors("test")[0].shape == (4, 1, 16, 16)


def _rows(n, dtype=np.uint8, width=3072):
    return np.zeros((n, width), dtype)


@pytest.mark.parametrize("bad, match", [
    ({b"data": _rows(2, width=100), b"labels": [0, 1]},
     r"expected 'data' uint8 \[n, 3072\], got uint8 \[2, 100\]"),
    ({b"data": _rows(2, np.float32), b"labels": [0, 1]},
     r"expected 'data' uint8 \[n, 3072\], got float32"),
    ({b"data": _rows(2), b"labels": [0, 10]}, r"\['labels'\]: expected labels in 0..9, got 10"),
    ({b"data": _rows(2), b"labels": [0]},
     r"\['labels'\]: expected one label per image \(2\), got 1"),
    ({b"data": _rows(2)}, r"expected keys 'data' and 'labels', missing \['labels'\]"),
    ([1, 2], "expected a dict with 'data' and 'labels', got list"),
])
def test_bad_batches_are_errors_naming_the_file(tmp_path, bad, match):
    fake_cifar(tmp_path)
    write_pickle(tmp_path / "data_batch_2", bad)
    with pytest.raises(DataError, match=match) as e:
        open_cifar(tmp_path)
    assert "data_batch_2" in str(e.value)


def test_corrupt_pickle_and_missing_folder_are_errors(tmp_path):
    fake_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR-10 pickle"):
        open_cifar(tmp_path)
    with pytest.raises(DataError, match="expected a CIFAR-10 python folder"):
        open_cifar(tmp_path / "nowhere")
