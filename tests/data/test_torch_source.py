import numpy as np
import pytest
import torch
from PIL import Image

from datafiles import Items
from ntm_engine.data import DataError, LazyImages
from ntm_engine.data.torch_source import open_torch_dataset


def _hwc(n=6, h=4, w=4):
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def _codes(x):
    return torch.round((x + 1) / 2 * 256 - 0.5).to(torch.uint8)


def test_uint8_hwc_float_chw_and_pil_items_give_the_same_images():
    imgs = _hwc()
    labels = [i % 2 for i in range(6)]
    sources = {
        "hwc": Items([(im, y) for im, y in zip(imgs, labels)], classes=["a", "b"]),
        "chw_float": Items([(im.permute(2, 0, 1).float() / 255, y) for im, y in zip(imgs, labels)],
                           classes=["a", "b"]),
        "pil": Items([(Image.fromarray(im.numpy()), y) for im, y in zip(imgs, labels)],
                     classes=["a", "b"]),
    }
    results = {k: open_torch_dataset(ds, test_fraction=0.0) for k, ds in sources.items()}
    for k, data in results.items():
        assert data.shape == (3, 4, 4) and data.num_classes == 2 and data.classes == ("a", "b")
        assert isinstance(data.train, LazyImages)
        x, y = data.tensors("train")
        assert y.tolist() == labels
        assert torch.equal(_codes(x), imgs.permute(0, 3, 1, 2)), k


def test_in_memory_equals_lazy_and_held_out_split_is_fixed():
    ds = Items([(im, i % 3) for i, im in enumerate(_hwc(10))], classes=["a", "b", "c"])
    lazy = open_torch_dataset(ds, test_fraction=0.2)
    eager = open_torch_dataset(ds, test_fraction=0.2, in_memory=True)
    assert not isinstance(eager.train, LazyImages) and len(eager.test) == 2
    for split in ("train", "test"):
        xl, yl = lazy.tensors(split)
        xe, ye = eager.tensors(split)
        assert torch.equal(xl, xe) and torch.equal(yl, ye)


def test_bare_and_unlabelled_items_and_explicit_test_set():
    imgs = _hwc(4)
    data = open_torch_dataset(Items(list(imgs[:3])), test=Items(list(imgs[3:])))
    assert data.num_classes == 0 and len(data.train) == 3 and len(data.test) == 1
    assert torch.equal(_codes(data.tensors("test")[0][0]), imgs[3].permute(2, 0, 1))


def test_grey_items_resized_and_targets_count_classes():
    class WithTargets(Items):
        targets = [0, 4, 1]

    ds = WithTargets([(np.full((8, 8), v, np.uint8), t) for v, t in zip((0, 128, 255), (0, 4, 1))])
    data = open_torch_dataset(ds, image_size=4, channels=3, test_fraction=0.0)
    assert data.shape == (3, 4, 4) and data.num_classes == 5


def test_labels_without_class_count_need_num_classes():
    ds = Items([(im, 1) for im in _hwc(3)])
    with pytest.raises(DataError, match="num_classes: the dataset yields labels but has no "
                                        r".classes or .targets; pass num_classes"):
        open_torch_dataset(ds)
    assert open_torch_dataset(ds, num_classes=0).num_classes == 0
    data = open_torch_dataset(ds, num_classes=2, test_fraction=0.0)
    assert data.tensors("train")[1].tolist() == [1, 1, 1]


def test_bad_items_are_errors_naming_the_index_when_read():
    imgs = _hwc(3)
    ds = Items([(imgs[0], 0), (imgs[1, :2], 1), (imgs[2], 7)], classes=["a", "b"])
    data = open_torch_dataset(ds, test_fraction=0.0)
    with pytest.raises(DataError, match=r"dataset item 1: expected an image of shape \(3, 4, 4\) "
                                        r"\(as item 0\), got \(3, 2, 4\)"):
        data.train[1]
    with pytest.raises(DataError, match=r"dataset item 2 label: expected labels in 0..1, got 7"):
        data.train[2]
    with pytest.raises(DataError, match="expected a non-empty Dataset, got 0 items"):
        open_torch_dataset(Items([]))


def test_items_of_the_wrong_rank_are_errors_naming_the_index():
    with pytest.raises(DataError, match=r"dataset item 0: expected an image \[C, H, W\], "
                                        r"\[H, W, C\] or \[H, W\], got shape \(5,\)"):
        open_torch_dataset(Items([torch.zeros(5, dtype=torch.uint8)]))


@pytest.mark.parametrize("label, match", [
    (1.5, "dataset item 0 label: expected an integer class label, got 1.5"),
    (torch.tensor(1.0), "expected an integer class label, got 1.0"),
    (torch.tensor([0, 1]), r"expected one integer, got shape \(2,\)"),
    (True, "expected an integer class label, got True"),
    (-1, r"expected labels in 0..1, got -1"),
])
def test_bad_labels_are_errors_naming_the_item(label, match):
    data = open_torch_dataset(Items([(torch.zeros(1, 2, 2), label)] * 2, classes=["a", "b"]),
                              test_fraction=0.0)
    with pytest.raises(DataError, match=match):
        data.train[0]


def test_numpy_and_tensor_integer_labels_are_accepted():
    items = [(torch.zeros(1, 2, 2), np.int64(1)), (torch.zeros(1, 2, 2), torch.tensor(0))]
    data = open_torch_dataset(Items(items, classes=["a", "b"]), test_fraction=0.0)
    assert data.tensors("train")[1].tolist() == [1, 0]
