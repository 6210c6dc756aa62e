import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from datafiles import constant_image, truncate, write_constants, write_image
from ntm_engine.data import DataError, codes_to_unit, fingerprint
from ntm_engine.data.folder import open_folder


def _values(data, split="train"):
    """The constant value of each image of ``split`` (images are constant per channel)."""
    x, y = data.tensors(split)
    codes = torch.round((x + 1) / 2 * 256 - 0.5).long()
    return codes[:, 0, 0, 0].tolist(), y


def test_flat_folder_is_one_unlabelled_set_with_exact_pixels(tmp_path):
    write_constants(tmp_path, [10 * i for i in range(10)])
    data = open_folder(tmp_path, test_fraction=0.2)
    assert data.shape == (3, 4, 6) and data.bins == 256 and data.num_classes == 0
    train, y = _values(data)
    test, _ = _values(data, "test")
    assert y is None and len(test) == 2
    assert sorted(train + test) == [10 * i for i in range(10)]
    x, _ = data.tensors("train")
    assert torch.equal(x[0], codes_to_unit(torch.full((3, 4, 6), train[0]), 256))


def test_class_subfolders_are_sorted_classes_with_matching_labels(tmp_path):
    write_constants(tmp_path / "dog", [200, 201, 202])
    write_constants(tmp_path / "cat" / "nested", [100, 101])
    (tmp_path / "README.txt").write_text("not an image")
    data = open_folder(tmp_path, test_fraction=0.2)
    assert data.classes == ("cat", "dog") and data.num_classes == 2
    for split in ("train", "test"):
        values, labels = _values(data, split)
        assert [v // 100 - 1 for v in values] == labels.tolist()


def test_one_subfolder_is_unlabelled(tmp_path):
    write_constants(tmp_path / "only", [1, 2, 3])
    data = open_folder(tmp_path)
    assert data.num_classes == 0 and data.classes == ()


def test_train_and_test_subfolders_are_the_splits(tmp_path):
    for split, base in (("train", 0), ("test", 50)):
        write_constants(tmp_path / split / "a", [base + 1, base + 2])
        write_constants(tmp_path / split / "b", [base + 101])
    data = open_folder(tmp_path)
    assert sorted(_values(data)[0]) == [1, 2, 101]
    assert sorted(_values(data, "test")[0]) == [51, 52, 151]
    (tmp_path / "test" / "b").rename(tmp_path / "test" / "c")
    with pytest.raises(DataError, match=r"same class folders in train/ and test/, "
                                        r"got \['a', 'b'\] and \['a', 'c'\]"):
        open_folder(tmp_path)


def test_greyscale_folder_gives_one_channel_unless_asked_and_mixed_gives_rgb(tmp_path):
    write_constants(tmp_path, [30, 60], mode="L")
    assert open_folder(tmp_path, test_fraction=0.5).shape == (1, 4, 6)
    data = open_folder(tmp_path, channels=3, test_fraction=0.5)
    x, _ = data.tensors("train")
    assert data.shape == (3, 4, 6) and torch.equal(x[:, 0], x[:, 2])
    write_image(tmp_path / "colour.png", constant_image(90, size=(6, 4)))
    assert open_folder(tmp_path, test_fraction=0.3).shape == (3, 4, 6)
    assert open_folder(tmp_path, channels=1, test_fraction=0.3).shape == (1, 4, 6)


def test_jpeg_images_are_read(tmp_path):
    write_constants(tmp_path, [40, 200], ext=".jpg", size=(8, 8))
    data = open_folder(tmp_path, test_fraction=0.5)
    values = sorted(_values(data)[0] + _values(data, "test")[0])
    assert data.shape == (3, 8, 8)
    # JPEG is lossy: a flat block decodes to within a couple of levels of its colour
    assert abs(values[0] - 40) <= 2 and abs(values[1] - 200) <= 2


def test_mixed_sizes_are_an_error_naming_files_unless_resized(tmp_path):
    write_image(tmp_path / "a.png", constant_image(10, size=(6, 4)))
    write_image(tmp_path / "b.png", constant_image(20, size=(16, 8)))
    with pytest.raises(DataError, match=r"a.png is 6x4, .*b.png is 16x8; pass image_size"):
        open_folder(tmp_path)
    data = open_folder(tmp_path, image_size=4, test_fraction=0.5)
    assert data.shape == (3, 4, 4)
    assert sorted(_values(data)[0] + _values(data, "test")[0]) == [10, 20]


def test_resize_centre_crops_the_longer_side(tmp_path):
    cols = np.tile(np.arange(8, dtype=np.uint8) * 30, (4, 1))  # 4 high, 8 wide
    write_image(tmp_path / "a.png", cols)
    write_image(tmp_path / "b.png", cols)
    x, _ = open_folder(tmp_path, image_size=4, test_fraction=0.5).tensors("train")
    codes = torch.round((x + 1) / 2 * 256 - 0.5).long()
    assert codes[0, 0].tolist() == [[60, 90, 120, 150]] * 4


@pytest.mark.parametrize("setup, match", [
    (lambda p: None, "expected image files .* found none"),
    (lambda p: (p / "notes.txt").write_text("x"), "found none"),
    (lambda p: (write_constants(p, [1]), write_constants(p / "cls", [2])),
     "either directly in the folder or in class subfolders, got both"),
])
def test_empty_or_ambiguous_folders_are_errors(tmp_path, setup, match):
    setup(tmp_path)
    with pytest.raises(DataError, match=match):
        open_folder(tmp_path)


def test_not_a_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="expected a folder of images, got .*missing"):
        open_folder(tmp_path / "missing")


def _with_bad_files(tmp_path):
    write_constants(tmp_path, [1, 2, 3], size=(16, 16))
    truncate(tmp_path / "img1.png")
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg at all")


def test_unreadable_and_truncated_images_are_one_error_listing_every_file(tmp_path):
    _with_bad_files(tmp_path)
    with pytest.raises(DataError, match="2 of 4 image files could not be read") as e:
        open_folder(tmp_path)
    assert "img1.png" in str(e.value) and "garbage.jpg" in str(e.value)


def test_skip_mode_warns_listing_the_bad_files_and_keeps_the_rest(tmp_path):
    _with_bad_files(tmp_path)
    with pytest.warns(UserWarning, match="skipped 2 of 4 unreadable image files") as w:
        data = open_folder(tmp_path, on_error="skip", test_fraction=0.5)
    assert "img1.png" in str(w[0].message) and "garbage.jpg" in str(w[0].message)
    assert sorted(_values(data)[0] + _values(data, "test")[0]) == [1, 3]


def test_skip_mode_with_no_readable_image_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of the 1 image files could be read"):
            open_folder(tmp_path, on_error="skip")


def test_bad_on_error_is_an_error(tmp_path):
    with pytest.raises(DataError, match="on_error: expected 'raise' or 'skip', got 'ignore'"):
        open_folder(tmp_path, on_error="ignore")


def test_worker_processes_decode_the_same_images(tmp_path):
    write_constants(tmp_path / "a", range(0, 70, 10))
    write_constants(tmp_path / "b", range(100, 170, 10))
    serial = open_folder(tmp_path)
    parallel = open_folder(tmp_path, num_workers=2)
    for split in ("train", "test"):
        xs, ys = serial.tensors(split)
        xp, yp = parallel.tensors(split)
        assert torch.equal(xs, xp) and torch.equal(ys, yp)


def test_fingerprint_changes_when_one_pixel_of_the_folder_changes(tmp_path):
    paths = write_constants(tmp_path, [5, 6, 7])
    before = fingerprint(open_folder(tmp_path))
    assert fingerprint(open_folder(tmp_path)) == before
    img = constant_image(6)
    img[0, 0, 0] = 200
    write_image(paths[1], img)
    assert fingerprint(open_folder(tmp_path)) != before


def test_sixteen_bit_images_are_listed_as_unreadable_not_clipped(tmp_path):
    write_constants(tmp_path, [1])
    Image.fromarray(np.full((4, 6), 4000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match=r"deep.png \(DataError: image: expected 8 bits per "
                                        r"value, got PIL mode 'I;16'"):
        open_folder(tmp_path)
