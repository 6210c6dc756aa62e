import hashlib

import pytest
import torch

from datafiles import Items
from ntm_engine.data import (DataError, ImageBatches, ImageData, ImageSet, dequantize,
                             open_dataset)


def seeds(i, stream):
    """Any fixed function of ``(index, stream)``."""
    return int(hashlib.sha256(f"{i}/{stream}".encode()).hexdigest()[:15], 16)


def _data(in_memory, n=23, items=Items):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g)
    ds = items([(im, i % 4) for i, im in enumerate(imgs)], classes=list("abcd"))
    return open_dataset(ds, in_memory=in_memory, test_fraction=0.0)


def test_epochs_visit_every_image_once_in_a_seeded_order():
    data = _data(True)
    b = ImageBatches(data, batch_size=5, seeds=seeds)
    first_epoch = torch.cat([b.indices(s) for s in range(5)])[:23]  # 25 rows span 2 epochs
    assert sorted(first_epoch.tolist()) == list(range(23))
    assert torch.equal(torch.cat([b.indices(s) for s in range(5)])[23:], b.permutation(1)[:2])
    again = ImageBatches(data, batch_size=5, seeds=seeds)
    assert torch.equal(again.indices(3), b.indices(3))


def test_batches_follow_the_documented_recipe():
    data = _data(True)
    b = ImageBatches(data, batch_size=5, seeds=seeds)
    g = torch.Generator().manual_seed(seeds(1, "epoch"))
    assert torch.equal(b.permutation(1), torch.randperm(23, generator=g))
    idx = b.permutation(0)[10:15]  # step 2
    g = torch.Generator().manual_seed(seeds(2, "data"))
    expected = dequantize(data.tensors("train")[0][idx], 256, generator=g)
    assert torch.equal(b.batch(2)[0], expected)


def test_batches_are_dequantised_rows_with_their_labels():
    data = _data(True)
    b = ImageBatches(data, batch_size=6, seeds=seeds, conditional=True)
    x, y = b.batch(2)
    idx = b.indices(2)
    clean, labels = data.tensors("train")
    assert x.shape == (6, 3, 4, 4) and torch.equal(y, labels[idx])
    assert float((x - clean[idx]).abs().max()) <= 1 / 256
    assert not torch.equal(x, clean[idx])
    assert ImageBatches(data, batch_size=6, seeds=seeds).batch(2)[1] is None  # unconditional


def test_lazy_split_through_worker_processes_equals_the_in_memory_fast_path():
    fast = ImageBatches(_data(True), batch_size=8, seeds=seeds, conditional=True)
    lazy = ImageBatches(_data(False), batch_size=8, seeds=seeds, conditional=True,
                        num_workers=2)
    assert fast.in_memory and not lazy.in_memory
    for step, (xl, yl) in zip(range(3, 9), lazy.stream(start=3)):  # resumed at step 3
        xf, yf = fast.batch(step)
        assert torch.equal(xl, xf) and torch.equal(yl, yf)
    xl, yl = lazy.batch(5, n=3)  # random access in process
    assert torch.equal(xl, fast.batch(5)[0][:3])


def test_stream_of_the_fast_path_is_its_batches():
    b = ImageBatches(_data(True), batch_size=4, seeds=seeds)
    for step, (x, _) in zip(range(2, 5), b.stream(2)):
        assert torch.equal(x, b.batch(step)[0])


class _CountingItems(Items):
    """Items that record which ones were read."""

    def __init__(self, items, classes=None):
        super().__init__(items, classes)
        self.reads = []

    def __getitem__(self, i):
        self.reads.append(i)
        return super().__getitem__(i)


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_share_of_a_batch_reads_only_its_rows_and_equals_them(in_memory):
    data = _data(in_memory, items=_CountingItems)
    b = ImageBatches(data, batch_size=8, seeds=seeds, conditional=True)
    for step in (0, 2, 5):   # step 2 spans the end of epoch 0 (23 images, batches of 8)
        x, y = b.batch(step)
        for rows in (slice(0, 4), slice(4, 8), slice(3, 6)):
            xs, ys = b.batch(step, rows=rows)
            assert torch.equal(xs, x[rows]) and torch.equal(ys, y[rows]), (step, rows)
    if not in_memory:   # a lazy split reads the share's items only
        items = b.ds.source
        items.reads.clear()
        b.batch(3, rows=slice(2, 5))
        assert sorted(items.reads) == sorted(b.indices(3)[2:5].tolist())


def test_worker_stream_of_a_share_equals_the_share_of_each_batch():
    fast = ImageBatches(_data(True), batch_size=8, seeds=seeds, conditional=True)
    lazy = ImageBatches(_data(False), batch_size=8, seeds=seeds, conditional=True,
                        num_workers=2)
    for step, (x, y) in zip(range(2, 6), lazy.stream(start=2, rows=slice(4, 8))):
        xf, yf = fast.batch(step)
        assert torch.equal(x, xf[4:8]) and torch.equal(y, yf[4:8])


@pytest.mark.parametrize("rows", [slice(0, 8, 2), slice(2, 12), slice(-4, None)])
def test_a_share_must_be_consecutive_rows_of_the_batch(rows):
    b = ImageBatches(_data(True), batch_size=8, seeds=seeds)
    with pytest.raises(DataError, match=r"rows: expected a slice of consecutive rows within "
                                        r"the batch of 8, got slice"):
        b.batch(0, rows=rows)


def test_dequantising_a_share_checks_that_it_lies_in_the_batch():
    x = torch.zeros(3, 2)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(dequantize(x, 4, generator=g, share=(2, 5)),
                       dequantize(torch.zeros(5, 2), 4, generator=torch.Generator()
                                  .manual_seed(0))[2:5])
    with pytest.raises(DataError, match=r"share: rows \[3, 6\) must lie in a batch of 5 rows"):
        dequantize(x, 4, share=(3, 5))


def test_digits_batches_use_17_levels():
    b = ImageBatches(open_dataset("digits"), batch_size=16, seeds=seeds)
    x, _ = b.batch(0)
    clean = b.ds.images(b.indices(0))
    assert float((x - clean).abs().max()) <= 1 / 17 and float((x - clean).abs().max()) > 1 / 256


@pytest.mark.parametrize("kw, match", [
    (dict(batch_size=0), "batch_size: expected a positive integer, got 0"),
    (dict(batch_size=4, conditional=True), "conditional: data 'u' has no class labels"),
    (dict(batch_size=4, split="test"), "split: 'u' has no 'test' images"),
])
def test_bad_batch_options(kw, match):
    empty = ImageSet(torch.zeros(0, 1, 2, 2, dtype=torch.uint8), None, 256)
    train = ImageSet(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), None, 256)
    data = ImageData(name="u", shape=(1, 2, 2), bins=256, num_classes=0, train=train,
                     test=empty)
    with pytest.raises(DataError, match=match):
        ImageBatches(data, seeds=seeds, **kw)


@pytest.mark.cuda
def test_pinned_worker_stream_to_a_gpu_equals_the_cpu_batches():
    cpu = ImageBatches(_data(True), batch_size=8, seeds=seeds, conditional=True)
    gpu = ImageBatches(_data(False), batch_size=8, seeds=seeds, conditional=True,
                       device="cuda", num_workers=2)
    assert gpu.pin_memory
    for step, (x, y) in zip(range(4), gpu.stream()):
        assert x.is_cuda and y.is_cuda
        xc, yc = cpu.batch(step)
        assert torch.equal(x.cpu(), xc) and torch.equal(y.cpu(), yc)
