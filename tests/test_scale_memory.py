"""``--checkpoint-predictor``: the predictor's blocks are recomputed in the backward pass; the
gradients are those of the plain pass, the saved activations much smaller."""
import torch

from ntm_engine.cli import build_parser
from ntm_engine.cli.train import train_config
from ntm_engine.models import NTM
from ntm_engine.training.memory import saved_bytes
from tests.run_testutils import TINY, tiny_cfg, trainer


def _grads_and_saved(checkpoint: bool):
    torch.manual_seed(0)
    model = NTM.for_digits(True, width=32, depth=3, heads=2)
    model.predictor.checkpoint_blocks = checkpoint
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10

    def forward():
        return model.trajectory_nll(x, y, generator=torch.Generator().manual_seed(1)).mean()

    saved = saved_bytes(forward, model)
    forward().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, saved


def test_checkpointed_blocks_give_the_same_gradients_and_save_less():
    plain, saved_plain = _grads_and_saved(False)
    ckpt, saved_ckpt = _grads_and_saved(True)
    assert set(plain) == set(ckpt)
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)
    assert saved_ckpt < 0.5 * saved_plain


def test_the_option_reaches_the_trained_predictor(tmp_path):
    cfg = tiny_cfg("digits", model=dict(TINY), iters=2, checkpoint_predictor=True)
    t = trainer(cfg, tmp_path / "run")
    assert t.model.predictor.checkpoint_blocks
    t.run()
    assert t.step == 2


def test_cli_flag():
    args = build_parser().parse_args(["train", "--checkpoint-predictor", "--iters", "1"])
    args.out = "unused"
    assert train_config(args).optim.checkpoint_predictor is True
    args = build_parser().parse_args(["train", "--iters", "1"])
    args.out = "unused"
    assert train_config(args).optim.checkpoint_predictor is False
