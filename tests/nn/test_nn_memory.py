"""Bytes held by autograd between forward and backward: flat in depth for the reversible
stack, linear in depth for plain autograd (counted with saved_tensors_hooks)."""
from __future__ import annotations

import pytest
import torch

from stack_factory import make_stack

B, DIM, CTX, HIDDEN = 64, 32, 4, 48


def saved_bytes(stack, reversible: bool) -> tuple:
    """``(bytes of the unique storages autograd saved, excluding the parameters' and the
    output's, bytes of the output)`` for one forward of ``stack``."""
    stack.reversible = reversible
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, DIM, generator=g).requires_grad_()
    c = torch.randn(B, CTX, generator=g).requires_grad_()
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s  # keep it alive while counting: no address reuse
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z, ld = stack(x, c)
    skip = {p.untyped_storage().data_ptr() for p in stack.parameters()}
    out_ptr = z.untyped_storage().data_ptr()
    held = sum(s.nbytes() for k, s in storages.items() if k not in skip and k != out_ptr)
    out = storages[out_ptr].nbytes() if out_ptr in storages else 0
    (z.sum() + ld.sum()).backward()  # the graph is usable
    return held, out


@pytest.fixture(scope="module")
def measured():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    res = {}
    for depth in (4, 8, 32):
        stack = make_stack(depth, DIM, CTX, hidden=HIDDEN, dtype=torch.float32)
        res[depth] = {rev: saved_bytes(stack, rev) for rev in (True, False)}
    torch.set_num_threads(threads)
    return res


def test_reversible_stack_holds_only_its_output(measured):
    row_bytes = B * DIM * 4
    held = {d: measured[d][True][0] for d in measured}
    outs = {d: measured[d][True][1] for d in measured}
    assert held[4] == held[8] == held[32], held       # flat in depth
    assert held[4] <= B * CTX * 4, held                # only the context besides the output
    assert all(o == row_bytes for o in outs.values())  # the output is saved, once


def test_plain_autograd_grows_linearly(measured):
    held = {d: measured[d][False][0] for d in measured}
    per_layer = (held[8] - held[4]) / 4  # per coupling block (coupling + permutation + LU)
    assert per_layer >= 3 * B * DIM * 4, per_layer  # several [B, dim] activations per block
    predicted = held[4] + 28 * per_layer
    assert abs(held[32] - predicted) <= 0.02 * predicted, (held, predicted)
    # and at depth 32 the reversible stack holds less than 1/8 of plain autograd, output included
    rev_total = sum(measured[32][True])
    assert rev_total * 8 < held[32], (rev_total, held[32])
