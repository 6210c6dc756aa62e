"""Frechet distance against closed forms, bits/dim aggregation, the cached digits classifier."""
import math

import pytest
import torch

from ntm_engine import metrics
from ntm_engine.data import dequantize, load_digits


def random_spd(d, seed, cond=10.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    w = torch.logspace(0, math.log10(cond), d, dtype=torch.float64)
    return q @ torch.diag(w) @ q.T


# ----------------------------------------------------------------------------- sqrtm, FD

def test_sqrtm_psd_squares_back():
    a = random_spd(16, 0, cond=1e4)
    r = metrics.sqrtm_psd(a)
    torch.testing.assert_close(r @ r, a, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r, r.T)
    assert torch.linalg.eigvalsh(r).min() > 0
    # singular PSD: the root of a rank-1 matrix v v^T is v v^T / |v|
    v = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(metrics.sqrtm_psd(torch.outer(v, v)), torch.outer(v, v) / 3.0,
                               rtol=1e-7, atol=1e-7)


def test_frechet_identical_is_zero_and_symmetric():
    s1, s2 = random_spd(8, 1), random_spd(8, 2)
    mu1, mu2 = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        metrics.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_closed_form_commuting():
    # diagonal covariances: |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a = torch.tensor([1.0, 4.0, 9.0, 0.25], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    mu1 = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    expect = 5.0 + float(((a.sqrt() - b.sqrt()) ** 2).sum())
    got = metrics.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expect, rel=1e-10)
    # scaled identity: |dmu|^2 + d (s1 - s2)^2
    d = 6
    got = metrics.frechet_distance(torch.zeros(d), 4 * torch.eye(d), torch.ones(d), torch.eye(d))
    assert got == pytest.approx(d + d * (2 - 1) ** 2, rel=1e-10)


def test_frechet_closed_form_noncommuting_2x2():
    # for 2x2 PSD M: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); here M = S1^1/2 S2 S1^1/2
    s1 = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, -0.6], [-0.6, 3.0]], dtype=torch.float64)
    m_trace = torch.trace(s1 @ s2)
    m_det = torch.det(s1) * torch.det(s2)
    tr_sqrt = math.sqrt(float(m_trace) + 2 * math.sqrt(float(m_det)))
    expect = 0.5 ** 2 + float(torch.trace(s1) + torch.trace(s2)) - 2 * tr_sqrt
    mu1 = torch.tensor([0.0, 0.5], dtype=torch.float64)
    got = metrics.frechet_distance(mu1, s1, torch.zeros(2, dtype=torch.float64), s2)
    assert got == pytest.approx(expect, rel=1e-10)


def test_frechet_of_samples_approaches_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 200_000
    s1, s2 = random_spd(d, 3, cond=5.0), random_spd(d, 4, cond=5.0)
    mu2 = torch.full((d,), 0.5, dtype=torch.float64)
    x1 = torch.randn(n, d, generator=g, dtype=torch.float64) @ metrics.sqrtm_psd(s1)
    x2 = torch.randn(n, d, generator=g, dtype=torch.float64) @ metrics.sqrtm_psd(s2) + mu2
    exact = metrics.frechet_distance(torch.zeros(d), s1, mu2, s2)
    est = metrics.frechet_distance_features(x1, x2)
    assert est == pytest.approx(exact, rel=0.03, abs=0.01)


# ----------------------------------------------------------------------------- bits/dim

class ConstantBpd(torch.nn.Module):
    """Stand-in with bits_per_dim = mean of x per sample (checks aggregation only)."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def bits_per_dim(self, x, y=None, bins=17, generator=None):
        return x.flatten(1).mean(1)


def test_dataset_bits_per_dim_aggregates_over_batches():
    x = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    out = metrics.dataset_bits_per_dim(ConstantBpd(), x, batch_size=3, dequantize_data=False)
    assert out["bpd"] == pytest.approx(4.5) and out["n"] == 10
    assert out["bpd_sem"] == pytest.approx(float(torch.arange(10.0).std()) / math.sqrt(10))


def test_quantize_digits_keeps_data_and_snaps_samples():
    x, _ = load_digits("test")
    assert torch.equal(metrics.quantize_digits(x), x)
    noisy = x + (torch.rand(x.shape) - 0.5) * (2 / 17) * 0.99
    torch.testing.assert_close(metrics.quantize_digits(noisy), x)
    assert metrics.quantize_digits(torch.tensor([5.0, -5.0])).abs().max() < 1


# ----------------------------------------------------------------------------- classifier

@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    return tmp_path_factory.mktemp("cache") / "clf.safetensors"


def test_classifier_is_trained_once_and_cached(classifier_path, monkeypatch):
    net, meta = metrics.load_or_train_classifier(classifier_path)
    assert meta["cached"] == "false" and classifier_path.exists()
    x, y = load_digits("test")
    acc = metrics.classifier_accuracy(net, x, y)
    assert acc > 0.95 and float(meta["test_accuracy"]) == pytest.approx(acc, abs=1e-6)

    def no_training(*a, **k):
        raise AssertionError("the cached classifier must not be retrained")

    monkeypatch.setattr(metrics, "train_classifier", no_training)
    net2, meta2 = metrics.load_or_train_classifier(classifier_path)
    assert meta2["cached"] == "true"
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)


def test_corrupt_classifier_cache_is_retrained(classifier_path, tmp_path, monkeypatch):
    original = metrics.train_classifier
    monkeypatch.setattr(metrics, "train_classifier", lambda **kw: original(**dict(kw, epochs=1)))
    bad = tmp_path / "clf.safetensors"
    bad.write_bytes(classifier_path.read_bytes()[:100])
    msgs = []
    _, meta = metrics.load_or_train_classifier(bad, log=msgs.append)
    assert meta["cached"] == "false" and any("unusable" in m for m in msgs)


def test_sample_quality_on_real_and_noise_images(classifier_path):
    net, _ = metrics.load_or_train_classifier(classifier_path)
    xt, yt = load_digits("train")
    x, _ = load_digits("test")
    real = metrics.sample_quality(net, xt[:500], yt[:500], x)
    noise = metrics.sample_quality(net, torch.rand(500, 1, 8, 8) * 2 - 1, yt[:500], x)
    assert real["class_accuracy"] > 0.95 and noise["class_accuracy"] < 0.5
    assert real["frechet_distance"] < 0.2 * noise["frechet_distance"]
    assert real["predicted_class_entropy_bits"] > 3.0  # all ten classes present


class RecordingBpd(ConstantBpd):
    """Stand-in that records the arguments each call of ``bits_per_dim`` got."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def bits_per_dim(self, x, y=None, bins=17, generator=None, **kw):
        self.calls.append((x.clone(), kw))
        return x.flatten(1).mean(1)


@pytest.mark.parametrize("samples", [1, 4])
def test_dataset_bits_per_dim_leaves_the_noise_to_the_model_only_when_it_weights_samples(samples):
    """K = 1: the data dequantised first (noise from ``seed``); K > 1: bin centres and
    ``dequantize=True``, so the model draws the noise with each trajectory."""
    x, _ = load_digits("test")
    model = RecordingBpd()
    metrics.dataset_bits_per_dim(model, x[:10], samples=samples, seed=3)
    (seen, kw), = model.calls
    if samples == 1:
        assert kw == {} and not torch.equal(seen, x[:10])
        torch.testing.assert_close(seen, dequantize(
            x[:10], 17, generator=torch.Generator().manual_seed(3)))
    else:
        assert kw == {"dequantize": True, "samples": 4} and torch.equal(seen, x[:10])
