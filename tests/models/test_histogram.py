"""The per-pixel histogram baseline."""
import math

import pytest
import torch

from ntm_engine.models import histogram_bits_per_dim


def centres(v, bins):
    return (torch.as_tensor(v, dtype=torch.float64) + 0.5) / bins * 2 - 1


def test_histogram_bits_by_hand():
    bins = 3
    train = centres([[0, 1], [0, 2], [1, 2]], bins)          # 3 samples, 2 pixels
    test = centres([[0, 2], [2, 0]], bins)
    bpd = histogram_bits_per_dim(train, test, bins, alpha=1.0)
    # pixel 0 counts (2, 1, 0) + 1 -> (3, 2, 1)/6; pixel 1 counts (0, 1, 2) + 1 -> (1, 2, 3)/6
    ref = torch.tensor([-(math.log2(3 / 6) + math.log2(3 / 6)) / 2,
                        -(math.log2(1 / 6) + math.log2(1 / 6)) / 2], dtype=torch.float64)
    assert torch.allclose(bpd, ref, rtol=1e-12)


def test_class_conditional_histograms_use_each_class():
    bins = 2
    train = centres([[0], [0], [1], [1]], bins)
    y = torch.tensor([0, 0, 1, 1])
    test = centres([[0], [1]], bins)
    cond = histogram_bits_per_dim(train, test, bins, train_y=y, test_y=torch.tensor([0, 1]),
                                  alpha=0.5)
    assert torch.allclose(cond, torch.full((2,), -math.log2(2.5 / 3), dtype=torch.float64))
    plain = histogram_bits_per_dim(train, test, bins, alpha=0.5)
    assert torch.allclose(plain, torch.ones(2, dtype=torch.float64))


def test_histogram_rejects_off_centre_data_and_half_labels():
    x = centres([[0, 1]], 3)
    with pytest.raises(ValueError, match="test_x"):
        histogram_bits_per_dim(x, x + 0.1, 3)
    with pytest.raises(ValueError, match="train_y and test_y"):
        histogram_bits_per_dim(x, x, 3, train_y=torch.tensor([0]))
