"""Condition tokens of a data set: the ``.npz`` keys, a token file for another data set, their
errors, and batches that keep each item's tokens with its image."""
import dataclasses

import numpy as np
import pytest
import torch

from ntm_engine.condition import Condition
from ntm_engine.data import CondTokens, DataError, ImageBatches, digits_data, fingerprint
from ntm_engine.data.arrays import open_arrays
from ntm_engine.data.cond import attach_cond

from test_batches import _data, seeds


def _images(n=10):
    """Image ``i`` is the constant ``10 i`` (so its value names it)."""
    return np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 10, 16, 1).reshape(
        n, 1, 4, 4)


def _tokens(n, L=3, C=2):
    """Sequence ``i`` is the constant ``i``; row ``i`` keeps its first ``1 + i % L`` tokens."""
    cond = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, L, C)).copy()
    mask = np.arange(L)[None, :] <= (np.arange(n) % L)[:, None]
    return cond, mask


def _item(x):
    """The item number of bin-centred images ``x [n, 1, 4, 4]`` (:func:`_images`)."""
    return torch.round(((x[:, 0, 0, 0] + 1) / 2 * 256 - 0.5) / 10).long()


def test_npz_tokens_follow_their_images_into_the_held_out_split(tmp_path):
    cond, mask = _tokens(10)
    np.savez(tmp_path / "d.npz", images=_images(), cond=cond, cond_mask=mask)
    data = open_arrays(tmp_path / "d.npz", test_fraction=0.3)
    assert data.cond_dim == 2 and "condition tokens of 2 features" in data.summary()
    for split in ("train", "test"):
        item = _item(data.tensors(split)[0])
        c = data.split_cond(split)
        assert len(item) == len(c) and torch.equal(c.tokens[:, 0, 0].long(), item)
        assert torch.equal(c.mask, torch.from_numpy(mask)[item])


def test_npz_with_a_test_split_takes_test_cond(tmp_path):
    cond, mask = _tokens(6)
    np.savez(tmp_path / "d.npz", images=_images(6), cond=cond, test_images=_images(4),
             test_cond=cond[:4] + 100)
    data = open_arrays(tmp_path / "d.npz")
    assert data.train_cond.mask is None and torch.equal(data.train_cond.tokens, torch.from_numpy(cond))
    assert torch.equal(data.test_cond.tokens[:, 0, 0], torch.arange(4.0) + 100)


def test_a_token_file_for_the_digits(tmp_path):
    data = digits_data()
    n, m = len(data.train), len(data.test)
    np.savez(tmp_path / "t.npz", cond=np.zeros((n, 2, 3), np.float32),
             test_cond=np.ones((m, 2, 3), np.float32),
             test_cond_mask=np.array([[1, 0]] * m, dtype=np.int64))
    with_tokens = attach_cond(data, tmp_path / "t.npz")
    assert with_tokens.cond_dim == 3 and with_tokens.train is data.train
    assert with_tokens.test_cond.mask.dtype == torch.bool and not with_tokens.test_cond.mask[:, 1].any()
    assert fingerprint(with_tokens) != fingerprint(data)


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


GOOD, MASK = _tokens(10)


@pytest.mark.parametrize("arrays,match", [
    (dict(cond=GOOD[:9]), r"d.npz\[cond\]: expected one token sequence per image \(10\), got 9"),
    (dict(cond=GOOD[:, 0]), r"d.npz\[cond\]: expected condition tokens \[N, L, C\] \(3-D\), "
     r"got shape \(10, 2\)"),
    (dict(cond=np.where(np.arange(10)[:, None, None] == 7, np.nan, GOOD)),
     r"d.npz\[cond\]: expected finite values, got a non-finite one in row 7"),
    (dict(cond=GOOD.astype(bool)), r"d.npz\[cond\]: expected float condition tokens"),
    (dict(cond=GOOD, cond_mask=MASK[:, :2]), r"d.npz\[cond_mask\]: expected shape \(10, 3\)"),
    (dict(cond=GOOD, cond_mask=MASK * 0.5), r"d.npz\[cond_mask\]: expected a bool mask"),
    (dict(cond=GOOD, cond_mask=MASK * 2), r"d.npz\[cond_mask\]: expected 0/1 or bool values"),
    (dict(cond_mask=MASK), r"got \['cond_mask'\] but no condition tokens under 'cond'"),
    (dict(cond=GOOD, test_cond=GOOD), r"got \['test_cond'\] but no test images"),
    (dict(cond=GOOD, test_images=_images(2)), r"expected test condition tokens under "
     r"'test_cond' for the 2 test images"),
    (dict(cond=GOOD, test_images=_images(2), test_cond=np.zeros((2, 3, 5), np.float32)),
     r"d.npz\[test_cond\]: expected 2 features per token like 'cond', got 5"),
])
def test_bad_tokens_name_the_file_and_key(tmp_path, arrays, match):
    path = _npz(tmp_path, images=_images(), **arrays)
    with pytest.raises(DataError, match=match):
        open_arrays(path)


def test_a_token_file_of_the_wrong_size_is_refused(tmp_path):
    data = digits_data()
    path = _npz(tmp_path, cond=np.zeros((5, 2, 3), np.float32))
    with pytest.raises(DataError, match=r"d.npz\[cond\]: expected one token sequence per image "
                       rf"\({len(data.train)}\), got 5"):
        attach_cond(data, path)
    np.save(tmp_path / "x.npy", np.zeros((5, 2, 3)))
    with pytest.raises(DataError, match="not a readable .npz file"):
        attach_cond(data, tmp_path / "x.npy")


# ----------------------------------------------------------------------------- batches

def _with_tokens(data, L=3, C=2):
    """``data`` (23 items, all in the train split) with item ``i``'s tokens the constant ``i``
    and ``1 + i % L`` real ones."""
    cond, mask = (torch.from_numpy(a) for a in _tokens(len(data.train), L, C))
    return dataclasses.replace(data, train_cond=CondTokens(cond, mask),
                               test_cond=CondTokens(torch.zeros(0, L, C)))


def _check_rows(b, step, x, y, rows=slice(None)):
    """``y`` holds the labels and tokens of the items of batch ``step``'s ``rows``."""
    idx = b.indices(step)[rows]
    assert isinstance(y, Condition) and len(y) == len(x) == len(idx)
    assert torch.equal(y.tokens[:, 0, 0].long(), idx) and torch.equal(y.labels, idx % 4)
    assert torch.equal(y.mask.sum(1), 1 + idx % 3)


@pytest.mark.parametrize("in_memory", [True, False])
def test_batches_keep_each_items_tokens_with_it(in_memory):
    b = ImageBatches(_with_tokens(_data(in_memory)), batch_size=8, seeds=seeds,
                     conditional=True, cond=True)
    for step in (0, 2, 5):    # step 2 spans two epochs
        x, y = b.batch(step)
        _check_rows(b, step, x, y)
        for rows in (slice(0, 4), slice(3, 8)):     # one process's share (torchrun)
            xs, ys = b.batch(step, rows=rows)
            assert torch.equal(xs, x[rows]) and torch.equal(ys.tokens, y.tokens[rows])
            _check_rows(b, step, xs, ys, rows)
    no_labels = ImageBatches(_with_tokens(_data(in_memory)), batch_size=8, seeds=seeds, cond=True)
    assert no_labels.batch(1)[1].labels is None


def test_worker_stream_keeps_each_items_tokens_with_it():
    lazy = ImageBatches(_with_tokens(_data(False)), batch_size=8, seeds=seeds,
                        conditional=True, cond=True, num_workers=2)
    for step, (x, y) in zip(range(2, 5), lazy.stream(start=2, rows=slice(4, 8))):
        _check_rows(lazy, step, x, y, slice(4, 8))
        assert torch.equal(x, lazy.batch(step, rows=slice(4, 8))[0])


def test_batches_of_tokens_need_tokens():
    with pytest.raises(DataError, match="cond: data .* has no condition tokens"):
        ImageBatches(_data(True), batch_size=4, seeds=seeds, cond=True)
