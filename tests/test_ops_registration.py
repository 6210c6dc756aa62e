"""Op registration: opcheck, torch.compile without graph breaks, and clear errors."""
import pytest
import torch

import ntm_engine
from ntm_engine import ops
from ntm_engine import reference as R

from op_cases import assert_compiled_matches_eager, make_inputs


def _samples():
    a, b, c = make_inputs((3, 5), torch.float32, seed=1)
    g, gl = torch.randn(3, 5), torch.randn(3)
    grad = lambda *ts: [t.clone().requires_grad_() for t in ts]  # noqa: E731
    return [
        (torch.ops.ntm.affine_coupling.default, (*grad(a, b, c), None)),
        (torch.ops.ntm.affine_coupling.default, (*grad(a, b, c), 2.0)),
        (torch.ops.ntm.affine_coupling_inverse.default, (*grad(a, b, c), 1.5)),
        (torch.ops.ntm.affine_coupling_backward.default, (a, b, c, g, gl, 2.0)),
        (torch.ops.ntm.affine_coupling_backward.default, (a, b, c, g, None, None)),
        (torch.ops.ntm.gaussian_nll.default, tuple(grad(a, b, c))),
        (torch.ops.ntm.gaussian_nll_backward.default, (a, b, c, gl)),
        (torch.ops.ntm.affine_coupling.default,
         (*grad(*make_inputs((2, 3, 4), torch.float64)), 1.0)),
    ]


@pytest.mark.parametrize("case", range(len(_samples())))
def test_opcheck(case):
    op, args = _samples()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    assert_compiled_matches_eager((4, 16))


def _raises(exc, match, fn, *args):
    with pytest.raises(exc, match=match):
        fn(*args)


def test_errors_name_argument_expected_and_given():
    x, shift, logits = make_inputs((3, 4), torch.float32)
    _raises(ValueError, r"'shift' must have the shape of 'x' \[3, 4\], got \[3, 5\]",
            ops.affine_coupling, x, torch.zeros(3, 5), logits)
    _raises(TypeError, r"'scale_logits' must have the dtype of 'x' \(Float\), got Double",
            ops.affine_coupling, x, shift, logits.double())
    _raises(TypeError, r"'x' must be float32, float64, bfloat16 or float16, got Long",
            ops.affine_coupling, x.long(), shift.long(), logits.long())
    _raises(ValueError, r"'clamp' must be None or a finite number > 0, got 0",
            ops.affine_coupling, x, shift, logits, 0.0)
    _raises(ValueError, r"'clamp' must be None or a finite number > 0, got -1",
            ops.affine_coupling_inverse, x, shift, logits, -1.0)
    _raises(TypeError, r"'clamp' must be None or a number > 0, got str",
            ops.affine_coupling, x, shift, logits, "2")
    _raises(ValueError, r"'x' must have a batch dimension",
            ops.affine_coupling, x[0, 0], shift[0, 0], logits[0, 0])
    _raises(ValueError, r"'grad_logdet' must have shape \[3\]",
            ops.affine_coupling_backward, x, shift, logits, x, torch.zeros(4))
    _raises(ValueError, r"'grad_y' must have the shape of 'y'",
            ops.affine_coupling_backward, x, shift, logits, x[:2], None)
    _raises(ValueError, r"'log_sigma' must have the shape of 'u'",
            ops.gaussian_nll, x, shift, logits[:, :2])
    _raises(ValueError, r"'grad' must have shape \[3\]",
            ops.gaussian_nll_backward, x, shift, logits, torch.zeros(3, 1))


# float32 lanes of the CPU kernels of each capability (ATen's Vectorized<float>: 512 bits for
# AVX-512, 256 bits for AVX2 and for the portable default)
VECTOR_WIDTH = {"avx512": 16, "avx2": 8, "default": 8}


def test_build_info_reports_cpu_capability():
    info = ntm_engine.build_info()
    assert set(info) >= {"cuda", "cpu_capability", "vector_width_float32"}
    assert info["cpu_capability"] in info["cpu_capabilities_supported"]
    chosen = info["cpu_capability"]
    try:   # every capability this CPU runs reports its own width
        for name in info["cpu_capabilities_supported"]:
            ops.set_cpu_capability(name)
            now = ntm_engine.build_info()
            assert (now["cpu_capability"], now["vector_width_float32"]) == \
                (name, VECTOR_WIDTH[name])
    finally:
        ops.set_cpu_capability(chosen)


def test_reference_accumulation_dtype():
    assert R.accumulation_dtype(torch.bfloat16) == torch.float32
    assert R.accumulation_dtype(torch.float64) == torch.float64
    _, ld = ops.affine_coupling(*make_inputs((2, 3), torch.float16))
    assert ld.dtype == torch.float32
