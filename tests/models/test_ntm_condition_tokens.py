"""Condition tokens (``NTM(cond_dim=C)``): padding masks, the null sequence, condition dropout,
one sequence for all rows, save/load and the errors.  The paths shared with labels (exact
likelihood, causality, KV cache, guidance, normalisation) are tested with a ``kind`` parameter
in their own files."""
import pytest
import torch

from ntm_engine.condition import Condition, cat_conditions, null_condition
from ntm_engine.models import NTM
from ntm_engine.models.embedding import drop_condition, drop_labels
from ntm_engine.models.loss import loss_from_levels, training_trajectory

from _ntm_testutils import COND_DIM, COND_LEN, condition_of, conditioned_ntm


def trajectory(model, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *model.data_shape, generator=g, dtype=torch.float64)
    return model.forward_trajectory(x, generator=g, t_min=0.01)


def levels(model, X, t, y):
    with torch.no_grad():
        return model.predict_levels(X, t, y)


def test_padding_tokens_change_nothing_bitwise():
    """Masked tokens -- any values, NaN and inf included -- leave every output bit for bit."""
    model = conditioned_ntm("both")
    y = condition_of("both", 4)
    vals = torch.tensor([float("nan"), float("inf"), 1e30, -7.0, 3.0], dtype=torch.float64)
    garbage = vals[torch.arange(y.tokens.numel()) % 5].view_as(y.tokens)
    y2 = Condition(y.labels, torch.where(y.mask.unsqueeze(-1), y.tokens, garbage), y.mask)
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        a = model.log_prob(x, y, samples=2, generator=torch.Generator().manual_seed(1))
        b = model.log_prob(x, y2, samples=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    s1 = model.sample(4, y, guidance=1.0, generator=torch.Generator().manual_seed(2))
    s2 = model.sample(4, y2, guidance=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s1, s2)
    # a real token moves the likelihood (the mask is not simply ignoring everything)
    moved = y.tokens.clone()
    moved[0, 0] += 1.0
    with torch.no_grad():
        c = model.log_prob(x, Condition(y.labels, moved, y.mask), samples=2,
                           generator=torch.Generator().manual_seed(1))
    assert c[0] != a[0] and torch.equal(c[1:], a[1:])


def test_more_padding_gives_the_same_likelihood():
    """The same sequences padded to a longer ``L`` (to rounding: longer reductions)."""
    model = conditioned_ntm("tokens")
    y = condition_of("tokens", 4)
    pad = torch.randn(4, 3, COND_DIM, dtype=torch.float64)
    longer = Condition(None, torch.cat([y.tokens, pad], 1),
                       torch.cat([y.mask, torch.zeros(4, 3, dtype=torch.bool)], 1))
    X, t = trajectory(model, 4)
    _, _, mu, ls = levels(model, X, t, y)
    _, _, mu2, ls2 = levels(model, X, t, longer)
    assert torch.allclose(mu, mu2, atol=1e-12) and torch.allclose(ls, ls2, atol=1e-12)


def test_a_fully_masked_row_is_finite_and_is_the_null_sequence():
    model = conditioned_ntm("tokens")
    y = condition_of("tokens", 3)
    empty = Condition(None, y.tokens, torch.zeros_like(y.mask))
    X, t = trajectory(model, 3)
    _, _, mu, ls = levels(model, X, t, empty)
    assert torch.isfinite(mu).all() and torch.isfinite(ls).all()
    _, _, mu_none, ls_none = levels(model, X, t, None)            # no tokens: the null sequence
    assert torch.allclose(mu, mu_none, atol=1e-12) and torch.allclose(ls, ls_none, atol=1e-12)
    _, _, mu_c, _ = levels(model, X, t, y)
    assert (mu_c - mu).abs().max() > 1e-3                         # tokens do condition
    # every slot reads the tokens (the prefix is visible to all of them)
    assert ((mu_c - mu).abs().amax(dim=(0, 2)) > 1e-6).all()


def test_one_sequence_for_every_row():
    model = conditioned_ntm("tokens")
    seq = torch.randn(COND_LEN, COND_DIM, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True])
    kw = dict(generator=torch.Generator().manual_seed(0), guidance=0.5)
    a = model.sample(3, cond=seq, cond_mask=mask, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    b = model.sample(3, cond=seq.expand(3, -1, -1), cond_mask=mask.expand(3, -1), **kw)
    assert torch.equal(a, b)


def test_condition_dropout_masks_labels_and_tokens_with_one_draw():
    y = condition_of("both", 400, seed=1)
    dropped = drop_condition(y, 0.3, 3, torch.Generator().manual_seed(5))
    gone = ~dropped.mask.any(1)
    # the labels drop exactly as drop_labels drops them (the same draws), tokens with them
    same = drop_labels(y.labels, 0.3, 3, torch.Generator().manual_seed(5))
    assert torch.equal(dropped.labels, same)
    assert torch.equal(gone, dropped.labels == 3) and 60 < int(gone.sum()) < 180
    assert torch.equal(dropped.mask[~gone], y.mask[~gone]) and torch.equal(dropped.tokens, y.tokens)
    assert drop_condition(y, 0.0, 3, torch.Generator()) is y       # p = 0: nothing drawn


def test_training_drops_to_the_null_sequence():
    """In training mode the loss of a dropped sample is that of the model without tokens."""
    model = conditioned_ntm("tokens", label_dropout=0.5).train()
    y = condition_of("tokens", 16)
    x = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    nll = model(x, y, generator=torch.Generator().manual_seed(8))
    X, t, dropped = training_trajectory(model, x, y, torch.Generator().manual_seed(8))
    gone = ~dropped.mask.any(1)
    assert 0 < int(gone.sum()) < 16
    with torch.no_grad():
        as_null = loss_from_levels(model, X, model.predict_levels(X, t, None))
        as_cond = loss_from_levels(model, X, model.predict_levels(X, t, y))
    assert torch.allclose(nll[gone], as_null[gone], atol=1e-10)
    assert torch.allclose(nll[~gone], as_cond[~gone], atol=1e-10)
    assert not torch.allclose(as_null, as_cond)


def test_checkpointed_blocks_give_the_same_loss_and_gradients():
    model = conditioned_ntm("tokens", label_dropout=0.0).train()
    y = condition_of("tokens", 4)
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.predictor.checkpoint_blocks = flag
        model(x, y, generator=torch.Generator().manual_seed(1)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(*grads, rtol=1e-10, atol=1e-12)
    assert model.predictor.cond_in.weight.grad.abs().max() > 0


def test_null_and_cat_of_conditions():
    y = condition_of("both", 3)
    n = null_condition(y, 3)
    assert torch.equal(n.labels, torch.full((3,), 3)) and not n.mask.any()
    both = cat_conditions(y, n)
    assert both.tokens.shape == (6, COND_LEN, COND_DIM) and torch.equal(both.mask[:3], y.mask)
    assert torch.equal(both[1:4].labels, torch.tensor([int(y.labels[1]), int(y.labels[2]), 3]))
    labels = torch.tensor([0, 2])
    assert torch.equal(cat_conditions(labels, null_condition(labels, 3)),
                       torch.tensor([0, 2, 3, 3]))


def test_save_load_round_trip(tmp_path):
    model = conditioned_ntm("both").float()
    loaded = NTM.from_pretrained(model.save_pretrained(tmp_path / "m")).float()
    assert loaded.config["cond_dim"] == COND_DIM == loaded.cond_dim
    y = condition_of("both", 3)
    y = Condition(y.labels, y.tokens.float(), y.mask)
    a = model.sample(3, y, guidance=1.0, generator=torch.Generator().manual_seed(0))
    b = loaded.sample(3, y, guidance=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert "condition tokens of 5 features" in (tmp_path / "m" / "README.md").read_text()


def test_a_model_without_cond_dim_has_no_new_parameters():
    names = {n for n, _ in conditioned_ntm("labels").named_parameters()}
    assert not any("cond" in n for n in names)
    assert {"predictor.cond_in.weight", "predictor.cond_null", "predictor.cond_context"} <= \
        {n for n, _ in conditioned_ntm("tokens").named_parameters()}


TOK = torch.zeros(2, 3, COND_DIM, dtype=torch.float64)


@pytest.mark.parametrize("kind,kw,match", [
    ("labels", dict(cond=TOK), r"cond: condition tokens given to an NTM without condition "
     r"tokens \(cond_dim=0\)"),
    ("tokens", dict(cond=torch.zeros(2, 3, 4)), r"cond: condition tokens must have shape "
     r"\[2, L, 5\] .* got \[2, 3, 4\]"),
    ("tokens", dict(cond=torch.zeros(3, 3, COND_DIM)), r"must have shape \[2, L, 5\].*got "
     r"\[3, 3, 5\]"),
    ("tokens", dict(cond=torch.zeros(2, 3, COND_DIM, dtype=torch.long)),
     "cond: condition tokens must be a float tensor, got torch.int64"),
    ("tokens", dict(cond=TOK, cond_mask=torch.ones(2, 3)),
     r"cond_mask: expected a bool tensor .* got torch.float32"),
    ("tokens", dict(cond=TOK, cond_mask=torch.ones(2, 4, dtype=torch.bool)),
     r"cond_mask: expected shape \[2, 3\] .* or \[3\], got \[2, 4\]"),
    ("tokens", dict(cond_mask=torch.ones(2, 3, dtype=torch.bool)),
     "cond_mask given without cond"),
    ("tokens", dict(y=Condition(None, TOK), cond=TOK), "give the tokens one way"),
])
def test_bad_condition_tokens_are_refused(kind, kw, match):
    model = conditioned_ntm(kind)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        model.log_prob(x, **kw)


def test_bad_cond_dim_and_guidance_without_a_condition():
    with pytest.raises(ValueError, match=r"cond_dim .* must be an integer >= 0, got -1"):
        NTM((4,), cond_dim=-1)
    model = conditioned_ntm("tokens")
    with pytest.raises(ValueError, match="guidance needs a condition"):
        model.sample(2, guidance=1.0)
