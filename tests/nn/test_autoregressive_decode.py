"""ntm::autoregressive_decode (the fused CPU decode of one autoregressive block) against its
twin ntm_engine.reference.autoregressive_decode: float64 agreement, float32 accuracy, threads,
the block's choice of path, and errors that name the argument."""
from __future__ import annotations

import pytest
import torch

from ntm_engine import ops, reference
from ntm_engine.nn import AutoregressiveFlowBlock

pytestmark = pytest.mark.skipif(
    __import__("ntm_engine").build_info()["backend"] != "compiled",
    reason="the fused decode is a compiled kernel")


def _block(tokens=7, patch=3, *, context_dim=0, width=16, depth=2, heads=2, clamp=2.0,
           reverse=False, seed=0, dtype=torch.float64):
    """A block with random weights everywhere (zero-initialised head and adaLN included)."""
    torch.manual_seed(seed)
    block = AutoregressiveFlowBlock(tokens, patch, context_dim=context_dim, width=width,
                                    depth=depth, heads=heads, clamp=clamp, reverse=reverse)
    block = block.to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return block


def _inputs(block, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = block.start.dtype
    y = torch.randn(batch, block.tokens, block.patch_dim, generator=g, dtype=dtype)
    c = (torch.randn(batch, block.context_dim, generator=g, dtype=dtype)
         if block.context_dim else None)
    return y, c


def _both(block, y, c):
    with torch.no_grad():
        params, mod = block.decode_params(), block._modulation_stack(c)
        heads = block.layers[0].heads
        fused = ops.autoregressive_decode(y, params, mod, heads, block.clamp)
        twin = reference.autoregressive_decode(y, params, mod, heads, block.clamp)
    return fused, twin


@pytest.mark.parametrize("batch,tokens,depth,heads,context_dim,clamp", [
    (1, 1, 1, 1, 0, None),
    (3, 7, 2, 2, 0, 2.0),
    (5, 7, 3, 4, 6, 2.0),
    (7, 33, 2, 1, 4, None),
    (16, 20, 1, 8, 0, 0.5),
])
def test_float64_matches_the_twin(batch, tokens, depth, heads, context_dim, clamp):
    block = _block(tokens, 3, context_dim=context_dim, width=16, depth=depth, heads=heads,
                   clamp=clamp)
    y, c = _inputs(block, batch)
    (x, ld), (x_ref, ld_ref) = _both(block, y, c)
    assert x.dtype == torch.float64 and ld.dtype == torch.float64 and ld.shape == (batch,)
    assert (x - x_ref).abs().max() <= 1e-12 * max(1.0, x_ref.abs().max())
    assert (ld - ld_ref).abs().max() <= 1e-12 * max(1.0, ld_ref.abs().max())
    assert ld.abs().min() > 1e-3          # the random head really scales


@pytest.mark.parametrize("context_dim", [0, 5])
@pytest.mark.parametrize("reverse", [False, True])
def test_inverts_the_parallel_forward(context_dim, reverse):
    block = _block(12, 4, context_dim=context_dim, reverse=reverse)
    x = torch.randn(6, 12, 4, dtype=torch.float64)
    c = torch.randn(6, context_dim, dtype=torch.float64) if context_dim else None
    with torch.no_grad():
        y, logdet = block(x, c)
        x_back, logdet_inv = block.inverse(y, c, fused=True)
        x_twin, logdet_twin = block.inverse(y, c, fused=False)
    assert (y - x).abs().max() > 0.1
    # decoding token by token compounds rounding: without a context this block gives back x
    # to about 1e-10 in float64 through the Python loop too (the amount depends on the
    # machine's BLAS and threads), so the fused decode is held to the twin's own round trip
    err, err_twin = (x_back - x).abs().max(), (x_twin - x).abs().max()
    assert err_twin <= 1e-9 and err <= 8 * err_twin + 1e-13, (err, err_twin)
    ld_err, ld_twin = (logdet + logdet_inv).abs().max(), (logdet + logdet_twin).abs().max()
    assert ld_twin <= 1e-9 and ld_err <= 8 * ld_twin + 1e-13, (ld_err, ld_twin)


def test_float32_is_as_accurate_as_the_float32_twin():
    block64 = _block(40, 4, context_dim=3, width=32, heads=4)
    y64, c64 = _inputs(block64, 8)
    _, (truth, ld_truth) = _both(block64, y64, c64)
    block32 = _block(40, 4, context_dim=3, width=32, heads=4).float()
    (x, ld), (x_twin, ld_twin) = _both(block32, y64.float(), c64.float())
    err, err_twin = (x.double() - truth).abs().max(), (x_twin.double() - truth).abs().max()
    assert x.dtype == torch.float32 and ld.dtype == torch.float32
    assert err <= 2 * err_twin + 1e-6, (err, err_twin)
    assert (ld.double() - ld_truth).abs().max() <= 2 * (ld_twin.double() - ld_truth).abs().max() + 1e-5


def test_threads_split_the_batch_and_agree():
    block = _block(9, 3, context_dim=2)
    y, c = _inputs(block, 11)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        (x1, ld1), _ = _both(block, y, c)
        torch.set_num_threads(2)
        (x2, ld2), _ = _both(block, y, c)
        chunks = ops.last_cpu_parallel_chunks()
    finally:
        torch.set_num_threads(old)
    assert (x1 - x2).abs().max() <= 1e-13 and (ld1 - ld2).abs().max() <= 1e-13
    if torch.get_num_threads() >= 2 or old >= 2:
        assert chunks == 2


def test_empty_batch_and_strided_input():
    block = _block(6, 3)
    y, _ = _inputs(block, 4)
    (x, ld), _ = _both(block, y[:0], None)
    assert x.shape == (0, 6, 3) and ld.shape == (0,)
    strided = y.flip(1)                      # negative strides: copied, not misread
    (x_s, _), (x_ref, _) = _both(block, strided, None)
    assert (x_s - x_ref).abs().max() <= 1e-12


def test_the_block_picks_the_fused_op_only_where_it_applies(monkeypatch):
    block = _block(5, 3, context_dim=2)
    y, c = _inputs(block, 3)
    calls = []
    real = ops.autoregressive_decode
    monkeypatch.setattr(ops, "autoregressive_decode",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        block.inverse(y, c)
    assert calls == [1]
    x, logdet = block.inverse(y, c)                     # parameters require grad: the loop
    assert calls == [1] and x.grad_fn is not None
    with torch.no_grad():
        block.float().inverse(y.float(), c.float())           # float32: fused
        assert calls == [1, 1]
        with torch.autocast("cpu", dtype=torch.bfloat16):     # autocast: the loop
            x, _ = block.inverse(y.float(), c.float())
        block.inverse(y.float(), c.float(), fused=False)
    assert calls == [1, 1] and torch.isfinite(x).all()


def test_no_gradient_is_refused_not_dropped():
    block = _block(5, 3)
    y, _ = _inputs(block, 2)
    with pytest.raises(RuntimeError, match="no gradient"):
        ops.autoregressive_decode(y, block.decode_params(), None, 2, 2.0)
    with pytest.raises(RuntimeError, match="no gradient"):
        block.inverse(y, fused=True)


def _errors():
    block = _block(5, 3, context_dim=2)
    y, c = _inputs(block, 2)
    params = [p.detach() for p in block.decode_params()]
    mod = block._modulation_stack(c).detach()
    swap = lambda i, t: params[:i] + [t] + params[i + 1:]  # noqa: E731
    return [
        ((y.long(), params, mod, 2), "argument 'y' must be float"),
        ((y.float(), params, mod, 2), "dtype of 'y'"),
        ((y[0], params, mod, 2), r"argument 'y' must have shape \[B, L, P\]"),
        ((y, params[:-1], mod, 2), "argument 'params' must hold 4 \\+ 8 x depth \\+ 2"),
        ((y, swap(5, params[5][:-1]), mod, 2), r"params\[5\] \(qkv.bias\)' must have shape \[48\]"),
        ((y, swap(9, params[9].float()), mod, 2), r"params\[9\] \(mlp.0.bias\)' must have the dtype"),
        ((y, params, mod[:, :2], 2), r"argument 'modulation' must have shape \[2, 4, 2, 16\]"),
        ((y, params, mod, 3), "argument 'heads' must divide the width 16, got 3"),
        ((torch.cat([y, y], 1), params, mod, 2), "10 tokens, more than the block's 5 positions"),
        ((y, params, mod, 2, -1.0), "argument 'clamp' must be None or a finite number > 0"),
    ]


@pytest.mark.parametrize("case", range(len(_errors())))
def test_errors_name_the_argument(case):
    args, message = _errors()[case]
    with torch.no_grad(), pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        torch.ops.ntm.autoregressive_decode(*args)


def test_fake_kernel_gives_shapes_without_computing():
    block = _block(5, 3)
    y, _ = _inputs(block, 4)
    params = [p.detach() for p in block.decode_params()]
    with torch._subclasses.FakeTensorMode() as mode:
        fy = mode.from_tensor(y)
        x, ld = torch.ops.ntm.autoregressive_decode(fy, [mode.from_tensor(p) for p in params],
                                                    None, 2, 2.0)
    assert x.shape == (4, 5, 3) and ld.shape == (4,) and ld.dtype == torch.float64
