"""The transporter kinds behind build_transporter, and the NTM with each of them."""
import pytest
import torch

from ntm_engine.models import NTM, TrajectoryPredictor, build_transporter
from ntm_engine.models.transporter import TRANSPORTER_KINDS
from ntm_engine.nn import PatchTokens

from _ntm_testutils import brute_force_nll, perturb, small_ntm

SHAPE = (1, 4, 4)
R = 6


def _transporter(kind, **kw):
    torch.manual_seed(0)
    cfg = dict(layers=2, hidden=16, num_classes=3, context_dim=8, heads=2, patch_size=2)
    cfg.update(kw)
    return perturb(build_transporter(kind, SHAPE, **cfg).double(), std=0.3)


def _rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, 16, generator=g, dtype=torch.float64)
    t = torch.rand(R, generator=g, dtype=torch.float64) * 0.9
    y = torch.randint(0, 3, (R,), generator=g)
    return x, t, y


@pytest.mark.parametrize("kind", TRANSPORTER_KINDS)
def test_each_kind_round_trips(kind):
    tr = _transporter(kind)
    x, t, y = _rows()
    with torch.no_grad():
        u, logdet = tr(x, t, y)
        x_back, logdet_inv = tr.inverse(u, t, y)
    assert u.shape == x.shape and logdet.shape == (R,)
    assert (x_back - x).abs().max() <= 1e-10
    assert (logdet + logdet_inv).abs().max() <= 1e-10
    if kind == "none":
        assert torch.equal(u, x) and not logdet.any()
    else:
        assert (u - x).abs().max() > 0.1 and logdet.abs().min() > 1e-3


@pytest.mark.parametrize("kind", ["autoregressive", "coupling"])
def test_label_free_by_default_and_label_conditioned_on_request(kind):
    x, t, y = _rows()
    free = _transporter(kind)
    assert not free.label_conditioned and not any("label" in n for n, _ in
                                                   free.named_parameters())
    with torch.no_grad():
        assert torch.equal(free(x, t, y)[0], free(x, t, None)[0])
        assert torch.equal(free(x, t, y)[0], free(x, t, (y + 1) % 3)[0])
    cond = _transporter(kind, label_conditioned=True)
    assert {n.split(".")[0] for n, _ in cond.named_parameters()} == {"time", "label", "flow"}
    with torch.no_grad():
        assert (cond(x, t, y)[0] - cond(x, t, (y + 1) % 3)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["autoregressive", "coupling"])
def test_step_count_context(kind):
    x, t, _ = _rows()
    tr = _transporter(kind, step_conditioned=True)
    four, eight = torch.full((R,), 4.0), torch.full((R,), 8.0)
    with torch.no_grad():
        u4, _ = tr(x, t, steps=four)
        u8, _ = tr(x, t, steps=eight)
        back, _ = tr.inverse(u8, t, steps=eight)
    assert (u4 - u8).abs().max() > 1e-3
    assert (back - x).abs().max() <= 1e-10
    with pytest.raises(ValueError, match=r"argument 'steps' must be a tensor of shape \[6\]"):
        tr(x, t)
    with pytest.raises(ValueError, match="argument 'steps' given, but the transporter was "
                                         "built without step_conditioned=True"):
        _transporter(kind)(x, t, steps=four)


@pytest.mark.parametrize("data_shape,patch", [((3, 4, 6), 2), ((12,), 4)])
def test_tokens_are_the_predictors(data_shape, patch):
    pred = TrajectoryPredictor(data_shape, width=8, depth=1, heads=2, patch_size=patch)
    tok = PatchTokens(data_shape, patch)
    v = torch.randn(2, pred.dim)
    assert torch.equal(tok.patchify(v), pred.patchify(v))
    assert torch.equal(tok.unpatchify(tok.patchify(v)), v)
    # and with no patch size given, both take the same default
    tr = build_transporter("autoregressive", data_shape, hidden=8, heads=2)
    default = TrajectoryPredictor(data_shape, width=8, depth=1, heads=2)
    assert (tr.patches.patch_size, tr.patches.tokens) == (default.patch_size, default.tokens)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="patch_size 3 must divide the image size 4x4"):
        build_transporter("autoregressive", SHAPE, patch_size=3)
    with pytest.raises(ValueError, match="kind must be one of"):
        build_transporter("mlp", SHAPE)
    tr = _transporter("autoregressive")
    x, t, _ = _rows()
    with pytest.raises(ValueError, match=r"argument 'x' must have shape \[R, 16\], got \[6, 12\]"):
        tr(x[:, :12], t)
    with pytest.raises(TypeError, match="argument 'x' must have dtype torch.float64"):
        tr(x.float(), t)


def test_ntm_autoregressive_likelihood_matches_brute_force():
    model = small_ntm(SHAPE, steps=2, patch_size=2, num_classes=2, std=0.3, label_dropout=0.0,
                      transporter="autoregressive")
    model.train()
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = torch.tensor([0, 1])
    nll = model.trajectory_nll(x, y, generator=torch.Generator().manual_seed(7))
    X, t = model.forward_trajectory(x, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = brute_force_nll(model, X, t, y)
        _, logdet, _, _ = model.predict_levels(X, t, y)
    assert torch.allclose(nll, ref, rtol=1e-11, atol=1e-10), (nll, ref)
    assert logdet.abs().min() > 1e-3


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("kind", TRANSPORTER_KINDS)
def test_ntm_with_each_kind_trains_a_step_and_round_trips(kind, steps):
    torch.manual_seed(0)
    model = NTM(SHAPE, steps=steps, num_classes=3, width=16, depth=1, heads=2, patch_size=2,
                transporter=kind, transporter_layers=2, transporter_hidden=16, context_dim=8)
    assert model.config["transporter"] == kind
    assert model.config["transporter_label_conditioned"] is False
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, *SHAPE, generator=g)
    before = [p.detach().clone() for p in model.transporter.parameters()]
    loss = model.trajectory_nll(x, torch.tensor([0, 1, 2, 0]), generator=g).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    moved = [not torch.equal(a, b) for a, b in zip(before, model.transporter.parameters())]
    assert any(moved) if kind != "none" else not before   # (zero-init: the heads move first)
    model.double().eval()
    rows = x.double().reshape(4, -1)
    tt = torch.full((4,), 0.3, dtype=torch.float64)
    with torch.no_grad():
        u, _ = model.transporter(rows, tt)
        back, _ = model.transporter.inverse(u, tt)
        samples = model.sample(2, y=1, generator=torch.Generator().manual_seed(1))
    assert (back - rows).abs().max() <= 1e-10
    assert samples.shape == (2, *SHAPE) and torch.isfinite(samples).all()


@pytest.mark.parametrize("kind, backward, mode", [
    ("autoregressive", "auto", "recompute"), ("autoregressive", "inverse", True),
    ("coupling", "auto", True), ("coupling", "recompute", "recompute")])
def test_the_transporter_backward_is_chosen_by_kind_and_gives_autograds_gradient(kind, backward,
                                                                               mode):
    def model(reversible):
        torch.manual_seed(0)
        m = NTM((1, 4, 4), steps=2, width=16, depth=1, heads=2, patch_size=2, transporter=kind,
                transporter_layers=2, transporter_hidden=16, transporter_backward=backward,
                reversible=reversible).double()
        with torch.no_grad():
            for p in m.transporter.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        return m

    fast, plain = model(True), model(False)
    assert fast.transporter.flow.reversible == mode and plain.transporter.flow.reversible is False
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    for m in (fast, plain):
        m(x, generator=torch.Generator().manual_seed(1)).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)
    with pytest.raises(ValueError, match="transporter_backward must be one of"):
        NTM((1, 4, 4), steps=2, transporter_backward="never")
