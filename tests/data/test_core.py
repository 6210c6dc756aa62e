import pytest
import torch

from ntm_engine.data import (DataError, ImageData, ImageSet, check_labels, codes_to_unit,
                             dequantize, pixel_mean_std, split_indices)
from ntm_engine.data.core import LazyImages


@pytest.mark.parametrize("bins", [17, 256])
def test_codes_map_to_bin_centres_and_dequantise_within_their_bin(bins):
    codes = torch.arange(bins)
    x = codes_to_unit(codes, bins)
    width = 2.0 / bins
    torch.testing.assert_close(x.double(), -1 + (codes.double() + 0.5) * width, rtol=0, atol=1e-6)
    xd = dequantize(x.repeat(50), bins, generator=torch.Generator().manual_seed(0))
    back = torch.floor((xd.double() + 1) / width).long()
    assert torch.equal(back, codes.repeat(50))


def test_check_labels_accepts_integer_labels_and_counts_classes():
    y, k = check_labels([0, 2, 1, 2], 4)
    assert y.dtype == torch.long and k == 3
    assert check_labels([0, 1], 2, num_classes=5)[1] == 5


@pytest.mark.parametrize("labels, n, kw, match", [
    ([0.0, 1.0], 2, {}, "expected integer class labels, got dtype torch.float"),
    ([[0, 1]], 1, {}, r"expected a 1-D array of labels, got shape \(1, 2\)"),
    ([0, 1, 1], 2, {}, r"expected one label per image \(2\), got 3"),
    ([0, -1], 2, {}, "expected labels >= 0, got -1"),
    ([0, 3], 2, {"num_classes": 3}, r"expected labels in 0..2, got 3"),
])
def test_check_labels_errors_name_the_argument_expected_and_got(labels, n, kw, match):
    with pytest.raises(DataError, match=match) as e:
        check_labels(labels, n, what="my_labels", **kw)
    assert str(e.value).startswith("my_labels:")


def test_split_indices_is_fixed_disjoint_and_complete():
    tr, te = split_indices(50, 0.2)
    assert len(te) == 10 and len(tr) == 40
    assert sorted(torch.cat([tr, te]).tolist()) == list(range(50))
    assert tr.tolist() == sorted(tr.tolist()) and te.tolist() == sorted(te.tolist())
    assert torch.equal(split_indices(5, 0.0)[0], torch.arange(5))
    tr2, te2 = split_indices(50, 0.2)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    assert len(split_indices(3, 0.01)[1]) == 1  # at least one test item


@pytest.mark.parametrize("n, frac, match", [(10, 1.0, "test_fraction"), (10, -0.1, "test_fraction"),
                                            (1, 0.1, "at least 2 images")])
def test_split_indices_errors(n, frac, match):
    with pytest.raises(DataError, match=match):
        split_indices(n, frac)


def _tiny_sets():
    codes = torch.randint(0, 256, (5, 3, 2, 2), generator=torch.Generator().manual_seed(1),
                          dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1, 1])
    eager = ImageSet(codes, labels, 256)
    lazy = LazyImages(list(zip(codes, labels.tolist())), lambda item, j: item, 256)
    return eager, lazy


def test_lazy_and_in_memory_items_agree_and_tensors_materialise_them():
    eager, lazy = _tiny_sets()
    for i in range(len(eager)):
        assert torch.equal(eager[i][0], lazy[i][0]) and eager[i][1] == lazy[i][1]
    data = {s: ImageData(name="t", shape=(3, 2, 2), bins=256, num_classes=2, train=s, test=s)
            for s in (eager, lazy)}
    xe, ye = data[eager].tensors("test")
    xl, yl = data[lazy].tensors("test", batch_size=2)
    assert torch.equal(xe, xl) and torch.equal(ye, yl) and xe.shape == (5, 3, 2, 2)
    assert data[eager].dims == 12


def test_image_data_split_names_are_checked():
    eager, _ = _tiny_sets()
    data = ImageData(name="t", shape=(3, 2, 2), bins=256, num_classes=0, train=eager,
                     test=eager)
    assert data.tensors("train")[1] is None  # unlabelled: no labels
    with pytest.raises(DataError, match="split: expected 'train' or 'test', got 'val'"):
        data.split("val")


def test_image_set_rejects_mismatched_labels():
    with pytest.raises(DataError, match="labels: expected 2 labels, got 3"):
        ImageSet(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 256)


def test_pixel_statistics_are_exact_in_memory_and_agree_lazily():
    eager, lazy = _tiny_sets()
    stats = {}
    for s in (eager, lazy):
        data = ImageData(name="t", shape=(3, 2, 2), bins=256, num_classes=2, train=s, test=s)
        stats[s] = pixel_mean_std(data)
    x = eager.images().double()
    mean, std = stats[eager]
    assert mean == pytest.approx(float(x.mean()), rel=1e-12)
    assert std == pytest.approx(float(x.std(unbiased=False)), rel=1e-12)
    assert stats[lazy] == pytest.approx(stats[eager], rel=1e-12)
