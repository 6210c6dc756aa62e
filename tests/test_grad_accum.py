"""Gradient accumulation (``ntm train --grad-accum N``): N passes of B/N samples give the
update of one pass over B -- in float64, to rounding -- for the NTM objectives (one or several
step counts, the flow-matching-anchored loss), and a clear error for a bad N."""
import pytest
import torch

from ntm_engine.training import ConfigError
from ntm_engine.training.tensorboard import TensorBoardSink, scalars

from run_testutils import tiny_cfg, trainer


@pytest.fixture
def float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)   # the toy data and model follow it
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def one_step(cfg, out, parts):
    t = trainer(cfg, out, grad_accum=parts)
    try:
        rec = t.train_step()
        params = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    finally:
        t.close()
    return rec, params


@pytest.mark.parametrize("steps", [4, [2, 4]], ids=["one T", "two T"])
def test_accumulated_passes_make_the_one_pass_update(tmp_path, float64, steps):
    cfg = tiny_cfg(model=dict(steps=steps), batch_size=12, iters=1, grad_clip=None)
    rec1, w1 = one_step(cfg, tmp_path / "one", 1)
    rec3, w3 = one_step(cfg, tmp_path / "three", 3)
    assert rec3["loss"] == pytest.approx(rec1["loss"], rel=1e-12)
    assert rec3["grad_norm"] == pytest.approx(rec1["grad_norm"], rel=1e-10)
    for name, want in w1.items():
        torch.testing.assert_close(w3[name], want, rtol=1e-11, atol=1e-13, msg=name)
    # the step moved the weights: the comparison is not of two untouched models
    _, w0 = one_step(cfg.replace(lr=1e-12), tmp_path / "still", 1)
    assert any((w1[n] - w0[n]).abs().max() > 1e-6 for n in w1)


def test_the_anchored_objective_accumulates_too(tmp_path, float64):
    from ntm_engine.models import NTM
    from ntm_engine.models.flow_matching import frozen_copy
    from ntm_engine.training.objectives import Batch, FMInitRegularised

    torch.manual_seed(0)
    model = NTM((1, 4, 4), steps=(2, 3), num_classes=3, width=16, depth=1, heads=2,
                transporter_layers=1, transporter_hidden=8, context_dim=8).train()
    reference = frozen_copy(model.predictor)
    with torch.no_grad():   # away from the zero-initialised start, and from the reference
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    obj = FMInitRegularised(model, reference, lambda s, e: 0.7)
    x, y = torch.randn(7, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    whole, metrics = obj.loss(Batch(x, y, torch.Generator().manual_seed(4)))
    parts = list(obj.loss_parts(Batch(x, y, torch.Generator().manual_seed(4)), 3))
    assert len(parts) >= 3
    total = sum(p.sum() for p, _ in parts)
    torch.testing.assert_close(total, whole.sum(), rtol=1e-12, atol=0)
    reg = sum(m["fm_reg"].sum() for _, m in parts)
    torch.testing.assert_close(reg, metrics["fm_reg"].sum(), rtol=1e-12, atol=0)
    assert metrics["fm_reg"].sum() > 1e-6   # the anchor term is not trivially zero


@pytest.mark.parametrize("parts", [0, 13, 2.5])
def test_a_bad_number_of_passes_is_named(tmp_path, parts):
    with pytest.raises(ConfigError, match=r"--grad-accum must be an integer from 1 to the "
                                          r"per-process batch \(12\)"):
        trainer(tiny_cfg(batch_size=12), tmp_path / "run", grad_accum=parts)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tensorboard_receives_the_logged_numbers(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path / "tb")
    t = trainer(tiny_cfg(iters=3, ckpt_every=3, log_every=1), tmp_path / "run",
                metrics_sinks=[sink])
    t.run()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "train/nll" in tags and "train/train_bpd" in tags, tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert list(scalars({"a": 1, "b": {"c": 2.0, "d": float("nan")}, "e": True, "step": 3})) == \
        [("a", 1.0), ("b/c", 2.0)]
